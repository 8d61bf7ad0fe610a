//! The replicated index log: "embed once, apply everywhere".
//!
//! The node that processed a job appends the result (document record, chunk texts and
//! locations, vectors) as one entry of a Redis stream; deletes are entries too. Every node,
//! including the one that appended, tails the stream and applies entries in order to its own
//! index, recording the entry id in the same LMDB transaction as the changes: after a crash an
//! entry is applied exactly once. `submit` returns when this node has applied its own entry, so
//! a job is `completed` only once its node can serve it.
//!
//! The log carries an epoch (a random id created with it). A node whose recorded epoch differs
//! from Redis' — Redis lost the log and a new one was started — stops applying and reports it
//! instead of silently diverging; so does a node whose position was trimmed away.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rag_api::cluster::{log_fields, LogPosition};
use rag_api::SourceLocation;
use serde::{Deserialize, Serialize};

use super::{backoff, entry_order, trimmed_past, Entry, Redis};

/// Prefix of the follower's error when entries it needs were trimmed away: a node restarted
/// with `--bootstrap-from` restores a snapshot then.
pub const TRIMMED: &str = "log_trimmed";
use crate::index::{DocumentUpsert, Index, KeywordCommit, NewChunk};
use crate::log::{Applied, IndexLog, IndexOp, LogStatus};
use crate::records::DocumentRecord;

/// Appends an entry stamped with the log's epoch, creating the epoch with the first entry.
/// KEYS: log, epoch. ARGV: a fresh epoch id, then field/value pairs. Returns {entry id, epoch}.
const APPEND: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SET', KEYS[2], ARGV[1]) end
local epoch = redis.call('GET', KEYS[2])
local fields = {'epoch', epoch}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
return {id, epoch}
"#;

/// How long `submit` waits for this node to apply its own entry.
const APPLY_WAIT: Duration = Duration::from_secs(120);
/// Outcomes remembered for waiting submitters.
const OUTCOMES: usize = 256;

#[derive(Serialize, Deserialize)]
struct LoggedUpsert {
    document: DocumentRecord,
    chunks: Vec<LoggedChunk>,
}

#[derive(Serialize, Deserialize)]
struct LoggedChunk {
    text: String,
    location: SourceLocation,
}

#[derive(Default)]
struct Shared {
    status: LogStatus,
    outcomes: VecDeque<(String, Applied)>,
}

pub struct RedisLog {
    redis: Arc<Redis>,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    script: redis::Script,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RedisLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl RedisLog {
    /// Starts applying the log to `index` from the position it recorded.
    pub fn open(redis: Arc<Redis>, index: Arc<Index>) -> anyhow::Result<RedisLog> {
        let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        shared
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .status
            .position = index.log_position()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (redis, shared, stop) = (redis.clone(), shared.clone(), stop.clone());
            std::thread::Builder::new()
                .name("log-apply".into())
                .spawn(move || apply_loop(&redis, &index, &shared, &stop))?
        };
        Ok(RedisLog {
            redis,
            shared,
            script: redis::Script::new(APPEND),
            stop,
            thread: Some(thread),
        })
    }
}

impl IndexLog for RedisLog {
    fn status(&self) -> Option<LogStatus> {
        Some(
            self.shared
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .status
                .clone(),
        )
    }

    fn submit(&self, op: IndexOp) -> anyhow::Result<Applied> {
        let mut inv = self.script.prepare_invoke();
        inv.key(self.redis.keys.index_log())
            .key(self.redis.keys.log_epoch())
            .arg(uuid::Uuid::now_v7().to_string());
        for (field, value) in encode(&op)? {
            inv.arg(field).arg(value);
        }
        let (entry, _epoch): (String, String) = self
            .redis
            .run(|c| inv.invoke(c))
            .map_err(|e| anyhow!("appending to the index log: {e}"))?;
        let (lock, cond) = &*self.shared;
        let deadline = Instant::now() + APPLY_WAIT;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some((_, applied)) = s.outcomes.iter().find(|(id, _)| *id == entry) {
                return Ok(*applied);
            }
            let passed = s
                .status
                .position
                .as_ref()
                .is_some_and(|p| entry_order(&p.entry) >= entry_order(&entry));
            if passed {
                // Applied, but its outcome already left the window.
                return Ok(match op {
                    IndexOp::Upsert(_) => Applied::Upserted(Default::default()),
                    IndexOp::Delete { .. } => Applied::Deleted(None),
                });
            }
            if let Some(err) = &s.status.error {
                bail!("the index log was appended to but this node cannot apply it: {err}");
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("entry {entry} was logged but not applied here within {APPLY_WAIT:?}");
            }
            s = cond
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

fn encode(op: &IndexOp) -> anyhow::Result<Vec<(&'static str, Vec<u8>)>> {
    Ok(match op {
        IndexOp::Upsert(up) => {
            let logged = LoggedUpsert {
                document: up.document.clone(),
                chunks: up
                    .chunks
                    .iter()
                    .map(|c| LoggedChunk {
                        text: c.text.clone(),
                        location: c.location.clone(),
                    })
                    .collect(),
            };
            let vectors: Vec<u8> = up
                .chunks
                .iter()
                .flat_map(|c| c.vector.iter().flat_map(|x| x.to_le_bytes()))
                .collect();
            vec![
                (log_fields::OP, b"upsert".to_vec()),
                (log_fields::DOCUMENT, serde_json::to_vec(&logged)?),
                (log_fields::VECTORS, vectors),
            ]
        }
        IndexOp::Delete { document_id } => vec![
            (log_fields::OP, b"delete".to_vec()),
            (log_fields::DOCUMENT_ID, document_id.as_bytes().to_vec()),
        ],
    })
}

fn decode(fields: &super::Fields, dims: usize) -> anyhow::Result<IndexOp> {
    let field = |name: &str| {
        fields
            .get(name)
            .ok_or_else(|| anyhow!("entry has no `{name}` field"))
    };
    match field(log_fields::OP)?.as_slice() {
        b"upsert" => {
            let logged: LoggedUpsert = serde_json::from_slice(field(log_fields::DOCUMENT)?)
                .context("decoding the document")?;
            let raw = field(log_fields::VECTORS)?;
            if raw.len() != logged.chunks.len() * dims * 4 {
                bail!(
                    "{} bytes of vectors for {} chunks of {dims} dimensions",
                    raw.len(),
                    logged.chunks.len()
                );
            }
            let chunks = logged
                .chunks
                .into_iter()
                .zip(raw.chunks_exact(dims * 4))
                .map(|(c, v)| NewChunk {
                    text: c.text,
                    location: c.location,
                    vector: v
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                })
                .collect();
            Ok(IndexOp::Upsert(DocumentUpsert {
                document: logged.document,
                chunks,
            }))
        }
        b"delete" => Ok(IndexOp::Delete {
            document_id: String::from_utf8(field(log_fields::DOCUMENT_ID)?.clone())?,
        }),
        other => bail!("unknown operation {:?}", String::from_utf8_lossy(other)),
    }
}

fn apply_loop(redis: &Redis, index: &Index, shared: &(Mutex<Shared>, Condvar), stop: &AtomicBool) {
    let mut attempt = 0;
    while !stop.load(Ordering::Relaxed) {
        match follow(redis, index, shared, stop) {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "index log: retrying");
                std::thread::sleep(backoff(attempt));
                attempt += 1;
            }
        }
    }
}

fn set_error(shared: &(Mutex<Shared>, Condvar), error: Option<String>) {
    let mut s = shared.0.lock().unwrap_or_else(|e| e.into_inner());
    if s.status.error != error {
        if let Some(e) = &error {
            tracing::error!(error = %e, "this node cannot follow the index log");
        }
        s.status.error = error;
        shared.1.notify_all();
    }
}

/// Tails the log until `stop`; returns an error to be retried after a backoff.
fn follow(
    redis: &Redis,
    index: &Index,
    shared: &(Mutex<Shared>, Condvar),
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut conn = redis.dedicated(Duration::from_secs(5))?;
    let (log, epoch_key) = (redis.keys.index_log(), redis.keys.log_epoch());
    let dims = index.dims();
    while !stop.load(Ordering::Relaxed) {
        let position = shared
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .status
            .position
            .clone();
        let epoch: Option<String> = redis::cmd("GET").arg(&epoch_key).query(&mut conn)?;
        let Some(epoch) = epoch else {
            if let Some(p) = &position {
                set_error(
                    shared,
                    Some(format!(
                        "Redis has no index log, but this node applied it up to {} (epoch {}): \
                         Redis lost its data; restore the cluster from a snapshot",
                        p.entry, p.epoch
                    )),
                );
            }
            // Not created yet: look again soon (the first entry creates it).
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let after = match &position {
            Some(p) if p.epoch != epoch => {
                set_error(
                    shared,
                    Some(format!(
                        "the index log's epoch changed from {} to {epoch}: Redis lost the log; \
                         restore from a snapshot",
                        p.epoch
                    )),
                );
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            Some(p) => p.entry.clone(),
            None => "0-0".to_owned(),
        };
        let applied = position.as_ref().map_or(0, |p| p.applied);
        if trimmed_past(&mut conn, &log, applied)? {
            set_error(
                shared,
                Some(format!(
                    "{TRIMMED}: the index log was trimmed past this node's position ({after}); \
                     restore from a snapshot"
                )),
            );
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        set_error(shared, None);
        let reply: Option<Vec<(String, Vec<Entry>)>> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(64)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(&log)
            .arg(&after)
            .query(&mut conn)?;
        let entries: Vec<Entry> = reply.into_iter().flatten().flat_map(|(_, e)| e).collect();
        if entries.is_empty() {
            shared
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .status
                .lag_ms = 0;
            continue;
        }
        for (count, (id, fields)) in (applied + 1..).zip(entries) {
            // Each entry carries its epoch: checking it here (not only the epoch key read
            // before the read) closes the window in which Redis lost the log and a new one
            // began between the two reads.
            if fields
                .get(log_fields::EPOCH)
                .is_some_and(|e| *e != epoch.as_bytes())
            {
                break;
            }
            let pos = LogPosition {
                epoch: epoch.clone(),
                entry: id.clone(),
                applied: count,
            };
            let applied = match decode(&fields, dims) {
                Ok(IndexOp::Upsert(up)) => index
                    .apply_upsert_at(&up, Some(&pos), KeywordCommit::Grouped)
                    .map(Applied::Upserted)?,
                Ok(IndexOp::Delete { document_id }) => index
                    .delete_document_at(&document_id, Some(&pos))
                    .map(Applied::Deleted)?,
                Err(e) => {
                    // Every node decodes the same bytes the same way, so skipping keeps them equal.
                    tracing::error!(entry = %id, error = %format!("{e:#}"), "skipping an index log entry that cannot be decoded");
                    index.record_position(&pos)?;
                    Applied::Deleted(None)
                }
            };
            let mut s = shared.0.lock().unwrap_or_else(|e| e.into_inner());
            // Entry ids carry Redis' clock at append time.
            s.status.lag_ms = crate::time::now_ms().saturating_sub(entry_order(&id).0);
            s.status.position = Some(pos);
            s.outcomes.push_back((id, applied));
            while s.outcomes.len() > OUTCOMES {
                s.outcomes.pop_front();
            }
            shared.1.notify_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_the_log_encoding() {
        let doc = DocumentRecord {
            document_id: "d1".into(),
            filename: "a.txt".into(),
            content_type: "text".into(),
            sha256: "s".into(),
            size_bytes: 3,
            pages: 1,
            metadata: [("team".to_string(), "x".to_string())].into(),
            created_at_ms: 1,
            updated_at_ms: 2,
            job_id: "j".into(),
            first_item: 0,
            chunks: 2,
        };
        let chunks = (0..2)
            .map(|i| NewChunk {
                text: format!("chunk {i}"),
                location: Default::default(),
                vector: (0..4).map(|k| (i * 4 + k) as f32 * 0.25).collect(),
            })
            .collect();
        let op = IndexOp::Upsert(DocumentUpsert {
            document: doc,
            chunks,
        });
        let fields: super::super::Fields = encode(&op)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let IndexOp::Upsert(back) = decode(&fields, 4).unwrap() else {
            panic!("not an upsert")
        };
        assert_eq!(back.document.metadata["team"], "x");
        assert_eq!(back.chunks[1].text, "chunk 1");
        assert_eq!(back.chunks[1].vector, vec![1.0, 1.25, 1.5, 1.75]);
        assert!(decode(&fields, 3).is_err(), "wrong dimensions are refused");
        let del: super::super::Fields = encode(&IndexOp::Delete {
            document_id: "d1".into(),
        })
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert!(
            matches!(decode(&del, 4).unwrap(), IndexOp::Delete { document_id } if document_id == "d1")
        );
    }

    #[test]
    fn entry_ids_order_numerically() {
        assert!(entry_order("10-0") > entry_order("9-5"));
        assert!(entry_order("10-2") > entry_order("10-1"));
    }
}
