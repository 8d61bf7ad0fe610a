//! Apply: every built object with server-side apply under one field manager, but only those
//! that differ from what the server has, so a reconcile with nothing changed writes nothing.
//!
//! An object is up to date when the live object holds every field of the built one (the
//! server adds defaults and status, which do not count) *and* carries the digest of the built
//! object: the digest catches a field we stopped setting (which a field-by-field comparison
//! cannot see), the comparison catches someone else's edit of a field we own.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::build::ClusterResources;
use super::dereference::Live;
use crate::context::{Context, Error};
use crate::resources::{self as res, FIELD_MANAGER};

/// The digest of the object as built, on every object the operator applies.
pub const APPLIED_DIGEST_ANNOTATION: &str = "rag.ragnode.dev/applied-digest";

/// What the server has after this reconcile, for the status.
pub struct Applied {
    pub node_statefulset: Option<StatefulSet>,
    pub client_service: Service,
    /// Whether the generated API credentials were created now.
    pub created_credentials: bool,
    /// Objects written (created or patched) in this reconcile.
    pub writes: usize,
}

pub async fn apply(
    ctx: &Context,
    ns: &str,
    resources: ClusterResources,
    live: &Live,
) -> Result<Applied, Error> {
    let ClusterResources {
        auth_secret,
        redis_secret,
        redis_service,
        redis_statefulset,
        config_map,
        headless_service,
        client_service,
        pod_disruption_budget,
        node_statefulset,
    } = resources;
    let client = ctx.client.clone();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let config_maps = Api::namespaced(client.clone(), ns);
    let pdbs: Api<DynamicObject> =
        Api::namespaced_with(client, ns, &res::pdb_api_resource(ctx.pdb_api));
    let mut w = Writes::default();

    let created_credentials = match auth_secret {
        Some(s) => w.create(&secrets, &s).await?,
        None => false,
    };
    if let Some(s) = redis_secret {
        w.create(&secrets, &s).await?;
    }
    if let Some(svc) = redis_service {
        w.ensure(&services, svc, &live.services).await?;
    }
    if let Some(sts) = redis_statefulset {
        w.ensure(&statefulsets, sts, &live.statefulsets).await?;
    }
    w.ensure(&config_maps, config_map, &live.config_maps)
        .await?;
    w.ensure(&services, headless_service, &live.services)
        .await?;
    let client_service = w.ensure(&services, client_service, &live.services).await?;
    w.ensure_one(&pdbs, pod_disruption_budget, live.pdb.as_ref())
        .await?;
    let node_statefulset = match node_statefulset {
        Some(sts) => Some(w.ensure(&statefulsets, sts, &live.statefulsets).await?),
        None => None,
    };
    Ok(Applied {
        node_statefulset,
        client_service,
        created_credentials,
        writes: w.0,
    })
}

#[derive(Default)]
struct Writes(usize);

impl Writes {
    /// Creates a generated Secret; one that appeared meanwhile (ours or the user's) is kept,
    /// so credentials stay stable across reconciles and operator restarts.
    async fn create(&mut self, api: &Api<Secret>, secret: &Secret) -> Result<bool, Error> {
        self.0 += 1;
        match api.create(&PostParams::default(), secret).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn ensure<K>(
        &mut self,
        api: &Api<K>,
        obj: K,
        live: &std::collections::BTreeMap<String, K>,
    ) -> Result<K, Error>
    where
        K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    {
        let current = live.get(&obj.meta().name.clone().unwrap_or_default());
        self.ensure_one(api, obj, current).await
    }

    async fn ensure_one<K>(&mut self, api: &Api<K>, obj: K, live: Option<&K>) -> Result<K, Error>
    where
        K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    {
        let obj = stamped(obj)?;
        if let Some(live) = live {
            if up_to_date(&to_value(&obj)?, &to_value(live)?) {
                return Ok(live.clone());
            }
        }
        let name = obj.name_any();
        tracing::debug!(object = %name, "applying");
        self.0 += 1;
        Ok(api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await?)
    }
}

fn to_value<K: Serialize>(obj: &K) -> Result<Value, Error> {
    serde_json::to_value(obj).map_err(|error| Error::Build {
        kind: "object",
        error,
    })
}

/// The object with the digest of itself (as built, before the annotation) on it.
pub fn stamped<K: Resource + Serialize>(mut obj: K) -> Result<K, Error> {
    let text = serde_json::to_string(&obj).map_err(|error| Error::Build {
        kind: "object",
        error,
    })?;
    obj.meta_mut()
        .annotations
        .get_or_insert_default()
        .insert(APPLIED_DIGEST_ANNOTATION.into(), res::digest(&text));
    Ok(obj)
}

/// Whether `live` holds every field of `desired` with the same value. Lists must have the
/// same length, element by element; an empty list, map or null we set counts as present when
/// the server dropped it (it omits empty fields).
pub fn up_to_date(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| match l.get(k) {
            Some(lv) => up_to_date(dv, lv),
            None => is_empty(dv),
        }),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| up_to_date(dv, lv))
        }
        (d, Value::Null) => is_empty(d),
        (d, l) => d == l,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_status_added_by_the_server_do_not_count() {
        let desired = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "n"}]}}}, "metadata": {"labels": {}}});
        let live = json!({"spec": {"replicas": 2, "revisionHistoryLimit": 10,
            "template": {"spec": {"containers": [{"name": "n", "terminationMessagePath": "/dev/termination-log"}]}}},
            "status": {"replicas": 2}, "metadata": {"uid": "u"}});
        assert!(up_to_date(&desired, &live));
    }

    #[test]
    fn a_changed_value_or_list_is_a_difference() {
        let desired = json!({"spec": {"replicas": 3, "ports": [{"port": 80}]}});
        assert!(!up_to_date(
            &desired,
            &json!({"spec": {"replicas": 2, "ports": [{"port": 80}]}})
        ));
        assert!(!up_to_date(
            &desired,
            &json!({"spec": {"replicas": 3, "ports": [{"port": 80}, {"port": 81}]}})
        ));
        assert!(!up_to_date(&desired, &json!({"spec": {"replicas": 3}})));
    }

    #[test]
    fn the_digest_sees_a_field_no_longer_set() {
        use k8s_openapi::api::core::v1::ConfigMap;
        let with = |data: &[(&str, &str)]| ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some("c".into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        };
        let live = to_value(&stamped(with(&[("a", "1"), ("b", "2")])).unwrap()).unwrap();
        // A field-by-field look says yes (the live object has "a"); the digest says no.
        let fewer = to_value(&stamped(with(&[("a", "1")])).unwrap()).unwrap();
        assert!(!up_to_date(&fewer, &live));
        let same = to_value(&stamped(with(&[("a", "1"), ("b", "2")])).unwrap()).unwrap();
        assert!(up_to_date(&same, &live));
    }
}
