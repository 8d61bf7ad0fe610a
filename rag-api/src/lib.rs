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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChunkingOptions {
    /// Tokens of a chunk: more than 10, at most the model's window (256 for the default
    /// all-MiniLM-L6-v2).
    #[cfg_attr(feature = "openapi", schema(minimum = 11, example = 256))]
    pub max_tokens: usize,
    /// Tokens shared by neighbouring chunks: at most half of `max_tokens`.
    #[cfg_attr(feature = "openapi", schema(example = 32))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UploadResponse {
    #[cfg_attr(
        feature = "openapi",
        schema(example = "0194f1c2-7a3e-7c41-9d2a-3b5e8f0a1c2d")
    )]
    pub job_id: String,
    /// The id given in the form, or `doc-` and the first 24 hex digits of the file's sha256.
    #[cfg_attr(feature = "openapi", schema(example = "doc-5d41402abc4b2a76b9719d91"))]
    pub document_id: String,
    /// Always `queued`: the job is stored, processing has not begun.
    pub status: JobState,
    pub message: String,
}

/// Milliseconds spent in each stage of a job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// Stable, machine-readable (e.g. `invalid_request`, `not_found`, `payload_too_large`).
    #[cfg_attr(feature = "openapi", schema(example = "not_found"))]
    pub code: String,
    /// For people; its wording may change.
    pub message: String,
}

/// Everything known about one job. Also the payload of job events (SSE and WebSocket).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobStatus {
    pub job_id: String,
    pub document_id: String,
    pub filename: String,
    /// The detected format; absent until it is known (and on a file of no format we read).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<openapi::ContentTypeName>))]
    pub content_type: Option<String>,
    pub size_bytes: u64,
    /// Hex SHA-256 of the uploaded bytes.
    pub sha256: String,
    /// The job's state. `"status"` on the wire, the key the original plan's gateway reads (as in the upload
    /// answer); `"state"`, the key of earlier versions, is still read (records stored by them).
    #[serde(rename = "status", alias = "state")]
    pub state: JobState,
    pub stage: Stage,
    /// Progress through all stages (embedding is 15–90).
    #[cfg_attr(feature = "openapi", schema(maximum = 100))]
    pub percent: u8,
    /// Times processing started (a node stopped mid-job counts one).
    pub attempts: u32,
    /// RFC 3339, UTC.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
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
    /// Why a `failed` job failed (`code`: `unsupported_format`, `no_text`, `timeout`,
    /// `cancelled`, …; see docs/api.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// The upload's `metadata` field.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The chunking the job uses (the node's defaults unless the upload set it).
    pub chunking: ChunkingOptions,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobList {
    pub jobs: Vec<JobStatus>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Where a chunk came from inside its document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SearchFilter {
    /// Only these documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_ids: Option<Vec<String>>,
    /// Only documents of these formats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<openapi::ContentTypeName>>))]
    pub content_types: Option<Vec<String>>,
    /// Only documents whose metadata has every one of these key/value pairs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// RFC 3339 timestamp; documents indexed at or after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub created_after: Option<String>,
    /// RFC 3339 timestamp; documents indexed before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// What to look for, in natural language: not empty, at most 16 KiB (of UTF-8).
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 16384,
            example = "quarterly revenue by region"
        )
    )]
    pub query: String,
    /// How many hits at most.
    #[serde(default = "default_k")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100, default = default_k))]
    pub k: usize,
    #[serde(default)]
    pub filter: SearchFilter,
    /// Hits scoring below this are left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<f32>,
    /// Return each hit's chunk text.
    #[serde(default = "default_true")]
    #[cfg_attr(feature = "openapi", schema(default = default_true))]
    pub include_text: bool,
    /// At most this many hits from one document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub per_document_limit: Option<usize>,
    /// 0 = pure relevance; towards 1 = prefer hits unlike the ones already chosen (MMR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1))]
    pub diversity: Option<f32>,
    /// How hits are found; default: the node's `search.default_mode` (`hybrid` unless
    /// configured otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<SearchMode>,
    /// How `hybrid` combines the two rankings; default: the node's `search.fusion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion: Option<Fusion>,
    /// Weight of the dense ranking in `weighted` fusion (the keyword ranking gets 1 − alpha);
    /// default: the node's `search.alpha`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1))]
    pub alpha: Option<f32>,
    /// Return each hit's rank and score in the dense and the keyword ranking.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub explain: bool,
}

/// How a search finds its hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// Both rankings, fused.
    Hybrid,
    /// Cosine similarity of the query's embedding.
    Dense,
    /// BM25 over the keyword index (language-aware words, identifiers, quoted phrases).
    Keyword,
}

impl SearchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SearchMode::Hybrid => "hybrid",
            SearchMode::Dense => "dense",
            SearchMode::Keyword => "keyword",
        }
    }

    pub fn parse(s: &str) -> Option<SearchMode> {
        match s {
            "hybrid" => Some(SearchMode::Hybrid),
            "dense" => Some(SearchMode::Dense),
            "keyword" => Some(SearchMode::Keyword),
            _ => None,
        }
    }
}

/// How `hybrid` mode fuses the dense and the keyword ranking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Fusion {
    /// Reciprocal rank fusion: Σ 1 / (60 + rank).
    Rrf,
    /// alpha × dense score + (1 − alpha) × keyword score, each min-max normalised per query.
    Weighted,
}

impl Fusion {
    pub fn as_str(self) -> &'static str {
        match self {
            Fusion::Rrf => "rrf",
            Fusion::Weighted => "weighted",
        }
    }
}

/// Where a hit stands in each ranking (`explain: true`); a ranking that did not return the
/// hit has no rank or score for it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HitExplanation {
    /// 1-based rank in the dense ranking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense_rank: Option<u32>,
    /// Cosine similarity (the dense ranking's score).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense_score: Option<f32>,
    /// 1-based rank in the keyword ranking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword_rank: Option<u32>,
    /// BM25 score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword_score: Option<f32>,
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
            mode: None,
            fusion: None,
            alpha: None,
            explain: false,
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SearchHit {
    /// Cosine similarity between the query and the chunk, in [-1, 1], in every mode
    /// (`min_score` applies to it).
    pub score: f32,
    /// The score hits are ordered by: the cosine in `dense` mode, BM25 in `keyword`, the fused
    /// score in `hybrid`.
    pub relevance: f32,
    /// With `explain: true`: the hit's place in each ranking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explain: Option<HitExplanation>,
    pub document_id: String,
    /// Position of the chunk in its document, from 0.
    pub chunk_index: u32,
    /// The chunk's text (unless the request said `include_text: false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub location: SourceLocation,
    pub filename: String,
    #[cfg_attr(feature = "openapi", schema(value_type = openapi::ContentTypeName))]
    pub content_type: String,
    /// The document's metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SearchResponse {
    /// Best first.
    pub hits: Vec<SearchHit>,
    pub took_ms: f64,
    /// How the dense ranking was made: `exact` (scan of the candidate vectors) or `ann`
    /// (arroy, then exact re-scoring); `keyword` in keyword mode (no dense ranking).
    #[cfg_attr(feature = "openapi", schema(value_type = openapi::SearchStrategy))]
    pub strategy: String,
    /// The mode the search ran in.
    pub mode: SearchMode,
    /// The fusion of a `hybrid` search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion: Option<Fusion>,
    /// The dense ranking's weight in a `weighted` fusion: the request's `alpha`, else the
    /// node's default for the query (more weight on dense when the model's vocabulary holds
    /// most of the query's words).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f32>,
    /// How many chunks passed the filter and were eligible.
    pub candidates: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DocumentInfo {
    pub document_id: String,
    pub filename: String,
    #[cfg_attr(feature = "openapi", schema(value_type = openapi::ContentTypeName))]
    pub content_type: String,
    /// Hex SHA-256 of the document's bytes.
    pub sha256: String,
    pub size_bytes: u64,
    /// Pages (PDF), sheets (spreadsheets) or 1.
    pub pages: u32,
    pub chunks: u32,
    pub metadata: BTreeMap<String, String>,
    /// When the document was first indexed (RFC 3339, UTC).
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub created_at: String,
    /// When it was last replaced (RFC 3339, UTC).
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub updated_at: String,
    /// The job that indexed this version.
    pub job_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DocumentList {
    pub documents: Vec<DocumentInfo>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeleteResponse {
    pub document_id: String,
    pub deleted: bool,
    pub chunks_removed: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    /// 1 to 256 texts.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 256))]
    pub texts: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EmbedResponse {
    /// The model and its revision.
    #[cfg_attr(feature = "openapi", schema(example = "all-MiniLM-L6-v2@53aa51172d14"))]
    pub model: String,
    #[cfg_attr(feature = "openapi", schema(example = 384))]
    pub dimensions: usize,
    /// Unit vectors, in the order of the texts.
    pub embeddings: Vec<Vec<f32>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthCheck {
    pub name: String,
    pub ok: bool,
    pub message: String,
    pub took_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthReport {
    /// `ok` when every check passed, `degraded` otherwise.
    #[cfg_attr(feature = "openapi", schema(value_type = openapi::HealthStatus))]
    pub status: String,
    pub version: String,
    pub model: String,
    pub dimensions: usize,
    pub documents: u64,
    pub chunks: u64,
    pub queue_depth: u64,
    /// Document changes applied to the vectors and not yet committed to the keyword index:
    /// while documents are ingested back to back, keyword searches see them up to
    /// `[keyword] commit_interval_ms` later.
    #[serde(default)]
    pub keyword_uncommitted: u64,
    /// How this node computes vectors: the index's precision and the code that runs it.
    #[serde(default)]
    pub embedding: EmbeddingNumerics,
    pub checks: Vec<HealthCheck>,
}

/// The numerics of a node's embeddings (`/api/v1/health`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EmbeddingNumerics {
    /// `fp32` or `bf16`: fixed when the index was created, the same on every node of a cluster.
    pub precision: String,
    /// What runs the GEMMs here: `amx`, `avx512_bf16` or `emulated` (bf16 rounding in software
    /// on a CPU without bf16 instructions: slower, same vectors) for bf16; `avx512` or
    /// `portable` for fp32.
    pub kernel: String,
    /// bf16 was asked for, or is the index's, but this CPU has no bf16 instructions.
    pub emulated: bool,
}

/// Names the wire types carry as plain strings, described for the OpenAPI document.
#[cfg(feature = "openapi")]
pub mod openapi {
    /// A document format, as `content_type` of documents, jobs and hits and in search filters.
    #[derive(utoipa::ToSchema)]
    #[schema(rename_all = "lowercase")]
    pub enum ContentTypeName {
        Pdf,
        Docx,
        Xlsx,
        Xls,
        Ods,
        Text,
        Markdown,
        Csv,
        Html,
    }

    /// How a search found its hits.
    #[derive(utoipa::ToSchema)]
    #[schema(rename_all = "lowercase")]
    pub enum SearchStrategy {
        Exact,
        Ann,
        Keyword,
    }

    /// The verdict of a health report.
    #[derive(utoipa::ToSchema)]
    #[schema(rename_all = "lowercase")]
    pub enum HealthStatus {
        Ok,
        Degraded,
    }
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
