//! Our embeddings must match sentence-transformers' for every reference text
//! (tests/fixtures/minilm-reference.json): cosine ≥ 0.9999 each in fp32, ≥ 0.998 in bf16, on
//! every kernel this CPU runs (the fallbacks too, by forcing them).

mod common;

use rag_node::embed::{BatchPolicy, Embedder, Kernel, Precision, Prompts};

#[test]
fn every_reference_text_matches_sentence_transformers() {
    check_reference(&common::embedder(), 0.9999);
}

#[test]
fn every_fp32_kernel_matches_sentence_transformers() {
    for kernel in Kernel::available(Precision::Fp32) {
        check_reference(&load(kernel), 0.9999);
    }
}

#[test]
fn every_bf16_kernel_stays_within_0_998_of_sentence_transformers() {
    let kernels = Kernel::available(Precision::Bf16);
    assert!(kernels.contains(&Kernel::Bf16Emulated));
    for kernel in kernels {
        check_reference(&load(kernel), 0.998);
    }
}

fn load(kernel: Kernel) -> Embedder {
    let e = Embedder::load_with_kernel(
        &common::model_dir(),
        BatchPolicy::default(),
        &Prompts::default(),
        kernel,
    )
    .unwrap();
    assert_eq!(e.kernel(), kernel);
    e
}

fn check_reference(embedder: &Embedder, min_cosine: f32) {
    let kernel = embedder.kernel();
    let fixture: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::fixture("minilm-reference.json")).expect("reference fixture"),
    )
    .unwrap();
    let items = fixture["items"].as_array().unwrap();
    assert!(items.len() >= 20);
    let texts: Vec<&str> = items.iter().map(|i| i["text"].as_str().unwrap()).collect();
    // Embedded together (padding in play) and one by one (no padding): both must match.
    let together = embedder.embed(&texts).unwrap();
    for (i, item) in items.iter().enumerate() {
        let reference: Vec<f32> = item["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let alone = embedder.embed(&[texts[i]]).unwrap().remove(0);
        for (how, ours) in [("batched", &together[i]), ("alone", &alone)] {
            assert_eq!(ours.len(), reference.len());
            let dot: f32 = ours.iter().zip(&reference).map(|(a, b)| a * b).sum();
            let norm_ref = reference.iter().map(|x| x * x).sum::<f32>().sqrt();
            let cos = dot / norm_ref;
            assert!(
                cos >= min_cosine,
                "{kernel:?}: text {i} ({how}) {:?}: cosine {cos}",
                &texts[i].chars().take(40).collect::<String>()
            );
        }
    }
}

#[test]
fn long_texts_are_truncated_at_256_tokens_not_128() {
    let embedder = common::embedder();
    assert_eq!(embedder.max_tokens(), 256);
    let words: Vec<String> = (0..400).map(|i| format!("word{i}")).collect();
    let head = words[..60].join(" "); // ~180 tokens: past 128, within 256
    let a = embedder.embed(&[&head]).unwrap().remove(0);
    let b = embedder
        .embed(&[&format!("{head} {}", words[60..].join(" "))])
        .unwrap()
        .remove(0);
    let c = embedder.embed(&[&words[..45].join(" ")]).unwrap().remove(0);
    // Tokens between 128 and 256 change the vector (a 128-token cut would make a == c)…
    let cos_ac: f32 = a.iter().zip(&c).map(|(x, y)| x * y).sum();
    assert!(cos_ac < 0.9999, "tokens after 128 were ignored");
    // …and the document is cut at 256, so more text changes it further.
    let cos_ab: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    assert!(cos_ab < 0.9999);
}
