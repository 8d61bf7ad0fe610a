//! What the operator reads from (and removes in) a cluster's Redis: node heartbeats, the
//! queue depth, and every key of a deleted cluster. Key names come from `rag_api::cluster`.

use std::collections::HashMap;
use std::time::Duration;

use rag_api::cluster::{ControlCommand, ControlResult, Keys, NodeHeartbeat};
use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

const TIMEOUT: Duration = Duration::from_secs(3);

/// One multiplexed connection per Redis URL, re-made after an error.
#[derive(Default)]
pub struct RedisConnections {
    conns: Mutex<HashMap<String, MultiplexedConnection>>,
}

impl RedisConnections {
    async fn get(&self, url: &str) -> Result<MultiplexedConnection, String> {
        if let Some(c) = self.conns.lock().await.get(url) {
            return Ok(c.clone());
        }
        let client = redis::Client::open(url).map_err(|e| redact(e.to_string(), url))?;
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let conn = tokio::time::timeout(
            TIMEOUT,
            client.get_multiplexed_async_connection_with_config(&cfg),
        )
        .await
        .map_err(|_| "timed out connecting".to_owned())?
        .map_err(|e| redact(e.to_string(), url))?;
        self.conns.lock().await.insert(url.to_owned(), conn.clone());
        Ok(conn)
    }

    async fn run<T, F, Fut>(&self, url: &str, f: F) -> Result<T, String>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.get(url).await?;
        match tokio::time::timeout(TIMEOUT * 4, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.conns.lock().await.remove(url);
                Err(redact(e.to_string(), url))
            }
            Err(_) => {
                self.conns.lock().await.remove(url);
                Err("Redis did not answer in time".into())
            }
        }
    }

    /// Live nodes (heartbeat not expired) and the number of jobs in the queue.
    pub async fn observe(
        &self,
        url: &str,
        cluster: &str,
    ) -> Result<(Vec<NodeHeartbeat>, u64), String> {
        let keys = Keys::new(cluster);
        self.run(url, |mut c| async move {
            let ids: Vec<String> = redis::cmd("SMEMBERS")
                .arg(keys.nodes())
                .query_async(&mut c)
                .await?;
            let mut nodes = Vec::new();
            if !ids.is_empty() {
                let node_keys: Vec<String> = ids.iter().map(|id| keys.node(id)).collect();
                let raws: Vec<Option<String>> = redis::cmd("MGET")
                    .arg(&node_keys)
                    .query_async(&mut c)
                    .await?;
                nodes = raws
                    .into_iter()
                    .flatten()
                    .filter_map(|r| serde_json::from_str::<NodeHeartbeat>(&r).ok())
                    .collect();
            }
            let depth: u64 = redis::cmd("XLEN")
                .arg(keys.jobs())
                .query_async(&mut c)
                .await?;
            nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
            Ok((nodes, depth))
        })
        .await
    }

    /// Puts `command` on the cluster's control stream; one node takes it and answers under
    /// its id (see [`RedisConnections::control_result`]).
    pub async fn send_control(
        &self,
        url: &str,
        cluster: &str,
        command: &ControlCommand,
    ) -> Result<(), String> {
        let json = serde_json::to_string(command).map_err(|e| e.to_string())?;
        let stream = Keys::new(cluster).control();
        self.run(url, |mut c| async move {
            redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("command")
                .arg(&json)
                .query_async::<String>(&mut c)
                .await
        })
        .await?;
        Ok(())
    }

    /// A node's answer to control command `id`, once there is one.
    pub async fn control_result(
        &self,
        url: &str,
        cluster: &str,
        id: &str,
    ) -> Result<Option<ControlResult>, String> {
        let key = Keys::new(cluster).control_result(id);
        let raw: Option<String> = self
            .run(url, |mut c| async move {
                redis::cmd("GET").arg(&key).query_async(&mut c).await
            })
            .await?;
        raw.map(|r| serde_json::from_str(&r).map_err(|e| format!("unreadable answer: {e}")))
            .transpose()
    }

    /// Removes every key of `cluster` (SCAN + UNLINK, so Redis never blocks on one big
    /// command). Returns how many were removed.
    pub async fn delete_cluster(&self, url: &str, cluster: &str) -> Result<u64, String> {
        let pattern = format!("{}*", Keys::new(cluster).prefix());
        self.run(url, |mut c| async move {
            let mut cursor: u64 = 0;
            let mut removed = 0u64;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut c)
                    .await?;
                if !batch.is_empty() {
                    removed += redis::cmd("UNLINK")
                        .arg(&batch)
                        .query_async::<u64>(&mut c)
                        .await?;
                }
                if next == 0 {
                    return Ok(removed);
                }
                cursor = next;
            }
        })
        .await
    }
}

/// Error texts must never carry the password that is in the URL.
fn redact(msg: String, url: &str) -> String {
    match url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
    {
        Some((cred, _)) if !cred.is_empty() => msg.replace(cred, "***"),
        _ => msg,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact(
                "cannot reach redis://:s3cret@h:1".into(),
                "redis://:s3cret@h:1"
            ),
            "cannot reach redis://***@h:1"
        );
    }
}
