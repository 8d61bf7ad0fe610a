//! Redis key names and payload formats of a cluster, shared by rag-node and the operator (which
//! talks to Redis, never to pods). Every key of cluster `NAME` starts with `rag:{NAME}:`; the
//! braces make it one Redis Cluster hash slot, so the multi-key scripts stay legal there too.

use serde::{Deserialize, Serialize};

/// The consumer group of the job stream.
pub const WORKER_GROUP: &str = "workers";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Keys {
        Keys {
            prefix: format!("rag:{{{cluster}}}:"),
        }
    }

    /// The prefix of every key of the cluster (`rag:{NAME}:`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Stream of queued jobs (`job` = job id), read by [`WORKER_GROUP`].
    pub fn jobs(&self) -> String {
        self.key("jobs")
    }

    /// Stream of jobs that ran out of attempts (`job`, `reason`).
    pub fn dead_letter(&self) -> String {
        self.key("jobs:dead")
    }

    /// A job's record (JSON), with a TTL once it finished.
    pub fn job(&self, id: &str) -> String {
        self.key(&format!("job:{id}"))
    }

    /// Sorted set of job ids by creation time (ms), for listing.
    pub fn jobs_by_time(&self) -> String {
        self.key("jobs:by-time")
    }

    /// Uploaded bytes, content-addressed.
    pub fn blob(&self, sha256: &str) -> String {
        self.key(&format!("blob:{sha256}"))
    }

    /// Set of job ids that still need [`Keys::blob`].
    pub fn blob_refs(&self, sha256: &str) -> String {
        self.key(&format!("blob:{sha256}:refs"))
    }

    /// Pub/sub channel of job status updates (JSON `JobStatus`).
    pub fn job_events(&self) -> String {
        self.key("events:jobs")
    }

    /// The replicated index log (stream).
    pub fn index_log(&self) -> String {
        self.key("log")
    }

    /// Random id created with the log: a different value means Redis lost the log.
    pub fn log_epoch(&self) -> String {
        self.key("log:epoch")
    }

    /// Id of the snapshot a log was started from, when a node restored it into a Redis that had
    /// no log (a cluster recreated from its backups): nodes restoring the same snapshot join
    /// that log.
    pub fn log_origin(&self) -> String {
        self.key("log:origin")
    }

    /// The precision of the cluster's index vectors (`fp32`, `bf16`), set once by the first node
    /// that starts: every node embeds with it, so one replicated index never mixes precisions.
    pub fn index_precision(&self) -> String {
        self.key("index:precision")
    }

    /// A node's heartbeat ([`NodeHeartbeat`] JSON), expiring when the node stops renewing it.
    pub fn node(&self, id: &str) -> String {
        self.key(&format!("node:{id}"))
    }

    /// Set of node ids that have sent a heartbeat (live ones also have [`Keys::node`]).
    pub fn nodes(&self) -> String {
        self.key("nodes")
    }

    /// The newest snapshot's [`SnapshotManifest`] (JSON): the log may be trimmed up to it.
    pub fn snapshot_latest(&self) -> String {
        self.key("snapshot:latest")
    }

    /// Stream of [`ControlCommand`]s, read by the nodes' group [`CONTROL_GROUP`].
    pub fn control(&self) -> String {
        self.key("control")
    }

    /// The [`ControlResult`] of command `id` (JSON, expires after a day).
    pub fn control_result(&self, id: &str) -> String {
        self.key(&format!("control:result:{id}"))
    }
}

/// The consumer group of the control stream: each command goes to one node.
pub const CONTROL_GROUP: &str = "nodes";
/// Heartbeats are renewed this often and expire after three missed renewals.
pub const HEARTBEAT_SECS: u64 = 5;
pub const HEARTBEAT_TTL_SECS: u64 = 15;

/// What a node publishes about itself (the operator's view of the cluster).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeHeartbeat {
    pub node_id: String,
    /// Following the log without errors.
    pub ready: bool,
    pub current_job: Option<String>,
    pub applied: Option<LogPosition>,
    pub lag_ms: u64,
    pub log_error: Option<String>,
    pub documents: u64,
    pub chunks: u64,
    pub index_bytes: u64,
    pub version: String,
    pub updated_at_ms: u64,
    /// The precision the node embeds with (`fp32`, `bf16`) and the kernel that runs it (`amx`,
    /// `avx512_bf16`, `emulated`, `avx512`, `portable`); absent from nodes older than these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
}

/// A request to the cluster, answered by one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ControlCommand {
    /// Take a snapshot of the index and store it under `target` (a directory or `s3://` URL);
    /// then, with `keep`, delete all but the newest `keep` snapshots there.
    Snapshot {
        id: String,
        target: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keep: Option<u32>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlResult {
    pub id: String,
    pub node_id: String,
    pub ok: bool,
    pub error: Option<String>,
    pub snapshot: Option<SnapshotManifest>,
    /// Snapshots deleted afterwards to honour `keep`.
    #[serde(default)]
    pub pruned: Vec<String>,
}

/// Describes one snapshot: a compacted copy of a node's LMDB environment (`data.mdb`) stored
/// next to this manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub format: u32,
    pub id: String,
    pub created_at: String,
    pub node_id: String,
    pub model_id: String,
    pub dimensions: usize,
    /// The last index-log entry the copy contains (cluster mode).
    pub log_position: Option<LogPosition>,
    pub documents: u64,
    pub chunks: u64,
    pub size_bytes: u64,
    /// Of `data.mdb`.
    pub sha256: String,
    pub version: String,
}

/// One entry of the index log, as stored in the stream's fields.
pub mod log_fields {
    /// The log's epoch when the entry was appended.
    pub const EPOCH: &str = "epoch";
    /// `upsert` or `delete`.
    pub const OP: &str = "op";
    /// Upsert: JSON of the document record and its chunks without vectors.
    pub const DOCUMENT: &str = "doc";
    /// Upsert: the chunks' vectors, little-endian f32, concatenated in chunk order.
    pub const VECTORS: &str = "vec";
    /// Delete: the document id.
    pub const DOCUMENT_ID: &str = "id";
}

/// Where a node stands in the index log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosition {
    pub epoch: String,
    /// Stream entry id of the last applied entry (`0-0` before the first).
    pub entry: String,
    /// How many entries of this epoch have been applied: with Redis' `entries-added` it tells
    /// whether the entries this node needs next were trimmed away, and how far behind it is.
    #[serde(default)]
    pub applied: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_slot_per_cluster() {
        let k = Keys::new("prod");
        assert_eq!(k.jobs(), "rag:{prod}:jobs");
        assert_eq!(k.job("j1"), "rag:{prod}:job:j1");
        assert_eq!(k.blob_refs("ab"), "rag:{prod}:blob:ab:refs");
        assert_ne!(Keys::new("a").index_log(), Keys::new("b").index_log());
    }
}
