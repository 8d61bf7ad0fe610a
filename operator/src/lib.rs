//! The control plane of rag-node clusters.
//!
//! Pure parts (building every Kubernetes object from a spec, computing status, planning an
//! IngestJob) are separate from the controllers that talk to the API server and Redis, so
//! they are unit-tested without a cluster.

pub mod crd;
pub mod resources;
