use super::*;
use crate::index::vectors::dot;
use crate::search::{SearchDefaults, SearchError, SearchOutcome, Strategy};
use rag_api::{SearchMode, SearchRequest};

/// These tests are about the vector index: dense mode.
fn search(idx: &Index, q: &[f32], req: &SearchRequest) -> Result<SearchOutcome, SearchError> {
    let dense = SearchDefaults {
        mode: SearchMode::Dense,
        ..Default::default()
    };
    crate::search::search(idx, q, req, &dense)
}

fn unit(seed: u64, dims: usize) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut v: Vec<f32> = (0..dims)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 11) as f64 / (1u64 << 53) as f64) as f32 - 0.5
        })
        .collect();
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.iter_mut().for_each(|a| *a /= n);
    v
}

fn doc(id: &str, sha: &str, chunks: Vec<NewChunk>) -> DocumentUpsert {
    DocumentUpsert {
        document: DocumentRecord {
            document_id: id.into(),
            filename: format!("{id}.txt"),
            content_type: "text".into(),
            sha256: sha.into(),
            size_bytes: 10,
            pages: 1,
            metadata: [("team".to_string(), id.to_string())].into(),
            created_at_ms: 1000,
            updated_at_ms: 1000,
            job_id: "j".into(),
            first_item: 0,
            chunks: 0,
        },
        chunks,
    }
}

fn chunks(seed: u64, n: usize, dims: usize) -> Vec<NewChunk> {
    (0..n)
        .map(|i| NewChunk {
            text: format!("chunk {seed}-{i}"),
            location: SourceLocation {
                page: Some(i as u32 + 1),
                ..Default::default()
            },
            vector: unit(seed * 1000 + i as u64, dims),
        })
        .collect()
}

#[test]
fn upsert_replace_delete_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let dims = 16;
    {
        let idx = open_for_tests(dir.path(), dims, AnnSettings::default()).unwrap();
        idx.apply_upsert(&doc("a", "sha-a", chunks(1, 5, dims)))
            .unwrap();
        idx.apply_upsert(&doc("b", "sha-b", chunks(2, 3, dims)))
            .unwrap();
        assert_eq!(idx.integrity().unwrap().chunks, 8);
        // Replace a with 2 chunks
        let out = idx
            .apply_upsert(&doc("a", "sha-a2", chunks(3, 2, dims)))
            .unwrap();
        assert_eq!(
            out,
            ApplyOutcome {
                chunks_added: 2,
                chunks_removed: 5
            }
        );
        assert!(idx.document_by_sha("sha-a").unwrap().is_none());
        assert_eq!(
            idx.document_by_sha("sha-a2").unwrap().unwrap().document_id,
            "a"
        );
        assert_eq!(idx.integrity().unwrap().chunks, 5);
        assert_eq!(idx.delete_document("b").unwrap(), Some(3));
        assert_eq!(idx.delete_document("b").unwrap(), None);
        assert_eq!(idx.integrity().unwrap().chunks, 2);
    }
    let idx = open_for_tests(dir.path(), dims, AnnSettings::default()).unwrap();
    let stats = idx.integrity().unwrap();
    assert_eq!((stats.documents, stats.chunks), (1, 2));
    let q = unit(3000 + 1, dims);
    let out = search(&idx, &q, &SearchRequest::new("x")).unwrap();
    assert_eq!(out.hits[0].document_id, "a");
    assert_eq!(out.hits[0].chunk_index, 1);
    assert!((out.hits[0].score - 1.0).abs() < 1e-5);
}

#[test]
fn the_precision_is_recorded_once_and_an_old_index_is_fp32() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(&dir.path().join("new"), 1 << 30).unwrap();
        assert_eq!(stored_precision(&store).unwrap(), None);
        record_precision(&store, "bf16").unwrap();
        assert_eq!(stored_precision(&store).unwrap().as_deref(), Some("bf16"));
        record_precision(&store, "bf16").unwrap();
        let err = record_precision(&store, "fp32").unwrap_err();
        assert!(err.to_string().contains("built with bf16"), "{err}");
    }
    // An index made before precisions were recorded holds fp32 vectors.
    drop(open_for_tests(&dir.path().join("old"), 16, AnnSettings::default()).unwrap());
    let store = Store::open(&dir.path().join("old"), 1 << 30).unwrap();
    assert_eq!(stored_precision(&store).unwrap().as_deref(), Some("fp32"));
}

#[test]
fn another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_for_tests(dir.path(), 16, AnnSettings::default()).unwrap());
    let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
    let err = Index::open(
        store,
        "other@111111111111",
        16,
        AnnSettings::default(),
        &KeywordSettings::default(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("cannot be mixed"), "{err}");
}

#[test]
fn text_hash_lookup_reuses_vectors_of_live_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let idx = open_for_tests(dir.path(), 8, AnnSettings::default()).unwrap();
    let c = chunks(7, 2, 8);
    idx.apply_upsert(&doc("a", "s", c.clone())).unwrap();
    let found = idx
        .vectors_by_text(&[text_hash("chunk 7-1"), text_hash("nope")])
        .unwrap();
    assert_eq!(found[0].as_deref(), Some(c[1].vector.as_slice()));
    assert!(found[1].is_none());
    idx.delete_document("a").unwrap();
    assert!(idx.vectors_by_text(&[text_hash("chunk 7-1")]).unwrap()[0].is_none());
}

#[test]
fn filters_restrict_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let idx = open_for_tests(dir.path(), 8, AnnSettings::default()).unwrap();
    idx.apply_upsert(&doc("a", "sa", chunks(1, 4, 8))).unwrap();
    idx.apply_upsert(&doc("b", "sb", chunks(2, 4, 8))).unwrap();
    let mut req = SearchRequest::new("x");
    req.filter.metadata.insert("team".into(), "b".into());
    let out = search(&idx, &unit(1000, 8), &req).unwrap();
    assert_eq!(out.candidates, 4);
    assert!(out.hits.iter().all(|h| h.document_id == "b"));
    let mut req = SearchRequest::new("x");
    req.per_document_limit = Some(1);
    let out = search(&idx, &unit(1000, 8), &req).unwrap();
    assert_eq!(out.hits.len(), 2);
    req.filter.created_after = Some("2030-01-01T00:00:00Z".into());
    assert!(search(&idx, &unit(1000, 8), &req).unwrap().hits.is_empty());
}

/// Clustered synthetic vectors, like real embeddings: arroy (after exact re-scoring) must find
/// at least 95% of the true top 10, and the exact path must equal brute force.
#[test]
fn ann_recall_and_exact_equality_against_brute_force() {
    let dir = tempfile::tempdir().unwrap();
    let dims = 64;
    let ann = AnnSettings {
        exact_below: 2_000,
        n_trees: 32,
        search_k_per_result: 400,
    };
    let idx = open_for_tests(dir.path(), dims, ann).unwrap();
    let centres: Vec<Vec<f32>> = (0..50).map(|c| unit(10_000 + c, dims)).collect();
    let mut all: Vec<(u32, Vec<f32>)> = Vec::new();
    for d in 0..20u64 {
        let cs: Vec<NewChunk> = (0..250u64)
            .map(|i| {
                let centre = &centres[((d * 250 + i) % 50) as usize];
                let noise = unit(d * 100_000 + i, dims);
                let mut v: Vec<f32> = centre
                    .iter()
                    .zip(&noise)
                    .map(|(c, n)| c + 0.6 * n)
                    .collect();
                let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
                v.iter_mut().for_each(|a| *a /= norm);
                NewChunk {
                    text: format!("{d}-{i}"),
                    location: Default::default(),
                    vector: v,
                }
            })
            .collect();
        let base = all.len() as u32;
        for (i, c) in cs.iter().enumerate() {
            all.push((base + i as u32, c.vector.clone()));
        }
        idx.apply_upsert(&doc(&format!("d{d}"), &format!("s{d}"), cs))
            .unwrap();
    }
    // Exact path first (trees not built yet).
    let queries: Vec<Vec<f32>> = (0..50).map(|q| unit(900_000 + q, dims)).collect();
    let mut req = SearchRequest::new("x");
    req.include_text = false;
    let brute = |q: &[f32]| -> Vec<(u32, f32)> {
        let mut s: Vec<(u32, f32)> = all.iter().map(|(id, v)| (*id, dot(q, v))).collect();
        s.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        s.truncate(10);
        s
    };
    for q in &queries {
        let out = search(&idx, q, &req).unwrap();
        assert_eq!(out.strategy, Strategy::Exact);
        let expect = brute(q);
        let got: Vec<f32> = out.hits.iter().map(|h| h.score).collect();
        assert_eq!(got, expect.iter().map(|e| e.1).collect::<Vec<_>>());
    }
    assert!(idx.build_ann_if_needed().unwrap());
    let mut found = 0;
    for q in &queries {
        let out = search(&idx, q, &req).unwrap();
        assert_eq!(out.strategy, Strategy::Ann);
        let expect = brute(q);
        found += out
            .hits
            .iter()
            .filter(|h| expect.iter().any(|e| (e.1 - h.score).abs() < 1e-6))
            .count();
    }
    let recall = found as f64 / (queries.len() * 10) as f64;
    assert!(recall >= 0.95, "arroy recall@10 {recall}");
    // A write makes the trees stale: search falls back to the exact scan until rebuilt.
    idx.delete_document("d0").unwrap();
    assert_eq!(
        search(&idx, &queries[0], &req).unwrap().strategy,
        Strategy::Exact
    );
}
