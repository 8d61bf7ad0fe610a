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
}

/// One entry of the index log, as stored in the stream's fields.
pub mod log_fields {
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
