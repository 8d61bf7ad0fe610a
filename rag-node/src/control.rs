//! The control channel: commands to the cluster (today: take a snapshot) go into a Redis stream
//! read by one consumer group, so exactly one node runs each; its result is stored under the
//! command's id. The operator and `rag-node snapshot --redis-url` use it and never need a
//! network path to the pods.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use rag_api::cluster::{ControlCommand, ControlResult, SnapshotManifest, CONTROL_GROUP};
use tokio::sync::watch;

use crate::cluster::{entry_order, Entry, Redis};
use crate::log::IndexLog;
use crate::snapshot::{self, Target};
use crate::store::Store;

/// What answering control commands needs of a node.
pub struct Responder {
    pub node_id: String,
    pub store: Arc<Store>,
    pub log: Arc<dyn IndexLog>,
}

const RESULT_TTL_SECS: u64 = 24 * 3600;

/// Sends `command` and waits for its result.
pub fn request(
    redis: &Redis,
    command: &ControlCommand,
    timeout: Duration,
) -> anyhow::Result<ControlResult> {
    let ControlCommand::Snapshot { id, .. } = command;
    let json = serde_json::to_string(command)?;
    let stream = redis.keys.control();
    redis.run(|c| {
        redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("command")
            .arg(&json)
            .query::<String>(c)
    })?;
    let key = redis.keys.control_result(id);
    let deadline = Instant::now() + timeout;
    loop {
        let raw: Option<String> = redis.run(|c| redis::cmd("GET").arg(&key).query(c))?;
        if let Some(raw) = raw {
            return Ok(serde_json::from_str(&raw)?);
        }
        if Instant::now() >= deadline {
            bail!("no node answered command {id} within {timeout:?} (are any nodes running?)");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Takes commands from the control stream while this node is following the log.
pub async fn run(node: Arc<Responder>, redis: Arc<Redis>, mut shutdown: watch::Receiver<bool>) {
    let mut attempt = 0;
    // One blocking connection, kept across reads (the group is created with it); dropped and
    // made again only after an error.
    let mut conn: Option<redis::Connection> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        // A node that cannot follow the log would snapshot stale data: leave it to the others.
        let healthy = node.log.status().is_none_or(|s| s.error.is_none());
        let next = if healthy {
            let (r, id, c) = (redis.clone(), node.node_id.clone(), conn.take());
            match tokio::task::spawn_blocking(move || {
                let mut c = c;
                let next = next_command(&r, &id, &mut c);
                (next, c)
            })
            .await
            {
                Ok((next, c)) => {
                    conn = c;
                    next
                }
                Err(e) => Err(anyhow!(e)),
            }
        } else {
            Ok(None)
        };
        match next {
            Ok(Some((entry, command))) => {
                attempt = 0;
                let result = execute(&node, &redis, &command).await;
                let (r, e) = (redis.clone(), entry);
                let stored = tokio::task::spawn_blocking(move || finish(&r, &e, &result)).await;
                if let Ok(Err(err)) = stored {
                    tracing::error!(error = %err, "could not store a control command's result");
                }
            }
            Ok(None) => {
                if !healthy {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "control channel unavailable");
                tokio::select! {
                    _ = tokio::time::sleep(crate::cluster::backoff(attempt)) => {}
                    _ = shutdown.changed() => return,
                }
                attempt += 1;
            }
        }
    }
}

/// Waits up to 2 s for a command. `slot` holds the connection between calls; on an error it is
/// left empty, so the next call connects (and makes sure the group exists) again.
fn next_command(
    redis: &Redis,
    node_id: &str,
    slot: &mut Option<redis::Connection>,
) -> anyhow::Result<Option<(String, ControlCommand)>> {
    let stream = redis.keys.control();
    let mut conn = match slot.take() {
        Some(c) => c,
        None => {
            let mut c = redis.dedicated(Duration::from_secs(5))?;
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&stream)
                .arg(CONTROL_GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query(&mut c);
            match created {
                Err(e) if e.code() != Some("BUSYGROUP") => return Err(e.into()),
                _ => c,
            }
        }
    };
    let reply: Option<Vec<(String, Vec<Entry>)>> = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(CONTROL_GROUP)
        .arg(node_id)
        .arg("COUNT")
        .arg(1)
        .arg("BLOCK")
        .arg(2000)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query(&mut conn)?;
    let next = reply.into_iter().flatten().flat_map(|(_, e)| e).next();
    let command = next.and_then(|(entry, fields)| {
        let raw = fields.get("command").cloned().unwrap_or_default();
        match serde_json::from_slice(&raw) {
            Ok(c) => Some((entry, c)),
            Err(e) => {
                tracing::warn!(%entry, error = %e, "dropping an unreadable control command");
                let _: redis::RedisResult<i64> =
                    redis::cmd("XDEL").arg(&stream).arg(&entry).query(&mut conn);
                None
            }
        }
    });
    *slot = Some(conn);
    Ok(command)
}

async fn execute(node: &Responder, redis: &Redis, command: &ControlCommand) -> ControlResult {
    let ControlCommand::Snapshot { id, target, keep } = command;
    tracing::info!(%id, %target, "snapshot requested through the control channel");
    let mut pruned = Vec::new();
    let outcome = async {
        let target = Target::parse(target)?;
        let m = snapshot::create(&node.store, &node.node_id, &target).await?;
        record_latest(redis, &m)?;
        if let Some(keep) = keep {
            // The snapshot is stored either way: a failed clean-up is reported, not fatal.
            match target.prune(*keep as usize).await {
                Ok(ids) => pruned = ids,
                Err(e) => tracing::warn!(error = %e, "deleting old snapshots failed"),
            }
        }
        anyhow::Ok(m)
    }
    .await;
    ControlResult {
        id: id.clone(),
        node_id: node.node_id.clone(),
        ok: outcome.is_ok(),
        error: outcome.as_ref().err().map(|e| format!("{e:#}")),
        snapshot: outcome.ok(),
        pruned,
    }
}

/// Makes `m` the snapshot the log may be trimmed to, unless a newer one is already recorded.
pub fn record_latest(redis: &Redis, m: &SnapshotManifest) -> anyhow::Result<()> {
    let key = redis.keys.snapshot_latest();
    let current: Option<String> = redis.run(|c| redis::cmd("GET").arg(&key).query(c))?;
    let newer = match current.and_then(|c| serde_json::from_str::<SnapshotManifest>(&c).ok()) {
        Some(cur) => match (&cur.log_position, &m.log_position) {
            (Some(a), Some(b)) if a.epoch == b.epoch => {
                entry_order(&b.entry) >= entry_order(&a.entry)
            }
            _ => true,
        },
        None => true,
    };
    if newer {
        let json = serde_json::to_string(m)?;
        redis.run(|c| redis::cmd("SET").arg(&key).arg(&json).query::<()>(c))?;
    }
    Ok(())
}

fn finish(redis: &Redis, entry: &str, result: &ControlResult) -> anyhow::Result<()> {
    let json = serde_json::to_string(result)?;
    let (key, stream) = (redis.keys.control_result(&result.id), redis.keys.control());
    redis.run(|c| {
        redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(&json)
            .arg("EX")
            .arg(RESULT_TTL_SECS)
            .ignore()
            .cmd("XACK")
            .arg(&stream)
            .arg(CONTROL_GROUP)
            .arg(entry)
            .ignore()
            .cmd("XDEL")
            .arg(&stream)
            .arg(entry)
            .ignore()
            .query::<()>(c)
    })?;
    Ok(())
}
