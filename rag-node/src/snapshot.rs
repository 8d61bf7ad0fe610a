//! Snapshots: a consistent, compacted copy of a node's LMDB environment plus a manifest (log
//! position, model, counts, checksum), stored in a directory or an S3-compatible bucket through
//! `object_store`. A new node restores one and replays the index log from the position the
//! manifest names, instead of replaying the whole log; the log can then be trimmed below it.
//!
//! Layout under the target: `<id>/data.mdb`, then `<id>/manifest.json`, written last: a
//! snapshot without a manifest is incomplete and never chosen. Ids are UTC timestamps, so the
//! newest sorts last.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use rag_api::cluster::{LogPosition, SnapshotManifest};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::Redis;
use crate::index::{set_stored_position, stored_facts};
use crate::store::Store;
use crate::time::{now_ms, rfc3339};

pub const MANIFEST_FORMAT: u32 = 1;
const DATA: &str = "data.mdb";
const MANIFEST: &str = "manifest.json";
/// Part size of multipart uploads (S3 needs at least 5 MiB per part).
const PART: usize = 16 << 20;

/// Where snapshots live: `s3://bucket/prefix` (credentials and endpoint from the usual `AWS_*`
/// variables, e.g. `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`), `file:///dir` or a plain directory path.
pub struct Target {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
}

impl Target {
    pub fn parse(target: &str) -> anyhow::Result<Target> {
        let url = if target.contains("://") {
            target.to_owned()
        } else {
            let dir = PathBuf::from(target);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let abs = dir.canonicalize()?;
            format!("file://{}", abs.display())
        };
        let parsed = url::Url::parse(&url).map_err(|e| anyhow!("invalid target {url:?}: {e}"))?;
        if parsed.scheme() == "file" {
            std::fs::create_dir_all(parsed.path())?;
        }
        // `AWS_ENDPOINT` → `aws_endpoint`, the option names object_store's S3 builder takes.
        let options = std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v));
        let (store, prefix) = object_store::parse_url_opts(&parsed, options)
            .map_err(|e| anyhow!("snapshot target {url:?}: {e}"))?;
        Ok(Target {
            store: Arc::from(store),
            prefix,
            url,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn object(&self, id: &str, name: &str) -> Path {
        self.prefix.clone().join(id).join(name)
    }

    /// Complete snapshots, oldest first.
    pub async fn list(&self) -> anyhow::Result<Vec<SnapshotManifest>> {
        let listing = match self.store.list_with_delimiter(Some(&self.prefix)).await {
            Ok(l) => l,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut ids: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect();
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            match self.manifest(&id).await {
                Ok(m) => out.push(m),
                Err(e) => tracing::debug!(%id, error = %e, "skipping an incomplete snapshot"),
            }
        }
        Ok(out)
    }

    pub async fn manifest(&self, id: &str) -> anyhow::Result<SnapshotManifest> {
        let bytes = self
            .store
            .get(&self.object(id, MANIFEST))
            .await?
            .bytes()
            .await?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    pub async fn latest(&self) -> anyhow::Result<Option<SnapshotManifest>> {
        Ok(self.list().await?.pop())
    }

    /// Deletes snapshot `id`: the manifest first, so an interrupted delete leaves an incomplete
    /// snapshot that is never chosen, then the rest.
    pub async fn delete(&self, id: &str) -> anyhow::Result<()> {
        match self.store.delete(&self.object(id, MANIFEST)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let dir = self.prefix.clone().join(id);
        let objects: Vec<_> = self.store.list(Some(&dir)).collect().await;
        for meta in objects {
            match self.store.delete(&meta?.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Deletes all but the newest `keep` complete snapshots (at least one is always kept) and
    /// returns the ids deleted, oldest first.
    pub async fn prune(&self, keep: usize) -> anyhow::Result<Vec<String>> {
        let all = self.list().await?;
        let excess = all.len().saturating_sub(keep.max(1));
        let mut deleted = Vec::new();
        for m in &all[..excess] {
            self.delete(&m.id).await?;
            tracing::info!(id = %m.id, target = %self.url, "old snapshot deleted");
            deleted.push(m.id.clone());
        }
        Ok(deleted)
    }

    async fn upload(
        &self,
        id: &str,
        data: &FsPath,
        manifest: &SnapshotManifest,
    ) -> anyhow::Result<()> {
        let upload = self.store.put_multipart(&self.object(id, DATA)).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut file = tokio::fs::File::open(data).await?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(4).await?;
            writer.write(&buf[..n]);
        }
        writer.finish().await?;
        self.store
            .put(
                &self.object(id, MANIFEST),
                serde_json::to_vec_pretty(manifest)?.into(),
            )
            .await?;
        Ok(())
    }

    /// Downloads snapshot `id`'s data file to `dest`, checking its size and checksum.
    async fn download(&self, m: &SnapshotManifest, dest: &FsPath) -> anyhow::Result<()> {
        let mut stream = self
            .store
            .get(&self.object(&m.id, DATA))
            .await?
            .into_stream();
        let mut out = tokio::fs::File::create(dest).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            out.write_all(&chunk).await?;
        }
        out.sync_all().await?;
        let sha = hex::encode(hasher.finalize());
        if size != m.size_bytes || sha != m.sha256 {
            bail!(
                "snapshot {} is corrupt: {size} bytes with sha256 {sha}, manifest says {} bytes, {}",
                m.id,
                m.size_bytes,
                m.sha256
            );
        }
        Ok(())
    }
}

/// Copies `store` (compacted), describes the copy and stores both under `target`.
pub async fn create(
    store: &Arc<Store>,
    node_id: &str,
    target: &Target,
) -> anyhow::Result<SnapshotManifest> {
    let work = tempfile_in_data(store)?;
    let data = work.join(DATA);
    let (s, d, node_id) = (store.clone(), data.clone(), node_id.to_owned());
    let started = now_ms();
    let manifest = tokio::task::spawn_blocking(move || -> anyhow::Result<SnapshotManifest> {
        s.copy_compacted(&d).context("copying the environment")?;
        // Facts are read from the copy itself, so they match its contents exactly.
        let facts = {
            let copy = Store::open(d.parent().expect("in a dir"), 1 << 30)?;
            stored_facts(&copy)?
        };
        let (size, sha256) = hash_file(&d)?;
        let id = snapshot_id(started);
        Ok(SnapshotManifest {
            format: MANIFEST_FORMAT,
            id,
            created_at: rfc3339(started),
            node_id,
            model_id: facts.model_id,
            dimensions: facts.dimensions,
            log_position: facts.log_position,
            documents: facts.documents,
            chunks: facts.chunks,
            size_bytes: size,
            sha256,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
    })
    .await??;
    let result = target.upload(&manifest.id, &data, &manifest).await;
    let _ = std::fs::remove_dir_all(&work);
    result?;
    tracing::info!(id = %manifest.id, target = %target.url(), documents = manifest.documents, bytes = manifest.size_bytes, "snapshot stored");
    Ok(manifest)
}

/// Replaces `data_dir`'s environment with snapshot `id` (the newest if `None`). The node must
/// not be running on `data_dir`.
pub async fn restore(
    target: &Target,
    id: Option<&str>,
    data_dir: &FsPath,
    db_dir: &FsPath,
) -> anyhow::Result<SnapshotManifest> {
    restore_prepared(target, id, data_dir, db_dir, |_, _| Ok(())).await
}

/// [`restore`], running `prepare` on the downloaded copy (its directory) before it replaces the
/// environment: if `prepare` fails, nothing was replaced and the restore can simply run again.
async fn restore_prepared(
    target: &Target,
    id: Option<&str>,
    data_dir: &FsPath,
    db_dir: &FsPath,
    prepare: impl FnOnce(&FsPath, &SnapshotManifest) -> anyhow::Result<()>,
) -> anyhow::Result<SnapshotManifest> {
    let m = match id {
        Some(id) => target.manifest(id).await?,
        None => target
            .latest()
            .await?
            .ok_or_else(|| anyhow!("no snapshot under {}", target.url()))?,
    };
    if m.format != MANIFEST_FORMAT {
        bail!(
            "snapshot {} has format {}, this node reads {MANIFEST_FORMAT}",
            m.id,
            m.format
        );
    }
    let staging = data_dir.join("db.restoring");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    target.download(&m, &staging.join(DATA)).await?;
    prepare(&staging, &m)?;
    if db_dir.exists() {
        std::fs::remove_dir_all(db_dir)?;
    }
    std::fs::rename(&staging, db_dir)?;
    std::fs::File::open(data_dir)?.sync_all()?;
    tracing::info!(id = %m.id, documents = m.documents, position = ?m.log_position, "restored from snapshot");
    Ok(m)
}

/// `serve --bootstrap-from`: before the node opens its environment, restore the newest snapshot
/// when the node has no index yet, or (cluster mode) when the index log was trimmed past the
/// node's position. Returns the snapshot restored, if any.
pub fn bootstrap(c: &crate::config::Config) -> anyhow::Result<Option<SnapshotManifest>> {
    let Some(from) = &c.bootstrap_from else {
        return Ok(None);
    };
    let db = c.db_dir();
    let fresh = !db.join(DATA).exists();
    let redis = Redis::from_config(&c.cluster)?;
    let trimmed = match (&redis, fresh) {
        (Some(redis), false) => {
            let position = {
                let store = Store::open(&db, c.map_size_bytes)?;
                stored_facts(&store)?.log_position
            };
            let applied = position.map(|p| p.applied).unwrap_or(0);
            match redis.dedicated(std::time::Duration::from_secs(5)) {
                Ok(mut conn) => {
                    crate::cluster::trimmed_past(&mut conn, &redis.keys.index_log(), applied)?
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Redis unreachable: cannot tell whether the log moved past this node");
                    false
                }
            }
        }
        _ => false,
    };
    if !fresh && !trimmed {
        return Ok(None);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let target = Target::parse(from)?;
        match target.latest().await? {
            None if fresh => {
                tracing::info!(target = %target.url(), "no snapshot yet: starting with an empty index");
                Ok(None)
            }
            None => bail!(
                "the index log was trimmed past this node's position and {} holds no snapshot",
                target.url()
            ),
            Some(m) => {
                if trimmed {
                    tracing::warn!("the index log was trimmed past this node's position: restoring the newest snapshot");
                }
                // Joining the log happens on the downloaded copy, before it takes the place of
                // the index: a node that fails here (Redis still starting) restores again at
                // its restart instead of keeping a copy that belongs to no log.
                let m = restore_prepared(&target, Some(&m.id), &c.data_dir, &db, |copy, m| {
                    match &redis {
                        Some(redis) => join_log(redis, m, copy, c.map_size_bytes),
                        None => Ok(()),
                    }
                })
                .await?;
                Ok(Some(m))
            }
        }
    })
}

/// Starts a log from a snapshot in a Redis that has none. KEYS: epoch, origin, log. ARGV: a
/// fresh epoch, the snapshot id, the seed entry's id. Returns `{epoch, origin}` as they are afterwards.
const SEED_LOG: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[2])
  redis.call('XADD', KEYS[3], 'MAXLEN', '0', ARGV[3], 'seed', ARGV[2])
end
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]) or ''}
"#;
/// The one entry of a seeded log, trimmed at once: the position restored nodes start after.
const SEED_ENTRY: &str = "0-1";
/// How long a restoring node waits for Redis before it gives up (and restarts).
const JOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Connects a node that just restored snapshot `m` to the cluster's log.
///
/// Same epoch as the snapshot: nothing to do, the follower replays from its position. No log
/// at all (the cluster was recreated from its backups, or Redis lost everything): a new log is
/// started under a new epoch, recorded with the snapshot's id, and the restored position moves
/// into it; every node restoring the same snapshot joins that log the same way, so they all
/// apply the same entries after the same state. Anything else is a log this snapshot does not
/// belong to, which the follower then reports instead of mixing the two.
fn join_log(
    redis: &Redis,
    m: &SnapshotManifest,
    db: &FsPath,
    map_size: usize,
) -> anyhow::Result<()> {
    let Some(position) = &m.log_position else {
        return Ok(());
    };
    let keys = &redis.keys;
    let script = redis::Script::new(SEED_LOG);
    // Redis may still be starting next to this node (a new cluster): wait for it a while.
    let deadline = std::time::Instant::now() + JOIN_WAIT;
    let mut attempt = 0;
    let (epoch, origin): (String, String) = loop {
        let answer = redis.run(|c| {
            script
                .key(keys.log_epoch())
                .key(keys.log_origin())
                .key(keys.index_log())
                .arg(uuid::Uuid::now_v7().to_string())
                .arg(&m.id)
                .arg(SEED_ENTRY)
                .invoke(c)
        });
        match answer {
            Ok(v) => break v,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "Redis not usable yet: waiting to join the index log");
                std::thread::sleep(crate::cluster::backoff(attempt));
                attempt += 1;
            }
            Err(e) => return Err(anyhow!("joining the index log: {e}")),
        }
    };
    if epoch == position.epoch {
        return Ok(());
    }
    if origin != m.id {
        tracing::warn!(snapshot = %m.id, log_epoch = %epoch, snapshot_epoch = %position.epoch,
            "the cluster's index log was not started from this snapshot");
        return Ok(());
    }
    let store = Store::open(db, map_size)?;
    set_stored_position(
        &store,
        &LogPosition {
            epoch: epoch.clone(),
            entry: SEED_ENTRY.to_owned(),
            applied: 1,
        },
    )?;
    tracing::info!(snapshot = %m.id, %epoch, "joined the index log started from this snapshot");
    Ok(())
}

fn tempfile_in_data(store: &Store) -> anyhow::Result<PathBuf> {
    // Next to the environment: same file system, and the copy may be as large as the data.
    let dir = store
        .dir()
        .parent()
        .unwrap_or(store.dir())
        .join(format!(".snapshot-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn hash_file(path: &FsPath) -> anyhow::Result<(u64, String)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// `20261126T223015123Z`: sorts by time.
fn snapshot_id(ms: u64) -> String {
    rfc3339(ms)
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T' || *c == 'Z')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prune_keeps_the_newest_snapshots() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&tmp.path().join("db"), 1 << 26).unwrap());
        let target = Target::parse(tmp.path().join("snapshots").to_str().unwrap()).unwrap();
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(create(&store, "n1", &target).await.unwrap().id);
            // Ids have millisecond resolution.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(target.prune(2).await.unwrap(), vec![ids[0].clone()]);
        let left: Vec<_> = target
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(left, ids[1..]);
        assert!(target.manifest(&ids[0]).await.is_err());
        assert_eq!(target.prune(0).await.unwrap(), vec![ids[1].clone()]);
        assert_eq!(target.latest().await.unwrap().unwrap().id, ids[2]);
    }

    #[test]
    fn ids_sort_by_time() {
        let a = snapshot_id(1_700_000_000_000);
        let b = snapshot_id(1_700_000_000_001);
        assert!(a < b, "{a} {b}");
        assert!(a.ends_with('Z') && a.contains('T'));
    }
}
