//! The index-update path. The node that processes a job submits the result here; the embedded
//! implementation applies it to the local index at once. In a cluster the same trait appends to
//! a replicated log that every node applies ("embed once, apply everywhere").

use std::sync::Arc;

use crate::index::{ApplyOutcome, DocumentUpsert, Index, KeywordCommit};

#[derive(Debug, Clone)]
pub enum IndexOp {
    Upsert(DocumentUpsert),
    Delete { document_id: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Upserted(ApplyOutcome),
    /// Chunks removed, `None` when the document did not exist.
    Deleted(Option<u32>),
}

pub trait IndexLog: Send + Sync + 'static {
    /// Submits an operation; returns once it is applied (or durably logged, in a cluster).
    fn submit(&self, op: IndexOp) -> anyhow::Result<Applied>;
    /// Where this node stands in a replicated log; `None` when there is none (standalone).
    fn status(&self) -> Option<LogStatus> {
        None
    }
}

/// A node's standing in the replicated index log, for health and metrics.
#[derive(Debug, Clone, Default)]
pub struct LogStatus {
    pub position: Option<rag_api::cluster::LogPosition>,
    /// Milliseconds between appending the last applied entry and applying it here, or 0 when
    /// nothing is waiting.
    pub lag_ms: u64,
    /// Set when this node cannot follow the log (epoch changed, position trimmed away).
    pub error: Option<String>,
}

/// Standalone: operations are applied directly to this node's index.
pub struct LocalLog {
    index: Arc<Index>,
}

impl LocalLog {
    pub fn new(index: Arc<Index>) -> Self {
        LocalLog { index }
    }
}

impl IndexLog for LocalLog {
    fn submit(&self, op: IndexOp) -> anyhow::Result<Applied> {
        match op {
            // Grouped: the worker commits the keyword index itself when its queue is empty.
            IndexOp::Upsert(up) => self
                .index
                .apply_upsert_at(&up, None, KeywordCommit::Grouped)
                .map(Applied::Upserted),
            IndexOp::Delete { document_id } => self
                .index
                .delete_document(&document_id)
                .map(Applied::Deleted),
        }
    }
}
