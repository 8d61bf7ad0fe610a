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
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

impl Context {
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
        secret
            .data
            .and_then(|d| d.get(&r.key).cloned())
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned())
            .ok_or_else(|| Error::Other(format!("Secret {}/{} has no key {:?}", ns, r.name, r.key)))
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

    /// The cluster's Redis URL with its password, as the operator connects to it.
    pub async fn redis_url(&self, rc: &RagCluster) -> Result<String, Error> {
        let ns = rc.namespace().unwrap_or_default();
        let host = self.service_host(&ns, &Names::of(rc).redis()).await?;
        let base = resources::redis_base_url(rc, &host);
        Ok(match resources::redis_password_ref(rc) {
            Some(r) => resources::url_with_password(&base, &self.secret_value(&ns, &r).await?),
            None => base,
        })
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
        b.build().map_err(|e| Error::Other(e.to_string()))
    }
}
