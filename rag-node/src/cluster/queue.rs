//! The shared job queue: a Redis stream read by one consumer group, so each job goes to exactly
//! one node, one job at a time per node.
//!
//! - Enqueue is one Lua script: the bytes (content-addressed by sha256, with a set of the jobs
//!   that need them), the job record, the listing index and the stream entry are written
//!   together, and the queue-length limit is checked in the same step.
//! - A node claims its own unacknowledged entries first (it restarted mid-job), then entries
//!   idle longer than the visibility timeout (their node died: XAUTOCLAIM), then new ones. While
//!   it works, a keep-alive thread resets the entry's idle time, so long jobs are not stolen.
//! - Finishing acknowledges and deletes the entry, gives the record a TTL and drops the bytes
//!   when no other job needs them — again one script. A job out of attempts goes to the
//!   dead-letter stream with the reason.
//! - Status updates are published on a pub/sub channel; every node relays them to its own
//!   subscribers, so any node streams the events of any job.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rag_api::cluster::WORKER_GROUP;
use rag_api::{JobState, JobStatus};
use tokio::sync::{broadcast, Notify};

use super::{backoff, Entry, Redis};
use crate::queue::{Blob, Cancel, JobQueue, QueueError};
use crate::records::JobRecord;

const ENQUEUE: &str = r#"
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
if redis.call('EXISTS', KEYS[3]) == 0 then redis.call('SET', KEYS[3], ARGV[2]) end
redis.call('SADD', KEYS[4], ARGV[4])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[4])
redis.call('XADD', KEYS[1], '*', 'job', ARGV[4])
redis.call('PUBLISH', KEYS[6], ARGV[1])
return 1
"#;

/// KEYS: jobs, job, blob, blob refs, events. ARGV: record, entry id or "", job id, ttl, group.
const FINISH: &str = r#"
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[4])
if ARGV[2] ~= '' then
  redis.call('XACK', KEYS[1], ARGV[5], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
end
redis.call('SREM', KEYS[4], ARGV[3])
if redis.call('SCARD', KEYS[4]) == 0 then redis.call('DEL', KEYS[3]) end
redis.call('PUBLISH', KEYS[5], ARGV[1])
return 1
"#;

/// KEYS: jobs, job, events. ARGV: record, entry id, job id, group.
const REQUEUE: &str = r#"
redis.call('SET', KEYS[2], ARGV[1])
redis.call('XACK', KEYS[1], ARGV[4], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[1], '*', 'job', ARGV[3])
redis.call('PUBLISH', KEYS[3], ARGV[1])
return 1
"#;

/// Marks a claimed job `processing` unless it was cancelled (or finished) since it was read, so
/// a cancel and a claim never both win. KEYS: job, events. ARGV: record.
const START: &str = r#"
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local job = cjson.decode(raw)['status']
-- `status` since jobs say so on the wire; `state` in records written by earlier versions.
local state = job['status'] or job['state']
if state == 'completed' or state == 'failed' then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"#;

/// Cancels a job only while it is still queued. KEYS: job, blob, blob refs, events.
/// ARGV: cancelled record, job id, ttl. Returns -1 (no such job), 0 (not queued), 1.
const CANCEL: &str = r#"
local raw = redis.call('GET', KEYS[1])
if not raw then return -1 end
local job = cjson.decode(raw)['status']
if (job['status'] or job['state']) ~= 'queued' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SREM', KEYS[3], ARGV[2])
if redis.call('SCARD', KEYS[3]) == 0 then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', KEYS[4], ARGV[1])
return 1
"#;

pub struct RedisQueue {
    redis: Arc<Redis>,
    node_id: String,
    max_depth: u64,
    max_attempts: u32,
    visibility: Duration,
    retention: Duration,
    spool: PathBuf,
    events: broadcast::Sender<JobStatus>,
    notify: Arc<Notify>,
    /// Stream entry of the job this node is working on.
    current: Arc<Mutex<Option<(String, String)>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    scripts: Scripts,
}

struct Scripts {
    enqueue: redis::Script,
    finish: redis::Script,
    requeue: redis::Script,
    start: redis::Script,
    cancel: redis::Script,
}

/// Settings of [`RedisQueue::open`].
pub struct QueueSettings {
    pub node_id: String,
    pub max_depth: u64,
    pub max_attempts: u32,
    /// A claimed job whose node has not shown life for this long is given to another node.
    pub visibility: Duration,
    /// How long finished jobs stay readable.
    pub retention: Duration,
}

impl Drop for RedisQueue {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl RedisQueue {
    pub fn open(
        redis: Arc<Redis>,
        data_dir: &Path,
        settings: QueueSettings,
    ) -> anyhow::Result<RedisQueue> {
        let spool = data_dir.join("uploads");
        std::fs::create_dir_all(&spool)?;
        // Stray spool files of uploads that never reached Redis.
        for e in std::fs::read_dir(&spool)?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let (events, _) = broadcast::channel(1024);
        let notify = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let current = Arc::new(Mutex::new(None));
        let mut threads = Vec::new();
        {
            let (redis, events, notify, stop) =
                (redis.clone(), events.clone(), notify.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("redis-events".into())
                    .spawn(move || relay_events(&redis, &events, &notify, &stop))?,
            );
        }
        {
            let (redis, current, stop) = (redis.clone(), current.clone(), stop.clone());
            let (node, period) = (settings.node_id.clone(), settings.visibility / 3);
            threads.push(
                std::thread::Builder::new()
                    .name("job-keepalive".into())
                    .spawn(move || keep_alive(&redis, &node, &current, period, &stop))?,
            );
        }
        let q = RedisQueue {
            redis,
            node_id: settings.node_id,
            max_depth: settings.max_depth,
            max_attempts: settings.max_attempts,
            visibility: settings.visibility,
            retention: settings.retention,
            spool,
            events,
            notify,
            current,
            stop,
            threads,
            scripts: Scripts {
                enqueue: redis::Script::new(ENQUEUE),
                finish: redis::Script::new(FINISH),
                requeue: redis::Script::new(REQUEUE),
                start: redis::Script::new(START),
                cancel: redis::Script::new(CANCEL),
            },
        };
        if let Err(e) = q.ensure_group() {
            tracing::warn!(error = %e, "Redis is not reachable yet; the queue waits for it");
        }
        Ok(q)
    }

    fn ensure_group(&self) -> Result<(), QueueError> {
        let jobs = self.redis.keys.jobs();
        self.redis.run(|c| {
            let r: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&jobs)
                .arg(WORKER_GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query(c);
            match r {
                Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                other => other,
            }
        })
    }

    /// This node's own unacknowledged entry (it restarted mid-job), else one whose node went
    /// silent, else a new one.
    fn next_entry(&self) -> Result<Option<Entry>, QueueError> {
        let jobs = self.redis.keys.jobs();
        let read = |id: &str| {
            let jobs = jobs.clone();
            let node = self.node_id.clone();
            let id = id.to_owned();
            move |c: &mut redis::Connection| {
                let r: Option<Vec<(String, Vec<Entry>)>> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(WORKER_GROUP)
                    .arg(&node)
                    .arg("COUNT")
                    .arg(1)
                    .arg("STREAMS")
                    .arg(&jobs)
                    .arg(&id)
                    .query(c)?;
                Ok(r.and_then(|s| s.into_iter().next())
                    .and_then(|(_, mut e)| e.pop()))
            }
        };
        let result = self.redis.run(read("0"));
        let own = match result {
            Err(QueueError::Internal(e)) if e.to_string().contains("NOGROUP") => {
                self.ensure_group()?;
                self.redis.run(read("0"))?
            }
            other => other?,
        };
        if own.is_some() {
            return Ok(own);
        }
        let (jobs2, node) = (jobs.clone(), self.node_id.clone());
        let idle = self.visibility.as_millis() as u64;
        let stolen = self.redis.run(move |c| {
            let (_, mut entries, _): (String, Vec<Entry>, Vec<String>) = redis::cmd("XAUTOCLAIM")
                .arg(&jobs2)
                .arg(WORKER_GROUP)
                .arg(&node)
                .arg(idle)
                .arg("0-0")
                .arg("COUNT")
                .arg(1)
                .query(c)?;
            Ok(entries.pop())
        })?;
        if let Some(e) = stolen {
            tracing::info!(entry = %e.0, "reclaimed a job whose node stopped responding");
            return Ok(Some(e));
        }
        self.redis.run(read(">"))
    }

    fn set_and_publish(&self, job: &JobRecord) -> Result<(), QueueError> {
        let json = to_json(job)?;
        let (key, channel) = (self.redis.keys.job(job.id()), self.redis.keys.job_events());
        self.redis.run(|c| {
            redis::pipe()
                .cmd("SET")
                .arg(&key)
                .arg(&json)
                .ignore()
                .cmd("PUBLISH")
                .arg(&channel)
                .arg(&json)
                .ignore()
                .query::<()>(c)
        })
    }

    /// Records a terminal state for `job`, acknowledging `entry` (if any).
    fn finish_entry(&self, job: &JobRecord, entry: &str) -> Result<(), QueueError> {
        let json = to_json(job)?;
        let k = &self.redis.keys;
        let mut inv = self.scripts.finish.prepare_invoke();
        inv.key(k.jobs())
            .key(k.job(job.id()))
            .key(k.blob(&job.status.sha256))
            .key(k.blob_refs(&job.status.sha256))
            .key(k.job_events())
            .arg(json)
            .arg(entry)
            .arg(job.id())
            .arg(self.retention.as_secs().max(1))
            .arg(WORKER_GROUP);
        self.redis.run(|c| inv.invoke::<i64>(c))?;
        Ok(())
    }

    /// Acknowledges and deletes a stream entry whose job needs no work.
    fn drop_entry(&self, entry: &str) -> Result<(), QueueError> {
        let jobs = self.redis.keys.jobs();
        self.redis.run(|c| {
            redis::pipe()
                .cmd("XACK")
                .arg(&jobs)
                .arg(WORKER_GROUP)
                .arg(entry)
                .ignore()
                .cmd("XDEL")
                .arg(&jobs)
                .arg(entry)
                .ignore()
                .query::<()>(c)
        })
    }

    fn take_current(&self, job_id: &str) -> Option<String> {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match cur.take() {
            Some((entry, id)) if id == job_id => Some(entry),
            other => {
                *cur = other;
                None
            }
        }
    }
}

impl JobQueue for RedisQueue {
    fn enqueue(&self, job: JobRecord, blob: Blob) -> Result<(), QueueError> {
        let bytes = match blob {
            Blob::Bytes(b) => b,
            Blob::Spooled(path) => {
                let b = std::fs::read(&path).map_err(|e| QueueError::Internal(e.into()));
                let _ = std::fs::remove_file(&path);
                b?
            }
        };
        let json = to_json(&job)?;
        let k = &self.redis.keys;
        let mut inv = self.scripts.enqueue.prepare_invoke();
        inv.key(k.jobs())
            .key(k.job(job.id()))
            .key(k.blob(&job.status.sha256))
            .key(k.blob_refs(&job.status.sha256))
            .key(k.jobs_by_time())
            .key(k.job_events())
            .arg(json)
            .arg(bytes)
            .arg(self.max_depth)
            .arg(job.id())
            .arg(job.created_ms);
        match self.redis.run_request(|c| inv.invoke::<i64>(c))? {
            1 => Ok(()),
            _ => Err(QueueError::Full(self.max_depth)),
        }
    }

    fn claim(&self) -> Result<Option<(JobRecord, Vec<u8>)>, QueueError> {
        loop {
            let Some((entry, fields)) = self.next_entry()? else {
                return Ok(None);
            };
            let job_id = fields
                .get("job")
                .map(|b| String::from_utf8_lossy(b).into_owned());
            let job = match &job_id {
                Some(id) => self.get(id)?,
                None => None,
            };
            let Some(mut job) = job.filter(|j| !j.status.state.is_terminal()) else {
                // Cancelled, expired, or already finished: nothing to do.
                self.drop_entry(&entry)?;
                continue;
            };
            if job.status.attempts >= self.max_attempts {
                let reason = format!(
                    "the job was started {} time(s) and its node stopped each time; giving up",
                    job.status.attempts
                );
                job.fail("attempts_exhausted", reason.clone());
                let (dead, id) = (self.redis.keys.dead_letter(), job.id().to_owned());
                self.redis.run(|c| {
                    redis::cmd("XADD")
                        .arg(&dead)
                        .arg("*")
                        .arg("job")
                        .arg(&id)
                        .arg("reason")
                        .arg(&reason)
                        .query::<String>(c)
                })?;
                self.finish_entry(&job, &entry)?;
                continue;
            }
            job.start();
            let json = to_json(&job)?;
            let mut inv = self.scripts.start.prepare_invoke();
            inv.key(self.redis.keys.job(job.id()))
                .key(self.redis.keys.job_events())
                .arg(json);
            if self.redis.run(|c| inv.invoke::<i64>(c))? == 0 {
                // Cancelled between reading and starting it.
                self.drop_entry(&entry)?;
                continue;
            }
            let blob = self.redis.keys.blob(&job.status.sha256);
            let bytes: Option<Vec<u8>> =
                self.redis.run(|c| redis::cmd("GET").arg(&blob).query(c))?;
            let Some(bytes) = bytes else {
                job.fail("upload_lost", "the uploaded bytes are no longer in Redis");
                self.finish_entry(&job, &entry)?;
                continue;
            };
            *self.current.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((entry, job.id().to_owned()));
            return Ok(Some((job, bytes)));
        }
    }

    fn update(&self, job: &JobRecord) -> Result<(), QueueError> {
        self.set_and_publish(job)
    }

    fn finish(&self, job: &JobRecord) -> Result<(), QueueError> {
        let entry = self.take_current(job.id()).unwrap_or_default();
        self.finish_entry(job, &entry)
    }

    fn requeue(&self, job: &JobRecord) -> Result<(), QueueError> {
        let mut job = job.clone();
        job.reset_to_queued();
        let Some(entry) = self.take_current(job.id()) else {
            return self.set_and_publish(&job);
        };
        let json = to_json(&job)?;
        let k = &self.redis.keys;
        let mut inv = self.scripts.requeue.prepare_invoke();
        inv.key(k.jobs())
            .key(k.job(job.id()))
            .key(k.job_events())
            .arg(json)
            .arg(entry)
            .arg(job.id())
            .arg(WORKER_GROUP);
        self.redis.run(|c| inv.invoke::<i64>(c))?;
        Ok(())
    }

    fn cancel(&self, id: &str) -> Result<Cancel, QueueError> {
        let Some(mut job) = self.get(id)? else {
            return Ok(Cancel::NotFound);
        };
        if job.status.state != JobState::Queued {
            return Ok(Cancel::NotQueued(job.status.state));
        }
        job.cancel();
        let k = &self.redis.keys;
        let mut inv = self.scripts.cancel.prepare_invoke();
        inv.key(k.job(id))
            .key(k.blob(&job.status.sha256))
            .key(k.blob_refs(&job.status.sha256))
            .key(k.job_events())
            .arg(to_json(&job)?)
            .arg(id)
            .arg(self.retention.as_secs().max(1));
        match self.redis.run_quick(|c| inv.invoke::<i64>(c))? {
            1 => Ok(Cancel::Cancelled(Box::new(job))),
            -1 => Ok(Cancel::NotFound),
            _ => Ok(match self.get(id)? {
                Some(j) => Cancel::NotQueued(j.status.state),
                None => Cancel::NotFound,
            }),
        }
    }

    fn get(&self, id: &str) -> Result<Option<JobRecord>, QueueError> {
        let key = self.redis.keys.job(id);
        let raw: Option<String> = self
            .redis
            .run_quick(|c| redis::cmd("GET").arg(&key).query(c))?;
        raw.map(|r| from_json(&r)).transpose()
    }

    fn list(
        &self,
        state: Option<JobState>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<JobRecord>, Option<String>), QueueError> {
        let by_time = self.redis.keys.jobs_by_time();
        let mut start: isize = match cursor {
            None => 0,
            Some(c) => {
                let rank: Option<isize> = self
                    .redis
                    .run_quick(|conn| redis::cmd("ZREVRANK").arg(&by_time).arg(c).query(conn))?;
                match rank {
                    Some(r) => r + 1,
                    None => return Ok((Vec::new(), None)),
                }
            }
        };
        let mut out = Vec::new();
        const PAGE: isize = 200;
        loop {
            let ids: Vec<String> = self.redis.run_quick(|c| {
                redis::cmd("ZREVRANGE")
                    .arg(&by_time)
                    .arg(start)
                    .arg(start + PAGE - 1)
                    .query(c)
            })?;
            if ids.is_empty() {
                return Ok((out, None));
            }
            let keys: Vec<String> = ids.iter().map(|id| self.redis.keys.job(id)).collect();
            let raws: Vec<Option<String>> = self
                .redis
                .run_quick(|c| redis::cmd("MGET").arg(&keys).query(c))?;
            for raw in raws.into_iter().flatten() {
                let job: JobRecord = from_json(&raw)?;
                if state.is_none_or(|s| s == job.status.state) {
                    if out.len() == limit {
                        let last = out.last().map(|j: &JobRecord| j.id().to_owned());
                        return Ok((out, last));
                    }
                    out.push(job);
                }
            }
            start += PAGE;
        }
    }

    fn depth(&self) -> Result<u64, QueueError> {
        let jobs = self.redis.keys.jobs();
        self.redis
            .run_quick(|c| redis::cmd("XLEN").arg(&jobs).query(c))
    }

    fn subscribe(&self) -> broadcast::Receiver<JobStatus> {
        self.events.subscribe()
    }

    fn notified(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    fn spool_dir(&self) -> PathBuf {
        self.spool.clone()
    }

    /// The bytes are stored in Redis; the spool file is read once and removed.
    fn spool_is_durable_copy(&self) -> bool {
        false
    }

    fn current_job(&self) -> Option<String> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, id)| id.clone())
    }

    /// Records expire by themselves (TTL); this drops their ids from the listing index.
    fn prune_finished(&self, before_ms: u64) -> Result<usize, QueueError> {
        let by_time = self.redis.keys.jobs_by_time();
        let ids: Vec<String> = self.redis.run(|c| {
            redis::cmd("ZRANGEBYSCORE")
                .arg(&by_time)
                .arg("-inf")
                .arg(before_ms)
                .query(c)
        })?;
        let mut removed = 0;
        for batch in ids.chunks(500) {
            let keys: Vec<String> = batch.iter().map(|id| self.redis.keys.job(id)).collect();
            let exists: Vec<Option<String>> =
                self.redis.run(|c| redis::cmd("MGET").arg(&keys).query(c))?;
            let gone: Vec<&String> = batch
                .iter()
                .zip(exists)
                .filter(|(_, e)| e.is_none())
                .map(|(id, _)| id)
                .collect();
            if !gone.is_empty() {
                removed += gone.len();
                self.redis
                    .run(|c| redis::cmd("ZREM").arg(&by_time).arg(&gone).query::<i64>(c))?;
            }
        }
        Ok(removed)
    }
}

fn to_json(job: &JobRecord) -> Result<String, QueueError> {
    serde_json::to_string(job).map_err(|e| QueueError::Internal(e.into()))
}

fn from_json(raw: &str) -> Result<JobRecord, QueueError> {
    serde_json::from_str(raw).map_err(|e| QueueError::Internal(e.into()))
}

/// Relays the cluster's job events to this node's subscribers; a queued job wakes the worker.
fn relay_events(
    redis: &Redis,
    events: &broadcast::Sender<JobStatus>,
    notify: &Notify,
    stop: &AtomicBool,
) {
    let channel = redis.keys.job_events();
    let mut attempt = 0;
    while !stop.load(Ordering::Relaxed) {
        let conn = redis.dedicated(Duration::from_millis(500));
        let mut conn = match conn {
            Ok(c) => c,
            Err(_) => {
                std::thread::sleep(backoff(attempt));
                attempt += 1;
                continue;
            }
        };
        let mut sub = conn.as_pubsub();
        if sub.subscribe(&channel).is_err() {
            std::thread::sleep(backoff(attempt));
            attempt += 1;
            continue;
        }
        attempt = 0;
        // Jobs may have been queued while we were not listening.
        notify.notify_one();
        while !stop.load(Ordering::Relaxed) {
            match sub.get_message() {
                Ok(msg) => {
                    let payload: Vec<u8> = msg.get_payload().unwrap_or_default();
                    if let Ok(job) = serde_json::from_slice::<JobRecord>(&payload) {
                        if job.status.state == JobState::Queued {
                            notify.notify_one();
                        }
                        let _ = events.send(job.status);
                    }
                }
                Err(e) if e.is_timeout() => {}
                Err(e) => {
                    tracing::warn!(error = %e, "job event subscription lost; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Resets the idle time of the entry being worked on, so other nodes do not reclaim it.
fn keep_alive(
    redis: &Redis,
    node: &str,
    current: &Mutex<Option<(String, String)>>,
    period: Duration,
    stop: &AtomicBool,
) {
    let jobs = redis.keys.jobs();
    let tick = Duration::from_millis(200).min(period);
    let mut since = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        since += tick;
        if since < period {
            continue;
        }
        since = Duration::ZERO;
        let entry = current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(e, _)| e.clone());
        if let Some(entry) = entry {
            let r = redis.run(|c| {
                redis::cmd("XCLAIM")
                    .arg(&jobs)
                    .arg(WORKER_GROUP)
                    .arg(node)
                    .arg(0)
                    .arg(&entry)
                    .arg("JUSTID")
                    .query::<Vec<String>>(c)
            });
            if let Err(e) = r {
                tracing::warn!(error = %e, "could not renew the claim on the current job");
            }
        }
    }
}
