//! `rag-node bench quality`: retrieval quality on two real corpora, the Debian Reference in
//! Portuguese and in English (`rag-node/bench/quality/`: question files with judged units, the
//! unit rule in its README and `check_units.py`).
//!
//! Per corpus: the HTML chapters are split into units exactly as `check_units.py` splits them
//! (ported below, on html5ever's tokenizer); each unit is ingested as one document through the
//! node's own path (extract → chunk → embed → apply) into two indexes, one with the node's
//! keyword analysis (stop words, stems) and one with the plain baseline (lowercase and accent
//! folding only); every question is searched in each configuration with one hit per document,
//! so that the hits are distinct units. Then search latency on 100,000 chunks made of the
//! corpora's chunk texts, and the keyword index's share of ingest time.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, ensure, Context};
use html5ever::tendril::StrTendril;
use html5ever::tokenizer::states::RawKind;
use html5ever::tokenizer::{
    BufferQueue, TagKind, Token, TokenSink, TokenSinkResult, Tokenizer, TokenizerOpts,
};
use rag_api::{ChunkingOptions, Fusion, SearchMode, SearchRequest, SourceLocation};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::Config;
use crate::embed::Embedder;
use crate::index::analysis::Analysis;
use crate::index::keyword::{CommitPayload, KeywordChunk, KeywordIndex};
use crate::index::{DocumentUpsert, Index, KeywordCommit, KeywordSettings, NewChunk};
use crate::records::DocumentRecord;
use crate::search::{SearchDefaults, Strategy};
use crate::store::Store;

/// The question files, written before any tuning (never edited by this benchmark).
pub const PT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/bench/quality/debian-reference-pt.json"
);
pub const EN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/bench/quality/debian-reference-en.json"
);

/// Hits per question; hit@n and MRR are read from them.
const K: usize = 10;
/// Size of the latency index.
const LATENCY_CHUNKS: usize = 100_000;
/// Searches per mode in the latency measurement (at least).
const LATENCY_SEARCHES: usize = 500;

#[derive(Debug, Deserialize)]
struct QuestionFile {
    corpus: String,
    language: String,
    html_dir: PathBuf,
    #[serde(default)]
    depth3_chapters: Vec<String>,
    units: usize,
    questions: Vec<Question>,
}

#[derive(Debug, Clone, Deserialize)]
struct Question {
    id: String,
    kind: String,
    split: String,
    question: String,
    units: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Units: a port of check_units.py (ChapterParser, clean, parse_sections, build_units).

const SKIP_DIV_CLASSES: &[&str] = &["navheader", "navfooter", "toc", "footnotes"];

/// Python's `str.isspace` (what `\s` and `strip()` match): Rust's White_Space plus the
/// information separators U+001C–U+001F.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn py_strip(s: &str) -> &str {
    s.trim_matches(py_space)
}

/// `clean()`: NBSP → space, `[ \t]+` → one space, `\s*\n\s*` → one newline, stripped.
fn clean(raw: &str) -> String {
    let raw = raw.replace('\u{a0}', " ");
    let mut spaced = String::with_capacity(raw.len());
    let mut in_run = false;
    for c in raw.chars() {
        if c == ' ' || c == '\t' {
            if !in_run {
                spaced.push(' ');
            }
            in_run = true;
        } else {
            spaced.push(c);
            in_run = false;
        }
    }
    // A maximal whitespace run that holds a newline is what `\s*\n\s*` replaces.
    let mut out = String::with_capacity(spaced.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.contains('\n') {
            out.push('\n');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in spaced.chars() {
        if py_space(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    py_strip(&out).to_owned()
}

/// A heading's text: NBSP → space, `\s+` → one space, stripped.
fn heading_text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut in_run = false;
    for c in raw.chars() {
        if c == '\u{a0}' || py_space(c) {
            if !in_run {
                out.push(' ');
            }
            in_run = true;
        } else {
            out.push(c);
            in_run = false;
        }
    }
    py_strip(&out).to_owned()
}

/// `NUM_RE` on a heading's text: `^(?:(?:Chapter|Capítulo|Appendix|Apêndice)\s+)?`
/// `((?:[0-9]+|[A-Z])(?:\.[0-9]+)*)\.\s+(.*)$` → (number, title). The text is already
/// normalised (single spaces, stripped).
fn split_number(raw: &str) -> Option<(String, String)> {
    for prefix in ["Chapter ", "Capítulo ", "Appendix ", "Apêndice "] {
        if let Some(found) = raw.strip_prefix(prefix).and_then(number_and_title) {
            return Some(found);
        }
    }
    number_and_title(raw)
}

fn number_and_title(s: &str) -> Option<(String, String)> {
    let b = s.as_bytes();
    let mut i = 0;
    match b.first()? {
        c if c.is_ascii_digit() => {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
        c if c.is_ascii_uppercase() => i = 1,
        _ => return None,
    }
    // Greedy `(\.[0-9]+)*`: backtracking into it cannot help, since what it gives back starts
    // with ".<digit>", never with the ". " that must follow.
    while i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    if b.get(i) != Some(&b'.') {
        return None;
    }
    let title = s[i + 1..].strip_prefix(' ')?;
    Some((s[..i].to_owned(), title.to_owned()))
}

/// One `<hN class="title">` and the text after it, up to the next one.
struct Item {
    num: Option<String>,
    title: String,
    text: String,
}

/// `ChapterParser`, fed by html5ever's tokenizer (tag and text events in source order, like
/// Python's `HTMLParser`; no tree is built).
#[derive(Default)]
struct ChapterParser {
    items: Vec<Item>,
    /// True for a div that is skipped.
    div_stack: Vec<bool>,
    skip_depth: usize,
    in_heading: Option<u8>,
    heading_buf: String,
    in_script: bool,
}

fn heading_level(tag: &str) -> Option<u8> {
    match tag {
        "h1" | "h2" | "h3" | "h4" | "h5" => Some(tag.as_bytes()[1] - b'0'),
        _ => None,
    }
}

impl ChapterParser {
    /// A start tag; returns the raw-text state Python's parser enters for script and style.
    fn start(&mut self, tag: &str, class: &str) -> Option<RawKind> {
        let has_class = |names: &[&str]| class.split(py_space).any(|c| names.contains(&c));
        if tag == "div" {
            let skip = has_class(SKIP_DIV_CLASSES);
            self.div_stack.push(skip);
            if skip {
                self.skip_depth += 1;
            }
        } else if tag == "script" || tag == "style" {
            self.in_script = true;
            return Some(if tag == "script" {
                RawKind::ScriptData
            } else {
                RawKind::Rawtext
            });
        } else if let Some(level) =
            heading_level(tag).filter(|_| has_class(&["title"]) && self.skip_depth == 0)
        {
            self.in_heading = Some(level);
            self.heading_buf.clear();
        } else if let Some(last) = self.items.last_mut() {
            // As in the Python, even inside skipped divs and headings.
            if ["p", "li", "tr", "br", "pre", "dt", "dd"].contains(&tag) {
                last.text.push('\n');
            } else if tag == "td" || tag == "th" {
                last.text.push_str(" | ");
            }
        }
        None
    }

    fn end(&mut self, tag: &str) {
        if tag == "div" {
            if self.div_stack.pop() == Some(true) {
                self.skip_depth -= 1;
            }
        } else if tag == "script" || tag == "style" {
            self.in_script = false;
        } else if heading_level(tag).is_some() && self.in_heading == heading_level(tag) {
            let raw = heading_text(&self.heading_buf);
            let (num, title) = match split_number(&raw) {
                Some((n, t)) => (Some(n), t),
                None => (None, raw),
            };
            self.items.push(Item {
                num,
                title,
                text: String::new(),
            });
            self.in_heading = None;
        }
    }

    fn data(&mut self, text: &str) {
        if self.skip_depth > 0 || self.in_script {
            return;
        }
        if self.in_heading.is_some() {
            self.heading_buf.push_str(text);
        } else if let Some(last) = self.items.last_mut() {
            last.text.push_str(text);
        }
    }
}

struct Sink(RefCell<ChapterParser>);

impl TokenSink for Sink {
    type Handle = ();

    fn process_token(&self, token: Token, _line: u64) -> TokenSinkResult<()> {
        let mut p = self.0.borrow_mut();
        match token {
            Token::TagToken(tag) => match tag.kind {
                TagKind::StartTag => {
                    let class = tag
                        .attrs
                        .iter()
                        .find(|a| &*a.name.local == "class")
                        .map(|a| a.value.to_string())
                        .unwrap_or_default();
                    let raw = p.start(&tag.name, &class);
                    // Python calls handle_starttag then handle_endtag for `<x/>`, and enters
                    // no raw-text state for it.
                    if tag.self_closing {
                        p.end(&tag.name);
                    } else if let Some(raw) = raw {
                        return TokenSinkResult::RawData(raw);
                    }
                }
                TagKind::EndTag => p.end(&tag.name),
            },
            Token::CharacterTokens(text) => p.data(&text),
            _ => {}
        }
        TokenSinkResult::Continue
    }
}

fn parse_chapter(src: &str) -> Vec<Item> {
    let sink = Sink(RefCell::new(ChapterParser::default()));
    let input = BufferQueue::default();
    input.push_back(StrTendril::from_slice(src));
    let tokenizer = Tokenizer::new(sink, TokenizerOpts::default());
    let _ = tokenizer.feed(&input);
    tokenizer.end();
    tokenizer.sink.0.into_inner().items
}

/// A numbered heading with its own text (not its sub-sections').
struct Section {
    num: String,
    depth: usize,
    title: String,
    text: String,
    file: String,
}

/// `ch[0-9][0-9].LANG.html` then `ap[a-z].LANG.html`, each sorted.
fn chapter_files(dir: &Path, lang: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut chapters = Vec::new();
    let mut appendices = Vec::new();
    let suffix = format!(".{lang}.html");
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(&suffix) else {
            continue;
        };
        let b = stem.as_bytes();
        if b.len() == 4 && stem.starts_with("ch") && b[2..].iter().all(u8::is_ascii_digit) {
            chapters.push(dir.join(&name));
        } else if b.len() == 3 && stem.starts_with("ap") && b[2].is_ascii_lowercase() {
            appendices.push(dir.join(&name));
        }
    }
    chapters.sort();
    appendices.sort();
    chapters.extend(appendices);
    Ok(chapters)
}

fn parse_sections(dir: &Path, lang: &str) -> anyhow::Result<Vec<Section>> {
    let mut out = Vec::new();
    for path in chapter_files(dir, lang)? {
        let src = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        for it in parse_chapter(&src) {
            let Some(num) = it.num else { continue };
            out.push(Section {
                depth: num.matches('.').count() + 1,
                num,
                title: it.title,
                text: clean(&it.text),
                file: file.clone(),
            });
        }
    }
    Ok(out)
}

/// A judged unit: its own heading's text, then its sub-sections (deeper headings) in order.
struct Unit {
    id: String,
    title: String,
    file: String,
    own_text: String,
    subsections: Vec<Section>,
}

impl Unit {
    /// The unit's text exactly as `check_units.py` builds it (what the questions were judged on).
    fn text(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if !self.own_text.is_empty() {
            parts.push(self.own_text.clone());
        }
        for s in &self.subsections {
            parts.push(format!("{}. {}\n{}", s.num, s.title, s.text));
        }
        py_strip(&parts.join("\n")).to_owned()
    }

    /// The chapter file's stem: `ch09`, `apa`.
    fn chapter(&self) -> &str {
        self.file.split('.').next().unwrap_or("")
    }

    /// The document ingested for the unit: its numbered title as `<h1>`, each line of text as a
    /// paragraph, and the sub-sections' numbered titles as headings one level per depth below.
    fn document_html(&self) -> String {
        let depth = self.id.matches('.').count() + 1;
        let mut out = String::from("<!DOCTYPE html>\n<html><body>\n");
        let heading = |out: &mut String, level: usize, num: &str, title: &str| {
            out.push_str(&format!(
                "<h{level}>{}. {}</h{level}>\n",
                escape(num),
                escape(title)
            ));
        };
        let paragraphs = |out: &mut String, text: &str| {
            for line in text.split('\n').filter(|l| !py_strip(l).is_empty()) {
                out.push_str(&format!("<p>{}</p>\n", escape(line)));
            }
        };
        heading(&mut out, 1, &self.id, &self.title);
        paragraphs(&mut out, &self.own_text);
        for s in &self.subsections {
            heading(
                &mut out,
                (1 + s.depth.saturating_sub(depth)).clamp(2, 6),
                &s.num,
                &s.title,
            );
            paragraphs(&mut out, &s.text);
        }
        out.push_str("</body></html>\n");
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `build_units`: units in document order (a repeated number replaces the unit in place).
fn build_units(sections: Vec<Section>, depth3_chapters: &[String]) -> Vec<Unit> {
    let mut units: Vec<Unit> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for s in sections {
        let chapter = s.num.split('.').next().unwrap_or("");
        let unit_depth = if depth3_chapters.iter().any(|c| c == chapter) {
            3
        } else {
            2
        };
        if s.depth == 1 {
            continue;
        }
        if s.depth <= unit_depth {
            let unit = Unit {
                id: s.num.clone(),
                title: s.title,
                file: s.file,
                own_text: s.text,
                subsections: Vec::new(),
            };
            match at.get(&s.num) {
                Some(&i) => units[i] = unit,
                None => {
                    at.insert(s.num, units.len());
                    units.push(unit);
                }
            }
        } else {
            let id = s
                .num
                .split('.')
                .take(unit_depth)
                .collect::<Vec<_>>()
                .join(".");
            let i = *at.entry(id.clone()).or_insert_with(|| {
                units.push(Unit {
                    id,
                    title: "?".into(),
                    file: s.file.clone(),
                    own_text: String::new(),
                    subsections: Vec::new(),
                });
                units.len() - 1
            });
            units[i].subsections.push(s);
        }
    }
    units
}

/// The units with text of a question file's corpus, checked as `check_units.py` checks them.
fn load_units(qf: &QuestionFile) -> anyhow::Result<Vec<Unit>> {
    let sections = parse_sections(&qf.html_dir, &qf.language)?;
    let units: Vec<Unit> = build_units(sections, &qf.depth3_chapters)
        .into_iter()
        .filter(|u| !u.text().is_empty())
        .collect();
    ensure!(
        units.len() == qf.units,
        "{}: {} units with text in {}, the question file says {} (is the Debian package {} installed?)",
        qf.corpus,
        units.len(),
        qf.html_dir.display(),
        qf.units,
        qf.corpus
    );
    for q in &qf.questions {
        ensure!(!q.units.is_empty(), "{}: no judged units", q.id);
        for u in &q.units {
            ensure!(
                units.iter().any(|x| &x.id == u),
                "{}: unit {u:?} not found (or has no text)",
                q.id
            );
        }
    }
    Ok(units)
}

// ---------------------------------------------------------------------------------------------
// The benchmark.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Stemmed,
    Plain,
}

/// A search configuration: a row of the tables.
struct Run {
    name: &'static str,
    index: Which,
    mode: SearchMode,
    fusion: Option<Fusion>,
    alpha: Option<f32>,
}

const RUNS: &[Run] = &[
    Run {
        name: "dense",
        index: Which::Stemmed,
        mode: SearchMode::Dense,
        fusion: None,
        alpha: None,
    },
    Run {
        name: "keyword (BM25, stemmed)",
        index: Which::Stemmed,
        mode: SearchMode::Keyword,
        fusion: None,
        alpha: None,
    },
    Run {
        name: "hybrid default",
        index: Which::Stemmed,
        mode: SearchMode::Hybrid,
        fusion: None,
        alpha: None,
    },
    Run {
        name: "hybrid RRF",
        index: Which::Stemmed,
        mode: SearchMode::Hybrid,
        fusion: Some(Fusion::Rrf),
        alpha: None,
    },
    Run {
        name: "hybrid weighted α=0.3",
        index: Which::Stemmed,
        mode: SearchMode::Hybrid,
        fusion: Some(Fusion::Weighted),
        alpha: Some(0.3),
    },
    Run {
        name: "hybrid weighted α=0.4",
        index: Which::Stemmed,
        mode: SearchMode::Hybrid,
        fusion: Some(Fusion::Weighted),
        alpha: Some(0.4),
    },
    Run {
        name: "hybrid weighted α=0.5",
        index: Which::Stemmed,
        mode: SearchMode::Hybrid,
        fusion: Some(Fusion::Weighted),
        alpha: Some(0.5),
    },
    Run {
        name: "hybrid weighted α=0.6",
        index: Which::Stemmed,
        mode: SearchMode::Hybrid,
        fusion: Some(Fusion::Weighted),
        alpha: Some(0.6),
    },
    Run {
        name: "hybrid weighted α=0.7",
        index: Which::Stemmed,
        mode: SearchMode::Hybrid,
        fusion: Some(Fusion::Weighted),
        alpha: Some(0.7),
    },
    Run {
        name: "BM25 plain (baseline)",
        index: Which::Plain,
        mode: SearchMode::Keyword,
        fusion: None,
        alpha: None,
    },
    Run {
        name: "hybrid RRF, plain keyword",
        index: Which::Plain,
        mode: SearchMode::Hybrid,
        fusion: Some(Fusion::Rrf),
        alpha: None,
    },
];

/// The rows of the per-kind tables: the default configurations.
const KIND_RUNS: &[&str] = &[
    "dense",
    "keyword (BM25, stemmed)",
    "hybrid RRF",
    "hybrid default",
];
const KINDS: &[&str] = &["paraphrase", "exact", "situation"];
const SPLITS: &[&str] = &["tune", "heldout", "all"];

/// Wall-clock seconds of the ingest stages, summed over a corpus's documents.
#[derive(Default)]
struct IngestTimes {
    extract: f64,
    chunk: f64,
    embed: f64,
    /// `Index::apply_upsert_at` on the stemmed index (LMDB, vectors and the keyword index,
    /// grouped commits as in a worker with a queue), and the final keyword commit.
    apply: f64,
    /// extract + chunk + embed + apply + the standalone keyword work.
    total: f64,
    /// The same upserts applied to the plain index (not part of the pipeline).
    apply_plain: f64,
    /// A standalone keyword index committing as the node does (grouped).
    grouped: KeywordCost,
    /// The same committing every document on its own.
    per_document: KeywordCost,
}

/// What a standalone keyword index cost the ingest loop.
#[derive(Default, Clone, Copy, Serialize)]
struct KeywordCost {
    /// Seconds in its calls: language detection, staging, commits and syncs.
    calls: f64,
    /// CPU seconds of its own tantivy threads (indexing thread, segment updater), which run
    /// beside the embedding threads.
    threads: f64,
    commits: u64,
}

impl KeywordCost {
    /// How much longer ingest takes with it than without, its threads' CPU counted as time
    /// taken from the embedding, given the pipeline's seconds without any standalone index.
    fn slower(&self, base: f64) -> f64 {
        (self.calls + self.threads) / base
    }
}

struct CorpusResult {
    file: QuestionFile,
    /// Per unit: id, title, characters and SHA-256 of its text (as `check_units.py` builds it),
    /// chunks.
    units: Vec<(String, String, usize, String, usize)>,
    chunks: Vec<(String, SourceLocation)>,
    languages: BTreeMap<&'static str, usize>,
    times: IngestTimes,
    /// Per question: its query embedding.
    query_vectors: Vec<Vec<f32>>,
    /// Per run, per question: the ranked unit ids.
    ranked: Vec<Vec<Vec<String>>>,
    /// Questions whose words the model's vocabulary mostly holds (the default alpha for them
    /// is `known_words_alpha`).
    known_words: usize,
}

pub fn run(
    c: Config,
    corpora: &[PathBuf],
    model_dir: Option<PathBuf>,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let model_dir = model_dir.unwrap_or_else(|| c.model_dir.clone());
    let e = Embedder::load_with_prompts(&model_dir, c.batch_policy(), &c.prompts())?;
    let stemmed = c.keyword_settings()?;
    let plain = KeywordSettings {
        analysis: Analysis::Plain,
        ..stemmed.clone()
    };
    let defaults = crate::node::search_defaults(&c);
    let chunking = crate::chunk::validate(&c.chunking, e.max_tokens()).map_err(|m| anyhow!(m))?;
    let langs: Vec<&str> = stemmed.languages.iter().map(|l| l.code()).collect();
    let b = stemmed.boosts;
    println!("# rag-node bench quality\n");
    println!("{}\n", super::cpu_line());
    println!(
        "Model `{}` ({} dims, {}), chunking {} tokens with {} overlap. Keyword index: languages [{}] \
         detected per chunk (no language given), boosts body {} heading {} filename {} identifier {}. \
         Search: k = {K}, per_document_limit = 1 (hits are distinct units), rrf_k = {}, hybrid_depth = {}, \
         ANN crossover {} (exact scan here).\n",
        e.name(),
        e.dimensions(),
        model_dir.display(),
        chunking.max_tokens,
        chunking.overlap_tokens,
        langs.join(", "),
        b.body,
        b.heading,
        b.filename,
        b.identifier,
        defaults.rrf_k,
        defaults.hybrid_depth,
        c.ann().exact_below,
    );
    let dir = super::tempfile_dir()?;
    let result = (|| -> anyhow::Result<()> {
        let mut results = Vec::new();
        for (n, path) in corpora.iter().enumerate() {
            let r = run_corpus(
                &c,
                &e,
                &dir.join(format!("corpus-{n}")),
                path,
                &chunking,
                [&stemmed, &plain],
                &defaults,
            )?;
            print_corpus(&r);
            results.push(r);
        }
        let latency = latency(&c, &e, &dir.join("latency"), &results, &stemmed, &defaults)?;
        print_ingest(&results, c.keyword.commit_interval_ms);
        if let Some(out) = out {
            std::fs::write(out, serde_json::to_vec_pretty(&raw(&results, latency))?)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("\nRaw results: {}", out.display());
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn open_index(
    dir: &Path,
    e: &Embedder,
    c: &Config,
    settings: &KeywordSettings,
) -> anyhow::Result<Index> {
    let store = Arc::new(Store::open(dir, 4 << 30)?);
    Index::open(store, e.model_id(), e.dimensions(), c.ann(), settings)
}

fn run_corpus(
    c: &Config,
    e: &Embedder,
    dir: &Path,
    path: &Path,
    chunking: &ChunkingOptions,
    [stemmed_settings, plain_settings]: [&KeywordSettings; 2],
    defaults: &SearchDefaults,
) -> anyhow::Result<CorpusResult> {
    let file: QuestionFile = serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))?;
    let units = load_units(&file)?;
    let stemmed = open_index(&dir.join("stemmed"), e, c, stemmed_settings)?;
    let plain = open_index(&dir.join("plain"), e, c, plain_settings)?;
    e.embed(&["warm up"])?;

    // 1. Ingest: every unit one document, through the node's stages, and after each document
    // its keyword work once more into a standalone keyword index (see `KeywordAlone`), whose
    // threads' CPU time is counted too (the plain index gets the same upserts after the loop).
    let mut alone = [
        KeywordAlone::create(&dir.join("keyword-alone"), stemmed_settings)?,
        // The same with a commit per document (as before grouped commits), for comparison.
        KeywordAlone::create(
            &dir.join("keyword-each"),
            &KeywordSettings {
                commit_interval: std::time::Duration::ZERO,
                ..stemmed_settings.clone()
            },
        )?,
    ];
    let (mut times, upserts) = ingest_units(c, e, chunking, &units, &stemmed, &mut alone)?;
    let [mut alone, mut each] = alone;
    times.grouped = alone.cost();
    times.per_document = each.cost();
    let unit_rows = units
        .iter()
        .zip(&upserts)
        .map(|(u, up)| {
            let text = u.text();
            (
                u.id.clone(),
                u.title.clone(),
                text.chars().count(),
                sha256_hex(text.as_bytes()),
                up.chunks.len(),
            )
        })
        .collect();
    // The plain-analysis index is a comparison, not part of a node's ingest: built after the
    // timed loop, so that its background merges do not slow the documents being timed.
    for up in &upserts {
        let t = Instant::now();
        plain.apply_upsert(up)?;
        times.apply_plain += t.elapsed().as_secs_f64();
    }
    for idx in [&stemmed, &plain] {
        let kw = idx.keyword_status();
        ensure!(
            kw.error.is_none() && kw.chunks == idx.stats().chunks,
            "keyword index out of step: {kw:?}"
        );
    }

    ensure!(
        alone.kw.num_docs() == alone.next_item as u64,
        "the standalone keyword index lost chunks"
    );
    let languages = alone.languages;
    let chunks: Vec<(String, SourceLocation)> = upserts
        .into_iter()
        .flat_map(|u| u.chunks.into_iter().map(|c| (c.text, c.location)))
        .collect();

    // 2. Every question in every configuration; the query embedded once.
    let mut query_vectors = Vec::with_capacity(file.questions.len());
    let mut ranked: Vec<Vec<Vec<String>>> = vec![Vec::new(); RUNS.len()];
    let mut known_words = 0;
    for q in &file.questions {
        let qv = e.embed_query(&q.question)?;
        // As `Node::search` does: the query's defaults depend on how much of it the model knows.
        let defaults = &defaults.for_query(e.vocabulary_coverage(&q.question));
        known_words += usize::from(defaults.alpha == defaults.known_words_alpha);
        for (r, run) in RUNS.iter().enumerate() {
            let index = match run.index {
                Which::Stemmed => &stemmed,
                Which::Plain => &plain,
            };
            let mut req = SearchRequest::new(q.question.clone());
            req.k = K;
            req.per_document_limit = Some(1);
            req.include_text = false;
            req.mode = Some(run.mode);
            req.fusion = run.fusion;
            req.alpha = run.alpha;
            let outcome = crate::search::search(index, &qv, &req, defaults)
                .map_err(|err| anyhow!("{} ({}): {err}", q.id, run.name))?;
            ranked[r].push(outcome.hits.into_iter().map(|h| h.document_id).collect());
        }
        query_vectors.push(qv);
    }
    Ok(CorpusResult {
        file,
        units: unit_rows,
        chunks,
        languages,
        known_words,
        times,
        query_vectors,
        ranked,
    })
}

/// tantivy's threads in this process (index writer, segment updater, merges), by name.
fn tantivy_threads() -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| {
            let tid: u32 = t.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let comm = comm.trim();
            (comm.starts_with("thrd-tantivy")
                || comm == "segment_updater"
                || comm.starts_with("merge_thread"))
            .then_some(tid)
        })
        .collect()
}

/// CPU seconds a thread of this process has run (the scheduler's nanoseconds on a CPU), or
/// `None` once it has ended.
fn thread_cpu_seconds(tid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 / 1e9)
}

/// Every unit through the node's ingest stages into `index`, one document at a time as a
/// worker with a queue runs them (keyword changes committed in groups, and once more when the
/// queue runs empty); each document's keyword work again into each of `alone`.
fn ingest_units(
    c: &Config,
    e: &Embedder,
    chunking: &ChunkingOptions,
    units: &[Unit],
    index: &Index,
    alone: &mut [KeywordAlone],
) -> anyhow::Result<(IngestTimes, Vec<DocumentUpsert>)> {
    let mut times = IngestTimes::default();
    let mut upserts = Vec::with_capacity(units.len());
    for u in units {
        let html = u.document_html();
        let filename = format!("{}-{}.html", u.chapter(), u.id);
        let t0 = Instant::now();
        let x = crate::extract::extract(html.as_bytes(), &filename, &c.limits())
            .map_err(|err| anyhow!("{filename}: {err}"))?;
        let t1 = Instant::now();
        let chunks = crate::chunk::chunk_blocks(&x.blocks, e, chunking);
        let t2 = Instant::now();
        let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
        let vectors = e.embed_passages(&texts, &mut |_| Ok(()))?;
        let t3 = Instant::now();
        let now = crate::time::now_ms();
        let up = DocumentUpsert {
            document: DocumentRecord {
                document_id: u.id.clone(),
                filename: filename.clone(),
                content_type: x.format.name().to_owned(),
                sha256: sha256_hex(html.as_bytes()),
                size_bytes: html.len() as u64,
                pages: x.pages,
                // No `language`: detected per chunk, as for users' uploads.
                metadata: Default::default(),
                created_at_ms: now,
                updated_at_ms: now,
                job_id: format!("bench-{}", u.id),
                first_item: 0,
                chunks: 0,
            },
            chunks: crate::worker::with_vectors(chunks, vectors),
        };
        // As the worker applies documents while more wait in its queue.
        index.apply_upsert_at(&up, None, KeywordCommit::Grouped)?;
        let t4 = Instant::now();
        for a in alone.iter_mut() {
            a.add(&up)?;
        }
        let t5 = Instant::now();
        times.extract += (t1 - t0).as_secs_f64();
        times.chunk += (t2 - t1).as_secs_f64();
        times.embed += (t3 - t2).as_secs_f64();
        times.apply += (t4 - t3).as_secs_f64();
        times.total += (t5 - t0).as_secs_f64();
        upserts.push(up);
    }
    // The queue ran empty: the worker commits the keyword index.
    let t = Instant::now();
    index.commit_keyword();
    times.apply += t.elapsed().as_secs_f64();
    for a in alone.iter_mut() {
        a.finish()?;
    }
    times.total += t.elapsed().as_secs_f64();
    Ok((times, upserts))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The keyword index's share of ingest, measured on its own: each document's chunk languages
/// detected, its chunks staged into a fresh standalone keyword index and committed as
/// `Index::apply_upsert_at` commits documents applied back to back (`KeywordCommit::Grouped`:
/// once the oldest staged one is older than the commit interval, and at the end), the commits
/// synced as often as `Index` syncs them. Called inside the timed loop, so the interval runs
/// on the pipeline's own clock.
struct KeywordAlone {
    kw: KeywordIndex,
    settings: KeywordSettings,
    next_item: u32,
    commits: u64,
    staged_since: Option<Instant>,
    unsynced: usize,
    last_sync: Instant,
    seconds: f64,
    /// How many chunks got each language.
    languages: BTreeMap<&'static str, usize>,
    /// Its tantivy threads, each with its CPU seconds when last sampled: the indexing thread
    /// is replaced at every commit (tantivy joins it and starts a new one), so the threads
    /// that appear during its own commits are its own.
    threads: HashMap<u32, f64>,
    /// CPU seconds its threads ran, summed at each sample.
    background: f64,
}

impl KeywordAlone {
    fn create(dir: &Path, settings: &KeywordSettings) -> anyhow::Result<KeywordAlone> {
        let before = tantivy_threads();
        let kw = KeywordIndex::create(dir, settings)?;
        let threads: HashMap<u32, f64> = tantivy_threads()
            .into_iter()
            .filter(|t| !before.contains(t))
            .map(|t| (t, thread_cpu_seconds(t).unwrap_or(0.0)))
            .collect();
        ensure!(!threads.is_empty(), "no tantivy threads in /proc/self/task");
        Ok(KeywordAlone {
            threads,
            background: 0.0,
            kw,
            settings: settings.clone(),
            next_item: 0,
            commits: 0,
            staged_since: None,
            unsynced: 0,
            last_sync: Instant::now(),
            seconds: 0.0,
            languages: BTreeMap::new(),
        })
    }

    fn add(&mut self, up: &DocumentUpsert) -> anyhow::Result<()> {
        let t = Instant::now();
        let texts: Vec<&str> = up.chunks.iter().map(|c| c.text.as_str()).collect();
        let langs = crate::language::assign(&texts, None, &self.settings.languages);
        let staged: Vec<KeywordChunk> = up
            .chunks
            .iter()
            .zip(&langs)
            .enumerate()
            .map(|(i, (c, &language))| KeywordChunk {
                item: self.next_item + i as u32,
                text: &c.text,
                heading_path: &c.location.heading_path,
                language,
            })
            .collect();
        self.kw
            .stage_replace(&up.document.document_id, &up.document.filename, &staged)?;
        let since = *self.staged_since.get_or_insert(t);
        if since.elapsed() >= self.settings.commit_interval {
            self.commit()?;
        }
        self.seconds += t.elapsed().as_secs_f64();
        self.next_item += up.chunks.len() as u32;
        for l in langs {
            *self.languages.entry(l.code()).or_default() += 1;
        }
        Ok(())
    }

    /// Commits what is staged (timed by the caller or by `add`).
    fn commit(&mut self) -> anyhow::Result<()> {
        if self.staged_since.take().is_none() {
            return Ok(());
        }
        self.commits += 1;
        let payload = CommitPayload {
            uid: "bench".into(),
            seq: self.commits,
            schema: self.settings.schema_tag(),
        };
        self.sample();
        let before = tantivy_threads();
        self.kw.commit_unsynced(&payload)?;
        for t in tantivy_threads() {
            if !before.contains(&t) {
                // Started by this commit: all its CPU time is this index's.
                self.threads.insert(t, 0.0);
            }
        }
        self.unsynced += 1;
        if self.unsynced >= crate::index::KEYWORD_SYNC_AFTER_DOCUMENTS
            || self.last_sync.elapsed() >= crate::index::KEYWORD_SYNC_AFTER
        {
            self.kw.sync()?;
            self.unsynced = 0;
            self.last_sync = Instant::now();
        }
        Ok(())
    }

    /// Adds what its threads ran since the last sample; forgets those that ended (a thread's
    /// time after its last sample is in the commit that joined it, timed as a call).
    fn sample(&mut self) {
        let mut ran = 0.0;
        self.threads.retain(|&t, last| match thread_cpu_seconds(t) {
            Some(now) => {
                ran += now - *last;
                *last = now;
                true
            }
            None => false,
        });
        self.background += ran;
    }

    /// What it cost so far.
    fn cost(&mut self) -> KeywordCost {
        self.sample();
        KeywordCost {
            calls: self.seconds,
            threads: self.background,
            commits: self.commits,
        }
    }

    /// The last commit, as a node's worker makes it when its queue runs empty.
    fn finish(&mut self) -> anyhow::Result<()> {
        let t = Instant::now();
        self.commit()?;
        self.seconds += t.elapsed().as_secs_f64();
        Ok(())
    }
}

/// hit@1, hit@3, hit@10 and MRR@10 of the questions picked by `keep`.
#[derive(Debug, Clone, Copy, Default)]
struct Scores {
    n: usize,
    hit1: f64,
    hit3: f64,
    hit10: f64,
    mrr: f64,
}

/// 1-based rank of the first judged unit among the hits.
fn first_rank(q: &Question, ranked: &[String]) -> Option<usize> {
    ranked
        .iter()
        .take(K)
        .position(|id| q.units.contains(id))
        .map(|i| i + 1)
}

fn scores(r: &CorpusResult, run: usize, keep: impl Fn(&Question) -> bool) -> Scores {
    let mut s = Scores::default();
    for (q, ranked) in r.file.questions.iter().zip(&r.ranked[run]) {
        if !keep(q) {
            continue;
        }
        s.n += 1;
        if let Some(rank) = first_rank(q, ranked) {
            s.hit1 += (rank <= 1) as u8 as f64;
            s.hit3 += (rank <= 3) as u8 as f64;
            s.hit10 += 1.0;
            s.mrr += 1.0 / rank as f64;
        }
    }
    let n = s.n.max(1) as f64;
    Scores {
        hit1: s.hit1 / n,
        hit3: s.hit3 / n,
        hit10: s.hit10 / n,
        mrr: s.mrr / n,
        ..s
    }
}

fn in_split(q: &Question, split: &str) -> bool {
    split == "all" || q.split == split
}

fn row(name: &str, s: Scores) -> String {
    format!(
        "| {name} | {:.3} | {:.3} | {:.3} | {:.3} |",
        s.hit1, s.hit3, s.hit10, s.mrr
    )
}

const HEADER: &str =
    "| configuration | hit@1 | hit@3 | hit@10 | MRR@10 |\n|---|---:|---:|---:|---:|";

fn print_corpus(r: &CorpusResult) {
    let f = &r.file;
    let langs: Vec<String> = r
        .languages
        .iter()
        .map(|(l, n)| format!("{l} {n}"))
        .collect();
    println!("## {} ({} questions)\n", f.corpus, f.questions.len());
    println!(
        "{} units ingested as {} documents, {} chunks; chunk languages detected: {}. \
         Questions whose words the model's vocabulary mostly holds (hybrid default: \
         `known_words_alpha`): {} of {}.\n",
        r.units.len(),
        r.units.len(),
        r.chunks.len(),
        langs.join(", "),
        r.known_words,
        f.questions.len(),
    );
    for split in SPLITS {
        let n = f.questions.iter().filter(|q| in_split(q, split)).count();
        println!("### {} — {split} ({n} questions)\n\n{HEADER}", f.corpus);
        for (i, run) in RUNS.iter().enumerate() {
            println!("{}", row(run.name, scores(r, i, |q| in_split(q, split))));
        }
        println!();
    }
    for split in SPLITS {
        println!("### {} — {split}, by question kind\n\n{HEADER}", f.corpus);
        for name in KIND_RUNS {
            let i = RUNS.iter().position(|r| r.name == *name).expect("a run");
            for kind in KINDS {
                let s = scores(r, i, |q| in_split(q, split) && q.kind == *kind);
                println!("{}", row(&format!("{name} · {kind} (n={})", s.n), s));
            }
        }
        println!();
    }
}

fn print_ingest(results: &[CorpusResult], commit_interval_ms: u64) {
    println!("## Ingest: the keyword index's share\n");
    println!(
        "Per corpus, summed over its documents (one unit = one document, processed one at a time, \
         as a worker with a queue of them runs them). Pipeline = extract + chunk + embed + \
         `Index::apply_upsert_at` (LMDB, vectors, keyword index), keyword changes committed in \
         groups (`KeywordCommit::Grouped`, commit interval {commit_interval_ms} ms) and once more \
         at the end. After each document its keyword work is done once more into a standalone \
         keyword index (language detection, staging, the same grouped commits and syncs): \
         \"keyword calls\" is the time the pipeline spent in them, \"keyword threads\" the CPU \
         time of that index's own tantivy threads meanwhile (its indexing thread tokenizes the \
         staged chunks beside the embedding). Pipeline = the node's stages plus those calls. \
         Slower = (calls + threads) / (pipeline − calls): \
         how much longer ingest takes with the keyword index than without, counting its threads' \
         CPU as time taken from the embedding (an upper bound: a commit's call waits on that \
         thread too). \"Per document\": the same measured in the same loop on a third keyword \
         index committing every document on its own, as before grouped commits.\n"
    );
    println!(
        "| corpus | docs | chunks | extract s | chunk s | embed s | apply s | pipeline s | keyword calls s | keyword threads s | keyword commits | slower | per document: calls s, threads s, commits, slower |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in results {
        let t = &r.times;
        let (g, d) = (t.grouped, t.per_document);
        let base = t.total - g.calls - d.calls;
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.1}% | {:.2}, {:.2}, {}, {:.1}% |",
            r.file.corpus,
            r.units.len(),
            r.chunks.len(),
            t.extract,
            t.chunk,
            t.embed,
            t.apply,
            base + g.calls,
            g.calls,
            g.threads,
            g.commits,
            100.0 * g.slower(base),
            d.calls,
            d.threads,
            d.commits,
            100.0 * d.slower(base),
        );
    }
    println!();
}

struct Latency {
    chunks: u64,
    build_s: f64,
    searches_per_mode: usize,
    /// Per mode: (name, p50 ms, p99 ms, strategy).
    modes: Vec<(&'static str, f64, f64, &'static str)>,
}

/// Search latency on an index of 100,000 chunks (stemmed keyword analysis): the corpora's real
/// chunk texts, cycled with the chunk number appended, on synthetic unit vectors; queried with
/// the questions' real texts and query embeddings. Only `search::search` is timed.
fn latency(
    c: &Config,
    e: &Embedder,
    dir: &Path,
    results: &[CorpusResult],
    settings: &KeywordSettings,
    defaults: &SearchDefaults,
) -> anyhow::Result<Latency> {
    let texts: Vec<&(String, SourceLocation)> = results.iter().flat_map(|r| &r.chunks).collect();
    let queries: Vec<(&str, &[f32])> = results
        .iter()
        .flat_map(|r| {
            r.file
                .questions
                .iter()
                .zip(&r.query_vectors)
                .map(|(q, v)| (q.question.as_str(), v.as_slice()))
        })
        .collect();
    ensure!(
        !texts.is_empty() && !queries.is_empty(),
        "no corpus to measure"
    );
    let index = open_index(dir, e, c, settings)?;
    let vectors = super::synthetic(LATENCY_CHUNKS, e.dimensions(), 5, 0.5);
    let t = Instant::now();
    for (d, part) in vectors.chunks(1000).enumerate() {
        let chunks = part
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let k = d * 1000 + i;
                let (text, location) = texts[k % texts.len()];
                NewChunk {
                    text: format!("{text} {k}"),
                    location: location.clone(),
                    vector: v.clone(),
                }
            })
            .collect();
        let document = super::bench_document(&format!("d{d}"));
        index.apply_upsert(&DocumentUpsert { document, chunks })?;
    }
    let build_s = t.elapsed().as_secs_f64();
    let chunks = index.stats().chunks;
    let modes = [
        ("dense", SearchMode::Dense),
        ("keyword", SearchMode::Keyword),
        ("hybrid RRF", SearchMode::Hybrid),
    ];
    let request = |q: &str, mode: SearchMode| {
        // The API's default request (k = 10, texts included), in the given mode.
        let mut req = SearchRequest::new(q);
        req.mode = Some(mode);
        req.fusion = (mode == SearchMode::Hybrid).then_some(Fusion::Rrf);
        req
    };
    let mut strategies = [Strategy::Exact; 3];
    for (q, v) in &queries {
        for (m, (_, mode)) in modes.iter().enumerate() {
            strategies[m] = crate::search::search(&index, v, &request(q, *mode), defaults)
                .map_err(|err| anyhow!("{err}"))?
                .strategy;
        }
    }
    let rounds = LATENCY_SEARCHES.div_ceil(queries.len());
    let mut ms: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for _ in 0..rounds {
        for (q, v) in &queries {
            // Modes interleaved, so that each sees the same machine state.
            for (m, (_, mode)) in modes.iter().enumerate() {
                let req = request(q, *mode);
                let t = Instant::now();
                let out = crate::search::search(&index, v, &req, defaults)
                    .map_err(|err| anyhow!("{err}"))?;
                ms[m].push(t.elapsed().as_secs_f64() * 1e3);
                std::hint::black_box(out);
            }
        }
    }
    let mut out = Latency {
        chunks,
        build_s,
        searches_per_mode: rounds * queries.len(),
        modes: Vec::new(),
    };
    for (m, (name, _)) in modes.iter().enumerate() {
        ms[m].sort_by(f64::total_cmp);
        out.modes.push((
            name,
            super::percentile(&ms[m], 0.5),
            super::percentile(&ms[m], 0.99),
            strategies[m].as_str(),
        ));
    }
    println!("## Search latency at {} chunks\n", out.chunks);
    println!(
        "Index (stemmed keyword analysis) of the corpora's {} real chunk texts, cycled with the chunk \
         number appended, on synthetic unit vectors; 100 documents of 1,000 chunks; built in {:.1} s. \
         Queries: the {} questions' texts with their real query embeddings. Timed: \
         `search::search` alone (query embedding excluded), the API's default request \
         (k = 10, chunk texts included) in each mode; {} searches per mode after one warm-up pass, \
         modes interleaved.\n",
        texts.len(),
        out.build_s,
        queries.len(),
        out.searches_per_mode
    );
    println!("| mode | strategy | p50 ms | p99 ms |\n|---|---|---:|---:|");
    for (name, p50, p99, strategy) in &out.modes {
        println!("| {name} | {strategy} | {p50:.2} | {p99:.2} |");
    }
    println!(
        "\nhybrid p99 / dense p99 = {:.2}\n",
        out.modes[2].2 / out.modes[0].2
    );
    drop(index);
    Ok(out)
}

fn raw(results: &[CorpusResult], latency: Latency) -> serde_json::Value {
    let corpora: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let runs: Vec<serde_json::Value> = RUNS
                .iter()
                .enumerate()
                .map(|(i, run)| {
                    let metrics: serde_json::Map<String, serde_json::Value> = SPLITS
                        .iter()
                        .map(|split| {
                            let s = scores(r, i, |q| in_split(q, split));
                            (
                                split.to_string(),
                                json!({"n": s.n, "hit@1": s.hit1, "hit@3": s.hit3, "hit@10": s.hit10, "mrr@10": s.mrr}),
                            )
                        })
                        .collect();
                    let questions: Vec<serde_json::Value> = r
                        .file
                        .questions
                        .iter()
                        .zip(&r.ranked[i])
                        .map(|(q, ranked)| {
                            json!({"id": q.id, "kind": q.kind, "split": q.split, "judged": q.units,
                                "ranked": ranked, "first_judged_rank": first_rank(q, ranked)})
                        })
                        .collect();
                    json!({"name": run.name, "index": format!("{:?}", run.index).to_lowercase(),
                        "mode": run.mode.as_str(), "fusion": run.fusion.map(|f| f.as_str()),
                        "alpha": run.alpha, "metrics": metrics, "questions": questions})
                })
                .collect();
            let t = &r.times;
            json!({
                "corpus": r.file.corpus, "language": r.file.language,
                "units": r.units.iter().map(|(id, title, chars, sha, chunks)| json!({"id": id, "title": title, "chars": chars, "text_sha256": sha, "chunks": chunks})).collect::<Vec<_>>(),
                "chunks": r.chunks.len(), "chunk_languages": r.languages,
                "ingest_seconds": {"extract": t.extract, "chunk": t.chunk, "embed": t.embed,
                    "apply": t.apply, "pipeline": t.total, "apply_plain": t.apply_plain,
                    "keyword_grouped": t.grouped, "keyword_per_document": t.per_document},
                "runs": runs,
            })
        })
        .collect();
    json!({
        "bench": "quality", "cpu": super::cpu_line(), "corpora": corpora,
        "latency": {"chunks": latency.chunks, "build_s": latency.build_s,
            "searches_per_mode": latency.searches_per_mode,
            "modes": latency.modes.iter().map(|(name, p50, p99, strategy)| json!({"mode": name, "strategy": strategy, "p50_ms": p50, "p99_ms": p99})).collect::<Vec<_>>()},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_split_as_num_re_does() {
        let s = |x: &str| split_number(x).map(|(n, t)| format!("{n}|{t}"));
        assert_eq!(
            s("Chapter 9. System tips").as_deref(),
            Some("9|System tips")
        );
        assert_eq!(
            s("Capítulo 9. Dicas do sistema").as_deref(),
            Some("9|Dicas do sistema")
        );
        assert_eq!(
            s("9.6.3. Aceder a UUID").as_deref(),
            Some("9.6.3|Aceder a UUID")
        );
        assert_eq!(s("A.1. Foo").as_deref(), Some("A.1|Foo"));
        assert_eq!(s("Appendix A. Appendix").as_deref(), Some("A|Appendix"));
        assert_eq!(s("1.2.3 x"), None);
        assert_eq!(s("9.6."), None);
        assert_eq!(s("Table of Contents"), None);
        assert_eq!(s("ab. x"), None);
    }

    #[test]
    fn clean_collapses_as_the_python_does() {
        assert_eq!(clean("  a \t b\u{a0}c \n \n  d  "), "a b c\nd");
        assert_eq!(clean("\n\nx\ny\n"), "x\ny");
    }

    #[test]
    fn units_follow_the_rule() {
        let html = r#"<?xml version="1.0"?><html><body>
<div class="navheader"><h1 class="title">1. Nav</h1>nav text</div>
<h1 class="title"><a id="c"/>Chapter&nbsp;1.&nbsp;One</h1><p>chapter lead</p>
<div class="toc"><p>1.1. toc entry</p></div>
<h2 class="title">1.1. Lead</h2><p>lead <code>text</code></p>
<h3 class="title">1.1.1. Deep</h3><table><tr><td>a</td><td>b</td></tr></table>
<h4 class="title">1.1.1.1. Deeper</h4><pre>x
  y</pre>
<h2 class="title">1.2. Empty</h2>
<h3 class="title">1.2.1. Sub</h3><p>s</p>
<h1 class="title">Chapter 2. Two</h1>
<h2 class="title">2.1. Two-one</h2><p>t</p><h3 class="title">2.1.1. Inner</h3><p>u</p>
</body></html>"#;
        let items = parse_chapter(html);
        let sections: Vec<Section> = items
            .into_iter()
            .filter_map(|it| {
                let num = it.num?;
                Some(Section {
                    depth: num.matches('.').count() + 1,
                    num,
                    title: it.title,
                    text: clean(&it.text),
                    file: "ch01.en.html".into(),
                })
            })
            .collect();
        let units = build_units(sections, &["1".to_owned()]);
        let got: Vec<(String, String)> = units.iter().map(|u| (u.id.clone(), u.text())).collect();
        let want = [
            ("1.1", "lead text"),
            ("1.1.1", "| a | b\n1.1.1.1. Deeper\nx\ny"),
            ("1.2", ""),
            ("1.2.1", "s"),
            ("2.1", "t\n2.1.1. Inner\nu"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
        let doc = units[1].document_html();
        assert!(doc.contains("<h1>1.1.1. Deep</h1>"), "{doc}");
        assert!(doc.contains("<h2>1.1.1.1. Deeper</h2>"), "{doc}");
    }
}
