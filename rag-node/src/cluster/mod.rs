//! Cluster mode: many nodes fed by one Redis. [`RedisQueue`] is the shared job queue (a stream
//! with a consumer group), [`RedisLog`] the replicated index log ("embed once, apply
//! everywhere"). Key names and payload formats live in `rag_api::cluster`, shared with the
//! operator.

pub mod control;
mod log;
mod queue;
pub mod registry;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

pub use log::{RedisLog, TRIMMED};
pub use queue::{QueueSettings, RedisQueue};
use rag_api::cluster::Keys;

use crate::queue::QueueError;

/// Fields of one stream entry.
pub type Fields = HashMap<String, Vec<u8>>;
/// `(entry id, fields)` as XREAD/XREADGROUP/XAUTOCLAIM return them.
pub type Entry = (String, Fields);

/// How long a command may take before the connection is considered broken.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept for reuse (concurrent uploads each take one while enqueueing).
const MAX_IDLE: usize = 16;

/// A Redis client with a small pool of blocking connections.
pub struct Redis {
    client: redis::Client,
    idle: Mutex<Vec<redis::Connection>>,
    pub keys: Keys,
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
        let c = self.client.get_connection_with_timeout(IO_TIMEOUT)?;
        c.set_read_timeout(Some(read_timeout))?;
        c.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(c)
    }

    /// Runs `f` on a pooled connection. A connection that failed is dropped, not returned.
    pub fn run<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, QueueError> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.dedicated(IO_TIMEOUT).map_err(unavailable)?,
        };
        match f(&mut conn) {
            Ok(v) => {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < MAX_IDLE {
                    idle.push(conn);
                }
                Ok(v)
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}

/// Redis errors as queue errors: connection trouble means "try again later" (503), anything
/// else is a bug or a misconfiguration (500).
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
