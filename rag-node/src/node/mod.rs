//! A node: the components wired together, shared by the HTTP server and the CLI.

mod health;
mod precision;

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use rag_api::{
    ChunkingOptions, JobState, JobStatus, SearchRequest, SearchResponse, Stage, StageTimings,
};
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::cluster::{QueueSettings, Redis, RedisLog, RedisQueue};
use crate::config::Config;
use crate::embed::Embedder;
use crate::index::Index;
use crate::log::{Applied, IndexLog, IndexOp, LocalLog};
use crate::metrics::Metrics;
use crate::queue::{Blob, Cancel, JobQueue, LmdbQueue, QueueError, Recovery};
use crate::records::{DocumentRecord, JobRecord};
use crate::search::{self, SearchError};
use crate::store::Store;
use crate::time::{now_ms, rfc3339};
use crate::worker::Pipeline;

/// One node: every component, owned here. Callers (the HTTP layer, the command line, the
/// benchmarks) use its methods; none of them reaches a component itself.
pub struct Node {
    config: Config,
    auth: crate::auth::Auth,
    /// This node's name in the cluster (and in snapshot manifests).
    node_id: String,
    store: Arc<Store>,
    /// Cluster mode's Redis.
    redis: Option<Arc<Redis>>,
    embedder: Arc<Embedder>,
    index: Arc<Index>,
    queue: Arc<dyn JobQueue>,
    log: Arc<dyn IndexLog>,
    metrics: Arc<Metrics>,
    pipeline: Arc<Pipeline>,
    recovery: Recovery,
    query_cache: Mutex<LruCache<String, Arc<Vec<f32>>>>,
}

/// Why a document could not be deleted.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("{0}")]
    Invalid(String),
    #[error("document {0:?} does not exist")]
    NotFound(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Why a file could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportFailure {
    #[error(transparent)]
    Import(#[from] crate::import::ImportError),
    #[error(transparent)]
    Upload(#[from] UploadError),
}

/// An import request: a path under the node's `import_roots`, and what an upload would carry.
pub struct ImportRequest {
    pub path: String,
    pub document_id: Option<String>,
    pub metadata: std::collections::BTreeMap<String, String>,
    pub chunking: Option<ChunkingOptions>,
    pub language: Option<String>,
}

/// The uploaded bytes: in memory, or streamed to a spool file (fsynced) with their digest.
pub enum UploadContent {
    Bytes(Vec<u8>),
    Spooled {
        path: std::path::PathBuf,
        sha256: String,
        size: u64,
    },
}

impl UploadContent {
    fn size(&self) -> u64 {
        match self {
            UploadContent::Bytes(b) => b.len() as u64,
            UploadContent::Spooled { size, .. } => *size,
        }
    }

    fn sha256(&self) -> String {
        match self {
            UploadContent::Bytes(b) => hex::encode(Sha256::digest(b)),
            UploadContent::Spooled { sha256, .. } => sha256.clone(),
        }
    }
}

/// What an upload asks for.
pub struct UploadRequest {
    pub filename: String,
    pub content: UploadContent,
    pub document_id: Option<String>,
    pub metadata: std::collections::BTreeMap<String, String>,
    pub chunking: Option<ChunkingOptions>,
    /// The document's language (`auto` = detect); stored as the metadata key `language`.
    pub language: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
}

/// Document ids appear in URLs and logs: keep them to a safe alphabet.
pub fn validate_document_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("document_id must be 1 to 128 characters".into());
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        return Err("document_id may contain only letters, digits and - _ . :".into());
    }
    Ok(())
}

impl Node {
    pub fn open(config: Config) -> anyhow::Result<Node> {
        let auth = crate::auth::Auth::load(&config.auth, config.cluster.redis_url.is_some())?;
        let store = Arc::new(Store::open(&config.db_dir(), config.map_size_bytes)?);
        let redis = Redis::from_config(&config.cluster)?.map(Arc::new);
        let precision = precision::resolve(&config, &store, redis.as_deref())?;
        let kernel = precision::kernel(precision)?;
        if kernel == crate::embed::Kernel::Bf16Emulated {
            tracing::warn!(
                "the index's vectors are bf16 and this CPU has no bf16 instructions: bf16 rounding is emulated in software (slower, the same vectors)"
            );
        }
        let embedder = Arc::new(Embedder::load_with_kernel(
            &config.model_dir,
            config.batch_policy(),
            &config.prompts(),
            kernel,
        )?);
        tracing::info!(
            precision = precision.as_str(),
            kernel = kernel.as_str(),
            cpu = %crate::embed::gemm::cpu::describe(),
            "embedding numerics"
        );
        crate::index::record_precision(&store, precision.as_str())?;
        let index = Arc::new(Index::open(
            store.clone(),
            embedder.model_id(),
            embedder.dimensions(),
            config.ann(),
            &config.keyword_settings()?,
        )?);
        // Refused at start rather than at the first upload.
        config.default_language()?;
        let mut redis_handle = None;
        let (queue, log, recovery): (Arc<dyn JobQueue>, Arc<dyn IndexLog>, Recovery) = match &config
            .cluster
            .redis_url
        {
            None => {
                let (queue, recovery) = LmdbQueue::open(
                    store.clone(),
                    &config.data_dir,
                    config.max_queue_depth,
                    config.max_attempts,
                )?;
                let log = Arc::new(LocalLog::new(index.clone()));
                (Arc::new(queue), log, recovery)
            }
            Some(_) => {
                let redis = redis.clone().expect("a URL is set");
                redis_handle = Some(redis.clone());
                let settings = QueueSettings {
                    node_id: config.cluster.node_id(),
                    max_depth: config.max_queue_depth,
                    max_attempts: config.max_attempts,
                    visibility: Duration::from_secs(config.cluster.visibility_timeout_secs.max(1)),
                    retention: Duration::from_secs(config.job_retention_secs),
                };
                let queue = RedisQueue::open(redis.clone(), &config.data_dir, settings)?;
                let log = RedisLog::open(redis, index.clone())?;
                (Arc::new(queue), Arc::new(log), Recovery::default())
            }
        };
        let metrics = Arc::new(Metrics::new());
        let pipeline = Arc::new(Pipeline {
            embedder: embedder.clone(),
            index: index.clone(),
            log: log.clone(),
            metrics: metrics.clone(),
            limits: config.limits(),
            job_timeout: Duration::from_secs(config.job_timeout_secs),
            pool: Arc::new(crate::worker::background_pool(config.worker_nice)?),
            nice: config.worker_nice,
        });
        let cache = NonZeroUsize::new(config.search.query_cache_size.max(1)).expect("max(1)");
        Ok(Node {
            node_id: config.cluster.node_id(),
            config,
            auth,
            store,
            redis: redis_handle,
            embedder,
            index,
            queue,
            log,
            metrics,
            pipeline,
            recovery,
            query_cache: Mutex::new(LruCache::new(cache)),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    pub fn model_id(&self) -> &str {
        self.embedder.model_id()
    }

    /// The index's precision and the kernel this node runs it on.
    pub fn numerics(&self) -> rag_api::EmbeddingNumerics {
        let kernel = self.embedder.kernel();
        rag_api::EmbeddingNumerics {
            precision: kernel.precision().as_str().into(),
            kernel: kernel.as_str().into(),
            emulated: kernel == crate::embed::Kernel::Bf16Emulated,
        }
    }

    pub fn dimensions(&self) -> usize {
        self.embedder.dimensions()
    }

    pub fn stats(&self) -> crate::index::IndexStats {
        self.index.stats()
    }

    pub fn is_cluster(&self) -> bool {
        self.redis.is_some()
    }

    /// Checks a presented credential against what a route needs.
    pub fn authorize(
        &self,
        access: crate::auth::Access,
        presented: Option<&str>,
    ) -> Result<(), crate::auth::Denied> {
        self.auth.check(access, presented)
    }

    /// Starts the node's background work: the worker, the tree builder, the job pruner and, in
    /// a cluster, the registry heartbeats and the control channel. Each ends when `shutdown`
    /// turns true (the worker after finishing or requeueing its job).
    pub fn start(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let mut tasks = vec![
            self.start_worker(shutdown.clone()),
            tokio::spawn(crate::worker::run_ann_builder(
                self.pipeline.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(crate::worker::run_keyword_committer(
                self.index.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(crate::worker::run_job_pruner(
                self.queue.clone(),
                Duration::from_secs(self.config.job_retention_secs),
                shutdown.clone(),
            )),
        ];
        if let Some(redis) = &self.redis {
            let registrant = crate::registry::Registrant {
                node_id: self.node_id.clone(),
                index: self.index.clone(),
                log: self.log.clone(),
                queue: self.queue.clone(),
                trim_interval: Duration::from_secs(self.config.cluster.trim_interval_secs),
                precision: self.embedder.precision().as_str().into(),
                kernel: self.embedder.kernel().as_str().into(),
            };
            tasks.push(tokio::spawn(crate::registry::run(
                Arc::new(registrant),
                redis.clone(),
                shutdown.clone(),
            )));
            let responder = crate::control::Responder {
                node_id: self.node_id.clone(),
                store: self.store.clone(),
                log: self.log.clone(),
            };
            tasks.push(tokio::spawn(crate::control::run(
                Arc::new(responder),
                redis.clone(),
                shutdown,
            )));
        }
        tasks
    }

    /// The worker alone (benchmarks that measure uploads while ingesting).
    pub fn start_worker(&self, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(crate::worker::run(
            self.queue.clone(),
            self.pipeline.clone(),
            shutdown,
        ))
    }

    /// Whether the cluster's index log moved past this node (it must restore a snapshot).
    pub fn log_trimmed_past(&self) -> bool {
        self.log
            .status()
            .and_then(|s| s.error)
            .is_some_and(|e| e.starts_with(crate::cluster::TRIMMED))
    }

    // --- jobs ---

    pub fn job(&self, id: &str) -> Result<Option<JobStatus>, QueueError> {
        Ok(self.queue.get(id)?.map(|j| j.status))
    }

    pub fn jobs(
        &self,
        state: Option<JobState>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<JobStatus>, Option<String>), QueueError> {
        let (jobs, next) = self.queue.list(state, limit, cursor)?;
        Ok((jobs.into_iter().map(|j| j.status).collect(), next))
    }

    pub fn cancel_job(&self, id: &str) -> Result<Cancel, QueueError> {
        self.queue.cancel(id)
    }

    /// Updates on any job, as they happen.
    pub fn job_updates(&self) -> broadcast::Receiver<JobStatus> {
        self.queue.subscribe()
    }

    pub fn queue_depth(&self) -> Result<u64, QueueError> {
        self.queue.depth()
    }

    /// While Redis is known to be unreachable (cluster mode), the error calls fail with.
    pub fn redis_known_down(&self) -> Option<String> {
        self.redis.as_ref().and_then(|r| r.known_down())
    }

    /// A new, unused path where an upload may be streamed before [`Node::upload`] (on the
    /// queue's file system, so queueing it is a rename).
    pub fn spool_path(&self) -> std::path::PathBuf {
        self.queue
            .spool_dir()
            .join(format!(".spool-{}", uuid::Uuid::now_v7()))
    }

    /// Whether a spooled upload must be fsynced (it is the durable copy).
    pub fn spool_is_durable_copy(&self) -> bool {
        self.queue.spool_is_durable_copy()
    }

    /// Reads a file from under the node's `import_roots` and queues it like an upload.
    pub fn import(&self, req: ImportRequest) -> Result<JobRecord, ImportFailure> {
        let file = crate::import::read(
            &self.config.import_roots,
            &req.path,
            self.config.max_upload_bytes,
        )?;
        Ok(self.upload(UploadRequest {
            filename: file.filename,
            content: UploadContent::Bytes(file.bytes),
            document_id: req.document_id,
            metadata: req.metadata,
            chunking: req.chunking,
            language: req.language,
        })?)
    }

    // --- documents ---

    pub fn documents(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<(Vec<DocumentRecord>, Option<String>)> {
        self.index.documents(cursor, limit)
    }

    pub fn document(&self, id: &str) -> anyhow::Result<Option<DocumentRecord>> {
        self.index.document(id)
    }

    /// Deletes a document everywhere (through the index log in a cluster); returns how many
    /// chunks went. Only real deletes reach the log: an id that cannot exist, or a document
    /// this node does not hold, is answered here (in a cluster every node would otherwise
    /// apply, store and replicate an entry that changes nothing).
    pub fn delete_document(&self, id: &str) -> Result<u32, DeleteError> {
        validate_document_id(id).map_err(DeleteError::Invalid)?;
        if self.index.document(id)?.is_none() {
            return Err(DeleteError::NotFound(id.to_owned()));
        }
        match self.log.submit(IndexOp::Delete {
            document_id: id.to_owned(),
        })? {
            Applied::Deleted(Some(n)) => Ok(n),
            _ => Err(DeleteError::NotFound(id.to_owned())),
        }
    }

    // --- embeddings and metrics ---

    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, crate::embed::EmbedError> {
        self.embedder.embed(texts)
    }

    /// The Prometheus exposition, with the gauges read fresh.
    pub fn metrics_text(&self) -> String {
        if let Ok(d) = self.queue.depth() {
            self.metrics.queue_size.set(d as i64);
        }
        let s = self.index.stats();
        self.metrics.index_vectors.set(s.vectors as i64);
        self.metrics.index_bytes.set(s.bytes as i64);
        let k = self.index.keyword_status();
        self.metrics.keyword_index_bytes.set(k.bytes as i64);
        self.metrics.keyword_index_chunks.set(k.chunks as i64);
        if let Some(log) = self.log.status() {
            self.metrics.log_lag_ms.set(log.lag_ms as i64);
        }
        self.metrics.encode()
    }

    /// Embeds a query, or returns the cached vector of an identical one (identical in normal
    /// form C, the form of every indexed text).
    pub fn embed_query(&self, query: &str) -> anyhow::Result<Arc<Vec<f32>>> {
        let query = &*crate::unicode::nfc(query);
        if let Some(v) = self
            .query_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(query)
        {
            self.metrics.query_cache_hits.inc();
            return Ok(v.clone());
        }
        let v = Arc::new(self.embedder.embed_query(query)?);
        self.query_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(query.to_owned(), v.clone());
        Ok(v)
    }

    pub fn search(&self, req: &SearchRequest) -> Result<SearchResponse, SearchError> {
        let started = Instant::now();
        search::validate(req)?;
        let q = self.embed_query(&req.query)?;
        // The keyword index analyses text in NFC, like every indexed text.
        let mut req = req.clone();
        req.query = crate::unicode::nfc(&req.query).into_owned();
        let defaults = self
            .search_defaults()
            .for_query(self.embedder.vocabulary_coverage(&req.query));
        let out = search::search(&self.index, &q, &req, &defaults)?;
        let took = started.elapsed();
        self.metrics.search_duration.observe(took.as_secs_f64());
        if let Some(k) = out.keyword_seconds {
            self.metrics.keyword_query_duration.observe(k);
        }
        self.metrics
            .searches
            .get_or_create(&crate::metrics::ModeLabels {
                mode: out.mode.as_str().into(),
            })
            .inc();
        Ok(SearchResponse {
            hits: out.hits,
            took_ms: (took.as_secs_f64() * 1e5).round() / 100.0,
            strategy: out.strategy.as_str().into(),
            candidates: out.candidates,
            mode: out.mode,
            fusion: out.fusion,
            alpha: out.alpha,
        })
    }

    /// What requests that name no mode, fusion or alpha get (`[search]` in the config).
    pub fn search_defaults(&self) -> search::SearchDefaults {
        search_defaults(&self.config)
    }

    /// Validates an upload and builds its job (not yet queued).
    pub fn new_job(&self, up: &UploadRequest) -> Result<JobRecord, UploadError> {
        if up.content.size() > self.config.max_upload_bytes {
            return Err(UploadError::Invalid(format!(
                "file exceeds {} bytes",
                self.config.max_upload_bytes
            )));
        }
        let sha = up.content.sha256();
        // Identical bytes get the same id by default, so re-uploading a file is recognised.
        let document_id = up
            .document_id
            .clone()
            .unwrap_or_else(|| format!("doc-{}", &sha[..24]));
        validate_document_id(&document_id).map_err(UploadError::Invalid)?;
        let chunking = up.chunking.unwrap_or(self.config.chunking);
        crate::chunk::validate(&chunking, self.embedder.max_tokens())
            .map_err(UploadError::Invalid)?;
        if up.metadata.len() > 64
            || up
                .metadata
                .iter()
                .any(|(k, v)| k.len() > 256 || v.len() > 4096)
        {
            return Err(UploadError::Invalid(
                "metadata: at most 64 keys, keys ≤ 256 and values ≤ 4096 bytes".into(),
            ));
        }
        let mut metadata = up.metadata.clone();
        if let Some(l) = self.document_language(up)? {
            metadata.insert(
                crate::language::METADATA_KEY.to_owned(),
                l.code().to_owned(),
            );
        }
        let filename = sanitize_filename(&up.filename);
        let now = now_ms();
        Ok(JobRecord {
            status: JobStatus {
                job_id: uuid::Uuid::now_v7().to_string(),
                document_id,
                filename,
                content_type: None,
                size_bytes: up.content.size(),
                sha256: sha,
                state: JobState::Queued,
                stage: Stage::Queued,
                percent: 0,
                attempts: 0,
                created_at: rfc3339(now),
                started_at: None,
                finished_at: None,
                timings: StageTimings::default(),
                pages: None,
                chunks: None,
                chunks_embedded: None,
                duplicate: false,
                message: Some("queued for processing".into()),
                error: None,
                metadata,
                chunking,
            },
            created_ms: now,
            started_ms: None,
        })
    }

    /// The language an upload gives its document: the `language` field (`auto`: none, detect),
    /// else a `language` already in its metadata, else the node's default. It goes into
    /// the metadata, which the index log carries, so every node analyses it alike.
    fn document_language(
        &self,
        up: &UploadRequest,
    ) -> Result<Option<crate::language::Language>, UploadError> {
        use crate::language::{Language, METADATA_KEY};
        match up.language.as_deref().map(str::trim) {
            Some("auto") => return Ok(None),
            Some(s) if !s.is_empty() => {
                return Language::parse(s).map(Some).ok_or_else(|| {
                    UploadError::Invalid(format!("language: {}", crate::language::unknown(s)))
                })
            }
            _ => {}
        }
        // Metadata is the client's own: a `language` value that names no analyzer (free text
        // from before this field existed) is left alone, and the document is detected.
        if let Some(l) = up.metadata.get(METADATA_KEY) {
            return Ok(Language::parse(l));
        }
        self.config
            .default_language()
            .map_err(|e| UploadError::Invalid(e.to_string()))
    }

    /// Uploads a local file and runs the queue to completion on this thread (offline `ingest`
    /// and benchmarks); returns the file's final job status.
    pub fn ingest_file(
        &self,
        path: &std::path::Path,
        metadata: std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<JobStatus> {
        let bytes =
            std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let filename = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let job = self.upload(UploadRequest {
            filename,
            content: UploadContent::Bytes(bytes),
            document_id: None,
            metadata,
            chunking: None,
            language: None,
        })?;
        // Also runs anything left queued by an earlier run, in order.
        let cancel = std::sync::atomic::AtomicBool::new(false);
        while let Some((claimed, data)) = self.queue.claim()? {
            self.pipeline
                .run_job(self.queue.as_ref(), claimed, data, &cancel);
        }
        self.queue
            .get(&job.status.job_id)?
            .map(|j| j.status)
            .ok_or_else(|| anyhow::anyhow!("job {} vanished", job.status.job_id))
    }

    /// Validates, stores durably and queues an upload.
    pub fn upload(&self, up: UploadRequest) -> Result<JobRecord, UploadError> {
        let job = match self.new_job(&up) {
            Ok(j) => j,
            Err(e) => {
                if let UploadContent::Spooled { path, .. } = &up.content {
                    let _ = std::fs::remove_file(path);
                }
                return Err(e);
            }
        };
        let blob = match up.content {
            UploadContent::Bytes(b) => Blob::Bytes(b),
            UploadContent::Spooled { path, .. } => Blob::Spooled(path),
        };
        self.queue.enqueue(job.clone(), blob)?;
        Ok(job)
    }
}

/// The search defaults `[search]` in `config` sets, with its numbers kept in range.
pub fn search_defaults(config: &Config) -> search::SearchDefaults {
    let s = &config.search;
    search::SearchDefaults {
        mode: s.default_mode,
        fusion: s.fusion,
        alpha: s.alpha.clamp(0.0, 1.0),
        known_words_alpha: s.known_words_alpha.clamp(0.0, 1.0),
        known_words_coverage: s.known_words_coverage.clamp(0.0, 1.0),
        rrf_k: s.rrf_k.max(1.0),
        hybrid_depth: s.hybrid_depth.clamp(1, 1000),
    }
}

fn sanitize_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = base.chars().filter(|c| !c.is_control()).take(255).collect();
    if clean.trim().is_empty() {
        "upload".into()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_ids_and_filenames_are_sanitised() {
        assert!(validate_document_id("report-2026_q1.v2:final").is_ok());
        assert!(validate_document_id("../etc/passwd").is_err());
        assert!(validate_document_id("").is_err());
        assert_eq!(sanitize_filename("C:\\Users\\x\\report.pdf"), "report.pdf");
        assert_eq!(sanitize_filename("/tmp/a\nb.txt"), "ab.txt");
        assert_eq!(sanitize_filename(""), "upload");
    }
}
