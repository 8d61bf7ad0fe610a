//! Cluster mode: many nodes fed by one Redis. [`RedisQueue`] is the shared job queue (a stream
//! with a consumer group), [`RedisLog`] the replicated index log ("embed once, apply
//! everywhere"). Key names and payload formats live in `rag_api::cluster`, shared with the
//! operator.

mod log;
mod queue;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use log::{RedisLog, TRIMMED};
pub use queue::{QueueSettings, RedisQueue};
use rag_api::cluster::Keys;

use crate::queue::QueueError;

/// Fields of one stream entry.
pub type Fields = HashMap<String, Vec<u8>>;
/// `(entry id, fields)` as XREAD/XREADGROUP/XAUTOCLAIM return them.
pub type Entry = (String, Fields);

/// How long a command of the worker and the background loops may take before the connection is
/// considered broken (an upload's bytes or an index-log entry can be large).
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a command on a request's path may take ([`Redis::run_quick`]): a Redis that hangs
/// (stopped, swapping, a half-open connection) must not hold `/readyz` or a job lookup for
/// seconds — a readiness probe gives up after one.
pub const QUICK_TIMEOUT: Duration = Duration::from_millis(400);
/// After a failure, calls fail at once with the last error for this long before one is let
/// through to try again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Idle connections kept for reuse (concurrent uploads each take one while enqueueing).
const MAX_IDLE: usize = 16;

/// A Redis client with a small pool of blocking connections.
pub struct Redis {
    client: redis::Client,
    idle: Mutex<Vec<redis::Connection>>,
    breaker: Mutex<Breaker>,
    pub keys: Keys,
}

/// The last known state of the connection to Redis: once a call found it unreachable, others
/// are answered from here until [`RETRY_AFTER`] has passed, instead of each waiting for its own
/// time-out (uploads get their 503 at once, probes their "degraded" answer).
#[derive(Default)]
struct Breaker {
    /// When calls may try Redis again, and the error they fail with until then.
    open_until: Option<(Instant, String)>,
}

impl Redis {
    /// Parses the URL (`redis://` or `rediss://`, with `user:password@` for ACLs); does not
    /// connect, so a node starts (and serves searches) while Redis is down.
    pub fn new(url: &str, cluster: &str) -> anyhow::Result<Redis> {
        Redis::with_ca(url, cluster, None)
    }

    /// [`Redis::new`] trusting the CA in `ca_file` (PEM) for `rediss://`.
    pub fn with_ca(
        url: &str,
        cluster: &str,
        ca_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Redis> {
        let client = match ca_file {
            None => redis::Client::open(url),
            Some(f) => {
                let pem = std::fs::read(f)
                    .map_err(|e| anyhow::anyhow!("reading the Redis CA {}: {e}", f.display()))?;
                redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
        }
        .map_err(|e| anyhow::anyhow!("invalid --redis-url: {e}"))?;
        Ok(Redis {
            client,
            idle: Mutex::new(Vec::new()),
            breaker: Mutex::new(Breaker::default()),
            keys: Keys::new(cluster),
        })
    }

    /// The Redis of a node's cluster configuration.
    pub fn from_config(c: &crate::config::ClusterConfig) -> anyhow::Result<Option<Redis>> {
        c.redis_url
            .as_deref()
            .map(|url| Redis::with_ca(url, &c.name, c.redis_ca_file.as_deref()))
            .transpose()
    }

    /// A new connection of its own, for blocking reads and subscriptions.
    pub fn dedicated(&self, read_timeout: Duration) -> redis::RedisResult<redis::Connection> {
        self.connect(IO_TIMEOUT, read_timeout)
    }

    fn connect(&self, timeout: Duration, read: Duration) -> redis::RedisResult<redis::Connection> {
        // The time-out covers the connection's set-up commands too (AUTH, CLIENT SETINFO).
        let c = self.client.get_connection_with_timeout(timeout)?;
        c.set_read_timeout(Some(read))?;
        c.set_write_timeout(Some(timeout))?;
        Ok(c)
    }

    /// Runs `f` on a pooled connection. A connection that failed is dropped, not returned.
    pub fn run<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, QueueError> {
        self.run_within(IO_TIMEOUT, true, f)
    }

    /// [`Redis::run`] for small commands on a request's path: connecting and the command each
    /// get [`QUICK_TIMEOUT`].
    pub fn run_quick<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, QueueError> {
        self.run_within(QUICK_TIMEOUT, true, f)
    }

    /// [`Redis::run`] for large writes on a request's path (an upload's bytes): while Redis is
    /// known to be unreachable they fail at once and leave finding out when it is back to the
    /// quick calls and the background loops, so no client waits a whole time-out for its 503.
    pub fn run_request<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, QueueError> {
        self.run_within(IO_TIMEOUT, false, f)
    }

    fn run_within<T>(
        &self,
        timeout: Duration,
        may_probe: bool,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, QueueError> {
        self.admit(may_probe)?;
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => self
                .connect(timeout, timeout)
                .map_err(|e| self.failed(unavailable(e)))?,
        };
        // Pooled connections keep the read time-out of their last use.
        if conn.set_read_timeout(Some(timeout)).is_err() {
            return Err(self.failed(QueueError::Unavailable("Redis connection is broken".into())));
        }
        match f(&mut conn) {
            Ok(v) => {
                self.breaker
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .open_until = None;
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < MAX_IDLE {
                    idle.push(conn);
                }
                Ok(v)
            }
            Err(e) => Err(self.failed(unavailable(e))),
        }
    }

    /// Fails at once while a recent failure says Redis is unreachable; the first call after
    /// [`RETRY_AFTER`] goes through (and holds the others off while it tries).
    fn admit(&self, may_probe: bool) -> Result<(), QueueError> {
        let mut b = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        match &mut b.open_until {
            Some((until, message)) => {
                let now = Instant::now();
                if now < *until || !may_probe {
                    return Err(QueueError::Unavailable(message.clone()));
                }
                *until = now + IO_TIMEOUT;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn failed(&self, e: QueueError) -> QueueError {
        let mut b = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        match &e {
            QueueError::Unavailable(m) => {
                // Idle connections were opened to the same server: they are no better.
                self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
                b.open_until = Some((Instant::now() + RETRY_AFTER, m.clone()));
            }
            // Redis answered (with an error): it is reachable.
            _ => b.open_until = None,
        }
        e
    }

    /// The last error, while calls are being answered from it (a recent failure, or another
    /// call is finding out whether Redis is back).
    pub fn known_down(&self) -> Option<String> {
        let b = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        b.open_until
            .as_ref()
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, m)| m.clone())
    }
}

/// Redis errors as queue errors: connection trouble means "try again later" (503), anything
/// else is a bug or a misconfiguration (500).
/// The precision of the cluster's index ([`rag_api::cluster::Keys::index_precision`]): the value
/// already set, or `proposed` when this call is the first to set it.
pub fn claim_index_precision(redis: &Redis, proposed: &str) -> Result<String, QueueError> {
    let key = redis.keys.index_precision();
    redis.run(|c| {
        // The ignored SET leaves one reply: GET's.
        let (value,): (String,) = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(proposed)
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(&key)
            .query(c)?;
        Ok(value)
    })
}

/// The precision of the cluster's index, if a node has set it.
pub fn index_precision(redis: &Redis) -> Result<Option<String>, QueueError> {
    let key = redis.keys.index_precision();
    redis.run(|c| redis::cmd("GET").arg(&key).query(c))
}

pub fn unavailable(e: redis::RedisError) -> QueueError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        QueueError::Unavailable(format!("Redis is unreachable: {e}"))
    } else {
        QueueError::Internal(anyhow::anyhow!("Redis: {e}"))
    }
}

/// Stream entry ids ("ms-seq") in log order.
pub fn entry_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Whether entries a node needs were trimmed from the index log, given how many entries it has
/// applied. Entries are only ever trimmed from the front (never deleted one by one), so the
/// first `entries-added - length` entries are the ones gone.
pub fn trimmed_past(
    conn: &mut redis::Connection,
    log: &str,
    applied: u64,
) -> redis::RedisResult<bool> {
    let info: redis::RedisResult<HashMap<String, redis::Value>> =
        redis::cmd("XINFO").arg("STREAM").arg(log).query(conn);
    let info = match info {
        Ok(i) => i,
        // No stream yet: nothing was trimmed.
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) => {
            return Ok(false)
        }
        Err(e) => return Err(e),
    };
    let number = |k: &str| -> u64 {
        info.get(k)
            .and_then(|v| redis::from_redis_value(v.clone()).ok())
            .unwrap_or(0)
    };
    let trimmed = number("entries-added").saturating_sub(number("length"));
    Ok(applied < trimmed)
}

/// Backoff between reconnection attempts of the background loops: 100 ms doubling to 5 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(30), Duration::from_secs(5));
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(Redis::new("http://x", "c").is_err());
        assert!(Redis::new("redis://127.0.0.1:1/", "c").is_ok());
    }
}
