//! The operator-managed Redis of a RagCluster (one pod, AOF with fsync on every write, a
//! generated password) and how nodes and the operator reach whichever Redis the cluster uses.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::ByteString;
use serde_json::json;

use super::*;
use crate::crd::{RagCluster, SecretKeyRef};

pub const REDIS_COMPONENT: &str = "redis";

/// Whether the cluster runs its own Redis (`spec.redis.external` unset).
pub fn is_managed(rc: &RagCluster) -> bool {
    rc.spec.redis.external.is_none()
}

/// Where the password of the cluster's Redis lives, if it has one.
pub fn redis_password_ref(rc: &RagCluster) -> Option<SecretKeyRef> {
    match &rc.spec.redis.external {
        Some(ext) => ext.password_secret_ref.clone(),
        None => Some(SecretKeyRef {
            name: Names::of(rc).redis(),
            key: REDIS_PASSWORD_KEY.into(),
        }),
    }
}

/// The Redis URL without credentials. `managed_host` is where the managed Redis Service is
/// reached (see [`service_host`]).
pub fn redis_base_url(rc: &RagCluster, managed_host: &str) -> String {
    match &rc.spec.redis.external {
        Some(ext) => ext.url.clone(),
        None => format!("redis://{managed_host}:{REDIS_PORT}"),
    }
}

/// `base` with a password inserted after the scheme (`redis://:PASSWORD@host…`).
pub fn url_with_password(base: &str, password: &str) -> String {
    match base.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://:{password}@{rest}"),
        None => base.to_owned(),
    }
}

pub fn redis_secret(rc: &RagCluster, password: &str) -> Secret {
    Secret {
        metadata: meta(rc, Names::of(rc).redis(), REDIS_COMPONENT),
        data: Some(
            [(
                REDIS_PASSWORD_KEY.to_owned(),
                ByteString(password.as_bytes().to_vec()),
            )]
            .into(),
        ),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

pub fn redis_service(rc: &RagCluster) -> Service {
    let port = ("redis", REDIS_PORT);
    service(rc, Names::of(rc).redis(), REDIS_COMPONENT, port, json!({}))
}

pub fn redis_statefulset(rc: &RagCluster, defaults: &Defaults) -> StatefulSet {
    let names = Names::of(rc);
    let managed = rc.spec.redis.managed.clone().unwrap_or_default();
    let image = managed
        .image
        .unwrap_or_else(|| defaults.redis_image.clone());
    let storage = managed.storage.unwrap_or(crate::crd::StorageSpec {
        size: "1Gi".into(),
        storage_class_name: None,
    });
    let resources = managed
        .resources
        .map(|r| serde_json::to_value(r).unwrap())
        .unwrap_or_else(
            || json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}),
        );
    let mut claim = json!({
        "metadata": {"name": "data"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": storage.size}},
        }
    });
    if let Some(class) = storage.storage_class_name {
        claim["spec"]["storageClassName"] = json!(class);
    }
    let mut sts: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "spec": {
            "replicas": 1,
            "serviceName": names.redis(),
            "selector": {"matchLabels": selector(rc, REDIS_COMPONENT)},
            "template": {
                "metadata": {"labels": labels(rc, REDIS_COMPONENT)},
                "spec": {
                    "automountServiceAccountToken": false,
                    "securityContext": {
                        "runAsNonRoot": true, "runAsUser": REDIS_UID, "runAsGroup": REDIS_UID,
                        "fsGroup": REDIS_UID,
                    },
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": "redis",
                        "image": image,
                        "imagePullPolicy": rc.spec.image_pull_policy.as_str(),
                        // Every acknowledged upload is in the AOF before Redis answers.
                        "args": [
                            "--port", REDIS_PORT.to_string(), "--bind", "0.0.0.0",
                            "--dir", "/data", "--appendonly", "yes", "--appendfsync", "always",
                            "--save", "", "--requirepass", "$(REDIS_PASSWORD)",
                        ],
                        "env": [{
                            "name": "REDIS_PASSWORD",
                            "valueFrom": {"secretKeyRef": {"name": names.redis(), "key": REDIS_PASSWORD_KEY}},
                        }],
                        "ports": [{"name": "redis", "containerPort": REDIS_PORT, "protocol": "TCP"}],
                        "readinessProbe": {"tcpSocket": {"port": REDIS_PORT}, "periodSeconds": 5, "timeoutSeconds": 2},
                        "livenessProbe": {"tcpSocket": {"port": REDIS_PORT}, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 6},
                        "resources": resources,
                        "securityContext": {
                            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    }],
                },
            },
            "volumeClaimTemplates": [claim],
        }
    }))
    .expect("valid StatefulSet");
    sts.metadata = meta(rc, names.redis(), REDIS_COMPONENT);
    sts
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn managed_redis_is_durable_private_and_non_root() {
        let rc = cluster(json!({}));
        let sts = redis_statefulset(&rc, &defaults());
        let v = serde_json::to_value(&sts).unwrap();
        let c = &v["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(args.windows(2).any(|w| w == ["--appendfsync", "always"]));
        assert!(args
            .windows(2)
            .any(|w| w == ["--requirepass", "$(REDIS_PASSWORD)"]));
        assert_eq!(c["image"], "redis:7");
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(c[probe]["timeoutSeconds"], 2, "{probe}");
        }
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            v["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
            true
        );
        assert_eq!(
            v["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
            "1Gi"
        );
        assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "RagCluster");
        assert_eq!(v["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(redis_password_ref(&rc).unwrap().name, "docs-redis");
    }

    #[test]
    fn external_redis_is_used_as_given() {
        let rc = cluster(json!({"redis": {"external": {
            "url": "rediss://redis.example:6380/2",
            "passwordSecretRef": {"name": "r", "key": "pw"}}}}));
        assert!(!is_managed(&rc));
        assert_eq!(
            redis_base_url(&rc, "ignored"),
            "rediss://redis.example:6380/2"
        );
        assert_eq!(
            url_with_password("rediss://redis.example:6380/2", "$(REDIS_PASSWORD)"),
            "rediss://:$(REDIS_PASSWORD)@redis.example:6380/2"
        );
        assert_eq!(redis_password_ref(&rc).unwrap().key, "pw");
    }
}
