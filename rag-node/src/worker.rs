//! The sequential worker: one job at a time per node, from claim to index.
//!
//! `extract → chunk → embed (reusing vectors of unchanged chunks) → submit to the index log`.
//! Every failure is the job's own: it ends `failed` with a code and a message and the loop goes
//! on. Extraction runs on its own thread under the job's deadline, so an extractor stuck in a
//! loop fails the job instead of stalling the node (the stuck thread is abandoned).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rag_api::{JobState, Stage};
use tokio::sync::watch;

use crate::chunk::{self, Chunk};
use crate::embed::Embedder;
use crate::extract::{self, Extracted, Limits};
use crate::index::{text_hash, DocumentUpsert, Index, NewChunk};
use crate::log::{Applied, IndexLog, IndexOp};
use crate::metrics::Metrics;
use crate::queue::JobQueue;
use crate::records::{DocumentRecord, JobRecord};
use crate::time::now_ms;

pub struct Pipeline {
    pub embedder: Arc<Embedder>,
    pub index: Arc<Index>,
    pub log: Arc<dyn IndexLog>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub job_timeout: Duration,
    /// Threads of the ingest work (embedding, extraction, arroy builds), at a lower CPU priority
    /// than the HTTP threads: on a busy node uploads and searches are answered first and
    /// ingestion takes what is left (see [`background_pool`]).
    pub pool: Arc<rayon::ThreadPool>,
    pub nice: i32,
}

/// A rayon pool whose threads run at `nice` (Linux scheduling priority is per thread). Work run
/// through `install` (candle's GEMM and our kernels use the current pool) stays on it.
pub fn background_pool(nice: i32) -> anyhow::Result<rayon::ThreadPool> {
    Ok(rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("ingest-{i}"))
        .start_handler(move |_| lower_thread_priority(nice))
        .build()?)
}

/// Sets the calling thread's nice value (it can only be raised without privileges, which is
/// all this needs). A failure only costs responsiveness, so it is logged and ignored.
pub fn lower_thread_priority(nice: i32) {
    if nice <= 0 {
        return;
    }
    // SAFETY: plain syscalls on the calling thread's own id.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the thread's priority");
    }
}

/// Why a job stopped without a result of its own.
#[derive(Debug)]
enum Stop {
    Failed {
        code: &'static str,
        message: String,
    },
    /// Shutdown: the job goes back to the queue, not counted as an attempt.
    Interrupted,
}

fn failed(code: &'static str, message: impl Into<String>) -> Stop {
    Stop::Failed {
        code,
        message: message.into(),
    }
}

/// What happened to a job, for callers that drive the pipeline directly (the `ingest` command).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Finished(JobState),
    Requeued,
}

impl Pipeline {
    /// Runs one claimed job to its end and records the result in `queue`.
    pub fn run_job(
        &self,
        queue: &dyn JobQueue,
        mut job: JobRecord,
        bytes: Vec<u8>,
        cancel: &AtomicBool,
    ) -> Outcome {
        let started = Instant::now();
        let span = tracing::info_span!("job", job_id = %job.status.job_id, document_id = %job.status.document_id, filename = %job.status.filename);
        let _enter = span.enter();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.pool
                .install(|| self.process(queue, &mut job, &bytes, cancel))
        }));
        let result = result.unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(failed(
                "internal_error",
                format!("the worker crashed on this job: {msg}"),
            ))
        });
        let content_type = job
            .status
            .content_type
            .clone()
            .unwrap_or_else(|| "unknown".into());
        match result {
            Ok(()) => {
                job.status.state = JobState::Completed;
                job.status.stage = Stage::Done;
                job.status.percent = 100;
                job.finish_times();
                tracing::info!(
                    chunks = job.status.chunks, embedded = job.status.chunks_embedded, duplicate = job.status.duplicate,
                    timings = ?job.status.timings, "job completed"
                );
                self.metrics.job_finished(
                    &content_type,
                    "completed",
                    started.elapsed().as_secs_f64(),
                );
            }
            Err(Stop::Failed { code, message }) => {
                tracing::warn!(code, %message, "job failed");
                job.fail(code, message);
                self.metrics
                    .job_finished(&content_type, "failed", started.elapsed().as_secs_f64());
            }
            Err(Stop::Interrupted) => {
                tracing::info!("job interrupted by shutdown; requeued");
                job.status.attempts = job.status.attempts.saturating_sub(1);
                if let Err(e) = queue.requeue(&job) {
                    tracing::error!(error = %e, "could not requeue the interrupted job; it is recovered at next start");
                }
                return Outcome::Requeued;
            }
        }
        // The keyword index commits the changes of jobs run back to back together (see
        // `KeywordCommit::Grouped`); a job that leaves nothing waiting is searchable in every
        // mode when it is reported finished.
        if queue.depth().map_or(true, |waiting| waiting == 0) {
            self.index.commit_keyword();
        }
        if let Err(e) = queue.finish(&job) {
            tracing::error!(error = %e, "could not record the job's result");
        }
        Outcome::Finished(job.status.state)
    }

    fn progress(&self, queue: &dyn JobQueue, job: &mut JobRecord, stage: Stage, percent: u8) {
        job.status.stage = stage;
        job.status.percent = percent;
        if let Err(e) = queue.update(job) {
            tracing::warn!(error = %e, "could not record progress");
        }
    }

    fn process(
        &self,
        queue: &dyn JobQueue,
        job: &mut JobRecord,
        bytes: &[u8],
        cancel: &AtomicBool,
    ) -> Result<(), Stop> {
        let deadline = Instant::now() + self.job_timeout;
        let check = |what: &str| -> Result<(), Stop> {
            if cancel.load(Ordering::Relaxed) {
                return Err(Stop::Interrupted);
            }
            if Instant::now() > deadline {
                return Err(failed(
                    "timeout",
                    format!(
                        "the job exceeded its time limit of {}s while {what}",
                        self.job_timeout.as_secs()
                    ),
                ));
            }
            Ok(())
        };

        // Identical bytes already indexed under this id: nothing to do.
        if let Ok(Some(existing)) = self.index.document_by_sha(&job.status.sha256) {
            if existing.document_id == job.status.document_id {
                job.status.duplicate = true;
                job.status.content_type = Some(existing.content_type.clone());
                job.status.pages = Some(existing.pages);
                job.status.chunks = Some(existing.chunks);
                job.status.chunks_embedded = Some(0);
                job.status.message = Some(format!(
                    "identical content is already indexed as document {}; nothing to do",
                    existing.document_id
                ));
                return Ok(());
            }
        }

        self.progress(queue, job, Stage::Extracting, 2);
        let t = Instant::now();
        let extracted = self.extract_with_deadline(bytes, &job.status.filename, deadline)?;
        job.status.timings.extract_ms = Some(t.elapsed().as_millis() as u64);
        job.status.content_type = Some(extracted.format.name().to_owned());
        job.status.pages = Some(extracted.pages);
        check("extracting")?;

        self.progress(queue, job, Stage::Chunking, 10);
        let t = Instant::now();
        let opts = chunk::validate(&job.status.chunking, self.embedder.max_tokens())
            .map_err(|m| failed("invalid_chunking", m))?;
        let chunks = chunk::chunk_blocks(&extracted.blocks, self.embedder.as_ref(), &opts);
        job.status.timings.chunk_ms = Some(t.elapsed().as_millis() as u64);
        job.status.chunks = Some(chunks.len() as u32);
        check("chunking")?;

        self.progress(queue, job, Stage::Embedding, 15);
        let t = Instant::now();
        let vectors = self.embed_chunks(queue, job, &chunks, &check)?;
        job.status.timings.embed_ms = Some(t.elapsed().as_millis() as u64);

        self.progress(queue, job, Stage::Indexing, 90);
        let t = Instant::now();
        let now = now_ms();
        let up = DocumentUpsert {
            document: DocumentRecord {
                document_id: job.status.document_id.clone(),
                filename: job.status.filename.clone(),
                content_type: extracted.format.name().to_owned(),
                sha256: job.status.sha256.clone(),
                size_bytes: job.status.size_bytes,
                pages: extracted.pages,
                metadata: job.status.metadata.clone(),
                created_at_ms: now,
                updated_at_ms: now,
                job_id: job.status.job_id.clone(),
                first_item: 0,
                chunks: 0,
            },
            chunks: with_vectors(chunks, vectors),
        };
        let applied = self
            .log
            .submit(IndexOp::Upsert(up))
            .map_err(|e| failed("index_error", format!("{e:#}")))?;
        job.status.timings.index_ms = Some(t.elapsed().as_millis() as u64);
        if let Applied::Upserted(o) = applied {
            if o.chunks_removed > 0 {
                job.status.message = Some(format!(
                    "replaced the previous version ({} chunks)",
                    o.chunks_removed
                ));
            }
        }
        Ok(())
    }

    fn extract_with_deadline(
        &self,
        bytes: &[u8],
        filename: &str,
        deadline: Instant,
    ) -> Result<Extracted, Stop> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (bytes, filename, limits) = (bytes.to_vec(), filename.to_owned(), self.limits);
        let nice = self.nice;
        std::thread::Builder::new()
            .name("extract".into())
            .spawn(move || {
                lower_thread_priority(nice);
                let _ = tx.send(extract::extract(&bytes, &filename, &limits));
            })
            .map_err(|e| {
                failed(
                    "internal_error",
                    format!("could not start the extractor: {e}"),
                )
            })?;
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Ok(x)) => Ok(x),
            Ok(Err(e)) => Err(failed(e.code(), e.to_string())),
            Err(_) => Err(failed(
                "timeout",
                "text extraction did not finish within the job's time limit",
            )),
        }
    }

    /// Vectors for `chunks`, reusing stored ones for texts already in the index.
    fn embed_chunks(
        &self,
        queue: &dyn JobQueue,
        job: &mut JobRecord,
        chunks: &[Chunk],
        check: &dyn Fn(&str) -> Result<(), Stop>,
    ) -> Result<Vec<Vec<f32>>, Stop> {
        let hashes: Vec<[u8; 32]> = chunks.iter().map(|c| text_hash(&c.text)).collect();
        let mut vectors = self
            .index
            .vectors_by_text(&hashes)
            .map_err(|e| failed("index_error", format!("{e:#}")))?;
        let missing: Vec<usize> = (0..chunks.len())
            .filter(|&i| vectors[i].is_none())
            .collect();
        job.status.chunks_embedded = Some(missing.len() as u32);
        let texts: Vec<&str> = missing.iter().map(|&i| chunks[i].text.as_str()).collect();
        let total = texts.len().max(1);
        let mut last_report = Instant::now();
        let mut stopped: Option<Stop> = None;
        let mut batch_started = Instant::now();
        let result = self.embedder.embed_passages(&texts, &mut |done| {
            self.metrics
                .embedding_duration
                .observe(batch_started.elapsed().as_secs_f64());
            batch_started = Instant::now();
            if let Err(s) = check("embedding") {
                stopped = Some(s);
                return Err(anyhow::anyhow!("stopped"));
            }
            if last_report.elapsed() > Duration::from_millis(500) {
                last_report = Instant::now();
                let pct = 15 + (75 * done / total) as u8;
                self.progress(queue, job, Stage::Embedding, pct);
            }
            Ok(())
        });
        match result {
            Ok(new) => {
                for (i, v) in missing.into_iter().zip(new) {
                    vectors[i] = Some(v);
                }
                Ok(vectors
                    .into_iter()
                    .map(|v| v.expect("every chunk has a vector"))
                    .collect())
            }
            Err(_) if stopped.is_some() => Err(stopped.expect("checked")),
            Err(e) => Err(failed("embedding_error", e.to_string())),
        }
    }
}

/// A document's chunks with their embeddings, as the index stores them.
pub fn with_vectors(chunks: Vec<Chunk>, vectors: Vec<Vec<f32>>) -> Vec<NewChunk> {
    chunks
        .into_iter()
        .zip(vectors)
        .map(|(c, vector)| NewChunk {
            text: c.text,
            location: c.location,
            vector,
        })
        .collect()
}

/// Claims and runs jobs one at a time until `shutdown` turns true. On shutdown the current job
/// is interrupted at its next checkpoint and requeued.
pub async fn run(
    queue: Arc<dyn JobQueue>,
    pipeline: Arc<Pipeline>,
    mut shutdown: watch::Receiver<bool>,
) {
    let notify = queue.notified();
    let cancel = Arc::new(AtomicBool::new(false));
    loop {
        if *shutdown.borrow() {
            break;
        }
        let q = queue.clone();
        let claimed = tokio::task::spawn_blocking(move || q.claim()).await;
        match claimed {
            Ok(Ok(Some((job, bytes)))) => {
                let (q, p, c) = (queue.clone(), pipeline.clone(), cancel.clone());
                let mut handle =
                    tokio::task::spawn_blocking(move || p.run_job(q.as_ref(), job, bytes, &c));
                tokio::select! {
                    _ = &mut handle => {}
                    _ = shutdown.changed() => {
                        cancel.store(true, Ordering::Relaxed);
                        let _ = handle.await;
                        break;
                    }
                }
            }
            Ok(Ok(None)) => {
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = shutdown.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "claiming a job failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "claim task failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Keeps arroy's trees up to date once the index is large enough to use them.
/// Forgets finished jobs older than `retention`, once an hour.
pub async fn run_job_pruner(
    queue: Arc<dyn JobQueue>,
    retention: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let q = queue.clone();
        let before = now_ms().saturating_sub(retention.as_millis() as u64);
        match tokio::task::spawn_blocking(move || q.prune_finished(before)).await {
            Ok(Ok(n)) if n > 0 => {
                tracing::info!(removed = n, "pruned finished jobs past retention")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "pruning finished jobs failed"),
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Commits the keyword index's grouped changes once they are due (see
/// [`crate::index::KeywordCommit::Grouped`]) and everything at shutdown.
pub async fn run_keyword_committer(index: Arc<Index>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let stop = tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => false,
            _ = shutdown.changed() => true,
        };
        let i = index.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if stop {
                i.commit_keyword()
            } else {
                i.commit_keyword_if_due()
            }
        })
        .await;
        if stop {
            return;
        }
    }
}

pub async fn run_ann_builder(pipeline: Arc<Pipeline>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.changed() => return,
        }
        let p = pipeline.clone();
        match tokio::task::spawn_blocking(move || p.pool.install(|| p.index.build_ann_if_needed()))
            .await
        {
            Ok(Ok(true)) => tracing::debug!("arroy trees rebuilt"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "building arroy trees failed"),
            Err(e) => tracing::error!(error = %e, "arroy build task failed"),
        }
    }
}
