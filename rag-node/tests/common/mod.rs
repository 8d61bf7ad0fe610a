//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rag_node::embed::Embedder;

/// The model installed by scripts/setup-model.sh (the test command runs it first).
pub fn model_dir() -> PathBuf {
    std::env::var_os("RAGNODE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(rag_node::embed::default_model_dir)
}

pub fn embedder() -> Arc<Embedder> {
    static E: OnceLock<Arc<Embedder>> = OnceLock::new();
    E.get_or_init(|| {
        Arc::new(Embedder::load(&model_dir()).expect("model installed by scripts/setup-model.sh"))
    })
    .clone()
}

/// `shared/` beside the repository (facts and fixtures verified by the project).
pub fn shared_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RAG_SHARED_DIR") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}
