//! Query execution: filter → candidate set → exact scan or arroy → exact re-scoring →
//! `min_score`, per-document limit and MMR diversity → hits.

use std::time::UNIX_EPOCH;

use std::collections::HashMap;

use rag_api::{Fusion, HitExplanation, SearchFilter, SearchHit, SearchMode, SearchRequest, MAX_K};
use roaring::RoaringBitmap;

use crate::index::{vectors::dot, AnnSettings, Index, Scored, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Exact,
    Ann,
    /// `keyword` mode: no vector search (the hits' cosines are computed exactly).
    Keyword,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Exact => "exact",
            Strategy::Ann => "ann",
            Strategy::Keyword => "keyword",
        }
    }
}

pub struct SearchOutcome {
    pub hits: Vec<SearchHit>,
    pub strategy: Strategy,
    pub candidates: u64,
    pub mode: SearchMode,
    pub fusion: Option<Fusion>,
    /// The dense ranking's weight, when the fusion was weighted.
    pub alpha: Option<f32>,
    /// Time the keyword index took, when it was asked.
    pub keyword_seconds: Option<f64>,
}

/// Checks a request before any work is done.
pub fn validate(req: &SearchRequest) -> Result<(), SearchError> {
    if req.query.trim().is_empty() {
        return Err(SearchError::Invalid("query must not be empty".into()));
    }
    if req.query.len() > 16 * 1024 {
        return Err(SearchError::Invalid("query is longer than 16 KiB".into()));
    }
    if req.k == 0 || req.k > MAX_K {
        return Err(SearchError::Invalid(format!(
            "k must be between 1 and {MAX_K}"
        )));
    }
    if let Some(d) = req.diversity {
        if !(0.0..=1.0).contains(&d) {
            return Err(SearchError::Invalid(
                "diversity must be between 0 and 1".into(),
            ));
        }
    }
    if let Some(a) = req.alpha {
        if !(0.0..=1.0).contains(&a) {
            return Err(SearchError::Invalid("alpha must be between 0 and 1".into()));
        }
    }
    if req.per_document_limit == Some(0) {
        return Err(SearchError::Invalid(
            "per_document_limit must be at least 1".into(),
        ));
    }
    parse_time(req.filter.created_after.as_deref(), "created_after")?;
    parse_time(req.filter.created_before.as_deref(), "created_before")?;
    Ok(())
}

fn parse_time(s: Option<&str>, field: &str) -> Result<Option<u64>, SearchError> {
    let Some(s) = s else { return Ok(None) };
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| {
        SearchError::Invalid(format!(
            "filter.{field}: {e} (expected RFC 3339, e.g. 2026-01-31T12:00:00Z)"
        ))
    })?;
    Ok(Some(
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    ))
}

/// Items of the documents that pass `filter`; `None` when the filter is empty (everything).
pub fn candidate_items(
    snap: &Snapshot,
    filter: &SearchFilter,
) -> Result<Option<RoaringBitmap>, SearchError> {
    if filter.is_empty() {
        return Ok(None);
    }
    let after = parse_time(filter.created_after.as_deref(), "created_after")?;
    let before = parse_time(filter.created_before.as_deref(), "created_before")?;
    let mut out = RoaringBitmap::new();
    let mut consider = |doc: &crate::index::DocSummary| {
        let ok = filter
            .content_types
            .as_ref()
            .is_none_or(|ts| ts.iter().any(|t| t.eq_ignore_ascii_case(&doc.content_type)))
            && filter
                .metadata
                .iter()
                .all(|(k, v)| doc.metadata.get(k) == Some(v))
            && after.is_none_or(|a| doc.created_at_ms >= a)
            && before.is_none_or(|b| doc.created_at_ms < b);
        if ok {
            out.insert_range(doc.items.clone());
        }
    };
    match &filter.document_ids {
        Some(ids) => ids
            .iter()
            .filter_map(|id| snap.docs.get(id))
            .for_each(|d| consider(d)),
        None => snap.docs.values().for_each(|d| consider(d)),
    }
    Ok(Some(out))
}

/// What a request that names no mode, fusion or alpha gets (from `[search]` in the config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchDefaults {
    pub mode: SearchMode,
    pub fusion: Fusion,
    /// The dense ranking's weight in weighted fusion, for queries whose words the model's
    /// vocabulary mostly does not hold (a language the model was not trained on).
    pub alpha: f32,
    /// The weight for queries whose words it mostly holds: at least `known_words_coverage`
    /// of them are single tokens (see [`SearchDefaults::for_query`]).
    pub known_words_alpha: f32,
    pub known_words_coverage: f32,
    /// The constant of reciprocal rank fusion: 1 / (rrf_k + rank).
    pub rrf_k: f32,
    /// How deep each ranking is read before fusion.
    pub hybrid_depth: usize,
}

impl Default for SearchDefaults {
    fn default() -> Self {
        SearchDefaults {
            // Chosen with `rag-node bench quality` on its tune questions (docs/benchmarks.md).
            mode: SearchMode::Hybrid,
            fusion: Fusion::Weighted,
            alpha: 0.4,
            known_words_alpha: 0.6,
            known_words_coverage: 0.6,
            rrf_k: 60.0,
            hybrid_depth: 100,
        }
    }
}

impl SearchDefaults {
    /// The defaults for one query, given the share of its words the model's vocabulary holds
    /// whole (`Embedder::vocabulary_coverage`): a query in a language the model knows gets
    /// `known_words_alpha`, more weight on its dense ranking, which is good there (English
    /// with all-MiniLM-L6-v2) and poor elsewhere (Portuguese), where BM25 carries more.
    pub fn for_query(&self, coverage: Option<f32>) -> SearchDefaults {
        let known = coverage.is_some_and(|c| c >= self.known_words_coverage);
        SearchDefaults {
            alpha: if known {
                self.known_words_alpha
            } else {
                self.alpha
            },
            ..*self
        }
    }
}

/// The keyword ranking (item, BM25; best first) and the time it took.
type KeywordRanking = (Vec<(u32, f32)>, Option<f64>);

/// One candidate hit on its way through fusion and selection.
#[derive(Debug, Clone)]
struct Candidate {
    id: u32,
    /// What hits are ordered by (cosine, BM25 or the fused score).
    relevance: f32,
    /// Exact cosine similarity to the query.
    cosine: f32,
    dense: Option<(u32, f32)>,
    keyword: Option<(u32, f32)>,
}

pub fn search(
    index: &Index,
    query: &[f32],
    req: &SearchRequest,
    defaults: &SearchDefaults,
) -> Result<SearchOutcome, SearchError> {
    search_with(index, query, req, defaults, index.settings())
}

/// [`search`] with explicit strategy settings (benchmarks compare them on one index).
pub fn search_with(
    index: &Index,
    query: &[f32],
    req: &SearchRequest,
    defaults: &SearchDefaults,
    settings: AnnSettings,
) -> Result<SearchOutcome, SearchError> {
    validate(req)?;
    let mode = req.mode.unwrap_or(defaults.mode);
    let fusion = req.fusion.unwrap_or(defaults.fusion);
    let alpha = req.alpha.unwrap_or(defaults.alpha);
    let snap = index.snapshot();
    let candidates = candidate_items(&snap, &req.filter)?;
    let n = candidates
        .as_ref()
        .map(|c| c.len() as usize)
        .unwrap_or(snap.vectors.len());
    // Per-document limits and MMR choose among more candidates than they return.
    let reranks = req.per_document_limit.is_some() || req.diversity.is_some_and(|d| d > 0.0);
    let fetch = if reranks {
        (req.k * 10).min(1000)
    } else {
        req.k
    };
    // Fusion needs both rankings deeper than the hits it returns: a chunk ranked 30th by one
    // and 3rd by the other can end up first.
    let depth = match mode {
        SearchMode::Hybrid => fetch.max(defaults.hybrid_depth).min(1000),
        _ => fetch,
    };

    let dense_ranking = || -> Result<(Vec<Scored>, Strategy), SearchError> {
        Ok(if mode == SearchMode::Keyword {
            (Vec::new(), Strategy::Keyword)
        } else if n >= settings.exact_below && snap.ann_ready {
            let ids = index.ann_candidates(
                query,
                depth,
                depth * settings.search_k_per_result,
                candidates.as_ref(),
            )?;
            let mut scored: Vec<Scored> = ids
                .into_iter()
                .filter_map(|id| {
                    snap.vectors.get(id).map(|v| Scored {
                        id,
                        score: dot(query, v),
                    })
                })
                .collect();
            scored.sort();
            (scored, Strategy::Ann)
        } else {
            (
                snap.vectors.top_k(query, depth, candidates.as_ref()),
                Strategy::Exact,
            )
        })
    };
    let keyword_ranking = || -> Result<KeywordRanking, SearchError> {
        if mode == SearchMode::Dense {
            return Ok((Vec::new(), None));
        }
        let started = std::time::Instant::now();
        let found = index.keyword_search(&req.query, depth, candidates.as_ref())?;
        let took = started.elapsed().as_secs_f64();
        // Items deleted after the keyword index's reader was loaded have no vector: left out.
        Ok((
            found
                .into_iter()
                .filter(|(id, _)| snap.vectors.get(*id).is_some())
                .collect(),
            Some(took),
        ))
    };
    // Hybrid runs the two rankings side by side (a scoped thread for the keyword query, not a
    // shared pool that ingestion may be keeping busy): its latency is the slower of the two,
    // not their sum.
    let ((dense, strategy), (keyword, keyword_seconds)) = if mode == SearchMode::Hybrid {
        std::thread::scope(|s| {
            let kw = s.spawn(keyword_ranking);
            let d = dense_ranking();
            let k = kw
                .join()
                .map_err(|_| SearchError::Internal(anyhow::anyhow!("keyword query panicked")))?;
            Ok::<_, SearchError>((d?, k?))
        })?
    } else {
        (dense_ranking()?, keyword_ranking()?)
    };

    let cosine = |id: u32| snap.vectors.get(id).map(|v| dot(query, v)).unwrap_or(-1.0);
    let mut fused = fuse(
        mode,
        fusion,
        alpha,
        defaults.rrf_k,
        &dense,
        &keyword,
        cosine,
    );
    if let Some(m) = req.min_score {
        fused.retain(|c| c.cosine >= m);
    }
    fused.truncate(fetch.max(req.k));
    let ids: Vec<u32> = fused.iter().map(|c| c.id).collect();
    let records = index.chunks_for(&ids)?;
    // Drop items deleted between the snapshot and the read (rare; never wrong).
    let live: Vec<(Candidate, crate::records::ChunkRecord)> = fused
        .into_iter()
        .zip(records)
        .filter_map(|(s, r)| r.map(|r| (s, r)))
        .collect();

    let chosen = select(&snap, live, req, mode);
    let hits = chosen
        .into_iter()
        .map(|(s, c)| {
            let doc = snap.docs.get(&c.document_id);
            SearchHit {
                score: s.cosine,
                relevance: s.relevance,
                explain: req.explain.then(|| HitExplanation {
                    dense_rank: s.dense.map(|d| d.0),
                    dense_score: s.dense.map(|d| d.1),
                    keyword_rank: s.keyword.map(|k| k.0),
                    keyword_score: s.keyword.map(|k| k.1),
                }),
                document_id: c.document_id.clone(),
                chunk_index: c.chunk_index,
                text: req.include_text.then_some(c.text),
                location: c.location,
                filename: doc.map(|d| d.filename.clone()).unwrap_or_default(),
                content_type: doc.map(|d| d.content_type.clone()).unwrap_or_default(),
                metadata: doc.map(|d| d.metadata.clone()).unwrap_or_default(),
            }
        })
        .collect();
    Ok(SearchOutcome {
        hits,
        strategy,
        candidates: n as u64,
        mode,
        fusion: (mode == SearchMode::Hybrid).then_some(fusion),
        alpha: (mode == SearchMode::Hybrid && fusion == Fusion::Weighted).then_some(alpha),
        keyword_seconds,
    })
}

/// 1-based ranks of scores sorted best first; equal scores share the rank of the first of
/// them ("1224" ranking). Equal scores are common (identical chunk texts, keyword matches of
/// the same words in texts of the same length), and the order among them is arbitrary: fused
/// scores must not depend on it.
fn ranks(scores: impl Iterator<Item = f32>) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    let mut last: Option<f32> = None;
    for (i, s) in scores.enumerate() {
        let r = match (last, out.last()) {
            (Some(l), Some(&r)) if l == s => r,
            _ => i as u32 + 1,
        };
        out.push(r);
        last = Some(s);
    }
    out
}

/// Combines the dense ranking (cosine, best first) and the keyword ranking (BM25, best first)
/// into one, best first. Pure: every score it needs is given.
fn fuse(
    mode: SearchMode,
    fusion: Fusion,
    alpha: f32,
    rrf_k: f32,
    dense: &[Scored],
    keyword: &[(u32, f32)],
    cosine: impl Fn(u32) -> f32,
) -> Vec<Candidate> {
    let mut by_id: HashMap<u32, Candidate> = HashMap::new();
    let dense_ranks = ranks(dense.iter().map(|s| s.score));
    let keyword_ranks = ranks(keyword.iter().map(|k| k.1));
    for (&rank, s) in dense_ranks.iter().zip(dense) {
        by_id.insert(
            s.id,
            Candidate {
                id: s.id,
                relevance: 0.0,
                cosine: s.score,
                dense: Some((rank, s.score)),
                keyword: None,
            },
        );
    }
    for (&rank, &(id, score)) in keyword_ranks.iter().zip(keyword) {
        by_id
            .entry(id)
            .or_insert_with(|| Candidate {
                id,
                relevance: 0.0,
                cosine: cosine(id),
                dense: None,
                keyword: None,
            })
            .keyword = Some((rank, score));
    }
    let range = |xs: &mut dyn Iterator<Item = f32>| {
        xs.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        })
    };
    let (dlo, dhi) = range(&mut dense.iter().map(|s| s.score));
    let (klo, khi) = range(&mut keyword.iter().map(|k| k.1));
    // Min-max normalisation; a ranking whose scores are all equal counts fully for each hit.
    let norm = |x: f32, lo: f32, hi: f32| {
        if hi > lo {
            (x - lo) / (hi - lo)
        } else {
            1.0
        }
    };
    let mut out: Vec<Candidate> = by_id
        .into_values()
        .map(|mut c| {
            c.relevance = match mode {
                SearchMode::Dense => c.cosine,
                SearchMode::Keyword => c.keyword.map_or(0.0, |k| k.1),
                SearchMode::Hybrid => match fusion {
                    Fusion::Rrf => {
                        c.dense.map_or(0.0, |d| 1.0 / (rrf_k + d.0 as f32))
                            + c.keyword.map_or(0.0, |k| 1.0 / (rrf_k + k.0 as f32))
                    }
                    Fusion::Weighted => {
                        alpha * c.dense.map_or(0.0, |d| norm(d.1, dlo, dhi))
                            + (1.0 - alpha) * c.keyword.map_or(0.0, |k| norm(k.1, klo, khi))
                    }
                },
            };
            c
        })
        .collect();
    // Best first; ties by item id, so every node orders equal scores the same way.
    out.sort_by(|a, b| b.relevance.total_cmp(&a.relevance).then(a.id.cmp(&b.id)));
    out
}

/// Applies the per-document limit and, with `diversity` > 0, maximal marginal relevance:
/// each next hit maximises (1-d)·relevance − d·(max similarity to hits already chosen).
/// MMR weighs relevance against similarity to the hits already chosen, so relevance must be on
/// the cosine's scale: in `keyword` and `hybrid` mode it is divided by the best hit's.
fn select(
    snap: &Snapshot,
    ranked: Vec<(Candidate, crate::records::ChunkRecord)>,
    req: &SearchRequest,
    mode: SearchMode,
) -> Vec<(Candidate, crate::records::ChunkRecord)> {
    let limit = req.per_document_limit.unwrap_or(usize::MAX);
    let diversity = req.diversity.unwrap_or(0.0);
    let top = ranked.first().map_or(1.0, |(c, _)| c.relevance);
    let scale = if mode == SearchMode::Dense || top <= 0.0 {
        1.0
    } else {
        1.0 / top
    };
    let mut per_doc: std::collections::HashMap<String, usize> = Default::default();
    let mut pool = ranked;
    let mut out: Vec<(Candidate, crate::records::ChunkRecord)> = Vec::new();
    while out.len() < req.k && !pool.is_empty() {
        let pick = if diversity > 0.0 && !out.is_empty() {
            let mut best = (0usize, f32::NEG_INFINITY);
            for (i, (s, c)) in pool.iter().enumerate() {
                if per_doc.get(&c.document_id).copied().unwrap_or(0) >= limit {
                    continue;
                }
                let Some(v) = snap.vectors.get(s.id) else {
                    continue;
                };
                let redundancy = out
                    .iter()
                    .filter_map(|(o, _)| snap.vectors.get(o.id))
                    .map(|ov| dot(v, ov))
                    .fold(f32::NEG_INFINITY, f32::max);
                let mmr = (1.0 - diversity) * s.relevance * scale - diversity * redundancy;
                if mmr > best.1 {
                    best = (i, mmr);
                }
            }
            if best.1 == f32::NEG_INFINITY {
                break;
            }
            best.0
        } else {
            match pool
                .iter()
                .position(|(_, c)| per_doc.get(&c.document_id).copied().unwrap_or(0) < limit)
            {
                Some(i) => i,
                None => break,
            }
        };
        let (s, c) = pool.remove(pick);
        *per_doc.entry(c.document_id.clone()).or_default() += 1;
        out.push((s, c));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{open_for_tests, DocumentUpsert, NewChunk};
    use crate::records::DocumentRecord;

    fn dense() -> SearchDefaults {
        SearchDefaults {
            mode: SearchMode::Dense,
            ..Default::default()
        }
    }

    #[test]
    fn queries_the_model_knows_weigh_its_ranking_more() {
        let d = SearchDefaults::default();
        assert_eq!(d.for_query(Some(0.9)).alpha, d.known_words_alpha);
        assert_eq!(
            d.for_query(Some(d.known_words_coverage)).alpha,
            d.known_words_alpha
        );
        assert_eq!(d.for_query(Some(0.3)).alpha, d.alpha);
        // No word to judge by (codes, paths, numbers): the default.
        assert_eq!(d.for_query(None).alpha, d.alpha);
        assert_eq!(d.for_query(Some(0.9)).mode, d.mode);
    }

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    /// Three near-identical chunks and one different but still relevant one: relevance alone
    /// returns the near-duplicates first; with diversity the different one moves up to second.
    #[test]
    fn mmr_diversity_promotes_different_hits() {
        let dir = tempfile::tempdir().unwrap();
        let idx = open_for_tests(dir.path(), 3, AnnSettings::default()).unwrap();
        let vectors = [
            unit(&[1.0, 0.6, 0.01]),
            unit(&[1.0, 0.6, -0.01]),
            unit(&[1.0, 0.61, 0.0]),
            unit(&[0.5, 1.0, 0.0]),
        ];
        let chunks = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| NewChunk {
                text: format!("c{i}"),
                location: Default::default(),
                vector: v.clone(),
            })
            .collect();
        let document = DocumentRecord {
            document_id: "d".into(),
            filename: "d.txt".into(),
            content_type: "text".into(),
            sha256: "s".into(),
            size_bytes: 1,
            pages: 1,
            metadata: Default::default(),
            created_at_ms: 0,
            updated_at_ms: 0,
            job_id: "j".into(),
            first_item: 0,
            chunks: 0,
        };
        idx.apply_upsert(&DocumentUpsert { document, chunks })
            .unwrap();
        let q = unit(&[1.0, 1.0, 0.0]);
        let mut req = SearchRequest::new("q");
        req.k = 2;
        let plain: Vec<u32> = search(&idx, &q, &req, &dense())
            .unwrap()
            .hits
            .iter()
            .map(|h| h.chunk_index)
            .collect();
        assert!(!plain.contains(&3), "{plain:?}");
        req.diversity = Some(0.5);
        let diverse: Vec<u32> = search(&idx, &q, &req, &dense())
            .unwrap()
            .hits
            .iter()
            .map(|h| h.chunk_index)
            .collect();
        assert_eq!(diverse[1], 3, "{diverse:?}");
    }

    #[test]
    fn requests_are_validated() {
        let mut r = SearchRequest::new(" ");
        assert!(validate(&r).is_err());
        r.query = "x".into();
        r.k = 101;
        assert!(validate(&r).is_err());
        r.k = 5;
        r.diversity = Some(1.5);
        assert!(validate(&r).is_err());
        r.diversity = None;
        r.filter.created_after = Some("yesterday".into());
        assert!(validate(&r).is_err());
        r.filter.created_after = Some("2026-01-01T00:00:00Z".into());
        assert!(validate(&r).is_ok());
    }
}
