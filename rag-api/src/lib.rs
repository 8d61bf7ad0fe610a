//! Wire types of the rag-node HTTP API: what clients, the CLI, the operator and the tests exchange
//! with a node. Only data lives here (serde types and constants), no I/O, so every consumer can
//! depend on it without pulling in the node's heavy dependency tree.

pub mod cluster;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Prefix of every versioned route.
pub const API_PREFIX: &str = "/api/v1";

/// Lifecycle of an ingest job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Processing,
    Completed,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Processing => "processing",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Completed | JobState::Failed)
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "queued" => JobState::Queued,
            "processing" => JobState::Processing,
            "completed" => JobState::Completed,
            "failed" => JobState::Failed,
            _ => return None,
        })
    }
}

/// The stage a job is in; `percent` in [`JobStatus`] is the progress through all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Queued,
    Extracting,
    Chunking,
    Embedding,
    Indexing,
    Done,
}

/// Chunking parameters, in model tokens (special tokens included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkingOptions {
    pub max_tokens: usize,
    pub overlap_tokens: usize,
}

impl Default for ChunkingOptions {
    fn default() -> Self {
        ChunkingOptions {
            max_tokens: 256,
            overlap_tokens: 32,
        }
    }
}

/// Reply to an upload: the job exists and its bytes are durable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadResponse {
    pub job_id: String,
    pub document_id: String,
    pub status: JobState,
    pub message: String,
}

/// Milliseconds spent in each stage of a job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageTimings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extract_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embed_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
}

/// A machine-readable error: `code` is stable, `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// Everything known about one job. Also the payload of job events (SSE and WebSocket).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    pub job_id: String,
    pub document_id: String,
    pub filename: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    pub size_bytes: u64,
    pub sha256: String,
    /// `"status"` on the wire, the key the original plan's gateway reads (as in the upload
    /// answer); `"state"`, the key of earlier versions, is still read (records stored by them).
    #[serde(rename = "status", alias = "state")]
    pub state: JobState,
    pub stage: Stage,
    pub percent: u8,
    pub attempts: u32,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub timings: StageTimings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pages: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u32>,
    /// Chunks whose embedding was computed by this job (the rest were reused by text hash).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks_embedded: Option<u32>,
    /// True when identical bytes were already indexed and the job did no work.
    #[serde(default)]
    pub duplicate: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub chunking: ChunkingOptions,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<JobStatus>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Where a chunk came from inside its document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceLocation {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sheet: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row_start: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row_end: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heading_path: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// RFC 3339 timestamp; documents indexed at or after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_after: Option<String>,
    /// RFC 3339 timestamp; documents indexed before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_before: Option<String>,
}

impl SearchFilter {
    pub fn is_empty(&self) -> bool {
        self.document_ids.is_none()
            && self.content_types.is_none()
            && self.metadata.is_empty()
            && self.created_after.is_none()
            && self.created_before.is_none()
    }
}

pub const DEFAULT_K: usize = 10;
pub const MAX_K: usize = 100;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    pub query: String,
    #[serde(default = "default_k")]
    pub k: usize,
    #[serde(default)]
    pub filter: SearchFilter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<f32>,
    #[serde(default = "default_true")]
    pub include_text: bool,
    /// At most this many hits from one document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_document_limit: Option<usize>,
    /// 0 = pure relevance; towards 1 = prefer hits unlike the ones already chosen (MMR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diversity: Option<f32>,
}

impl SearchRequest {
    pub fn new(query: impl Into<String>) -> Self {
        SearchRequest {
            query: query.into(),
            k: DEFAULT_K,
            filter: SearchFilter::default(),
            min_score: None,
            include_text: true,
            per_document_limit: None,
            diversity: None,
        }
    }
}

fn default_k() -> usize {
    DEFAULT_K
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchHit {
    /// Cosine similarity between the query and the chunk, in [-1, 1].
    pub score: f32,
    pub document_id: String,
    pub chunk_index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub location: SourceLocation,
    pub filename: String,
    pub content_type: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchResponse {
    pub hits: Vec<SearchHit>,
    pub took_ms: f64,
    /// `exact` (scan of the candidate vectors) or `ann` (arroy, then exact re-scoring).
    pub strategy: String,
    /// How many chunks passed the filter and were eligible.
    pub candidates: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocumentInfo {
    pub document_id: String,
    pub filename: String,
    pub content_type: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub pages: u32,
    pub chunks: u32,
    pub metadata: BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: String,
    pub job_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocumentList {
    pub documents: Vec<DocumentInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteResponse {
    pub document_id: String,
    pub deleted: bool,
    pub chunks_removed: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    pub texts: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbedResponse {
    pub model: String,
    pub dimensions: usize,
    pub embeddings: Vec<Vec<f32>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthCheck {
    pub name: String,
    pub ok: bool,
    pub message: String,
    pub took_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthReport {
    /// `ok` when every check passed, `degraded` otherwise.
    pub status: String,
    pub version: String,
    pub model: String,
    pub dimensions: usize,
    pub documents: u64,
    pub chunks: u64,
    pub queue_depth: u64,
    pub checks: Vec<HealthCheck>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_json_says_status_and_still_reads_state() {
        let old = r#"{"job_id": "j", "document_id": "d", "filename": "f", "size_bytes": 1,
            "sha256": "ab", "state": "queued", "stage": "queued", "percent": 0, "attempts": 0,
            "created_at": "t", "timings": {}, "chunking": {"max_tokens": 256, "overlap_tokens": 32}}"#;
        let job: JobStatus = serde_json::from_str(old).unwrap();
        assert_eq!(job.state, JobState::Queued);
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!(v["status"], "queued");
        assert!(v.get("state").is_none());
        let again: JobStatus = serde_json::from_value(v).unwrap();
        assert_eq!(again.state, JobState::Queued);
    }

    #[test]
    fn search_request_defaults() {
        let r: SearchRequest = serde_json::from_str(r#"{"query":"x"}"#).unwrap();
        assert_eq!(r.k, DEFAULT_K);
        assert!(r.include_text);
        assert!(r.filter.is_empty());
    }

    #[test]
    fn unknown_search_fields_are_rejected() {
        assert!(serde_json::from_str::<SearchRequest>(r#"{"query":"x","kk":3}"#).is_err());
    }

    #[test]
    fn job_state_round_trips() {
        for s in [
            JobState::Queued,
            JobState::Processing,
            JobState::Completed,
            JobState::Failed,
        ] {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
    }
}
