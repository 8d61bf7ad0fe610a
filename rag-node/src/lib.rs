//! rag-node: the data plane of the RAG operator. See `docs/architecture.md`.

pub mod chunk;
pub mod embed;
pub mod extract;
pub mod index;
pub mod queue;
pub mod search;
pub mod store;
