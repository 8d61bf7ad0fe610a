//! State shared by the controllers.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};

use crate::crd::{RagCluster, SecretKeyRef};
use crate::metrics::Metrics;
use crate::redis_state::RedisConnections;
use crate::resources::{self, Defaults, Names, PdbApi, NODE_PORT};

pub struct Context {
    pub client: Client,
    pub defaults: Defaults,
    pub pdb_api: PdbApi,
    pub metrics: Arc<Metrics>,
    pub redis: RedisConnections,
    pub reporter: Reporter,
    /// Consecutive failed reconciles per object (`kind/ns/name`), for the retry backoff.
    pub failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

/// Delay before retrying an object whose reconcile failed `n` times in a row: 2 s doubling up
/// to 256 s, so a broken object neither spins nor waits long once fixed.
pub fn retry_delay(n: u32) -> std::time::Duration {
    std::time::Duration::from_secs((2u64 << n.min(8).saturating_sub(1)).min(300))
}

/// Why a reconcile failed. `metric_label` names the variant in `ragop_reconcile_total`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Secret {namespace}/{name} has no key {key:?}")]
    MissingSecretKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("the cluster's HTTP client: {0}")]
    Client(#[source] rag_client::Error),
    #[error("uploading {source_name:?} to the cluster: {error}")]
    Upload {
        source_name: String,
        #[source]
        error: rag_client::Error,
    },
    #[error("cancelling job {job_id}: {error}")]
    Cancel {
        job_id: String,
        #[source]
        error: rag_client::Error,
    },
    #[error("building the {kind}: {error}")]
    Build {
        kind: &'static str,
        #[source]
        error: serde_json::Error,
    },
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A short, stable name of what failed, for the `error` label of the reconcile metric.
    pub fn metric_label(&self) -> &'static str {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Kube(_) => "kube_api",
            Error::MissingSecretKey { .. } => "missing_secret_key",
            Error::Client(_) => "client",
            Error::Upload { .. } => "upload",
            Error::Cancel { .. } => "cancel",
            Error::Build { .. } => "build",
            Error::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.metric_label(),
                _ => "finalizer",
            },
        }
    }
}

impl From<kube::runtime::finalizer::Error<Error>> for Error {
    fn from(e: kube::runtime::finalizer::Error<Error>) -> Self {
        Error::Finalizer(Box::new(e))
    }
}

impl Context {
    /// Records the outcome of a reconcile; returns the retry delay after a failure.
    pub fn outcome(&self, key: String, ok: bool) -> std::time::Duration {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            f.remove(&key);
            return std::time::Duration::ZERO;
        }
        let n = f.entry(key).or_insert(0);
        *n += 1;
        retry_delay(*n)
    }

    /// Publishes an event on `obj` (best effort: a failed event never fails a reconcile).
    pub async fn event<K>(&self, obj: &K, warning: bool, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::debug!(error = %e, "event not published");
        }
    }

    pub async fn secret_value(&self, ns: &str, r: &SecretKeyRef) -> Result<String, Error> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let secret = api.get(&r.name).await?;
        resources::secret_key(&secret, &r.key).ok_or_else(|| Error::MissingSecretKey {
            namespace: ns.to_owned(),
            name: r.name.clone(),
            key: r.key.clone(),
        })
    }

    async fn service_host(&self, ns: &str, name: &str) -> Result<String, Error> {
        let ip = if self.defaults.address_by_cluster_ip {
            let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
            api.get(name).await?.spec.and_then(|s| s.cluster_ip)
        } else {
            None
        };
        Ok(resources::service_host(
            &self.defaults,
            name,
            ns,
            ip.as_deref(),
        ))
    }

    /// Base URL of the cluster's client Service.
    pub async fn node_url(&self, rc: &RagCluster) -> Result<String, Error> {
        let ns = rc.namespace().unwrap_or_default();
        let host = self.service_host(&ns, &Names::of(rc).nodes()).await?;
        Ok(format!("http://{host}:{NODE_PORT}"))
    }

    /// A rag-client for the cluster, with its API key.
    pub async fn node_client(&self, rc: &RagCluster) -> Result<rag_client::Client, Error> {
        let ns = rc.namespace().unwrap_or_default();
        let mut b = rag_client::Client::builder(self.node_url(rc).await?)
            .timeout(std::time::Duration::from_secs(120));
        if let Some([(secret, key), _]) = resources::auth_refs(rc) {
            let api_key = self
                .secret_value(&ns, &SecretKeyRef { name: secret, key })
                .await?;
            b = b.api_key(api_key);
        }
        b.build().map_err(Error::Client)
    }
}

#[cfg(test)]
mod tests {
    use super::{retry_delay, Error};
    use std::time::Duration;

    #[test]
    fn errors_name_their_variant_through_the_finalizer() {
        use kube::runtime::finalizer::Error as F;
        let missing = || Error::MissingSecretKey {
            namespace: "ns".into(),
            name: "s".into(),
            key: "k".into(),
        };
        assert_eq!(missing().metric_label(), "missing_secret_key");
        assert_eq!(
            Error::from(F::ApplyFailed(missing())).metric_label(),
            "missing_secret_key"
        );
        assert_eq!(
            Error::from(F::<Error>::UnnamedObject).metric_label(),
            "finalizer"
        );
        assert_eq!(missing().to_string(), "Secret ns/s has no key \"k\"");
    }

    #[test]
    fn retries_back_off_exponentially_up_to_five_minutes() {
        let d: Vec<u64> = (1..=10).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(d, [2, 4, 8, 16, 32, 64, 128, 256, 256, 256]);
        assert!(retry_delay(50) <= Duration::from_secs(300));
    }
}
