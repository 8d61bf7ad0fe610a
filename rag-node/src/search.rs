//! Query execution: filter → candidate set → exact scan or arroy → exact re-scoring →
//! `min_score`, per-document limit and MMR diversity → hits.

use std::time::UNIX_EPOCH;

use rag_api::{SearchFilter, SearchHit, SearchRequest, MAX_K};
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
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Exact => "exact",
            Strategy::Ann => "ann",
        }
    }
}

pub struct SearchOutcome {
    pub hits: Vec<SearchHit>,
    pub strategy: Strategy,
    pub candidates: u64,
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

pub fn search(
    index: &Index,
    query: &[f32],
    req: &SearchRequest,
) -> Result<SearchOutcome, SearchError> {
    search_with(index, query, req, index.settings())
}

/// [`search`] with explicit strategy settings (benchmarks compare them on one index).
pub fn search_with(
    index: &Index,
    query: &[f32],
    req: &SearchRequest,
    settings: AnnSettings,
) -> Result<SearchOutcome, SearchError> {
    validate(req)?;
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

    let (scored, strategy) = if n >= settings.exact_below && snap.ann_ready {
        let ids = index.ann_candidates(
            query,
            fetch,
            fetch * settings.search_k_per_result,
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
            snap.vectors.top_k(query, fetch, candidates.as_ref()),
            Strategy::Exact,
        )
    };

    let scored: Vec<Scored> = match req.min_score {
        Some(m) => scored.into_iter().filter(|s| s.score >= m).collect(),
        None => scored,
    };
    let ids: Vec<u32> = scored.iter().map(|s| s.id).collect();
    let records = index.chunks_for(&ids)?;
    // Drop items deleted between the snapshot and the read (rare; never wrong).
    let live: Vec<(Scored, crate::records::ChunkRecord)> = scored
        .into_iter()
        .zip(records)
        .filter_map(|(s, r)| r.map(|r| (s, r)))
        .collect();

    let chosen = select(&snap, live, req);
    let hits = chosen
        .into_iter()
        .map(|(s, c)| {
            let doc = snap.docs.get(&c.document_id);
            SearchHit {
                score: s.score,
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
    })
}

/// Applies the per-document limit and, with `diversity` > 0, maximal marginal relevance:
/// each next hit maximises (1-d)·relevance − d·(max similarity to hits already chosen).
fn select(
    snap: &Snapshot,
    ranked: Vec<(Scored, crate::records::ChunkRecord)>,
    req: &SearchRequest,
) -> Vec<(Scored, crate::records::ChunkRecord)> {
    let limit = req.per_document_limit.unwrap_or(usize::MAX);
    let diversity = req.diversity.unwrap_or(0.0);
    let mut per_doc: std::collections::HashMap<String, usize> = Default::default();
    let mut pool = ranked;
    let mut out: Vec<(Scored, crate::records::ChunkRecord)> = Vec::new();
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
                let mmr = (1.0 - diversity) * s.score - diversity * redundancy;
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
        let plain: Vec<u32> = search(&idx, &q, &req)
            .unwrap()
            .hits
            .iter()
            .map(|h| h.chunk_index)
            .collect();
        assert!(!plain.contains(&3), "{plain:?}");
        req.diversity = Some(0.5);
        let diverse: Vec<u32> = search(&idx, &q, &req)
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
