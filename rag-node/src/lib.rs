//! rag-node: the data plane of the RAG operator. See `docs/architecture.md`.

pub mod chunk;
pub mod embed;
pub mod extract;
pub mod index;
pub mod queue;
pub mod search;
pub mod store;
pub mod log;
pub mod metrics;
pub mod worker;
pub mod config;
pub mod node;
pub mod api;
pub mod bench;
