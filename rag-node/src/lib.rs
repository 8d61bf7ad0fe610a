//! rag-node: the data plane of the RAG operator. See `docs/architecture.md`.

pub mod api;
pub mod auth;
pub mod bench;
pub mod chunk;
pub mod cluster;
pub mod config;
pub mod control;
pub mod embed;
pub mod extract;
pub mod import;
pub mod index;
pub mod language;
pub mod log;
pub mod metrics;
pub mod node;
pub mod queue;
pub mod records;
pub mod registry;
pub mod search;
mod simd;
pub mod snapshot;
pub mod spool;
pub mod store;
pub mod time;
pub mod unicode;
pub mod worker;
