//! Models beyond all-MiniLM-L6-v2. Each tiny model in `tests/fixtures/tiny-models/` (random
//! weights, made once by `scripts/make-tiny-models.py` with sentence-transformers on PyTorch)
//! must embed as sentence-transformers does: raw texts, and queries and passages with their
//! prompts, through BERT and XLM-RoBERTa, mean, CLS and max pooling, with and without
//! normalization, truncated at the model's window.

use std::path::PathBuf;

use rag_node::embed::sentence::Pooling;
use rag_node::embed::{BatchPolicy, Embedder, Kernel, Precision, Prompts};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    texts: Vec<String>,
    raw: Vec<Vec<f32>>,
    query: Vec<Vec<f32>>,
    passage: Vec<Vec<f32>>,
}

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny-models")
        .join(name)
}

fn load(name: &str, kernel: Kernel) -> (Embedder, Reference) {
    let d = dir(name);
    let e = Embedder::load_with_kernel(&d, BatchPolicy::default(), &Prompts::default(), kernel)
        .unwrap_or_else(|e| panic!("loading {name}: {e:#}"));
    let r: Reference =
        serde_json::from_slice(&std::fs::read(d.join("reference.json")).unwrap()).unwrap();
    (e, r)
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()
}

/// Same direction and the same length: cosine ≥ 0.9999 and within 0.1% in fp32, cosine ≥ 0.998
/// and within 1% in bf16.
fn assert_same(what: &str, ours: &[f32], theirs: &[f32], precision: Precision) {
    let (min_cos, max_rel) = match precision {
        Precision::Fp32 => (0.9999, 1e-3),
        Precision::Bf16 => (0.998, 1e-2),
    };
    assert_eq!(ours.len(), theirs.len(), "{what}: dimensions");
    let dot: f64 = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| *a as f64 * *b as f64)
        .sum();
    let cos = dot / (norm(ours) * norm(theirs)).max(1e-12);
    assert!(cos >= min_cos, "{what}: cosine {cos}");
    let rel = (norm(ours) - norm(theirs)).abs() / norm(theirs).max(1e-12);
    assert!(
        rel <= max_rel,
        "{what}: norm {} vs {}",
        norm(ours),
        norm(theirs)
    );
}

fn check(name: &str) -> Embedder {
    check_on(name, Kernel::best(Precision::Fp32))
}

fn check_on(name: &str, kernel: Kernel) -> Embedder {
    let (e, r) = load(name, kernel);
    let p = kernel.precision();
    let texts: Vec<&str> = r.texts.iter().map(String::as_str).collect();
    for (i, v) in e.embed(&texts).unwrap().iter().enumerate() {
        assert_same(&format!("{name} raw {:?}", texts[i]), v, &r.raw[i], p);
    }
    for (i, v) in e
        .embed_passages(&texts, &mut |_| Ok(()))
        .unwrap()
        .iter()
        .enumerate()
    {
        assert_same(
            &format!("{name} passage {:?}", texts[i]),
            v,
            &r.passage[i],
            p,
        );
    }
    for (i, t) in texts.iter().enumerate() {
        let v = e.embed_query(t).unwrap();
        assert_same(&format!("{name} query {t:?}"), &v, &r.query[i], p);
    }
    e
}

#[test]
fn bert_with_each_pooling_matches_sentence_transformers() {
    let mean = check("bert-mean");
    let cls = check("bert-cls");
    let max = check("bert-max");
    assert_eq!(mean.sentence_config().pooling, Pooling::Mean);
    assert_eq!(cls.sentence_config().pooling, Pooling::Cls);
    assert!(!cls.sentence_config().normalize);
    assert_eq!(max.sentence_config().pooling, Pooling::Max);
    // The same weights used three ways are three models to the index.
    let ids = [mean.model_id(), cls.model_id(), max.model_id()];
    // `NAME@WEIGHTS+RECIPE`: the same weights digest, three recipes.
    let weights: Vec<&str> = ids
        .iter()
        .map(|id| id.split(['@', '+']).nth(1).unwrap())
        .collect();
    assert!(weights.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
    assert_eq!(
        mean.max_tokens(),
        24,
        "the window of sentence_bert_config.json"
    );
}

#[test]
fn xlm_roberta_with_e5_prompts_matches_sentence_transformers() {
    let e = check("xlmr-e5");
    let c = e.sentence_config();
    assert_eq!(
        (c.query_prefix.as_str(), c.passage_prefix.as_str()),
        ("query: ", "passage: ")
    );
    // The chunker's budget leaves room for the passage prompt.
    assert!(e.max_tokens() < 24, "{}", e.max_tokens());
}

#[test]
fn every_kernel_serves_bert_and_xlm_roberta_alike() {
    // The precision is a property of the GEMMs, not of one model: every kernel, both families,
    // every pooling.
    for precision in [Precision::Fp32, Precision::Bf16] {
        for kernel in Kernel::available(precision) {
            for name in ["bert-mean", "bert-cls", "bert-max", "xlmr-e5"] {
                check_on(name, kernel);
            }
        }
    }
}
