//! The node registry and log trimming.
//!
//! Every node renews a heartbeat key with a TTL (what it is doing, where it stands in the log,
//! what its index holds). The operator reads these instead of talking to pods. The same loop
//! trims the index log, but only below what every live node has applied and what the newest
//! snapshot covers, so a live node never loses an entry it still needs and a new node can
//! always start from the snapshot.

use std::sync::Arc;
use std::time::Duration;

use rag_api::cluster::{
    LogPosition, NodeHeartbeat, SnapshotManifest, HEARTBEAT_SECS, HEARTBEAT_TTL_SECS,
};
use tokio::sync::watch;

use crate::cluster::{entry_order, Redis};
use crate::index::Index;
use crate::log::IndexLog;
use crate::queue::{JobQueue, QueueError};
use crate::time::now_ms;

/// What a node reports about itself, and how often it trims the log.
pub struct Registrant {
    pub node_id: String,
    pub index: Arc<Index>,
    pub log: Arc<dyn IndexLog>,
    pub queue: Arc<dyn JobQueue>,
    pub trim_interval: Duration,
    /// The embedder's precision and kernel, as the heartbeat reports them.
    pub precision: String,
    pub kernel: String,
}

pub fn heartbeat(node: &Registrant) -> NodeHeartbeat {
    let log = node.log.status().unwrap_or_default();
    let stats = node.index.stats();
    NodeHeartbeat {
        node_id: node.node_id.clone(),
        ready: log.error.is_none(),
        current_job: node.queue.current_job(),
        applied: log.position,
        lag_ms: log.lag_ms,
        log_error: log.error,
        documents: stats.documents,
        chunks: stats.chunks,
        index_bytes: stats.bytes,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        updated_at_ms: now_ms(),
        precision: Some(node.precision.clone()),
        kernel: Some(node.kernel.clone()),
    }
}

pub fn publish(redis: &Redis, hb: &NodeHeartbeat) -> Result<(), QueueError> {
    let json = serde_json::to_string(hb).map_err(|e| QueueError::Internal(e.into()))?;
    let (key, set) = (redis.keys.node(&hb.node_id), redis.keys.nodes());
    redis.run(|c| {
        redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(&json)
            .arg("EX")
            .arg(HEARTBEAT_TTL_SECS)
            .ignore()
            .cmd("SADD")
            .arg(&set)
            .arg(&hb.node_id)
            .ignore()
            .query::<()>(c)
    })
}

/// Heartbeats of the nodes alive now; ids whose heartbeat expired are dropped from the set.
pub fn live_nodes(redis: &Redis) -> Result<Vec<NodeHeartbeat>, QueueError> {
    let set = redis.keys.nodes();
    let ids: Vec<String> = redis.run(|c| redis::cmd("SMEMBERS").arg(&set).query(c))?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids.iter().map(|id| redis.keys.node(id)).collect();
    let raws: Vec<Option<String>> = redis.run(|c| redis::cmd("MGET").arg(&keys).query(c))?;
    let mut live = Vec::new();
    for (id, raw) in ids.iter().zip(raws) {
        match raw.and_then(|r| serde_json::from_str(&r).ok()) {
            Some(hb) => live.push(hb),
            None => {
                redis.run(|c| redis::cmd("SREM").arg(&set).arg(id).query::<i64>(c))?;
            }
        }
    }
    live.sort_by(|a: &NodeHeartbeat, b| a.node_id.cmp(&b.node_id));
    Ok(live)
}

/// The entry id below which the log may be dropped: the oldest of the live nodes' positions
/// and the snapshot's, all in the current epoch. `None` (keep everything) without a snapshot of
/// this epoch, or while a live node has applied nothing or follows another epoch.
pub fn trim_point(
    nodes: &[NodeHeartbeat],
    snapshot: Option<&SnapshotManifest>,
    epoch: &str,
) -> Option<String> {
    let snap = snapshot?
        .log_position
        .as_ref()
        .filter(|p| p.epoch == epoch)?;
    let mut point: &LogPosition = snap;
    for n in nodes {
        let p = n.applied.as_ref().filter(|p| p.epoch == epoch)?;
        if entry_order(&p.entry) < entry_order(&point.entry) {
            point = p;
        }
    }
    Some(point.entry.clone())
}

/// Trims the log to [`trim_point`]; returns the point used.
pub fn trim_log(redis: &Redis) -> Result<Option<String>, QueueError> {
    let nodes = live_nodes(redis)?;
    let (snap_key, epoch_key) = (redis.keys.snapshot_latest(), redis.keys.log_epoch());
    let (snap, epoch): (Option<String>, Option<String>) = redis.run(|c| {
        redis::pipe()
            .cmd("GET")
            .arg(&snap_key)
            .cmd("GET")
            .arg(&epoch_key)
            .query(c)
    })?;
    let (Some(snap), Some(epoch)) = (snap, epoch) else {
        return Ok(None);
    };
    let snap: Option<SnapshotManifest> = serde_json::from_str(&snap).ok();
    let Some(point) = trim_point(&nodes, snap.as_ref(), &epoch) else {
        return Ok(None);
    };
    let log = redis.keys.index_log();
    let removed: i64 = redis.run(|c| {
        redis::cmd("XTRIM")
            .arg(&log)
            .arg("MINID")
            .arg(&point)
            .query(c)
    })?;
    if removed > 0 {
        tracing::info!(below = %point, removed, "trimmed the index log");
    }
    Ok(Some(point))
}

/// Publishes this node's heartbeat every few seconds and trims the log now and then.
pub async fn run(node: Arc<Registrant>, redis: Arc<Redis>, mut shutdown: watch::Receiver<bool>) {
    let trim_every = node.trim_interval.max(Duration::from_secs(1));
    let period = Duration::from_secs(HEARTBEAT_SECS).min(trim_every);
    let mut last_trim = std::time::Instant::now();
    loop {
        let (n, r) = (node.clone(), redis.clone());
        let trim = last_trim.elapsed() >= trim_every;
        if trim {
            last_trim = std::time::Instant::now();
        }
        let result = tokio::task::spawn_blocking(move || {
            publish(&r, &heartbeat(&n))?;
            if trim {
                trim_log(&r)?;
            }
            Ok::<_, QueueError>(())
        })
        .await;
        if let Ok(Err(e)) = result {
            tracing::debug!(error = %e, "heartbeat not published");
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => break,
        }
    }
    // Leave the registry at once rather than when the heartbeat expires.
    let key = redis.keys.node(&node.node_id);
    let _ = tokio::task::spawn_blocking(move || {
        redis.run(|c| redis::cmd("DEL").arg(&key).query::<i64>(c))
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(epoch: &str, entry: &str) -> LogPosition {
        LogPosition {
            epoch: epoch.into(),
            entry: entry.into(),
            applied: 0,
        }
    }

    fn node(applied: Option<LogPosition>) -> NodeHeartbeat {
        NodeHeartbeat {
            node_id: "n".into(),
            ready: true,
            current_job: None,
            applied,
            lag_ms: 0,
            log_error: None,
            documents: 0,
            chunks: 0,
            index_bytes: 0,
            version: String::new(),
            updated_at_ms: 0,
            precision: None,
            kernel: None,
        }
    }

    fn snap(p: Option<LogPosition>) -> SnapshotManifest {
        SnapshotManifest {
            format: 1,
            id: "s".into(),
            created_at: String::new(),
            node_id: "n".into(),
            model_id: "m".into(),
            dimensions: 384,
            log_position: p,
            documents: 0,
            chunks: 0,
            size_bytes: 0,
            sha256: String::new(),
            version: String::new(),
        }
    }

    #[test]
    fn the_log_is_trimmed_below_every_live_node_and_the_snapshot() {
        let s = snap(Some(pos("e", "100-0")));
        let ahead = node(Some(pos("e", "200-0")));
        let behind = node(Some(pos("e", "50-3")));
        assert_eq!(
            trim_point(std::slice::from_ref(&ahead), Some(&s), "e").as_deref(),
            Some("100-0")
        );
        assert_eq!(
            trim_point(&[ahead.clone(), behind], Some(&s), "e").as_deref(),
            Some("50-3")
        );
        // Nothing without a snapshot of this epoch, or with a node that applied nothing.
        assert_eq!(trim_point(std::slice::from_ref(&ahead), None, "e"), None);
        assert_eq!(
            trim_point(std::slice::from_ref(&ahead), Some(&s), "other"),
            None
        );
        assert_eq!(trim_point(&[ahead, node(None)], Some(&s), "e"), None);
        assert!(entry_order("10-0") > entry_order("9-9"));
    }
}
