//! The vector index: arroy (cosine) trees and chunk/document records in the node's LMDB
//! environment, plus the in-memory [`VectorSet`] the exact scan reads.
//!
//! Search strategy: when the candidate set (all chunks, or those passing the filter) is below
//! `exact_below`, the stored vectors are scanned exactly; above it, arroy proposes candidates
//! (with the filter as its candidate bitmap) which are then re-scored exactly against their
//! stored vectors. arroy's trees are built in the background after writes; until a build has
//! caught up, searches scan exactly, so results are never stale or approximate-by-accident.

pub mod analysis;
pub mod keyword;
pub mod vectors;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use arroy::distances::Cosine;
use heed::byteorder::BigEndian;
use heed::types::{Bytes, SerdeJson, Str, Unit, U32};
use heed::Database;
use rag_api::cluster::LogPosition;
use rag_api::SourceLocation;
use rand::rngs::StdRng;
use rand::SeedableRng;
use roaring::RoaringBitmap;
use serde::Serialize;

use crate::language::{self, Language};
use crate::records::{ChunkRecord, DocumentRecord};
use crate::store::Store;
use keyword::{CommitPayload, KeywordChunk, KeywordIndex};
pub use keyword::{FieldBoosts, KeywordSettings};
pub use vectors::{Scored, VectorSet};

/// On-disk layout version; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
const ARROY_INDEX: u16 = 0;
/// Meta key of the applied position in a replicated index log.
const LOG_POSITION: &str = "log_position";
/// The precision of the index's vectors ([`stored_precision`]).
const PRECISION: &str = "precision";
/// Meta key of this environment's identity, which the keyword index's commits record: an
/// environment restored from another node's snapshot is recognised and its keyword index
/// rebuilt.
const KEYWORD_UID: &str = "keyword_uid";
/// Meta key of the apply sequence number: + 1 in every transaction that changes a document.
const APPLY_SEQ: &str = "apply_seq";

/// A chunk ready to be stored.
#[derive(Debug, Clone)]
pub struct NewChunk {
    pub text: String,
    pub location: SourceLocation,
    pub vector: Vec<f32>,
}

/// One document's complete replacement: what the embedding node produces and every node applies.
#[derive(Debug, Clone)]
pub struct DocumentUpsert {
    pub document: DocumentRecord,
    pub chunks: Vec<NewChunk>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub chunks_added: u32,
    pub chunks_removed: u32,
}

/// Search tuning, measured in docs/benchmarks.md.
#[derive(Debug, Clone, Copy)]
pub struct AnnSettings {
    /// Candidate sets smaller than this are scanned exactly.
    pub exact_below: usize,
    pub n_trees: usize,
    /// Nodes arroy inspects per query, as a multiple of the number of results it is asked for.
    pub search_k_per_result: usize,
}

impl Default for AnnSettings {
    fn default() -> Self {
        AnnSettings {
            exact_below: 250_000,
            n_trees: 64,
            search_k_per_result: 1000,
        }
    }
}

/// A document's fields that filters look at, kept in memory with the vectors.
#[derive(Debug, Clone)]
pub struct DocSummary {
    pub filename: String,
    pub content_type: String,
    pub metadata: BTreeMap<String, String>,
    pub created_at_ms: u64,
    pub items: std::ops::Range<u32>,
}

/// What searches read: published atomically after each commit.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub vectors: VectorSet,
    pub docs: Arc<HashMap<String, Arc<DocSummary>>>,
    /// arroy's trees cover exactly the stored items.
    pub ann_ready: bool,
}

pub struct Index {
    store: Arc<Store>,
    meta: Database<'static, Str, Bytes>,
    documents: Database<'static, Str, SerdeJson<DocumentRecord>>,
    chunks: Database<'static, U32<BigEndian>, SerdeJson<ChunkRecord>>,
    by_sha: Database<'static, Str, Str>,
    /// sha256(chunk text) ++ item id → (): any live chunk with the same text has the same
    /// embedding under this index's one model, so re-uploads embed only what changed.
    by_text: Database<'static, Bytes, Unit>,
    arroy: arroy::Database<'static, Cosine>,
    dims: usize,
    model_id: String,
    ann: AnnSettings,
    snapshot: RwLock<Arc<Snapshot>>,
    write_lock: Mutex<()>,
    keyword: KeywordIndex,
    keyword_pending: Database<'static, Str, Unit>,
    /// Changes on their way from LMDB through tantivy's commit to its sync (taken inside
    /// `write_lock`).
    keyword_backlog: Mutex<KeywordBacklog>,
    uid: String,
    recovery: KeywordRecovery,
    /// The last failure to commit to the keyword index (the next start replays it).
    keyword_error: Mutex<Option<String>>,
    /// The sequence number before the first failed keyword commit of this process: later
    /// commits record it instead of their own, so the next start knows the index is behind
    /// from there and replays what is marked pending.
    keyword_behind_from: Mutex<Option<u64>>,
}

/// Where the keyword index's changes stand after LMDB committed them: staged in tantivy's
/// writer, then committed (searchable), then synced (their pending marks in LMDB may go). Every
/// document in it stays marked pending in LMDB until it is synced, so a crash at any point
/// leaves the next start a replay of the marked documents.
#[derive(Debug, Default)]
struct KeywordBacklog {
    /// Documents changed in LMDB and staged in tantivy's writer, not committed yet.
    staged: Vec<String>,
    /// When the oldest staged change was staged.
    staged_since: Option<Instant>,
    /// The apply sequence numbers of the first and the last staged change.
    staged_seqs: Option<(u64, u64)>,
    /// Documents in keyword commits not synced yet.
    unsynced: Vec<String>,
    unsynced_since: Option<Instant>,
    /// Documents whose keyword commits have been synced: the next write removes their marks.
    cleared: Vec<String>,
}

impl KeywordBacklog {
    /// The oldest staged change has waited `interval`.
    fn commit_due(&self, interval: Duration) -> bool {
        self.staged_since.is_some_and(|t| t.elapsed() >= interval)
    }

    /// The staged documents, leaving none staged.
    fn take_staged(&mut self) -> Vec<String> {
        self.staged_since = None;
        self.staged_seqs = None;
        std::mem::take(&mut self.staged)
    }

    fn sync_due(&self) -> bool {
        self.unsynced.len() >= KEYWORD_SYNC_AFTER_DOCUMENTS
            || self
                .unsynced_since
                .is_some_and(|t| t.elapsed() >= KEYWORD_SYNC_AFTER)
    }
}

/// How long a keyword commit may stay unsynced, and how many may, before they are synced.
/// They only bound the work a machine crash leaves to replay: nothing is lost either way.
pub(crate) const KEYWORD_SYNC_AFTER: Duration = Duration::from_secs(5);
pub(crate) const KEYWORD_SYNC_AFTER_DOCUMENTS: usize = 256;

/// When an applied change reaches keyword searches (its vectors are searchable at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeywordCommit {
    /// Before the apply returns, with every change staged before it.
    Now,
    /// With a later change's commit: once the oldest staged change is older than the keyword
    /// commit interval (checked at each apply and by [`Index::commit_keyword_if_due`]), or at
    /// [`Index::commit_keyword`]. A tantivy commit costs a fixed ~6–9 ms whatever it holds
    /// (new segment files, the writer's buffers, the reader reloaded): one per document was
    /// most of what the keyword index added to ingesting small documents.
    Grouped,
}

/// What opening the keyword index had to do to agree with LMDB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeywordRecovery {
    /// It was up to date.
    Clean,
    /// It was behind by these documents' last changes, which were applied again.
    Replayed(u64),
    /// It was rebuilt from LMDB's chunk records, for this reason.
    Rebuilt(String),
}

impl std::fmt::Display for KeywordRecovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeywordRecovery::Clean => f.write_str("clean"),
            KeywordRecovery::Replayed(n) => write!(f, "replayed {n} document(s)"),
            KeywordRecovery::Rebuilt(why) => write!(f, "rebuilt: {why}"),
        }
    }
}

/// The keyword index's state, for health and metrics.
#[derive(Debug, Clone)]
pub struct KeywordStatus {
    /// Chunks in the committed keyword index.
    pub chunks: u64,
    /// Document changes applied to the vectors and staged for the keyword index's next commit.
    pub uncommitted: u64,
    pub bytes: u64,
    pub recovery: KeywordRecovery,
    pub error: Option<String>,
}

pub fn text_hash(text: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes()).into()
}

impl Index {
    /// Opens (or creates) the index in `store`, refusing one made by another model or format,
    /// and brings the keyword index in line with LMDB (see [`Index::recover_keyword`]).
    pub fn open(
        store: Arc<Store>,
        model_id: &str,
        dims: usize,
        ann: AnnSettings,
        keyword: &KeywordSettings,
    ) -> anyhow::Result<Index> {
        let crate::store::Dbs {
            meta,
            documents,
            chunks,
            by_sha,
            by_text,
            arroy,
            keyword_pending,
            ..
        } = store.dbs;
        let uid = {
            let mut w = store.write()?;
            check_or_init_meta(&mut w.txn, &meta, model_id, dims)?;
            let uid = match meta.get(&w.txn, KEYWORD_UID)? {
                Some(u) => String::from_utf8_lossy(u).into_owned(),
                None => {
                    let u = uuid::Uuid::now_v7().to_string();
                    meta.put(&mut w.txn, KEYWORD_UID, u.as_bytes())?;
                    u
                }
            };
            w.txn.commit()?;
            uid
        };
        let keyword_dir = store.dir().join("keyword");
        let (kw, payload) = match KeywordIndex::open(&keyword_dir, keyword) {
            Ok((kw, payload)) => (kw, payload),
            Err(e) => {
                let why = if keyword_dir.exists() {
                    format!("{e:#}")
                } else {
                    "there was none".to_owned()
                };
                let kw = KeywordIndex::create(&keyword_dir, keyword)?;
                (
                    kw,
                    Some(CommitPayload {
                        uid: String::new(),
                        seq: 0,
                        schema: why,
                    }),
                )
            }
        };

        let index = Index {
            store,
            meta,
            documents,
            chunks,
            by_sha,
            by_text,
            arroy,
            dims,
            model_id: model_id.to_owned(),
            ann,
            snapshot: RwLock::new(Arc::new(Snapshot {
                vectors: VectorSet::new(dims),
                docs: Arc::new(HashMap::new()),
                ann_ready: false,
            })),
            write_lock: Mutex::new(()),
            keyword: kw,
            keyword_pending,
            keyword_backlog: Mutex::new(KeywordBacklog::default()),
            uid,
            recovery: KeywordRecovery::Clean,
            keyword_error: Mutex::new(None),
            keyword_behind_from: Mutex::new(None),
        };
        let mut index = index;
        index.recovery = index.recover_keyword(payload)?;
        if index.recovery != KeywordRecovery::Clean {
            tracing::info!(recovery = %index.recovery, "keyword index brought in line with LMDB");
        }
        index.load_snapshot()?;
        Ok(index)
    }

    /// Makes the keyword index agree with LMDB, given its last commit's payload:
    /// - the same environment (`uid`), not ahead of it, schema unchanged → the documents
    ///   marked pending (changed by a transaction whose keyword commit may not have happened)
    ///   are applied again from their LMDB records: replay;
    /// - otherwise (no index, another schema or languages, another environment restored from
    ///   a snapshot, an index ahead of LMDB: an older snapshot of this node) → rebuilt from the
    ///   chunk records;
    /// - either way its chunk count must then equal LMDB's, or it is rebuilt.
    fn recover_keyword(
        &mut self,
        payload: Option<CommitPayload>,
    ) -> anyhow::Result<KeywordRecovery> {
        let (seq, pending, chunks) = {
            let r = self.store.read()?;
            let seq = self.meta_u64(&r.txn, APPLY_SEQ)?;
            let mut pending = Vec::new();
            for e in self.keyword_pending.iter(&r.txn)? {
                pending.push(e?.0.to_owned());
            }
            (seq, pending, self.chunks.len(&r.txn)?)
        };
        let schema = self.keyword.settings().schema_tag();
        let reason = match &payload {
            None => Some("its last commit records no state of this schema".to_owned()),
            Some(p) if p.uid.is_empty() => Some(p.schema.clone()),
            Some(p) if p.schema != schema => Some("its schema or languages changed".to_owned()),
            Some(p) if p.uid != self.uid => {
                Some("the environment was restored from another node's snapshot".to_owned())
            }
            Some(p) if p.seq > seq => {
                Some("it is ahead of LMDB (an older snapshot was restored)".to_owned())
            }
            Some(p) if p.seq < seq && pending.is_empty() => {
                Some("it is behind LMDB with nothing marked to replay".to_owned())
            }
            Some(_) => None,
        };
        // Every keyword commit follows the LMDB commits it holds and records the sequence
        // number of the last (unless one failed since, see `keyword_behind_from`): at the same
        // number the pending marks are only marks later writes would have removed.
        let behind = payload.as_ref().is_some_and(|p| p.seq < seq);
        let mut outcome = match reason {
            Some(why) => {
                self.rebuild_keyword()?;
                KeywordRecovery::Rebuilt(why)
            }
            None if !behind => KeywordRecovery::Clean,
            None => {
                let r = self.store.read()?;
                for id in &pending {
                    match self.documents.get(&r.txn, id)? {
                        Some(d) => self.stage_keyword(&r.txn, &d)?,
                        None => self.keyword.stage_delete(id),
                    }
                }
                drop(r);
                self.keyword.commit(&self.payload(seq))?;
                KeywordRecovery::Replayed(pending.len() as u64)
            }
        };
        if self.keyword.num_docs() != chunks {
            let why = format!("it holds {} chunks, LMDB {chunks}", self.keyword.num_docs());
            self.rebuild_keyword()?;
            outcome = KeywordRecovery::Rebuilt(why);
        }
        if !pending.is_empty() || matches!(outcome, KeywordRecovery::Rebuilt(_)) {
            let mut w = self.store.write()?;
            self.keyword_pending.clear(&mut w.txn)?;
            w.txn.commit()?;
        }
        Ok(outcome)
    }

    /// Replaces the keyword index by one built from every chunk record.
    fn rebuild_keyword(&mut self) -> anyhow::Result<()> {
        let dir = self.store.dir().join("keyword");
        let settings = self.keyword.settings().clone();
        // The old index's writer holds tantivy's directory lock: build the new one beside it.
        let staging = self.store.dir().join("keyword.rebuilding");
        let fresh = KeywordIndex::create(&staging, &settings)?;
        let r = self.store.read()?;
        let seq = self.meta_u64(&r.txn, APPLY_SEQ)?;
        for e in self.documents.iter(&r.txn)? {
            let (_, d) = e?;
            stage_document(&fresh, &self.chunks, &r.txn, &d, &settings.languages)?;
        }
        drop(r);
        fresh.commit(&self.payload(seq))?;
        drop(fresh);
        // The open index keeps its files (and lock) through a rename; a crash between the two
        // renames leaves no `keyword/`, which the next start rebuilds.
        let old = self.store.dir().join("keyword.old");
        let _ = std::fs::remove_dir_all(&old);
        if dir.exists() {
            std::fs::rename(&dir, &old)?;
        }
        std::fs::rename(&staging, &dir)?;
        std::fs::File::open(self.store.dir())?.sync_all()?;
        let (kw, _) = KeywordIndex::open(&dir, &settings)?;
        self.keyword = kw;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    fn payload(&self, seq: u64) -> CommitPayload {
        let behind = *self
            .keyword_behind_from
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        CommitPayload {
            uid: self.uid.clone(),
            seq: behind.map_or(seq, |b| b.min(seq)),
            schema: self.keyword.settings().schema_tag(),
        }
    }

    fn stage_keyword(&self, txn: &heed::RoTxn, d: &DocumentRecord) -> anyhow::Result<()> {
        stage_document(
            &self.keyword,
            &self.chunks,
            txn,
            d,
            &self.keyword.settings().languages,
        )
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    pub fn settings(&self) -> AnnSettings {
        self.ann
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn publish(&self, s: Snapshot) {
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(s);
    }

    /// Rebuilds the in-memory view from LMDB (at start).
    fn load_snapshot(&self) -> anyhow::Result<()> {
        let r = self.store.read()?;
        let mut docs = HashMap::new();
        for entry in self.documents.iter(&r.txn)? {
            let (id, d) = entry?;
            docs.insert(id.to_owned(), Arc::new(summary(&d)));
        }
        let writer = arroy::Writer::<Cosine>::new(self.arroy, ARROY_INDEX, self.dims);
        // Ids and vectors in two flat buffers (no per-vector allocation): at start-up this is the
        // largest transient allocation of the node.
        let mut ids: Vec<u32> = Vec::new();
        let mut flat: Vec<f32> = Vec::new();
        if !writer.is_empty(&r.txn)? {
            for entry in writer.iter(&r.txn)? {
                let (id, v) = entry?;
                ids.push(id);
                flat.extend_from_slice(&v);
            }
        }
        let dims = self.dims;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i]);
        let mut vectors = VectorSet::new(dims);
        for block in order.chunks(vectors::SEGMENT_ITEMS) {
            let refs: Vec<(u32, &[f32])> = block
                .iter()
                .map(|&i| (ids[i], &flat[i * dims..(i + 1) * dims]))
                .collect();
            vectors = vectors.with_appended(&refs);
        }
        drop(flat);
        let ann_ready = !writer.is_empty(&r.txn)? && !writer.need_build(&r.txn)?;
        drop(r);
        self.publish(Snapshot {
            vectors,
            docs: Arc::new(docs),
            ann_ready,
        });
        Ok(())
    }

    pub fn document(&self, id: &str) -> anyhow::Result<Option<DocumentRecord>> {
        let r = self.store.read()?;
        Ok(self.documents.get(&r.txn, id)?)
    }

    pub fn document_by_sha(&self, sha256: &str) -> anyhow::Result<Option<DocumentRecord>> {
        let r = self.store.read()?;
        let Some(id) = self.by_sha.get(&r.txn, sha256)? else {
            return Ok(None);
        };
        Ok(self.documents.get(&r.txn, id)?)
    }

    /// Documents in id order, starting after `cursor`.
    pub fn documents(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<(Vec<DocumentRecord>, Option<String>)> {
        let r = self.store.read()?;
        let mut out = Vec::new();
        let iter: Box<dyn Iterator<Item = heed::Result<(&str, DocumentRecord)>>> = match cursor {
            Some(c) => Box::new(self.documents.range(
                &r.txn,
                &(std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded),
            )?),
            None => Box::new(self.documents.iter(&r.txn)?),
        };
        let mut more = false;
        for entry in iter {
            let (_, d) = entry?;
            if out.len() == limit {
                more = true;
                break;
            }
            out.push(d);
        }
        let next = if more {
            out.last().map(|d| d.document_id.clone())
        } else {
            None
        };
        Ok((out, next))
    }

    /// Chunk records for the given items, read in one transaction (missing ones are `None`).
    pub fn chunks_for(&self, items: &[u32]) -> anyhow::Result<Vec<Option<ChunkRecord>>> {
        let r = self.store.read()?;
        items
            .iter()
            .map(|id| Ok(self.chunks.get(&r.txn, id)?))
            .collect()
    }

    /// Stored vectors of live chunks whose text hashes to each given hash.
    pub fn vectors_by_text(&self, hashes: &[[u8; 32]]) -> anyhow::Result<Vec<Option<Vec<f32>>>> {
        let r = self.store.read()?;
        let snap = self.snapshot();
        let mut out = Vec::with_capacity(hashes.len());
        for h in hashes {
            let mut found = None;
            for entry in self.by_text.prefix_iter(&r.txn, h)? {
                let (key, ()) = entry?;
                let item = u32::from_be_bytes(key[32..36].try_into().expect("36-byte key"));
                if let Some(v) = snap.vectors.get(item) {
                    found = Some(v.to_vec());
                    break;
                }
            }
            out.push(found);
        }
        Ok(out)
    }

    /// Replaces (or creates) a document and its chunks in one transaction.
    pub fn apply_upsert(&self, up: &DocumentUpsert) -> anyhow::Result<ApplyOutcome> {
        self.apply_upsert_at(up, None, KeywordCommit::Now)
    }

    /// Where this index stands in a replicated index log: recorded by the same transaction as
    /// the entry's changes, so after a crash an entry is either fully applied and recorded or
    /// neither (exactly-once application).
    pub fn log_position(&self) -> anyhow::Result<Option<LogPosition>> {
        let r = self.store.read()?;
        match self.meta.get(&r.txn, LOG_POSITION)? {
            Some(b) => Ok(Some(serde_json::from_slice(b)?)),
            None => Ok(None),
        }
    }

    fn put_position(
        &self,
        wtxn: &mut heed::RwTxn,
        pos: Option<&LogPosition>,
    ) -> anyhow::Result<()> {
        if let Some(pos) = pos {
            self.meta
                .put(wtxn, LOG_POSITION, &serde_json::to_vec(pos)?)?;
        }
        Ok(())
    }

    /// Moves the log position past an entry that changes nothing here (one that could not be
    /// decoded: every node skips it the same way).
    pub fn record_position(&self, position: &LogPosition) -> anyhow::Result<()> {
        let _w = self.write_guard();
        let mut w = self.store.write()?;
        self.put_position(&mut w.txn, Some(position))?;
        w.txn.commit()?;
        Ok(())
    }

    /// [`Index::apply_upsert`] as the log entry at `position`, reaching keyword searches as
    /// `commit` says.
    pub fn apply_upsert_at(
        &self,
        up: &DocumentUpsert,
        position: Option<&LogPosition>,
        commit: KeywordCommit,
    ) -> anyhow::Result<ApplyOutcome> {
        for c in &up.chunks {
            if c.vector.len() != self.dims {
                bail!(
                    "vector of {} dimensions, index has {}",
                    c.vector.len(),
                    self.dims
                );
            }
        }
        let _w = self.write_guard();
        let mut w = self.store.write()?;
        let writer = arroy::Writer::<Cosine>::new(self.arroy, ARROY_INDEX, self.dims);
        let (removed_items, old) =
            self.remove_document_in(&mut w.txn, &writer, &up.document.document_id)?;

        let next_item = self.meta_u32(&w.txn, "next_item")?;
        let count = u32::try_from(up.chunks.len()).context("too many chunks")?;
        let end = next_item
            .checked_add(count)
            .ok_or_else(|| anyhow!("item id space exhausted"))?;
        let mut doc = up.document.clone();
        doc.first_item = next_item;
        doc.chunks = count;
        if let Some(old) = &old {
            doc.created_at_ms = old.created_at_ms;
        }
        for (i, c) in up.chunks.iter().enumerate() {
            let item = next_item + i as u32;
            writer.add_item(&mut w.txn, item, &c.vector)?;
            let rec = ChunkRecord {
                document_id: doc.document_id.clone(),
                chunk_index: i as u32,
                text: c.text.clone(),
                location: c.location.clone(),
            };
            self.chunks.put(&mut w.txn, &item, &rec)?;
            self.by_text
                .put(&mut w.txn, &text_key(&c.text, item), &())?;
        }
        self.documents.put(&mut w.txn, &doc.document_id, &doc)?;
        self.by_sha.put(&mut w.txn, &doc.sha256, &doc.document_id)?;
        self.meta.put(&mut w.txn, "next_item", &end.to_be_bytes())?;
        self.put_position(&mut w.txn, position)?;
        let seq = self.mark_keyword_pending(&mut w.txn, &doc.document_id)?;
        w.txn.commit()?;

        let snap = self.snapshot();
        let added: Vec<(u32, &[f32])> = up
            .chunks
            .iter()
            .enumerate()
            .map(|(i, c)| (next_item + i as u32, c.vector.as_slice()))
            .collect();
        let vectors = snap.vectors.without(&removed_items).with_appended(&added);
        let mut docs = (*snap.docs).clone();
        docs.insert(doc.document_id.clone(), Arc::new(summary(&doc)));
        self.publish(Snapshot {
            vectors,
            docs: Arc::new(docs),
            ann_ready: false,
        });

        // The keyword side follows LMDB's commit: a crash in between leaves the document
        // marked pending, which the next start replays. Searches keep only keyword hits whose
        // vectors are published, so until the keyword commit a replaced document's old chunks
        // show nothing.
        let texts: Vec<&str> = up.chunks.iter().map(|c| c.text.as_str()).collect();
        let langs = chunk_languages(&doc, &texts, &self.keyword.settings().languages);
        let kw_chunks: Vec<KeywordChunk> = up
            .chunks
            .iter()
            .zip(langs)
            .enumerate()
            .map(|(i, (c, language))| KeywordChunk {
                item: next_item + i as u32,
                text: &c.text,
                heading_path: &c.location.heading_path,
                language,
            })
            .collect();
        let staged = self
            .keyword
            .stage_replace(&doc.document_id, &doc.filename, &kw_chunks);
        self.keyword_staged(&doc.document_id, seq, staged, commit);
        Ok(ApplyOutcome {
            chunks_added: count,
            chunks_removed: removed_items.len() as u32,
        })
    }

    /// Deletes a document; returns how many chunks it had, or `None` if it did not exist.
    pub fn delete_document(&self, id: &str) -> anyhow::Result<Option<u32>> {
        self.delete_document_at(id, None)
    }

    /// [`Index::delete_document`] as the log entry at `position`.
    pub fn delete_document_at(
        &self,
        id: &str,
        position: Option<&LogPosition>,
    ) -> anyhow::Result<Option<u32>> {
        let _w = self.write_guard();
        let mut w = self.store.write()?;
        let writer = arroy::Writer::<Cosine>::new(self.arroy, ARROY_INDEX, self.dims);
        let (removed, old) = self.remove_document_in(&mut w.txn, &writer, id)?;
        self.put_position(&mut w.txn, position)?;
        if old.is_none() {
            if position.is_some() {
                w.txn.commit()?;
            }
            return Ok(None);
        }
        let seq = self.mark_keyword_pending(&mut w.txn, id)?;
        w.txn.commit()?;
        let snap = self.snapshot();
        let mut docs = (*snap.docs).clone();
        docs.remove(id);
        self.publish(Snapshot {
            vectors: snap.vectors.without(&removed),
            docs: Arc::new(docs),
            ann_ready: false,
        });
        self.keyword.stage_delete(id);
        self.keyword_staged(id, seq, Ok(()), KeywordCommit::Now);
        Ok(Some(removed.len() as u32))
    }

    fn remove_document_in(
        &self,
        wtxn: &mut heed::RwTxn,
        writer: &arroy::Writer<Cosine>,
        id: &str,
    ) -> anyhow::Result<(RoaringBitmap, Option<DocumentRecord>)> {
        let mut removed = RoaringBitmap::new();
        let Some(old) = self.documents.get(wtxn, id)? else {
            return Ok((removed, None));
        };
        for item in old.items() {
            if let Some(c) = self.chunks.get(wtxn, &item)? {
                self.by_text.delete(wtxn, &text_key(&c.text, item))?;
            }
            self.chunks.delete(wtxn, &item)?;
            writer.del_item(wtxn, item)?;
            removed.insert(item);
        }
        self.documents.delete(wtxn, id)?;
        if self.by_sha.get(wtxn, &old.sha256)? == Some(id) {
            self.by_sha.delete(wtxn, &old.sha256)?;
        }
        Ok((removed, Some(old)))
    }

    /// In a transaction that changes document `id`: marks it pending for the keyword index
    /// (removing the marks of documents whose keyword commits have been synced since) and
    /// returns the transaction's apply sequence number.
    fn mark_keyword_pending(&self, wtxn: &mut heed::RwTxn, id: &str) -> anyhow::Result<u64> {
        // Syncs happen only when nothing is staged (see `commit_keyword_locked`), and this is
        // the first write after one: every cleared document's last change is synced.
        let cleared = std::mem::take(&mut self.backlog().cleared);
        for c in &cleared {
            self.keyword_pending.delete(wtxn, c)?;
        }
        self.keyword_pending.put(wtxn, id, &())?;
        let seq = self.meta_u64(wtxn, APPLY_SEQ)? + 1;
        self.meta.put(wtxn, APPLY_SEQ, &seq.to_be_bytes())?;
        Ok(seq)
    }

    fn backlog(&self) -> MutexGuard<'_, KeywordBacklog> {
        self.keyword_backlog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn write_guard(&self) -> MutexGuard<'_, ()> {
        self.write_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After LMDB committed document `id`'s change as `seq` and it was staged in tantivy's
    /// writer (`staged`): commits it now or with later changes (see [`KeywordCommit`]).
    fn keyword_staged(
        &self,
        id: &str,
        seq: u64,
        staged: anyhow::Result<()>,
        commit: KeywordCommit,
    ) {
        let mut b = self.backlog();
        b.staged.push(id.to_owned());
        b.staged_since.get_or_insert_with(Instant::now);
        b.staged_seqs = Some((b.staged_seqs.map_or(seq, |(first, _)| first), seq));
        match staged {
            Err(e) => self.keyword_failed(&mut b, e),
            Ok(()) => {
                if commit == KeywordCommit::Now
                    || b.commit_due(self.keyword.settings().commit_interval)
                {
                    self.commit_keyword_locked(&mut b);
                }
            }
        }
    }

    /// Commits the staged keyword changes, if any, then syncs the committed ones if that is due
    /// ([`KEYWORD_SYNC_AFTER`], [`KEYWORD_SYNC_AFTER_DOCUMENTS`]). Called inside `write_lock`.
    /// A failure does not undo what LMDB committed: the documents stay marked pending, the next
    /// start replays them, and health reports the error until then.
    fn commit_keyword_locked(&self, b: &mut KeywordBacklog) {
        if let Some((_, last)) = b.staged_seqs {
            if let Err(e) = self.keyword.commit_unsynced(&self.payload(last)) {
                self.keyword_failed(b, e);
                return;
            }
            let committed = b.take_staged();
            b.unsynced.extend(committed);
            b.unsynced_since.get_or_insert_with(Instant::now);
        }
        if b.sync_due() {
            if let Err(e) = self.sync_keyword_locked(b) {
                // The marks stay: nothing is lost, a later commit tries again.
                tracing::warn!(error = %format!("{e:#}"), "syncing the keyword index failed");
            }
        }
    }

    /// Syncs the keyword index's files (nothing staged: see `mark_keyword_pending`); the
    /// documents committed before are then cleared.
    fn sync_keyword_locked(&self, b: &mut KeywordBacklog) -> anyhow::Result<()> {
        debug_assert!(b.staged.is_empty());
        self.keyword.sync()?;
        let synced = std::mem::take(&mut b.unsynced);
        b.cleared.extend(synced);
        b.unsynced_since = None;
        Ok(())
    }

    /// The staged changes could not be staged or committed: dropped from tantivy's writer,
    /// kept marked pending in LMDB; later commits record the sequence number before them, so
    /// the next start knows the index is behind from there and replays the marks.
    fn keyword_failed(&self, b: &mut KeywordBacklog, e: anyhow::Error) {
        let _ = self.keyword.rollback();
        let first = b.staged_seqs.map_or(1, |(first, _)| first);
        self.keyword_behind_from
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(first - 1);
        let documents = b.take_staged();
        tracing::error!(documents = ?documents, error = %format!("{e:#}"), "keyword index commit failed; the next start replays it");
        *self.keyword_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
            "committing {}: {e:#} (a restart replays it)",
            match documents.as_slice() {
                [one] => format!("document {one}"),
                many => format!("{} documents", many.len()),
            }
        ));
    }

    /// Makes every applied change visible to keyword searches now.
    pub fn commit_keyword(&self) {
        let _w = self.write_guard();
        self.commit_keyword_locked(&mut self.backlog());
    }

    /// Commits the staged keyword changes once the oldest is older than the commit interval,
    /// and syncs commits when that is due: the node calls it a few times a second, so that
    /// grouped changes become searchable within the interval even when no further change
    /// comes to commit them.
    pub fn commit_keyword_if_due(&self) {
        let _w = self.write_guard();
        let mut b = self.backlog();
        if b.commit_due(self.keyword.settings().commit_interval) || b.sync_due() {
            self.commit_keyword_locked(&mut b);
        }
    }

    /// Commits and syncs the keyword index now.
    #[cfg(test)]
    pub(crate) fn sync_keyword(&self) -> anyhow::Result<()> {
        let _w = self.write_guard();
        let mut b = self.backlog();
        self.commit_keyword_locked(&mut b);
        self.sync_keyword_locked(&mut b)
    }

    /// The best `limit` items for `query` by BM25 among `candidates` (all when `None`).
    pub fn keyword_search(
        &self,
        query: &str,
        limit: usize,
        candidates: Option<&RoaringBitmap>,
    ) -> anyhow::Result<Vec<(u32, f32)>> {
        self.keyword.search(query, limit, candidates)
    }

    pub fn keyword_status(&self) -> KeywordStatus {
        // Inside the write lock: an apply is either before LMDB's commit or staged.
        let _w = self.write_guard();
        KeywordStatus {
            chunks: self.keyword.num_docs(),
            uncommitted: self.backlog().staged.len() as u64,
            bytes: self.keyword.size_bytes(),
            recovery: self.recovery.clone(),
            error: self
                .keyword_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    fn meta_u64(&self, txn: &heed::RoTxn, key: &str) -> anyhow::Result<u64> {
        Ok(self
            .meta
            .get(txn, key)?
            .map(|b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
            .unwrap_or(0))
    }

    fn meta_u32(&self, txn: &heed::RoTxn, key: &str) -> anyhow::Result<u32> {
        Ok(self
            .meta
            .get(txn, key)?
            .map(|b| u32::from_be_bytes(b.try_into().unwrap_or([0; 4])))
            .unwrap_or(0))
    }

    /// Builds arroy's trees if the index is large enough to use them and has changed since the
    /// last build. Runs in a write transaction: other writers wait, readers do not.
    pub fn build_ann_if_needed(&self) -> anyhow::Result<bool> {
        let snap = self.snapshot();
        if snap.ann_ready || snap.vectors.len() < self.ann.exact_below {
            return Ok(false);
        }
        let _w = self.write_guard();
        let mut w = self.store.write()?;
        let writer = arroy::Writer::<Cosine>::new(self.arroy, ARROY_INDEX, self.dims);
        if writer.need_build(&w.txn)? {
            let mut rng = StdRng::seed_from_u64(0x5eed);
            writer
                .builder(&mut rng)
                .n_trees(self.ann.n_trees)
                .build(&mut w.txn)?;
            w.txn.commit()?;
        } else {
            drop(w);
        }
        let snap = self.snapshot();
        self.publish(Snapshot {
            ann_ready: true,
            ..(*snap).clone()
        });
        Ok(true)
    }

    /// Approximate nearest neighbours from arroy, restricted to `candidates`; arroy inspects
    /// `search_k` tree nodes.
    pub fn ann_candidates(
        &self,
        query: &[f32],
        count: usize,
        search_k: usize,
        candidates: Option<&RoaringBitmap>,
    ) -> anyhow::Result<Vec<u32>> {
        let r = self.store.read()?;
        let reader = arroy::Reader::<Cosine>::open(&r.txn, ARROY_INDEX, self.arroy)?;
        let mut q = reader.nns(count);
        q.search_k(NonZeroUsize::new(search_k.max(count)).expect("count > 0"));
        if let Some(c) = candidates {
            q.candidates(c);
        }
        Ok(q.by_vector(&r.txn, query)?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// Cross-checks the records against each other and against the vectors.
    pub fn integrity(&self) -> anyhow::Result<IndexStats> {
        // Inside the write lock: no change is between LMDB's commit and the keyword index's.
        let _w = self.write_guard();
        let r = self.store.read()?;
        let snap = self.snapshot();
        let documents = self.documents.len(&r.txn)?;
        let chunks = self.chunks.len(&r.txn)?;
        let mut declared = 0u64;
        for entry in self.documents.iter(&r.txn)? {
            declared += entry?.1.chunks as u64;
        }
        let writer = arroy::Writer::<Cosine>::new(self.arroy, ARROY_INDEX, self.dims);
        let arroy_items = if writer.is_empty(&r.txn)? {
            0
        } else {
            writer.iter(&r.txn)?.count() as u64
        };
        let stats = IndexStats {
            documents,
            chunks,
            vectors: snap.vectors.len() as u64,
            bytes: self.store.used_bytes(),
            ann_ready: snap.ann_ready,
        };
        let keyword = self.keyword.num_docs();
        // Staged keyword changes are not counted until their commit.
        let keyword_staged = !self.backlog().staged.is_empty();
        if declared != chunks
            || chunks != arroy_items
            || chunks != stats.vectors
            || (chunks != keyword && !keyword_staged)
        {
            bail!(
                "inconsistent index: documents declare {declared} chunks, {chunks} chunk records, {arroy_items} stored vectors, {} in memory, {keyword} in the keyword index",
                stats.vectors
            );
        }
        Ok(stats)
    }

    pub fn stats(&self) -> IndexStats {
        let snap = self.snapshot();
        IndexStats {
            documents: snap.docs.len() as u64,
            chunks: snap.vectors.len() as u64,
            vectors: snap.vectors.len() as u64,
            bytes: self.store.used_bytes(),
            ann_ready: snap.ann_ready,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct IndexStats {
    pub documents: u64,
    pub chunks: u64,
    pub vectors: u64,
    pub bytes: u64,
    pub ann_ready: bool,
}

/// The languages of a document's chunks: the one its metadata gives, else detected.
fn chunk_languages(d: &DocumentRecord, texts: &[&str], allowed: &[Language]) -> Vec<Language> {
    let given = d
        .metadata
        .get(language::METADATA_KEY)
        .and_then(|l| Language::parse(l));
    language::assign(texts, given, allowed)
}

/// Stages a stored document's chunks into a keyword index (replay and rebuild).
fn stage_document(
    kw: &KeywordIndex,
    chunks: &Database<'static, U32<BigEndian>, SerdeJson<ChunkRecord>>,
    txn: &heed::RoTxn,
    d: &DocumentRecord,
    allowed: &[Language],
) -> anyhow::Result<()> {
    let mut records = Vec::with_capacity(d.chunks as usize);
    for item in d.items() {
        if let Some(c) = chunks.get(txn, &item)? {
            records.push((item, c));
        }
    }
    let texts: Vec<&str> = records.iter().map(|(_, c)| c.text.as_str()).collect();
    let langs = chunk_languages(d, &texts, allowed);
    let staged: Vec<KeywordChunk> = records
        .iter()
        .zip(langs)
        .map(|((item, c), language)| KeywordChunk {
            item: *item,
            text: &c.text,
            heading_path: &c.location.heading_path,
            language,
        })
        .collect();
    kw.stage_replace(&d.document_id, &d.filename, &staged)
}

fn summary(d: &DocumentRecord) -> DocSummary {
    DocSummary {
        filename: d.filename.clone(),
        content_type: d.content_type.clone(),
        metadata: d.metadata.clone(),
        created_at_ms: d.created_at_ms,
        items: d.items(),
    }
}

fn text_key(text: &str, item: u32) -> [u8; 36] {
    let mut k = [0u8; 36];
    k[..32].copy_from_slice(&text_hash(text));
    k[32..].copy_from_slice(&item.to_be_bytes());
    k
}

/// What an environment holds, read without opening it as an [`Index`] (no vectors loaded):
/// for snapshot manifests.
#[derive(Debug, Clone)]
pub struct StoredFacts {
    pub model_id: String,
    pub dimensions: usize,
    pub log_position: Option<LogPosition>,
    pub documents: u64,
    pub chunks: u64,
}

/// Rewrites the recorded log position of an environment no index has open (a node joining a
/// log after restoring a snapshot, before it starts).
pub fn set_stored_position(store: &Store, position: &LogPosition) -> anyhow::Result<()> {
    let mut w = store.write()?;
    store
        .dbs
        .meta
        .put(&mut w.txn, LOG_POSITION, &serde_json::to_vec(position)?)?;
    w.txn.commit()?;
    Ok(())
}

/// The precision an existing index's vectors were computed in (`fp32`, `bf16`; the embedder
/// names them): its record, or `fp32` for an index made before precisions were recorded; `None`
/// for an environment that holds no index yet.
pub fn stored_precision(store: &Store) -> anyhow::Result<Option<String>> {
    let r = store.read()?;
    let meta = store.dbs.meta;
    match meta.get(&r.txn, PRECISION)? {
        Some(b) => Ok(Some(String::from_utf8_lossy(b).into_owned())),
        None if meta.get(&r.txn, "format_version")?.is_some() => Ok(Some("fp32".into())),
        None => Ok(None),
    }
}

/// Records the precision of a new index, or checks an existing index's record against it.
pub fn record_precision(store: &Store, precision: &str) -> anyhow::Result<()> {
    if let Some(p) = stored_precision(store)? {
        anyhow::ensure!(
            p == precision,
            "the index was built with {p} vectors, not {precision}"
        );
    }
    let mut w = store.write()?;
    store
        .dbs
        .meta
        .put(&mut w.txn, PRECISION, precision.as_bytes())?;
    w.txn.commit()?;
    Ok(())
}

pub fn stored_facts(store: &Store) -> anyhow::Result<StoredFacts> {
    let r = store.read()?;
    let meta = store.dbs.meta;
    let model_id =
        String::from_utf8_lossy(meta.get(&r.txn, "model_id")?.unwrap_or_default()).into_owned();
    let dimensions = meta
        .get(&r.txn, "dimensions")?
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0) as usize;
    let log_position = match meta.get(&r.txn, LOG_POSITION)? {
        Some(b) => Some(serde_json::from_slice(b)?),
        None => None,
    };
    Ok(StoredFacts {
        model_id,
        dimensions,
        log_position,
        documents: store.dbs.documents.len(&r.txn)?,
        chunks: store.dbs.chunks.len(&r.txn)?,
    })
}

fn check_or_init_meta(
    wtxn: &mut heed::RwTxn,
    meta: &Database<'static, Str, Bytes>,
    model_id: &str,
    dims: usize,
) -> anyhow::Result<()> {
    match meta.get(wtxn, "format_version")? {
        None => {
            meta.put(wtxn, "format_version", &FORMAT_VERSION.to_be_bytes())?;
            meta.put(wtxn, "model_id", model_id.as_bytes())?;
            meta.put(wtxn, "dimensions", &(dims as u32).to_be_bytes())?;
        }
        Some(v) => {
            let version = u32::from_be_bytes(
                v.try_into()
                    .map_err(|_| anyhow!("corrupt format_version"))?,
            );
            if version != FORMAT_VERSION {
                bail!("index format version {version} is not supported by this build (expects {FORMAT_VERSION}); restore from a snapshot made by a compatible version");
            }
            let stored = String::from_utf8_lossy(meta.get(wtxn, "model_id")?.unwrap_or_default())
                .into_owned();
            if stored != model_id {
                bail!("the index was built with model {stored:?} but this node runs {model_id:?}; vectors of two models cannot be mixed (use another --data-dir or re-ingest)");
            }
            let d = meta
                .get(wtxn, "dimensions")?
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
                .unwrap_or(0);
            if d as usize != dims {
                bail!("the index holds {d}-dimensional vectors, the model produces {dims}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) fn open_for_tests(
    dir: &std::path::Path,
    dims: usize,
    ann: AnnSettings,
) -> anyhow::Result<Index> {
    let store = Arc::new(Store::open(dir, 1 << 30)?);
    Index::open(
        store,
        "test-model@000000000000",
        dims,
        ann,
        &KeywordSettings::default(),
    )
}

#[cfg(test)]
mod tests;

#[cfg(test)]
#[path = "keyword/tests.rs"]
mod keyword_tests;
