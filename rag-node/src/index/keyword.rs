//! The keyword index: a tantivy index in the environment's directory (`db/keyword/`), one
//! tantivy document per chunk, keyed by the chunk's item id (the id its vector has).
//!
//! Fields: the chunk text and its heading path in the word fields of the chunk's language
//! (`body_pt`, `heading_pt`, …; each with that language's analyzer), the filename in a neutral
//! field, identifiers in their own field (see [`super::analysis`]), the document id (raw, for
//! deletes) and the item id (a fast field: results and filters are item ids, like the vector
//! index's). Texts are not stored: LMDB has them.
//!
//! This type is only the tantivy side. How it is kept consistent with LMDB (the same apply
//! path, the commit payload, replay and rebuild at open) is in `super` (`Index`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use tantivy::collector::{FilterCollector, TopDocs};
use tantivy::query::{BooleanQuery, BoostQuery, Occur, PhraseQuery, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED, STRING,
};
use tantivy::tokenizer::{TextAnalyzer, TokenizerManager};
use tantivy::{doc, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use super::analysis::{self, Analysis};
use crate::language::Language;
use directory::DeferredSync;

mod directory;

/// Bumped when the schema or an analyzer changes: an index with another version is rebuilt.
const SCHEMA_VERSION: u32 = 1;
/// Memory for the one indexing thread's in-RAM segment: tantivy's minimum, as commits (one per
/// document, or one per interval of documents applied back to back) keep segments small (a
/// larger budget only allocates more per commit).
const WRITER_MEMORY: usize = 15_000_000;

/// `[keyword] commit_interval_ms`'s default: Elasticsearch's refresh interval, the bound on
/// how late keyword searches see a document while documents are applied back to back.
pub const DEFAULT_COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Relative weights of the fields in a query; measured with `rag-node bench quality`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FieldBoosts {
    pub body: f32,
    pub heading: f32,
    pub filename: f32,
    pub identifier: f32,
}

impl Default for FieldBoosts {
    fn default() -> Self {
        FieldBoosts {
            body: 1.0,
            heading: 1.5,
            filename: 1.0,
            identifier: 1.5,
        }
    }
}

/// What the keyword index is built with: changing any of it rebuilds the index at start.
#[derive(Debug, Clone, PartialEq)]
pub struct KeywordSettings {
    /// The languages chunks are detected among (the first is the fallback).
    pub languages: Vec<Language>,
    pub analysis: Analysis,
    pub boosts: FieldBoosts,
    /// How long an applied change may wait for the keyword index's next commit when changes
    /// come back to back (see `index::KeywordCommit::Grouped`). Not part of the schema.
    pub commit_interval: std::time::Duration,
}

impl Default for KeywordSettings {
    fn default() -> Self {
        KeywordSettings {
            languages: vec![Language::Portuguese, Language::English],
            analysis: Analysis::Stemmed,
            boosts: FieldBoosts::default(),
            commit_interval: DEFAULT_COMMIT_INTERVAL,
        }
    }
}

impl KeywordSettings {
    /// What a commit records so that an index built differently is recognised.
    pub fn schema_tag(&self) -> String {
        let langs: Vec<&str> = self.languages.iter().map(|l| l.code()).collect();
        format!("v{SCHEMA_VERSION};{:?};{}", self.analysis, langs.join(","))
    }
}

/// Recorded with every tantivy commit: which LMDB environment (`uid`) at which apply sequence
/// number the committed state reflects, built with which schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitPayload {
    pub uid: String,
    pub seq: u64,
    pub schema: String,
}

/// One chunk as the keyword index sees it.
pub struct KeywordChunk<'a> {
    pub item: u32,
    pub text: &'a str,
    pub heading_path: &'a [String],
    pub language: Language,
}

#[derive(Clone, Copy)]
struct LangFields {
    language: Language,
    body: Field,
    heading: Field,
}

#[derive(Clone)]
struct Fields {
    item: Field,
    doc: Field,
    filename: Field,
    identifier: Field,
    langs: Vec<LangFields>,
}

pub struct KeywordIndex {
    dir: PathBuf,
    /// tantivy's files, written without fsync until [`KeywordIndex::sync`].
    directory: DeferredSync,
    index: tantivy::Index,
    writer: Mutex<IndexWriter<TantivyDocument>>,
    reader: IndexReader,
    fields: Fields,
    settings: KeywordSettings,
    /// Per searcher generation and field: the field's tokens in live documents.
    alive_tokens: Mutex<std::collections::HashMap<(u64, Field), u64>>,
}

fn tokenizer_name(l: Language) -> String {
    format!("words_{}", l.code())
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = |tokenizer: &str| {
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(tokenizer)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        )
    };
    let item = b.add_u64_field("item", FAST | INDEXED);
    let doc = b.add_text_field("doc", STRING);
    let filename = b.add_text_field("filename", text("neutral"));
    let identifier = b.add_text_field("identifier", text("identifier"));
    let langs = Language::ALL
        .into_iter()
        .map(|l| LangFields {
            language: l,
            body: b.add_text_field(&format!("body_{}", l.code()), text(&tokenizer_name(l))),
            heading: b.add_text_field(&format!("heading_{}", l.code()), text(&tokenizer_name(l))),
        })
        .collect();
    (
        b.build(),
        Fields {
            item,
            doc,
            filename,
            identifier,
            langs,
        },
    )
}

fn tokenizers(analysis: Analysis) -> TokenizerManager {
    let m = TokenizerManager::default();
    for l in Language::ALL {
        m.register(&tokenizer_name(l), analysis::word_analyzer(l, analysis));
    }
    m.register("neutral", analysis::neutral_analyzer());
    m.register("identifier", analysis::identifier_analyzer());
    m
}

impl KeywordIndex {
    /// Opens the index in `dir` and returns it with its last commit's payload (`None` when it
    /// has none: the caller rebuilds; it compares the schema tag too). An index that cannot be opened is an
    /// error; the caller rebuilds then too.
    pub fn open(
        dir: &Path,
        settings: &KeywordSettings,
    ) -> anyhow::Result<(KeywordIndex, Option<CommitPayload>)> {
        let (schema, fields) = schema();
        let directory = DeferredSync::open(dir)?;
        let mut index = tantivy::Index::open(directory.clone())
            .with_context(|| format!("opening the keyword index in {}", dir.display()))?;
        if index.schema() != schema {
            anyhow::bail!("the keyword index in {} has another schema", dir.display());
        }
        // Commits are not synced one by one (see `directory`): after a machine crash a segment
        // file may hold less than its commit wrote. Every file of the last commit is checked
        // against the checksum tantivy wrote into it; a missing one fails the reader below.
        let metas = index.load_metas()?;
        for file in metas.list_segment_files() {
            if dir.join(&file).exists() && !index.directory().validate_checksum(&file)? {
                anyhow::bail!(
                    "the keyword index file {} is damaged (checksum)",
                    file.display()
                );
            }
        }
        index.set_tokenizers(tokenizers(settings.analysis));
        let payload = metas
            .payload
            .and_then(|p| serde_json::from_str::<CommitPayload>(&p).ok());
        Ok((Self::with(directory, index, fields, settings)?, payload))
    }

    /// Creates an empty index in `dir`, replacing whatever was there.
    pub fn create(dir: &Path, settings: &KeywordSettings) -> anyhow::Result<KeywordIndex> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("removing the keyword index in {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir)?;
        let (schema, fields) = schema();
        let directory = DeferredSync::open(dir)?;
        let mut index =
            tantivy::Index::create(directory.clone(), schema, tantivy::IndexSettings::default())?;
        index.set_tokenizers(tokenizers(settings.analysis));
        Self::with(directory, index, fields, settings)
    }

    fn with(
        directory: DeferredSync,
        index: tantivy::Index,
        fields: Fields,
        settings: &KeywordSettings,
    ) -> anyhow::Result<KeywordIndex> {
        // One indexing thread: ingestion is one document at a time and the node has few cores.
        let writer = index.writer_with_num_threads(1, WRITER_MEMORY)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(KeywordIndex {
            dir: directory.root().to_owned(),
            directory,
            index,
            writer: Mutex::new(writer),
            reader,
            fields,
            settings: settings.clone(),
            alive_tokens: Mutex::new(std::collections::HashMap::new()),
        })
    }

    pub fn settings(&self) -> &KeywordSettings {
        &self.settings
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, IndexWriter<TantivyDocument>> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stages the removal of a document's chunks (visible at the next commit).
    pub fn stage_delete(&self, document_id: &str) {
        self.writer()
            .delete_term(Term::from_field_text(self.fields.doc, document_id));
    }

    /// Stages a document's complete replacement: its old chunks removed, these added.
    pub fn stage_replace(
        &self,
        document_id: &str,
        filename: &str,
        chunks: &[KeywordChunk<'_>],
    ) -> anyhow::Result<()> {
        let w = self.writer();
        w.delete_term(Term::from_field_text(self.fields.doc, document_id));
        let f = &self.fields;
        for c in chunks {
            let lang = f
                .langs
                .iter()
                .find(|l| l.language == c.language)
                .expect("a field pair per language");
            let heading = c.heading_path.join(" \u{203a} ");
            let mut d = doc!(
                f.item => c.item as u64,
                f.doc => document_id,
                f.filename => filename,
                lang.body => c.text,
                lang.heading => heading.as_str(),
            );
            // Identifiers of the whole chunk: text, headings and filename.
            d.add_text(f.identifier, c.text);
            d.add_text(f.identifier, &heading);
            d.add_text(f.identifier, filename);
            w.add_document(d)?;
        }
        Ok(())
    }

    /// Makes every staged change visible to searches and durable (synced), recording
    /// `payload`: for rebuilds and replays, which clear the pending marks right after.
    pub fn commit(&self, payload: &CommitPayload) -> anyhow::Result<()> {
        let mut w = self.writer();
        let mut prepared = w.prepare_commit()?;
        prepared.set_payload(&serde_json::to_string(payload)?);
        prepared.commit()?;
        drop(w);
        self.reader.reload()?;
        self.sync()
    }

    /// Makes every commit so far durable: the files tantivy wrote since the last sync, then
    /// the directory.
    pub fn sync(&self) -> anyhow::Result<()> {
        self.directory
            .sync()
            .with_context(|| format!("syncing the keyword index in {}", self.dir.display()))
    }

    /// Makes every staged change visible to searches, recording `payload`, without syncing
    /// (see [`KeywordIndex::sync`]). On failure the staged changes are dropped.
    pub fn commit_unsynced(&self, payload: &CommitPayload) -> anyhow::Result<()> {
        let mut w = self.writer();
        let committed = w
            .prepare_commit()
            .and_then(|mut p| {
                p.set_payload(&serde_json::to_string(payload).unwrap_or_default());
                p.commit()
            })
            .map(|_| ())
            .map_err(anyhow::Error::from);
        if committed.is_err() {
            let _ = w.rollback();
        }
        drop(w);
        committed?;
        Ok(self.reader.reload()?)
    }

    /// Drops the staged changes (a commit that failed).
    pub fn rollback(&self) -> anyhow::Result<()> {
        self.writer().rollback()?;
        Ok(())
    }

    /// Chunks in the committed index.
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Bytes of the index's files.
    pub fn size_bytes(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// The query tantivy runs for a query string: each free word in every language's body and
    /// heading fields (each analysed by its field's analyzer), the filename and the identifier
    /// field, all optional and summed (BM25); each quoted phrase as a phrase in any of the word
    /// fields, required.
    fn build_query(&self, query: &str) -> Option<Box<dyn Query>> {
        let parsed = analysis::parse_query(query);
        let f = &self.fields;
        let b = self.settings.boosts;
        let mut should: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let analyzer = |field: Field| -> TextAnalyzer {
            let entry = self.index.schema().get_field_entry(field).clone();
            let name = match entry.field_type() {
                tantivy::schema::FieldType::Str(o) => o
                    .get_indexing_options()
                    .map(|i| i.tokenizer().to_owned())
                    .unwrap_or_default(),
                _ => String::new(),
            };
            self.index
                .tokenizers()
                .get(&name)
                .unwrap_or_else(analysis::neutral_analyzer)
        };
        let mut add_terms = |field: Field, boost: f32, text: &str| {
            let mut a = analyzer(field);
            let mut seen = std::collections::HashSet::new();
            for (_, t) in analysis::terms(&mut a, text) {
                if !seen.insert(t.clone()) {
                    continue;
                }
                let q: Box<dyn Query> = Box::new(TermQuery::new(
                    Term::from_field_text(field, &t),
                    IndexRecordOption::WithFreqs,
                ));
                should.push((Occur::Should, boost_by(q, boost)));
            }
        };
        // Phrases count as words too, so a document with the phrase's words scattered still
        // ranks below one with the phrase, and a required phrase never makes a query empty
        // of scoring terms.
        let all_words = format!("{} {}", parsed.free, parsed.phrases.join(" "));
        for l in &f.langs {
            add_terms(l.body, b.body, &all_words);
            add_terms(l.heading, b.heading, &all_words);
        }
        add_terms(f.filename, b.filename, &all_words);
        add_terms(f.identifier, b.identifier, query);
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for phrase in &parsed.phrases {
            let mut alternatives: Vec<(Occur, Box<dyn Query>)> = Vec::new();
            for l in &f.langs {
                for field in [l.body, l.heading] {
                    let mut a = analyzer(field);
                    let terms: Vec<(usize, Term)> = analysis::terms(&mut a, phrase)
                        .into_iter()
                        .map(|(p, t)| (p, Term::from_field_text(field, &t)))
                        .collect();
                    let q: Box<dyn Query> = match terms.len() {
                        0 => continue,
                        1 => Box::new(TermQuery::new(
                            terms[0].1.clone(),
                            IndexRecordOption::WithFreqs,
                        )),
                        _ => Box::new(PhraseQuery::new_with_offset(terms)),
                    };
                    alternatives.push((Occur::Should, q));
                }
            }
            if !alternatives.is_empty() {
                clauses.push((Occur::Must, Box::new(BooleanQuery::new(alternatives))));
            }
        }
        if should.is_empty() && clauses.is_empty() {
            return None;
        }
        if !should.is_empty() {
            clauses.push((Occur::Must, Box::new(BooleanQuery::new(should))));
        }
        Some(Box::new(BooleanQuery::new(clauses)))
    }

    /// The best `limit` items for `query` by BM25, best first, restricted to `candidates`.
    pub fn search(
        &self,
        query: &str,
        limit: usize,
        candidates: Option<&RoaringBitmap>,
    ) -> anyhow::Result<Vec<(u32, f32)>> {
        let Some(q) = self.build_query(query) else {
            return Ok(Vec::new());
        };
        let searcher = self.reader.searcher();
        // tantivy breaks ties in score by a document's place in its segments, which differs
        // between nodes (their commits group documents differently): the sort key carries the
        // item id, so the cut at `limit` and the order are the same on every node.
        let top =
            TopDocs::with_limit(limit.max(1)).tweak_score(|segment: &tantivy::SegmentReader| {
                let items = segment
                    .fast_fields()
                    .u64("item")
                    .ok()
                    .map(|c| c.first_or_default_col(u64::MAX));
                move |doc: tantivy::DocId, score: tantivy::Score| {
                    let item = items.as_ref().map_or(u64::MAX, |c| c.get_val(doc));
                    (score, std::cmp::Reverse(item))
                }
            });
        let stats = AliveStatistics {
            searcher: &searcher,
            tokens: &self.alive_tokens,
        };
        type Found = Vec<((f32, std::cmp::Reverse<u64>), tantivy::DocAddress)>;
        let found: Found = match candidates {
            Some(c) => {
                let c = Arc::new(c.clone());
                let filter = FilterCollector::new(
                    "item".to_owned(),
                    move |item: u64| c.contains(item as u32),
                    top,
                );
                searcher.search_with_statistics_provider(&q, &filter, &stats)?
            }
            None => searcher.search_with_statistics_provider(&q, &top, &stats)?,
        };
        let mut out: Vec<(u32, f32)> = found
            .into_iter()
            .filter(|((_, item), _)| item.0 != u64::MAX)
            .map(|((score, item), _)| (item.0 as u32, score))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out.truncate(limit);
        Ok(out)
    }
}

fn boost_by(q: Box<dyn Query>, boost: f32) -> Box<dyn Query> {
    if (boost - 1.0).abs() < f32::EPSILON {
        q
    } else {
        Box::new(BoostQuery::new(q, boost))
    }
}

/// BM25's statistics over live documents only. tantivy's own count the deleted documents a
/// segment still holds until it is merged, and merges run in the background at their own
/// times: two nodes with the same documents would score (and so rank) them slightly apart, and
/// a node that rebuilt its index (restored from a snapshot) differently again. Counted here
/// from the live documents, the statistics, and so every score, depend only on what is
/// indexed. Document lengths are summed as tantivy stores them (quantised), the same in every
/// segment layout.
struct AliveStatistics<'a> {
    searcher: &'a tantivy::Searcher,
    tokens: &'a Mutex<std::collections::HashMap<(u64, Field), u64>>,
}

impl tantivy::query::Bm25StatisticsProvider for AliveStatistics<'_> {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        let generation = self.searcher.generation().generation_id();
        let mut cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&t) = cache.get(&(generation, field)) {
            return Ok(t);
        }
        let mut total = 0u64;
        for seg in self.searcher.segment_readers() {
            let norms = seg.get_fieldnorms_reader(field)?;
            for doc in seg.doc_ids_alive() {
                total += norms.fieldnorm(doc) as u64;
            }
        }
        // Only the current generation is worth keeping.
        cache.retain(|(g, _), _| *g == generation);
        cache.insert((generation, field), total);
        Ok(total)
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(self.searcher.num_docs())
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        let mut n = 0u64;
        for seg in self.searcher.segment_readers() {
            let inverted = seg.inverted_index(term.field())?;
            match seg.alive_bitset() {
                None => n += inverted.doc_freq(term)? as u64,
                Some(alive) => {
                    if let Some(mut postings) =
                        inverted.read_postings(term, IndexRecordOption::Basic)?
                    {
                        use tantivy::DocSet;
                        let mut doc = postings.doc();
                        while doc != tantivy::TERMINATED {
                            if alive.is_alive(doc) {
                                n += 1;
                            }
                            doc = postings.advance();
                        }
                    }
                }
            }
        }
        Ok(n)
    }
}
