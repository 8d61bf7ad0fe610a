//! The job queue in front of the sequential worker.
//!
//! [`JobQueue`] is the seam between the HTTP layer and the worker; [`LmdbQueue`] is the embedded,
//! persistent implementation used by a standalone node (the cluster mode puts Redis behind the
//! same trait). Uploaded bytes are written and fsynced to `uploads/` before the job record is
//! committed, and the record is committed before the upload is acknowledged: an acknowledged job
//! survives `kill -9`. A job found `processing` at start was interrupted by a crash: it is retried
//! until `max_attempts`, then failed with the reason.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use heed::types::{Bytes, SerdeJson, Str};
use heed::Database;
use rag_api::{JobState, JobStatus};
use tokio::sync::{broadcast, Notify};

use crate::records::JobRecord;
use crate::store::Store;
use crate::time::now_ms;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue is full ({0} jobs waiting); retry later")]
    Full(u64),
    #[error("the queue is unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<heed::Error> for QueueError {
    fn from(e: heed::Error) -> Self {
        QueueError::Internal(e.into())
    }
}

/// Outcome of [`JobQueue::cancel`].
#[derive(Debug)]
pub enum Cancel {
    Cancelled(Box<JobRecord>),
    NotFound,
    /// Only queued jobs can be cancelled; a running one finishes.
    NotQueued(JobState),
}

pub trait JobQueue: Send + Sync + 'static {
    /// Stores the bytes and the job durably; returns once both survive a crash.
    fn enqueue(&self, job: JobRecord, blob: Blob) -> Result<(), QueueError>;
    /// Takes the next queued job (marking it `processing`, counting an attempt).
    fn claim(&self) -> Result<Option<(JobRecord, Vec<u8>)>, QueueError>;
    /// Records progress of a claimed job.
    fn update(&self, job: &JobRecord) -> Result<(), QueueError>;
    /// Records a terminal state and releases the job's bytes.
    fn finish(&self, job: &JobRecord) -> Result<(), QueueError>;
    /// Puts a claimed job back at the front of the queue (shutdown, transient failure).
    fn requeue(&self, job: &JobRecord) -> Result<(), QueueError>;
    fn get(&self, id: &str) -> Result<Option<JobRecord>, QueueError>;
    /// Fails a job that is still queued with code `cancelled` and drops its bytes.
    fn cancel(&self, id: &str) -> Result<Cancel, QueueError>;
    /// Newest first; `cursor` is the last job id of the previous page.
    fn list(
        &self,
        state: Option<JobState>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<JobRecord>, Option<String>), QueueError>;
    fn depth(&self) -> Result<u64, QueueError>;
    /// Updates on any job, as they happen.
    fn subscribe(&self) -> broadcast::Receiver<JobStatus>;
    /// Resolves when there may be work to claim.
    fn notified(&self) -> Arc<Notify>;
    /// Where uploads may be streamed before [`JobQueue::enqueue`] with [`Blob::Spooled`]
    /// (same file system as the queue's own files, so moving them is a rename).
    fn spool_dir(&self) -> PathBuf;
    /// Whether a spooled file must be fsynced before `enqueue` (it is the durable copy), or is
    /// only a staging copy the queue stores elsewhere.
    fn spool_is_durable_copy(&self) -> bool {
        true
    }
    /// Forgets completed and failed jobs that finished before `before_ms` (Unix ms); returns
    /// how many were removed.
    fn prune_finished(&self, before_ms: u64) -> Result<usize, QueueError>;
    /// The job this node is working on, where the queue tracks it (cluster mode).
    fn current_job(&self) -> Option<String> {
        None
    }
}

pub struct LmdbQueue {
    store: Arc<Store>,
    jobs: Database<'static, Str, SerdeJson<JobRecord>>,
    pending: Database<'static, Bytes, Str>,
    uploads: PathBuf,
    events: broadcast::Sender<JobStatus>,
    notify: Arc<Notify>,
    committer: std::sync::Mutex<Option<std::sync::mpsc::Sender<Enqueue>>>,
    committer_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LmdbQueue {
    fn drop(&mut self) {
        // Closing the channel ends the commit thread; joining it releases its handle on the
        // store, so the environment can be reopened at once.
        self.committer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = self.committer_thread.take() {
            let _ = t.join();
        }
    }
}

/// A job whose bytes are durable, waiting for its record to be committed.
struct Enqueue {
    job: JobRecord,
    reply: std::sync::mpsc::SyncSender<Result<(), QueueError>>,
}

/// Group commit: every enqueue waiting at the moment shares one LMDB transaction (one fsync),
/// so 100 simultaneous uploads cost a few commits, not 100 serialised ones.
/// The group-commit thread: every enqueue waiting when it wakes goes into one LMDB transaction,
/// after one fsync of the uploads directory that makes all their renamed files durable.
struct Committer {
    store: Arc<Store>,
    uploads: PathBuf,
    max_depth: u64,
    events: broadcast::Sender<JobStatus>,
    notify: Arc<Notify>,
}

fn run_committer(c: Committer, rx: std::sync::mpsc::Receiver<Enqueue>) {
    let Committer {
        store,
        uploads,
        max_depth,
        events,
        notify,
    } = c;
    let (jobs, pending) = (store.dbs.jobs, store.dbs.pending);
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let result = (|| -> Result<Vec<bool>, QueueError> {
            File::open(&uploads)
                .and_then(|d| d.sync_all())
                .context("syncing the uploads directory")?;
            let mut w = store.write()?;
            let mut depth = pending.len(&w.txn)?;
            let mut accepted = Vec::with_capacity(batch.len());
            let mut seq = next_seq(&pending, &w.txn)?;
            for e in &batch {
                if depth >= max_depth {
                    accepted.push(false);
                    continue;
                }
                pending.put(&mut w.txn, &pending_key(PRIORITY_NORMAL, seq), e.job.id())?;
                jobs.put(&mut w.txn, e.job.id(), &e.job)?;
                seq += 1;
                depth += 1;
                accepted.push(true);
            }
            w.txn.commit()?;
            Ok(accepted)
        })();
        match result {
            Ok(accepted) => {
                for (e, ok) in batch.into_iter().zip(accepted) {
                    if ok {
                        let _ = events.send(e.job.status.clone());
                        let _ = e.reply.send(Ok(()));
                    } else {
                        let _ = e.reply.send(Err(QueueError::Full(max_depth)));
                    }
                }
                notify.notify_one();
            }
            Err(err) => {
                let msg = err.to_string();
                for e in batch {
                    let _ = e.reply.send(Err(QueueError::Internal(anyhow::anyhow!(
                        "committing the job: {msg}"
                    ))));
                }
            }
        }
    }
}

fn next_seq(pending: &Database<'static, Bytes, Str>, txn: &heed::RoTxn) -> heed::Result<u64> {
    // Sequence numbers only need to grow within a priority; time in µs plus the last key keeps
    // them unique without a counter record.
    let last = pending
        .last(txn)?
        .map(|(k, _)| u64::from_be_bytes(k[1..9].try_into().unwrap_or([0; 8])))
        .unwrap_or(0);
    Ok((now_ms() * 1000).max(last + 1))
}

const PRIORITY_RETRY: u8 = 0;
const PRIORITY_NORMAL: u8 = 1;

fn pending_key(priority: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = priority;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// An upload's bytes: in memory, or already streamed to a file in [`LmdbQueue::spool_dir`] and
/// fsynced (large uploads are never held in memory whole).
pub enum Blob {
    Bytes(Vec<u8>),
    Spooled(PathBuf),
}

/// Where each upload's bytes live until its job finishes.
pub fn upload_path(dir: &Path, job_id: &str) -> PathBuf {
    dir.join(job_id)
}

/// Writes `bytes` to `dir/name` through a temp file that is fsynced and renamed; the directory
/// itself still needs an fsync for the name to survive a crash.
fn write_synced(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))
}

/// What [`LmdbQueue::open`] found and repaired.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    pub requeued: u32,
    pub failed: u32,
    pub orphans_removed: u32,
}

impl LmdbQueue {
    /// Opens the queue and recovers from a crash: interrupted jobs are requeued (or failed after
    /// `max_attempts`), stray upload files without a job are removed.
    pub fn open(
        store: Arc<Store>,
        data_dir: &Path,
        max_depth: u64,
        max_attempts: u32,
    ) -> anyhow::Result<(LmdbQueue, Recovery)> {
        let uploads = data_dir.join("uploads");
        std::fs::create_dir_all(&uploads)
            .with_context(|| format!("creating {}", uploads.display()))?;
        let (events, _) = broadcast::channel(1024);
        let notify = Arc::new(Notify::new());
        let (tx, rx) = std::sync::mpsc::channel();
        let committer = Committer {
            store: store.clone(),
            uploads: uploads.clone(),
            max_depth,
            events: events.clone(),
            notify: notify.clone(),
        };
        let committer_thread = std::thread::Builder::new()
            .name("queue-commit".into())
            .spawn(move || run_committer(committer, rx))?;
        let q = LmdbQueue {
            jobs: store.dbs.jobs,
            pending: store.dbs.pending,
            store,
            uploads,
            events,
            notify,
            committer: std::sync::Mutex::new(Some(tx)),
            committer_thread: Some(committer_thread),
        };
        let rec = q.recover(max_attempts)?;
        Ok((q, rec))
    }

    fn recover(&self, max_attempts: u32) -> anyhow::Result<Recovery> {
        let mut rec = Recovery::default();
        let mut w = self.store.write()?;
        let mut interrupted = Vec::new();
        let mut live = std::collections::HashSet::new();
        for entry in self.jobs.iter(&w.txn)? {
            let (id, job) = entry?;
            if !job.status.state.is_terminal() {
                live.insert(id.to_owned());
            }
            if job.status.state == JobState::Processing {
                interrupted.push(job);
            }
        }
        for mut job in interrupted {
            if job.status.attempts >= max_attempts {
                job.fail(
                    "attempts_exhausted",
                    format!(
                        "the node stopped while processing this job {} time(s); giving up",
                        job.status.attempts
                    ),
                );
                live.remove(job.id());
                self.jobs
                    .put(&mut w.txn, &job.status.job_id.clone(), &job)?;
                rec.failed += 1;
            } else {
                job.reset_to_queued();
                let seq = self.next_seq(&w.txn)?;
                self.pending
                    .put(&mut w.txn, &pending_key(PRIORITY_RETRY, seq), job.id())?;
                self.jobs
                    .put(&mut w.txn, &job.status.job_id.clone(), &job)?;
                rec.requeued += 1;
            }
        }
        w.txn.commit()?;
        for entry in std::fs::read_dir(&self.uploads)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
                rec.orphans_removed += 1;
            }
        }
        Ok(rec)
    }

    fn next_seq(&self, txn: &heed::RoTxn) -> heed::Result<u64> {
        next_seq(&self.pending, txn)
    }

    fn publish(&self, job: &JobRecord) {
        let _ = self.events.send(job.status.clone());
    }
}

impl JobQueue for LmdbQueue {
    fn enqueue(&self, job: JobRecord, blob: Blob) -> Result<(), QueueError> {
        // The bytes are made durable by each caller in parallel; the directory entries and the
        // records are synced once per batch by the commit thread.
        match blob {
            Blob::Bytes(bytes) => write_synced(&self.uploads, job.id(), &bytes),
            // Already fsynced by the spooler.
            Blob::Spooled(path) => std::fs::rename(&path, upload_path(&self.uploads, job.id())),
        }
        .context("storing the upload")?;
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let id = job.status.job_id.clone();
        let sent = match self
            .committer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            Some(tx) => tx.send(Enqueue { job, reply }).is_ok(),
            None => false,
        };
        let stopped = || QueueError::Unavailable("the commit thread stopped".into());
        let result = if sent {
            answer.recv().unwrap_or_else(|_| Err(stopped()))
        } else {
            Err(stopped())
        };
        if result.is_err() {
            let _ = std::fs::remove_file(upload_path(&self.uploads, &id));
        }
        result
    }

    fn claim(&self) -> Result<Option<(JobRecord, Vec<u8>)>, QueueError> {
        loop {
            let mut w = self.store.write()?;
            let Some((key, id)) = self.pending.first(&w.txn)? else {
                return Ok(None);
            };
            let (key, id) = (key.to_vec(), id.to_owned());
            self.pending.delete(&mut w.txn, &key)?;
            let Some(mut job) = self.jobs.get(&w.txn, &id)? else {
                w.txn.commit()?;
                continue;
            };
            let bytes = match std::fs::read(upload_path(&self.uploads, &id)) {
                Ok(b) => b,
                Err(e) => {
                    job.fail(
                        "upload_lost",
                        format!("the uploaded bytes could not be read: {e}"),
                    );
                    self.jobs.put(&mut w.txn, &id, &job)?;
                    w.txn.commit()?;
                    self.publish(&job);
                    continue;
                }
            };
            job.start();
            self.jobs.put(&mut w.txn, &id, &job)?;
            w.txn.commit()?;
            self.publish(&job);
            return Ok(Some((job, bytes)));
        }
    }

    fn update(&self, job: &JobRecord) -> Result<(), QueueError> {
        let mut w = self.store.write()?;
        self.jobs.put(&mut w.txn, job.id(), job)?;
        w.txn.commit()?;
        self.publish(job);
        Ok(())
    }

    fn finish(&self, job: &JobRecord) -> Result<(), QueueError> {
        self.update(job)?;
        let _ = std::fs::remove_file(upload_path(&self.uploads, job.id()));
        Ok(())
    }

    fn requeue(&self, job: &JobRecord) -> Result<(), QueueError> {
        let mut job = job.clone();
        job.reset_to_queued();
        let mut w = self.store.write()?;
        let seq = self.next_seq(&w.txn)?;
        self.pending
            .put(&mut w.txn, &pending_key(PRIORITY_RETRY, seq), job.id())?;
        self.jobs.put(&mut w.txn, job.id(), &job)?;
        w.txn.commit()?;
        self.publish(&job);
        self.notify.notify_one();
        Ok(())
    }

    fn cancel(&self, id: &str) -> Result<Cancel, QueueError> {
        let mut w = self.store.write()?;
        let Some(mut job) = self.jobs.get(&w.txn, id)? else {
            return Ok(Cancel::NotFound);
        };
        if job.status.state != JobState::Queued {
            return Ok(Cancel::NotQueued(job.status.state));
        }
        // The queue is short-lived and small: find the job's pending entry by scanning.
        let key = self
            .pending
            .iter(&w.txn)?
            .filter_map(Result::ok)
            .find(|(_, v)| *v == id)
            .map(|(k, _)| k.to_vec());
        if let Some(key) = key {
            self.pending.delete(&mut w.txn, &key)?;
        }
        job.cancel();
        self.jobs.put(&mut w.txn, id, &job)?;
        w.txn.commit()?;
        let _ = std::fs::remove_file(upload_path(&self.uploads, id));
        self.publish(&job);
        Ok(Cancel::Cancelled(Box::new(job)))
    }

    fn get(&self, id: &str) -> Result<Option<JobRecord>, QueueError> {
        let r = self.store.read()?;
        Ok(self.jobs.get(&r.txn, id)?)
    }

    fn list(
        &self,
        state: Option<JobState>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<JobRecord>, Option<String>), QueueError> {
        let r = self.store.read()?;
        let range = (
            std::ops::Bound::Unbounded,
            cursor.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
        );
        let mut out = Vec::new();
        let mut more = false;
        for entry in self.jobs.rev_range(&r.txn, &range)? {
            let (_, job) = entry?;
            if state.is_some_and(|s| s != job.status.state) {
                continue;
            }
            if out.len() == limit {
                more = true;
                break;
            }
            out.push(job);
        }
        let next = if more {
            out.last().map(|j| j.status.job_id.clone())
        } else {
            None
        };
        Ok((out, next))
    }

    fn depth(&self) -> Result<u64, QueueError> {
        let r = self.store.read()?;
        Ok(self.pending.len(&r.txn)?)
    }

    fn subscribe(&self) -> broadcast::Receiver<JobStatus> {
        self.events.subscribe()
    }

    fn notified(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    fn prune_finished(&self, before_ms: u64) -> Result<usize, QueueError> {
        let mut w = self.store.write()?;
        let mut old = Vec::new();
        for entry in self.jobs.iter(&w.txn)? {
            let (id, job) = entry?;
            let finished_ms = job.created_ms + job.status.timings.total_ms.unwrap_or(0);
            if job.status.state.is_terminal() && finished_ms < before_ms {
                old.push(id.to_owned());
            }
        }
        for id in &old {
            self.jobs.delete(&mut w.txn, id)?;
        }
        w.txn.commit()?;
        Ok(old.len())
    }

    fn spool_dir(&self) -> PathBuf {
        // Names starting with '.' are never job ids: recovery removes them as orphans.
        self.uploads.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::rfc3339;
    use rag_api::{ChunkingOptions, Stage, StageTimings};

    pub(crate) fn job(id: &str) -> JobRecord {
        JobRecord {
            status: JobStatus {
                job_id: id.into(),
                document_id: "d".into(),
                filename: "f.txt".into(),
                content_type: None,
                size_bytes: 3,
                sha256: "x".into(),
                state: JobState::Queued,
                stage: Stage::Queued,
                percent: 0,
                attempts: 0,
                created_at: rfc3339(0),
                started_at: None,
                finished_at: None,
                timings: StageTimings::default(),
                pages: None,
                chunks: None,
                chunks_embedded: None,
                duplicate: false,
                message: None,
                error: None,
                metadata: Default::default(),
                chunking: ChunkingOptions::default(),
            },
            created_ms: 0,
            started_ms: None,
        }
    }

    fn open(dir: &Path, max_attempts: u32) -> (LmdbQueue, Recovery) {
        let store = Arc::new(Store::open(&dir.join("db"), 1 << 28).unwrap());
        LmdbQueue::open(store, dir, 100, max_attempts).unwrap()
    }

    #[test]
    fn fifo_and_crash_recovery() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (q, _) = open(dir.path(), 2);
            q.enqueue(job("j1"), Blob::Bytes(b"one".to_vec())).unwrap();
            q.enqueue(job("j2"), Blob::Bytes(b"two".to_vec())).unwrap();
            q.enqueue(job("j3"), Blob::Bytes(b"three".to_vec()))
                .unwrap();
            assert_eq!(q.depth().unwrap(), 3);
            let (j, bytes) = q.claim().unwrap().unwrap();
            assert_eq!((j.id(), bytes.as_slice()), ("j1", b"one".as_slice()));
            // "crash" here: j1 is processing
        }
        {
            let (q, rec) = open(dir.path(), 2);
            assert_eq!(
                rec,
                Recovery {
                    requeued: 1,
                    failed: 0,
                    orphans_removed: 0
                }
            );
            // the interrupted job goes first, then the others in order
            let (j, _) = q.claim().unwrap().unwrap();
            assert_eq!((j.id(), j.status.attempts), ("j1", 2));
            // crash again
        }
        let (q, rec) = open(dir.path(), 2);
        assert_eq!(rec.failed, 1);
        let j1 = q.get("j1").unwrap().unwrap();
        assert_eq!(j1.status.state, JobState::Failed);
        assert_eq!(j1.status.error.unwrap().code, "attempts_exhausted");
        assert_eq!(q.claim().unwrap().unwrap().0.id(), "j2");
        assert_eq!(q.claim().unwrap().unwrap().0.id(), "j3");
        assert!(q.claim().unwrap().is_none());
    }

    #[test]
    fn only_queued_jobs_are_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _) = open(dir.path(), 2);
        q.enqueue(job("j1"), Blob::Bytes(b"one".to_vec())).unwrap();
        q.enqueue(job("j2"), Blob::Bytes(b"two".to_vec())).unwrap();
        let (running, _) = q.claim().unwrap().unwrap();
        assert!(matches!(
            q.cancel("j1").unwrap(),
            Cancel::NotQueued(JobState::Processing)
        ));
        let Cancel::Cancelled(j2) = q.cancel("j2").unwrap() else {
            panic!("j2 was queued")
        };
        assert_eq!(j2.status.error.unwrap().code, "cancelled");
        assert_eq!(q.get("j2").unwrap().unwrap().status.state, JobState::Failed);
        assert!(!upload_path(&q.uploads, "j2").exists());
        assert!(matches!(q.cancel("nope").unwrap(), Cancel::NotFound));
        // Nothing left to claim after the running job.
        q.finish(&running).unwrap();
        assert!(q.claim().unwrap().is_none());
        assert_eq!(q.depth().unwrap(), 0);
    }

    #[test]
    fn full_queue_is_refused_and_listing_pages() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db"), 1 << 28).unwrap());
        let (q, _) = LmdbQueue::open(store, dir.path(), 3, 3).unwrap();
        for i in 0..3 {
            q.enqueue(job(&format!("j{i}")), Blob::Bytes(b"x".to_vec()))
                .unwrap();
        }
        assert!(matches!(
            q.enqueue(job("j9"), Blob::Bytes(b"x".to_vec())),
            Err(QueueError::Full(3))
        ));
        let (page, next) = q.list(None, 2, None).unwrap();
        assert_eq!(
            page.iter().map(|j| j.id()).collect::<Vec<_>>(),
            vec!["j2", "j1"]
        );
        let (page, next) = q.list(None, 2, next.as_deref()).unwrap();
        assert_eq!(page.iter().map(|j| j.id()).collect::<Vec<_>>(), vec!["j0"]);
        assert!(next.is_none());
        assert!(q
            .list(Some(JobState::Completed), 10, None)
            .unwrap()
            .0
            .is_empty());

        // Retention: finished jobs older than the cut-off are forgotten, live ones never.
        let (mut done, _) = q.claim().unwrap().unwrap();
        done.status.state = JobState::Completed;
        done.finish_times();
        q.finish(&done).unwrap();
        assert_eq!(q.prune_finished(0).unwrap(), 0);
        assert_eq!(q.prune_finished(u64::MAX).unwrap(), 1);
        assert!(q.get(done.id()).unwrap().is_none());
        assert_eq!(q.list(None, 10, None).unwrap().0.len(), 2);
    }
}
