//! Every Kubernetes object of a RagCluster, built from its spec without any I/O. The
//! controller applies what these return with server-side apply; tests check them directly.

mod node;
mod redis;

pub use node::*;
pub use redis::*;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::RagCluster;

/// Operator-wide defaults and how pods find Services.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub node_image: String,
    pub redis_image: String,
    /// Clusters without DNS (like the e2e cluster) address Services by ClusterIP; otherwise
    /// `NAME.NAMESPACE.svc` names are used.
    pub address_by_cluster_ip: bool,
}

/// Port of the rag-node HTTP API in every pod and Service.
pub const NODE_PORT: i32 = 8080;
pub const REDIS_PORT: i32 = 6379;
/// The non-root users the containers run as.
pub const NODE_UID: i64 = 10001;
pub const REDIS_UID: i64 = 999;
pub const FIELD_MANAGER: &str = "rag-operator";
pub const FINALIZER: &str = "rag.ragnode.dev/cleanup";

/// Object names of one RagCluster, in one place.
pub struct Names {
    pub base: String,
}

impl Names {
    pub fn of(rc: &RagCluster) -> Names {
        Names {
            base: rc.name_any(),
        }
    }
    /// The rag-node StatefulSet, its PodDisruptionBudget and the client Service.
    pub fn nodes(&self) -> String {
        self.base.clone()
    }
    /// Headless Service that gives the StatefulSet pods their identity.
    pub fn headless(&self) -> String {
        format!("{}-nodes", self.base)
    }
    pub fn config(&self) -> String {
        format!("{}-config", self.base)
    }
    /// Generated `api-key` and `admin-token`.
    pub fn auth_secret(&self) -> String {
        format!("{}-auth", self.base)
    }
    /// Managed Redis StatefulSet, Service and password Secret.
    pub fn redis(&self) -> String {
        format!("{}-redis", self.base)
    }
}

pub const AUTH_API_KEY: &str = "api-key";
pub const AUTH_ADMIN_TOKEN: &str = "admin-token";
pub const REDIS_PASSWORD_KEY: &str = "password";

/// The name rag-node uses for the cluster's Redis keys (`rag:{NAME}:…`): namespace and name, so
/// two RagClusters sharing an external Redis never mix.
pub fn redis_cluster_name(rc: &RagCluster) -> String {
    format!("{}.{}", rc.namespace().unwrap_or_default(), rc.name_any())
}

pub fn labels(rc: &RagCluster, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "rag-node".into()),
        ("app.kubernetes.io/instance".into(), rc.name_any()),
        ("app.kubernetes.io/component".into(), component.into()),
        ("app.kubernetes.io/managed-by".into(), "rag-operator".into()),
    ])
}

/// The labels that select a component's pods (a stable subset of [`labels`]).
pub fn selector(rc: &RagCluster, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "rag-node".into()),
        ("app.kubernetes.io/instance".into(), rc.name_any()),
        ("app.kubernetes.io/component".into(), component.into()),
    ])
}

/// `key=value,…` form of a selector (the scale subresource's `status.selector`).
pub fn selector_string(sel: &BTreeMap<String, String>) -> String {
    sel.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn owner_ref(rc: &RagCluster) -> OwnerReference {
    rc.controller_owner_ref(&())
        .expect("a stored RagCluster has a uid")
}

pub fn meta(rc: &RagCluster, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: rc.namespace(),
        labels: Some(labels(rc, component)),
        owner_references: Some(vec![owner_ref(rc)]),
        ..Default::default()
    }
}

/// A Service selecting `component`'s pods on one TCP port. `protocol` is spelled out:
/// server-side apply on Kubernetes 1.20 needs it (it keys the ports list there).
pub fn service(
    rc: &RagCluster,
    name: String,
    component: &str,
    port: (&str, i32),
    extra_spec: serde_json::Value,
) -> k8s_openapi::api::core::v1::Service {
    let mut spec = serde_json::json!({
        "selector": selector(rc, component),
        "ports": [{"name": port.0, "port": port.1, "targetPort": port.1, "protocol": "TCP"}],
    });
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        s.extend(extra.clone());
    }
    let mut svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(
        serde_json::json!({"apiVersion": "v1", "kind": "Service", "spec": spec}),
    )
    .expect("valid Service");
    svc.metadata = meta(rc, name, component);
    svc
}

/// A stable digest (FNV-1a, 64 bit) of configuration text: put on the pod template so a
/// changed configuration rolls the pods.
pub fn digest(text: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// A Secret's value under `key`, as text (trimmed: a file written with a newline still works).
pub fn secret_key(secret: &k8s_openapi::api::core::v1::Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned())
}

/// Host of a Service as the pods should address it.
pub fn service_host(
    defaults: &Defaults,
    name: &str,
    namespace: &str,
    cluster_ip: Option<&str>,
) -> String {
    match cluster_ip {
        Some(ip) if defaults.address_by_cluster_ip && !ip.is_empty() && ip != "None" => {
            ip.to_owned()
        }
        _ => format!("{name}.{namespace}.svc"),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::crd::RagClusterSpec;

    pub fn cluster(spec_json: serde_json::Value) -> RagCluster {
        let spec: RagClusterSpec = serde_json::from_value(spec_json).unwrap();
        let mut rc = RagCluster::new("docs", spec);
        rc.metadata.namespace = Some("search".into());
        rc.metadata.uid = Some("0b4c9f5e-1111-2222-3333-444455556666".into());
        rc.metadata.generation = Some(3);
        rc
    }

    pub fn defaults() -> Defaults {
        Defaults {
            node_image: "rag-node:1".into(),
            redis_image: "redis:7".into(),
            address_by_cluster_ip: false,
        }
    }
}
