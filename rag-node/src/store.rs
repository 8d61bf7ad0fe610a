//! The node's one LMDB environment: the vector index, chunk texts, documents and the embedded
//! job queue live in named databases of the same environment, so one transaction can change
//! several of them atomically and one file is the whole state of a node.

use std::path::Path;
use std::sync::{RwLock, RwLockReadGuard};

use heed::byteorder::BigEndian;
use heed::types::{Bytes, SerdeJson, Str, Unit, U32};
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, RoTxn, RwTxn, WithoutTls};

use crate::records::{ChunkRecord, DocumentRecord, JobRecord};

/// Every named database of the environment, opened once at start.
#[derive(Clone, Copy)]
pub struct Dbs {
    pub meta: Database<'static, Str, Bytes>,
    pub documents: Database<'static, Str, SerdeJson<DocumentRecord>>,
    pub chunks: Database<'static, U32<BigEndian>, SerdeJson<ChunkRecord>>,
    pub by_sha: Database<'static, Str, Str>,
    pub by_text: Database<'static, Bytes, Unit>,
    pub arroy: arroy::Database<'static, arroy::distances::Cosine>,
    pub jobs: Database<'static, Str, SerdeJson<JobRecord>>,
    /// (priority u8, sequence u64 BE) → job id: the queue order.
    pub pending: Database<'static, Bytes, Str>,
    /// Document ids whose last change the keyword index may not have committed yet: written
    /// by the transaction that changes the document, removed after tantivy's commit.
    pub keyword_pending: Database<'static, Str, Unit>,
}

/// How full the map may get before it is doubled.
const GROW_AT: f64 = 0.75;

pub struct Store {
    env: Env<WithoutTls>,
    dir: std::path::PathBuf,
    pub dbs: Dbs,
    /// Resizing the map requires that no transaction is open in this process: every transaction
    /// holds this gate shared, a resize holds it exclusively (rare and short).
    gate: RwLock<()>,
}

pub struct ReadTxn<'a> {
    pub txn: RoTxn<'a, WithoutTls>,
    _gate: RwLockReadGuard<'a, ()>,
}

pub struct WriteTxn<'a> {
    pub txn: RwTxn<'a>,
    _gate: RwLockReadGuard<'a, ()>,
}

impl Store {
    pub fn open(dir: &Path, initial_map_size: usize) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir)?;
        let mut opts = EnvOpenOptions::new().read_txn_without_tls();
        opts.max_dbs(32).max_readers(1024);
        // An existing file may already be larger than the configured initial map.
        let existing = std::fs::metadata(dir.join("data.mdb"))
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let size = round_to_page(initial_map_size.max(existing * 2));
        opts.map_size(size);
        // SAFETY: the directory is owned by this node; LMDB's own locking covers other processes
        // (the CLI may open the same directory read-only while a server runs).
        let env = unsafe { opts.open(dir) }
            .map_err(|e| anyhow::anyhow!("opening LMDB environment in {}: {e}", dir.display()))?;
        let wtxn = env.write_txn()?;
        let dbs = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> heed::Result<_> {
                Ok(CommitOrAbort::<_, ()>::Commit((
                    opener.create_database(wtxn, Some("meta"))?,
                    opener.create_database(wtxn, Some("documents"))?,
                    opener.create_database(wtxn, Some("chunks"))?,
                    opener.create_database(wtxn, Some("documents-by-sha256"))?,
                    opener.create_database(wtxn, Some("chunks-by-text"))?,
                    opener.create_database(wtxn, Some("arroy"))?,
                    opener.create_database(wtxn, Some("jobs"))?,
                    opener.create_database(wtxn, Some("queue"))?,
                    opener.create_database(wtxn, Some("keyword-pending"))?,
                )))
            })?
            .unwrap_commit();
        let (meta, documents, chunks, by_sha, by_text, arroy, jobs, pending, keyword_pending) = dbs;
        Ok(Store {
            env,
            dir: dir.to_owned(),
            dbs: Dbs {
                meta,
                documents,
                chunks,
                by_sha,
                by_text,
                arroy,
                jobs,
                pending,
                keyword_pending,
            },
            gate: RwLock::new(()),
        })
    }

    /// The directory of the environment.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn read(&self) -> heed::Result<ReadTxn<'_>> {
        let gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        Ok(ReadTxn {
            txn: self.env.read_txn()?,
            _gate: gate,
        })
    }

    /// A write transaction, after growing the map if it is getting full.
    pub fn write(&self) -> heed::Result<WriteTxn<'_>> {
        self.grow_if_needed()?;
        let gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        Ok(WriteTxn {
            txn: self.env.write_txn()?,
            _gate: gate,
        })
    }

    /// A consistent, compacted copy of the whole environment (one read transaction's view) at
    /// `path`; writers carry on meanwhile.
    pub fn copy_compacted(&self, path: &Path) -> heed::Result<()> {
        let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        self.env
            .copy_to_path(path, heed::CompactionOption::Enabled)
            .map(drop)
    }

    pub fn map_size(&self) -> usize {
        self.env.info().map_size
    }

    /// Bytes of the map in use (last page × page size).
    pub fn used_bytes(&self) -> u64 {
        let info = self.env.info();
        let page = self.env.unnamed_database_stat().page_size as u64;
        (info.last_page_number as u64 + 1) * page
    }

    fn grow_if_needed(&self) -> heed::Result<()> {
        let size = self.map_size();
        if (self.used_bytes() as f64) < size as f64 * GROW_AT {
            return Ok(());
        }
        let _exclusive = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let size = self.map_size();
        if (self.used_bytes() as f64) < size as f64 * GROW_AT {
            return Ok(());
        }
        let new_size = round_to_page(size.saturating_mul(2));
        tracing::info!(old = size, new = new_size, "growing the LMDB map");
        // SAFETY: the exclusive gate guarantees no transaction of this process is open.
        unsafe { self.env.resize(new_size) }
    }
}

fn round_to_page(n: usize) -> usize {
    let page = 4096usize;
    n.div_ceil(page) * page
}

#[cfg(test)]
mod tests {
    use super::*;
    use heed::types::{Bytes, Str};

    #[test]
    fn the_map_grows_when_it_fills() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let initial = store.map_size();
        let value = vec![7u8; 64 << 10];
        for i in 0..200 {
            let mut w = store.write().unwrap();
            let db: Database<'static, Str, Bytes> = store.dbs.meta.remap_types();
            db.put(&mut w.txn, &format!("k{i}"), &value).unwrap();
            w.txn.commit().unwrap();
        }
        assert!(
            store.map_size() > initial * 4,
            "map stayed at {}",
            store.map_size()
        );
        let r = store.read().unwrap();
        assert_eq!(store.dbs.meta.len(&r.txn).unwrap(), 200);
    }
}
