//! Configuration: defaults < TOML file (`--config`) < `RAGNODE_*` environment < flags.

use std::path::{Path, PathBuf};

use rag_api::ChunkingOptions;
use serde::{Deserialize, Serialize};

use crate::embed::BatchPolicy;
use crate::extract::Limits;
use crate::index::analysis::Analysis;
use crate::index::{AnnSettings, FieldBoosts, KeywordSettings};
use crate::language::{self, Language};
use rag_api::{Fusion, SearchMode};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server listens on.
    pub listen: String,
    /// Where the LMDB environment and pending uploads live.
    pub data_dir: PathBuf,
    /// Directory with model.safetensors, tokenizer.json, config.json.
    pub model_dir: PathBuf,
    /// `text` or `json`.
    pub log_format: String,
    /// A tracing filter, e.g. `info` or `rag_node=debug,info`.
    pub log_level: String,
    pub max_upload_bytes: u64,
    pub max_queue_depth: u64,
    /// Attempts before a job interrupted by crashes is failed.
    pub max_attempts: u32,
    pub job_timeout_secs: u64,
    /// How long finished jobs stay queryable.
    pub job_retention_secs: u64,
    /// Time limit of ordinary API requests (uploads and streams excepted).
    pub request_timeout_secs: u64,
    /// Initial LMDB map size; it grows as needed.
    pub map_size_bytes: usize,
    /// Nice value of the ingest threads (0 = same priority as the HTTP threads).
    pub worker_nice: i32,
    pub chunking: ChunkingOptions,
    pub cluster: ClusterConfig,
    pub auth: crate::auth::AuthConfig,
    /// Snapshot location (directory or `s3://bucket/prefix`) to start from when the node has no
    /// index yet, or when the cluster's log moved past it.
    pub bootstrap_from: Option<String>,
    pub search: SearchConfig,
    pub keyword: KeywordConfig,
    pub embedding: EmbeddingConfig,
    pub limits: Limits,
    /// Directories whose files `POST /api/v1/jobs/import` may ingest (volumes mounted into the
    /// node); empty = importing is off.
    pub import_roots: Vec<PathBuf>,
    pub http: HttpConfig,
}

/// Limits of the HTTP server against slow, stalled or oversized clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Time a client has to send a request's whole head (request line and headers); also how
    /// long an idle keep-alive connection is kept.
    pub header_read_timeout_secs: u64,
    /// An upload that sends no byte for this long is aborted (408) and its spool file removed.
    pub body_idle_timeout_secs: u64,
    /// Largest JSON request body (search, embed, import).
    pub max_json_bytes: usize,
    /// Largest `metadata` form field of an upload (a JSON object).
    pub max_metadata_bytes: usize,
    /// Largest other text form field of an upload (`document_id`, `chunking`, `language`, …).
    pub max_field_bytes: usize,
    /// Bound of `/readyz`: past it the probe answers from the last known state.
    pub probe_timeout_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout_secs: 15,
            body_idle_timeout_secs: 30,
            max_json_bytes: 4 << 20,
            max_metadata_bytes: 64 << 10,
            max_field_bytes: 4 << 10,
            probe_timeout_ms: 500,
        }
    }
}

/// Cluster mode: set `redis_url` to share the job queue and the index log with other nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]`; unset = standalone.
    pub redis_url: Option<String>,
    /// Cluster name: the prefix of every Redis key, so clusters can share one Redis.
    pub name: String,
    /// This node's id in the consumer group and the registry. Default: `$POD_NAME`, then the
    /// host name.
    pub node_id: Option<String>,
    /// A claimed job whose node has not renewed its claim for this long goes to another node.
    pub visibility_timeout_secs: u64,
    /// How often a node tries to trim the index log (below every live node and the newest
    /// snapshot).
    pub trim_interval_secs: u64,
    /// PEM file of the CA that signed Redis' certificate (`rediss://`), instead of the
    /// system's trust store.
    pub redis_ca_file: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: None,
            name: "default".into(),
            node_id: None,
            visibility_timeout_secs: 60,
            trim_interval_secs: 60,
            redis_ca_file: None,
        }
    }
}

impl ClusterConfig {
    pub fn node_id(&self) -> String {
        self.node_id
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()))
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
            })
            .unwrap_or_else(|| "rag-node".into())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// Candidate sets smaller than this are scanned exactly; larger ones use arroy.
    pub exact_below: usize,
    pub n_trees: usize,
    pub search_k_per_result: usize,
    /// Query embeddings kept in the LRU cache.
    pub query_cache_size: usize,
    /// The mode of requests that name none: `hybrid`, `dense` or `keyword`.
    pub default_mode: SearchMode,
    /// How `hybrid` fuses the two rankings unless a request says: `rrf` or `weighted`.
    pub fusion: Fusion,
    /// Weight of the dense ranking in `weighted` fusion, for queries whose words the model's
    /// vocabulary mostly splits (a language it was not trained on).
    pub alpha: f32,
    /// Weight of the dense ranking for queries whose words the model's vocabulary holds:
    /// at least `known_words_coverage` of their words (3+ letters) are single tokens.
    pub known_words_alpha: f32,
    pub known_words_coverage: f32,
    /// The constant k of reciprocal rank fusion, 1 / (k + rank).
    pub rrf_k: f32,
    /// How many hits of each ranking `hybrid` reads before fusing them.
    pub hybrid_depth: usize,
}

/// The keyword index (tantivy) beside the vectors.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeywordConfig {
    /// Languages a chunk's language is detected among (ISO 639-1: pt, en, es, fr, de, it);
    /// the first one is the fallback. Changing the list rebuilds the keyword index at start.
    pub languages: Vec<String>,
    /// The language of uploads that give none (`language` form field); unset = detect.
    pub default_language: Option<String>,
    /// Field weights of keyword queries.
    pub body_boost: f32,
    pub heading_boost: f32,
    pub filename_boost: f32,
    pub identifier_boost: f32,
    /// How late keyword searches may see a document while documents are ingested back to
    /// back: their keyword changes are committed together at most this often (a commit costs
    /// a fixed few milliseconds). A job that leaves the queue empty is committed before it is
    /// reported finished. 0 commits every document on its own.
    pub commit_interval_ms: u64,
}

impl Default for KeywordConfig {
    fn default() -> Self {
        let b = FieldBoosts::default();
        KeywordConfig {
            languages: KeywordSettings::default()
                .languages
                .iter()
                .map(|l| l.code().to_owned())
                .collect(),
            default_language: None,
            body_boost: b.body,
            heading_boost: b.heading,
            filename_boost: b.filename,
            identifier_boost: b.identifier,
            commit_interval_ms: crate::index::keyword::DEFAULT_COMMIT_INTERVAL.as_millis() as u64,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddingConfig {
    pub batch_size: usize,
    /// Upper bound of texts × padded length in one batch.
    pub batch_tokens: usize,
    /// Put before every query and every passage; unset = the model directory's prompts
    /// (`config_sentence_transformers.json`), if any. E5-style models want `"query: "` and
    /// `"passage: "`. Part of the model id: changing them needs a new index.
    pub query_prefix: Option<String>,
    pub passage_prefix: Option<String>,
    /// `fp32`, `bf16` or `auto`: the precision of the GEMMs, fixed when the index is created.
    pub precision: crate::embed::gemm::PrecisionChoice,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("rag-data"),
            model_dir: crate::embed::default_model_dir(),
            log_format: "text".into(),
            log_level: "info".into(),
            max_upload_bytes: 100 << 20,
            max_queue_depth: 10_000,
            max_attempts: 3,
            job_timeout_secs: 600,
            job_retention_secs: 7 * 24 * 3600,
            request_timeout_secs: 30,
            map_size_bytes: 16 << 30,
            worker_nice: 10,
            chunking: ChunkingOptions::default(),
            cluster: ClusterConfig::default(),
            auth: Default::default(),
            bootstrap_from: None,
            search: SearchConfig::default(),
            keyword: KeywordConfig::default(),
            embedding: EmbeddingConfig::default(),
            limits: Limits::default(),
            import_roots: Vec::new(),
            http: HttpConfig::default(),
        }
    }
}

impl Default for SearchConfig {
    fn default() -> Self {
        let a = AnnSettings::default();
        SearchConfig {
            exact_below: a.exact_below,
            n_trees: a.n_trees,
            search_k_per_result: a.search_k_per_result,
            query_cache_size: 1024,
            // The defaults of `search::SearchDefaults`, which `Node` builds from these.
            default_mode: SearchMode::Hybrid,
            fusion: Fusion::Weighted,
            alpha: 0.4,
            known_words_alpha: 0.6,
            known_words_coverage: 0.6,
            rrf_k: 60.0,
            hybrid_depth: 100,
        }
    }
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        let b = BatchPolicy::default();
        EmbeddingConfig {
            batch_size: b.max_batch,
            batch_tokens: b.token_budget,
            query_prefix: None,
            passage_prefix: None,
            precision: Default::default(),
        }
    }
}

impl Config {
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        match path {
            None => Ok(Config::default()),
            Some(p) => {
                let raw = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?;
                toml::from_str(&raw).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
            }
        }
    }

    pub fn ann(&self) -> AnnSettings {
        AnnSettings {
            exact_below: self.search.exact_below,
            n_trees: self.search.n_trees,
            search_k_per_result: self.search.search_k_per_result,
        }
    }

    /// The keyword index's settings; an unknown language is a configuration error.
    pub fn keyword_settings(&self) -> anyhow::Result<KeywordSettings> {
        let languages = language::parse_list(&self.keyword.languages)
            .map_err(|e| anyhow::anyhow!("keyword.languages: {e}"))?;
        Ok(KeywordSettings {
            languages,
            analysis: Analysis::Stemmed,
            boosts: FieldBoosts {
                body: self.keyword.body_boost,
                heading: self.keyword.heading_boost,
                filename: self.keyword.filename_boost,
                identifier: self.keyword.identifier_boost,
            },
            commit_interval: std::time::Duration::from_millis(self.keyword.commit_interval_ms),
        })
    }

    /// The language given to uploads that name none.
    pub fn default_language(&self) -> anyhow::Result<Option<Language>> {
        match &self.keyword.default_language {
            None => Ok(None),
            Some(s) if s.trim().is_empty() || s == "auto" => Ok(None),
            Some(s) => Language::parse(s).map(Some).ok_or_else(|| {
                anyhow::anyhow!("keyword.default_language: {}", language::unknown(s))
            }),
        }
    }

    pub fn batch_policy(&self) -> BatchPolicy {
        BatchPolicy {
            max_batch: self.embedding.batch_size.max(1),
            token_budget: self.embedding.batch_tokens.max(256),
        }
    }

    pub fn prompts(&self) -> crate::embed::Prompts {
        crate::embed::Prompts {
            query_prefix: self.embedding.query_prefix.clone(),
            passage_prefix: self.embedding.passage_prefix.clone(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn db_dir(&self) -> PathBuf {
        self.data_dir.join("db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_unknown_keys_fail() {
        let c: Config = toml::from_str("listen = \"0.0.0.0:9000\"\n[chunking]\nmax_tokens = 128\noverlap_tokens = 16\n[search]\nexact_below = 10\n").unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.chunking.max_tokens, 128);
        assert_eq!(c.search.exact_below, 10);
        assert_eq!(c.max_upload_bytes, 100 << 20);
        assert!(toml::from_str::<Config>("listne = \"x\"").is_err());
    }
}
