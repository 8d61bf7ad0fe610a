//! The control plane of rag-node clusters.
//!
//! Pure parts (building every Kubernetes object from a spec, computing status, planning an
//! IngestJob) are separate from the controllers that talk to the API server and Redis, so
//! they are unit-tested without a cluster.

pub mod backup;
pub mod bench;
pub mod context;
pub mod controller;
pub mod crd;
pub mod cron;
#[cfg(test)]
mod fake_api;
pub mod ingest;
pub mod leader;
pub mod metrics;
pub mod redis_state;
pub mod resources;
pub mod status;
