//! What a node persists, as stored: documents and chunks of the index, jobs of the queue. These
//! are the bottom of the house: the store keeps them, the index and the queue give them
//! meaning, and none of them depends on anything above.

use std::collections::BTreeMap;

use rag_api::{ErrorBody, JobState, JobStatus, SourceLocation, Stage};
use serde::{Deserialize, Serialize};

use crate::time::{now_ms, rfc3339};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DocumentRecord {
    pub document_id: String,
    pub filename: String,
    pub content_type: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub pages: u32,
    pub metadata: BTreeMap<String, String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub job_id: String,
    /// Item ids of this document's chunks (allocated contiguously per upsert).
    pub first_item: u32,
    pub chunks: u32,
}

impl DocumentRecord {
    pub fn items(&self) -> std::ops::Range<u32> {
        self.first_item..self.first_item + self.chunks
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChunkRecord {
    pub document_id: String,
    pub chunk_index: u32,
    pub text: String,
    pub location: SourceLocation,
}

/// A job as stored: the public status plus what only the node needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub status: JobStatus,
    pub created_ms: u64,
    #[serde(default)]
    pub started_ms: Option<u64>,
}

impl JobRecord {
    pub fn id(&self) -> &str {
        &self.status.job_id
    }

    pub fn fail(&mut self, code: &str, message: impl Into<String>) {
        let message = message.into();
        self.status.state = JobState::Failed;
        self.status.message = Some(message.clone());
        self.status.error = Some(ErrorBody {
            code: code.into(),
            message,
        });
        self.finish_times();
    }

    /// The transition to `processing` when a worker claims the job (counts an attempt).
    pub fn start(&mut self) {
        let now = now_ms();
        self.status.state = JobState::Processing;
        self.status.attempts += 1;
        self.status.started_at = Some(rfc3339(now));
        self.status.timings.queued_ms = Some(now.saturating_sub(self.created_ms));
        self.started_ms = Some(now);
    }

    /// The transition back to `queued` (shutdown, lost worker).
    pub fn reset_to_queued(&mut self) {
        self.status.state = JobState::Queued;
        self.status.stage = Stage::Queued;
        self.status.percent = 0;
    }

    /// The terminal state of a job cancelled while queued.
    pub fn cancel(&mut self) {
        self.fail("cancelled", "cancelled before it started");
    }

    pub fn finish_times(&mut self) {
        let now = now_ms();
        self.status.finished_at = Some(rfc3339(now));
        self.status.timings.total_ms = Some(now.saturating_sub(self.created_ms));
    }
}
