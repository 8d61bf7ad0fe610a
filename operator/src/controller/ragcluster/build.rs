//! Build: every object of a RagCluster, from its spec and what was dereferenced, without I/O.
//! The objects themselves come from `crate::resources`; this decides which of them this
//! reconcile applies.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::DynamicObject;

use super::dereference::Dereferenced;
use crate::context::Error;
use crate::crd::RagCluster;
use crate::resources::{self as res, Defaults, Names, PdbApi};

/// One RagCluster's objects, in the order they are applied. `apply` destructures it without
/// `..`, so an object added here cannot be forgotten there.
pub struct ClusterResources {
    /// The generated API key and admin token: only while that Secret does not exist.
    pub auth_secret: Option<Secret>,
    /// The managed Redis's password: only while that Secret does not exist.
    pub redis_secret: Option<Secret>,
    /// The managed Redis (none with an external Redis).
    pub redis_service: Option<Service>,
    pub redis_statefulset: Option<StatefulSet>,
    pub config_map: ConfigMap,
    pub headless_service: Service,
    pub client_service: Service,
    pub pod_disruption_budget: DynamicObject,
    /// The nodes; `None` until the managed Redis has an address they can use.
    pub node_statefulset: Option<StatefulSet>,
}

impl ClusterResources {
    /// Whether every object of the cluster is here (else the reconcile comes back soon).
    pub fn complete(&self) -> bool {
        self.node_statefulset.is_some()
    }
}

pub fn build(
    rc: &RagCluster,
    defaults: &Defaults,
    pdb_api: PdbApi,
    deref: &Dereferenced,
) -> Result<ClusterResources, Error> {
    let names = Names::of(rc);
    let missing = |name: String| !deref.live.secrets.contains(&name);
    let managed = res::is_managed(rc);
    let fresh = &deref.fresh;
    let pdb = res::pod_disruption_budget(rc, pdb_api);
    Ok(ClusterResources {
        auth_secret: (res::needs_generated_auth(rc) && missing(names.auth_secret()))
            .then(|| res::auth_secret(rc, &fresh.api_key, &fresh.admin_token)),
        redis_secret: (managed && missing(names.redis()))
            .then(|| res::redis_secret(rc, &fresh.redis_password)),
        redis_service: managed.then(|| res::redis_service(rc)),
        redis_statefulset: managed.then(|| res::redis_statefulset(rc, defaults)),
        config_map: res::config_map(rc),
        headless_service: res::headless_service(rc),
        client_service: res::client_service(rc),
        pod_disruption_budget: serde_json::from_value(pdb).map_err(|error| Error::Build {
            kind: "PodDisruptionBudget",
            error,
        })?,
        node_statefulset: deref
            .redis_base
            .as_deref()
            .map(|base| res::node_statefulset(rc, defaults, base)),
    })
}

#[cfg(test)]
mod tests {
    use super::super::dereference::{Credentials, Live};
    use super::*;
    use crate::resources::testing::{cluster, defaults};
    use serde_json::json;

    fn deref(live: Live, redis_base: Option<&str>) -> Dereferenced {
        Dereferenced {
            live,
            redis_base: redis_base.map(str::to_owned),
            redis_url: Err("not read".into()),
            fresh: Credentials {
                api_key: "k".into(),
                admin_token: "t".into(),
                redis_password: "p".into(),
            },
        }
    }

    #[test]
    fn a_new_cluster_gets_every_object_and_fresh_secrets() {
        let rc = cluster(json!({"replicas": 2}));
        let d = deref(Live::default(), Some("redis://docs-redis.search.svc:6379"));
        let b = build(&rc, &defaults(), PdbApi::V1, &d).unwrap();
        assert!(b.complete());
        assert!(b.auth_secret.is_some() && b.redis_secret.is_some());
        assert!(b.redis_service.is_some() && b.redis_statefulset.is_some());
        let env = serde_json::to_string(&b.node_statefulset.unwrap()).unwrap();
        assert!(env.contains("@docs-redis.search.svc:6379"), "{env}");
        assert_eq!(
            b.pod_disruption_budget.types.unwrap().api_version,
            "policy/v1"
        );
    }

    #[test]
    fn existing_secrets_are_not_rebuilt_and_an_external_redis_has_no_objects() {
        let rc = cluster(json!({"redis": {"external": {"url": "redis://r:6379"}}}));
        let mut live = Live::default();
        live.secrets.insert("docs-auth".into());
        let b = build(
            &rc,
            &defaults(),
            PdbApi::V1beta1,
            &deref(live, Some("redis://r:6379")),
        )
        .unwrap();
        assert!(b.auth_secret.is_none() && b.redis_secret.is_none());
        assert!(b.redis_service.is_none() && b.redis_statefulset.is_none());
    }

    #[test]
    fn nodes_wait_for_an_address_of_the_managed_redis() {
        let rc = cluster(json!({}));
        let b = build(&rc, &defaults(), PdbApi::V1, &deref(Live::default(), None)).unwrap();
        assert!(!b.complete());
        assert!(
            b.redis_service.is_some(),
            "the Service that gets the address is built"
        );
    }
}
