//! The rag-node side of a RagCluster: configuration, credentials, Services, the StatefulSet
//! and its PodDisruptionBudget.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::ByteString;
use serde_json::{json, Value};

use super::*;
use crate::crd::RagCluster;

pub const NODE_COMPONENT: &str = "node";
pub const CONFIG_FILE: &str = "rag-node.toml";
const CONFIG_DIR: &str = "/etc/rag-node";
const AUTH_DIR: &str = "/etc/rag-node/auth";
const MODEL_MOUNT: &str = "/models/custom";
/// Where `sourceVolumes` are mounted (`/sources/NAME`); IngestJob `path` sources point here.
pub const SOURCES_DIR: &str = "/sources";
pub const CONFIG_HASH_ANNOTATION: &str = "rag.ragnode.dev/config-hash";

/// The node configuration file. Secrets never go in here: the Redis password and the API
/// credentials come from Secrets through the environment and mounted files.
pub fn node_config(rc: &RagCluster) -> String {
    let mut out = String::new();
    out.push_str("# Written by rag-operator from the RagCluster spec.\n");
    out.push_str(&format!("listen = \"0.0.0.0:{NODE_PORT}\"\n"));
    out.push_str("data_dir = \"/data\"\n");
    let format = match rc.spec.log_format {
        crate::crd::LogFormat::Json => "json",
        crate::crd::LogFormat::Text => "text",
    };
    out.push_str(&format!("log_format = \"{format}\"\n"));
    if let Some(max) = rc.spec.max_upload_bytes {
        out.push_str(&format!("max_upload_bytes = {max}\n"));
    }
    if !rc.spec.source_volumes.is_empty() {
        out.push_str(&format!("import_roots = [\"{SOURCES_DIR}\"]\n"));
    }
    if let Some(b) = rc.spec.backup.as_ref().filter(|b| b.restore_new_nodes) {
        out.push_str(&format!("bootstrap_from = {:?}\n", b.target));
    }
    if let Some(c) = rc.spec.chunking {
        out.push_str(&format!(
            "\n[chunking]\nmax_tokens = {}\noverlap_tokens = {}\n",
            c.max_tokens, c.overlap_tokens
        ));
    }
    if let Some(s) = &rc.spec.search {
        if let Some(mode) = s.default_mode {
            out.push_str(&format!(
                "\n[search]\ndefault_mode = \"{}\"\n",
                mode.as_str()
            ));
        }
        if !s.languages.is_empty() || s.default_language.is_some() {
            out.push_str("\n[keyword]\n");
            if !s.languages.is_empty() {
                let list: Vec<String> = s.languages.iter().map(|l| format!("{l:?}")).collect();
                out.push_str(&format!("languages = [{}]\n", list.join(", ")));
            }
            if let Some(l) = &s.default_language {
                out.push_str(&format!("default_language = {l:?}\n"));
            }
        }
    }
    out.push_str(&format!(
        "\n[cluster]\nname = \"{}\"\n",
        redis_cluster_name(rc)
    ));
    out
}

pub fn config_map(rc: &RagCluster) -> ConfigMap {
    ConfigMap {
        metadata: meta(rc, Names::of(rc).config(), NODE_COMPONENT),
        data: Some([(CONFIG_FILE.to_owned(), node_config(rc))].into()),
        ..Default::default()
    }
}

/// The generated credentials Secret (created once, never rewritten).
pub fn auth_secret(rc: &RagCluster, api_key: &str, admin_token: &str) -> Secret {
    Secret {
        metadata: meta(rc, Names::of(rc).auth_secret(), NODE_COMPONENT),
        data: Some(
            [
                (
                    AUTH_API_KEY.to_owned(),
                    ByteString(api_key.as_bytes().to_vec()),
                ),
                (
                    AUTH_ADMIN_TOKEN.to_owned(),
                    ByteString(admin_token.as_bytes().to_vec()),
                ),
            ]
            .into(),
        ),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// Where the API key and admin token of the cluster are: `(secret, key)` each; `None` when
/// authentication is off.
pub fn auth_refs(rc: &RagCluster) -> Option<[(String, String); 2]> {
    let auth = &rc.spec.auth;
    if !auth.enabled {
        return None;
    }
    let generated = Names::of(rc).auth_secret();
    let api = auth
        .api_key_secret_ref
        .as_ref()
        .map(|r| (r.name.clone(), r.key.clone()))
        .unwrap_or((generated.clone(), AUTH_API_KEY.into()));
    let admin = auth
        .admin_token_secret_ref
        .as_ref()
        .map(|r| (r.name.clone(), r.key.clone()))
        .unwrap_or((generated, AUTH_ADMIN_TOKEN.into()));
    Some([api, admin])
}

/// Whether the operator must generate the credentials Secret.
pub fn needs_generated_auth(rc: &RagCluster) -> bool {
    let a = &rc.spec.auth;
    a.enabled && (a.api_key_secret_ref.is_none() || a.admin_token_secret_ref.is_none())
}

/// The client Service: what applications and the operator call.
pub fn client_service(rc: &RagCluster) -> Service {
    let port = ("http", NODE_PORT);
    service(rc, Names::of(rc).nodes(), NODE_COMPONENT, port, json!({}))
}

/// The governing headless Service of the StatefulSet (stable pod names, not-ready pods too).
pub fn headless_service(rc: &RagCluster) -> Service {
    let extra = json!({"clusterIP": "None", "publishNotReadyAddresses": true});
    service(
        rc,
        Names::of(rc).headless(),
        NODE_COMPONENT,
        ("http", NODE_PORT),
        extra,
    )
}

/// The rag-node StatefulSet. `redis_url` is the URL without credentials (see
/// [`redis_base_url`]); the password is spliced in by the kubelet from a Secret.
pub fn node_statefulset(rc: &RagCluster, defaults: &Defaults, redis_url: &str) -> StatefulSet {
    let names = Names::of(rc);
    let spec = &rc.spec;
    let image = spec
        .image
        .clone()
        .unwrap_or_else(|| defaults.node_image.clone());
    let mut env = vec![
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "RAGNODE_CONFIG", "value": format!("{CONFIG_DIR}/{CONFIG_FILE}")}),
    ];
    let password = redis_password_ref(rc);
    if let Some(p) = &password {
        env.push(json!({"name": "REDIS_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": p.name, "key": p.key}}}));
    }
    let url = match password {
        Some(_) => url_with_password(redis_url, "$(REDIS_PASSWORD)"),
        None => redis_url.to_owned(),
    };
    env.push(json!({"name": "RAGNODE_REDIS_URL", "value": url}));

    let mut mounts = vec![
        json!({"name": "data", "mountPath": "/data"}),
        json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    let mut volumes = vec![
        json!({"name": "config", "configMap": {"name": names.config()}}),
        json!({"name": "tmp", "emptyDir": {}}),
    ];
    if let Some([(api_secret, api_key), (admin_secret, admin_key)]) = auth_refs(rc) {
        // Two projected items so the keys may come from different Secrets.
        volumes.push(json!({"name": "auth", "projected": {"sources": [
            {"secret": {"name": api_secret, "items": [{"key": api_key, "path": AUTH_API_KEY}]}},
            {"secret": {"name": admin_secret, "items": [{"key": admin_key, "path": AUTH_ADMIN_TOKEN}]}},
        ]}}));
        mounts.push(json!({"name": "auth", "mountPath": AUTH_DIR, "readOnly": true}));
        env.push(
            json!({"name": "RAGNODE_API_KEY_FILE", "value": format!("{AUTH_DIR}/{AUTH_API_KEY}")}),
        );
        env.push(json!({"name": "RAGNODE_ADMIN_TOKEN_FILE", "value": format!("{AUTH_DIR}/{AUTH_ADMIN_TOKEN}")}));
    }
    for v in &spec.source_volumes {
        volumes.push(json!({"name": format!("src-{}", v.name),
            "persistentVolumeClaim": {"claimName": v.persistent_volume_claim, "readOnly": true}}));
        mounts.push(json!({"name": format!("src-{}", v.name),
            "mountPath": format!("{SOURCES_DIR}/{}", v.name), "readOnly": true}));
    }
    if let Some(b) = &spec.backup {
        // object_store's S3 client reads these (the nodes take the snapshots and restore them).
        let s3 = &b.s3;
        for (name, value) in [
            ("AWS_ENDPOINT", s3.endpoint.clone()),
            ("AWS_REGION", s3.region.clone()),
            ("AWS_ALLOW_HTTP", s3.allow_http.then(|| "true".to_owned())),
        ] {
            if let Some(value) = value {
                env.push(json!({"name": name, "value": value}));
            }
        }
        if let Some(secret) = &s3.credentials_secret {
            for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
                env.push(json!({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}));
            }
        }
    }
    if let Some(p) = spec.model.precision {
        env.push(json!({"name": "RAGNODE_EMBEDDING_PRECISION", "value": p.as_str()}));
    }
    if let Some(claim) = &spec.model.persistent_volume_claim {
        volumes.push(json!({"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": true}}));
        let mut m = json!({"name": "model", "mountPath": MODEL_MOUNT, "readOnly": true});
        if let Some(sub) = &spec.model.sub_path {
            m["subPath"] = json!(sub);
        }
        mounts.push(m);
        env.push(json!({"name": "RAGNODE_MODEL_DIR", "value": MODEL_MOUNT}));
    }

    let resources = spec
        .resources
        .as_ref()
        .map(|r| serde_json::to_value(r).unwrap())
        .unwrap_or_else(
            || json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}),
        );
    let overrides = spec.pod.clone().unwrap_or_default();
    let mut pod_labels = overrides.labels.clone().unwrap_or_default();
    pod_labels.extend(labels(rc, NODE_COMPONENT));
    // Scraped by Prometheus' usual kubernetes-pods job unless the user says otherwise.
    let mut annotations: std::collections::BTreeMap<String, String> = [
        ("prometheus.io/scrape", "true".to_owned()),
        ("prometheus.io/port", NODE_PORT.to_string()),
        ("prometheus.io/path", "/metrics".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    annotations.extend(overrides.annotations.clone().unwrap_or_default());
    annotations.insert(CONFIG_HASH_ANNOTATION.into(), digest(&node_config(rc)));

    let mut pod_spec = json!({
        "automountServiceAccountToken": false,
        "securityContext": {
            "runAsNonRoot": true, "runAsUser": NODE_UID, "runAsGroup": NODE_UID, "fsGroup": NODE_UID,
        },
        // A running job is finished or handed back to the queue on SIGTERM.
        "terminationGracePeriodSeconds": 60,
        "containers": [{
            "name": "rag-node",
            "image": image,
            "imagePullPolicy": spec.image_pull_policy.as_str(),
            "args": ["serve"],
            "env": env,
            "ports": [{"name": "http", "containerPort": NODE_PORT, "protocol": "TCP"}],
            // Loading the model and replaying the index log can take a while on a new pod.
            // Explicit time-outs (the kubelet's default is 1 s): /readyz answers within 500 ms
            // even while Redis hangs, so 2 s only fails a node that is itself stuck.
            "startupProbe": {"httpGet": {"path": "/livez", "port": NODE_PORT}, "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 150},
            "livenessProbe": {"httpGet": {"path": "/livez", "port": NODE_PORT}, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3},
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": NODE_PORT}, "periodSeconds": 3, "timeoutSeconds": 2, "failureThreshold": 2},
            "resources": resources,
            "securityContext": {
                "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    });
    if let Some(v) = overrides.node_selector {
        pod_spec["nodeSelector"] = json!(v);
    }
    if let Some(v) = overrides.tolerations {
        pod_spec["tolerations"] = serde_json::to_value(v).unwrap();
    }
    if let Some(v) = overrides.affinity {
        pod_spec["affinity"] = serde_json::to_value(v).unwrap();
    }
    if let Some(v) = overrides.topology_spread_constraints {
        pod_spec["topologySpreadConstraints"] = serde_json::to_value(v).unwrap();
    }

    let mut claim = json!({
        "metadata": {"name": "data"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": spec.storage.size}},
        }
    });
    if let Some(class) = &spec.storage.storage_class_name {
        claim["spec"]["storageClassName"] = json!(class);
    }
    let mut sts: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "spec": {
            "replicas": spec.replicas,
            "serviceName": names.headless(),
            // Nodes share nothing but Redis: start and stop them all at once.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector(rc, NODE_COMPONENT)},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": annotations},
                "spec": pod_spec,
            },
            "volumeClaimTemplates": [claim],
        }
    }))
    .expect("valid StatefulSet");
    sts.metadata = meta(rc, names.nodes(), NODE_COMPONENT);
    sts
}

/// Which PodDisruptionBudget API the server offers (discovered at start-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PdbApi {
    V1,
    V1beta1,
}

impl PdbApi {
    pub fn api_version(self) -> &'static str {
        match self {
            PdbApi::V1 => "policy/v1",
            PdbApi::V1beta1 => "policy/v1beta1",
        }
    }
}

/// The PodDisruptionBudget's API as a dynamic resource (its Rust type is version-specific).
pub fn pdb_api_resource(api: PdbApi) -> kube::core::ApiResource {
    let (group, version) = api.api_version().split_once('/').expect("group/version");
    kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
        group,
        version,
        "PodDisruptionBudget",
    ))
}

/// At most one node down at a time for voluntary disruptions (drains, upgrades).
pub fn pod_disruption_budget(rc: &RagCluster, api: PdbApi) -> Value {
    json!({
        "apiVersion": api.api_version(),
        "kind": "PodDisruptionBudget",
        "metadata": meta(rc, Names::of(rc).nodes(), NODE_COMPONENT),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(rc, NODE_COMPONENT)},
        }
    })
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn container(sts: &StatefulSet) -> Value {
        serde_json::to_value(sts).unwrap()["spec"]["template"]["spec"]["containers"][0].clone()
    }

    fn env(c: &Value, name: &str) -> Value {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    }

    #[test]
    fn default_statefulset() {
        let rc = cluster(json!({"replicas": 3}));
        let sts = node_statefulset(&rc, &defaults(), "redis://docs-redis.search.svc:6379");
        let v = serde_json::to_value(&sts).unwrap();
        assert_eq!(v["spec"]["replicas"], 3);
        assert_eq!(v["spec"]["serviceName"], "docs-nodes");
        assert_eq!(v["metadata"]["namespace"], "search");
        let c = container(&sts);
        assert_eq!(c["image"], "rag-node:1");
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            assert_eq!(c[probe]["timeoutSeconds"], 2, "{probe}");
        }
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            v["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
            true
        );
        assert_eq!(
            env(&c, "RAGNODE_REDIS_URL")["value"],
            "redis://:$(REDIS_PASSWORD)@docs-redis.search.svc:6379"
        );
        assert_eq!(
            env(&c, "REDIS_PASSWORD")["valueFrom"]["secretKeyRef"]["name"],
            "docs-redis"
        );
        assert_eq!(
            env(&c, "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
        assert_eq!(
            env(&c, "RAGNODE_API_KEY_FILE")["value"],
            "/etc/rag-node/auth/api-key"
        );
        assert_eq!(
            v["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
            "10Gi"
        );
        // The template's labels include the selector (the API server rejects it otherwise).
        let sel = &v["spec"]["selector"]["matchLabels"];
        for (k, val) in sel.as_object().unwrap() {
            assert_eq!(&v["spec"]["template"]["metadata"]["labels"][k], val);
        }
    }

    #[test]
    fn overrides_reach_the_pods() {
        let rc = cluster(json!({
            "image": "my/rag:2", "imagePullPolicy": "Never",
            "resources": {"limits": {"cpu": "2"}},
            "storage": {"size": "50Gi", "storageClassName": "fast"},
            "model": {"persistentVolumeClaim": "models", "subPath": "e5"},
            "sourceVolumes": [{"name": "shared", "persistentVolumeClaim": "team-files"}],
            "auth": {"enabled": false},
            "pod": {
                "nodeSelector": {"disk": "ssd"},
                "tolerations": [{"key": "rag", "operator": "Exists"}],
                "annotations": {"team": "search"},
                "labels": {"tier": "data"},
            }
        }));
        let sts = node_statefulset(&rc, &defaults(), "redis://r:6379");
        let v = serde_json::to_value(&sts).unwrap();
        let pod = &v["spec"]["template"]["spec"];
        assert_eq!(pod["nodeSelector"]["disk"], "ssd");
        assert_eq!(pod["tolerations"][0]["key"], "rag");
        assert_eq!(
            v["spec"]["template"]["metadata"]["annotations"]["team"],
            "search"
        );
        assert_eq!(
            v["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
            "8080"
        );
        assert_eq!(v["spec"]["template"]["metadata"]["labels"]["tier"], "data");
        assert_eq!(
            v["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"],
            "fast"
        );
        let c = container(&sts);
        assert_eq!(c["image"], "my/rag:2");
        assert_eq!(c["imagePullPolicy"], "Never");
        assert_eq!(c["resources"]["limits"]["cpu"], "2");
        assert_eq!(env(&c, "RAGNODE_MODEL_DIR")["value"], "/models/custom");
        assert_eq!(env(&c, "RAGNODE_API_KEY_FILE"), Value::Null);
        let model = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "model")
            .unwrap();
        assert_eq!(model["subPath"], "e5");
        assert!(!needs_generated_auth(&rc));
        let src = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "src-shared")
            .unwrap();
        assert_eq!(
            (src["mountPath"].as_str(), src["readOnly"].as_bool()),
            (Some("/sources/shared"), Some(true))
        );
        assert!(node_config(&rc).contains("import_roots = [\"/sources\"]"));
        assert!(!node_config(&cluster(json!({}))).contains("import_roots"));
    }

    #[test]
    fn backups_give_the_nodes_s3_settings_and_a_snapshot_to_start_from() {
        let rc = cluster(json!({"backup": {
            "target": "s3://backups/docs", "schedule": "@daily",
            "s3": {"endpoint": "http://minio:9000", "allowHttp": true, "credentialsSecret": "s3-creds"},
        }}));
        let c = container(&node_statefulset(&rc, &defaults(), "redis://r:1"));
        assert_eq!(env(&c, "AWS_ENDPOINT")["value"], "http://minio:9000");
        assert_eq!(env(&c, "AWS_ALLOW_HTTP")["value"], "true");
        assert_eq!(env(&c, "AWS_REGION"), Value::Null);
        assert_eq!(
            env(&c, "AWS_SECRET_ACCESS_KEY")["valueFrom"]["secretKeyRef"],
            json!({"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"})
        );
        assert!(node_config(&rc).contains("bootstrap_from = \"s3://backups/docs\"\n"));
        let no_restore =
            cluster(json!({"backup": {"target": "s3://backups/docs", "restoreNewNodes": false}}));
        assert!(!node_config(&no_restore).contains("bootstrap_from"));
        assert!(!node_config(&cluster(json!({}))).contains("bootstrap_from"));
    }

    #[test]
    fn config_changes_roll_the_pods() {
        let a = cluster(json!({}));
        let b = cluster(json!({"chunking": {"maxTokens": 128, "overlapTokens": 16}}));
        let hash = |rc: &RagCluster| {
            let v = serde_json::to_value(node_statefulset(rc, &defaults(), "redis://r:1")).unwrap();
            v["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION].clone()
        };
        assert_ne!(hash(&a), hash(&b));
        let cfg = node_config(&b);
        assert!(cfg.contains("[chunking]\nmax_tokens = 128\noverlap_tokens = 16"));
        assert!(cfg.contains("name = \"search.docs\""));
        assert!(!cfg.contains("password"));
    }

    #[test]
    fn search_settings_reach_the_node_config() {
        let rc = cluster(json!({"search": {
            "defaultMode": "keyword", "languages": ["pt", "en", "es"], "defaultLanguage": "pt",
        }}));
        let cfg = node_config(&rc);
        assert!(
            cfg.contains("\n[search]\ndefault_mode = \"keyword\"\n"),
            "{cfg}"
        );
        assert!(
            cfg.contains(
                "\n[keyword]\nlanguages = [\"pt\", \"en\", \"es\"]\ndefault_language = \"pt\"\n"
            ),
            "{cfg}"
        );
        // Only what is set: the nodes keep their defaults for the rest.
        let only_languages = node_config(&cluster(json!({"search": {"languages": ["de"]}})));
        assert!(only_languages.contains("\n[keyword]\nlanguages = [\"de\"]\n"));
        assert!(!only_languages.contains("[search]"));
        assert!(!only_languages.contains("default_language"));
        let only_mode = node_config(&cluster(json!({"search": {"defaultMode": "dense"}})));
        assert!(only_mode.contains("default_mode = \"dense\""));
        assert!(!only_mode.contains("[keyword]"));
        for cfg in [
            node_config(&cluster(json!({}))),
            node_config(&cluster(json!({"search": {}}))),
        ] {
            assert!(
                !cfg.contains("[search]") && !cfg.contains("[keyword]"),
                "{cfg}"
            );
        }
        // A changed language list rolls the pods (each node then rebuilds its keyword index).
        let hash = |rc: &RagCluster| {
            let v = serde_json::to_value(node_statefulset(rc, &defaults(), "redis://r:1")).unwrap();
            v["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION].clone()
        };
        let other = cluster(json!({"search": {
            "defaultMode": "keyword", "languages": ["pt", "en"], "defaultLanguage": "pt",
        }}));
        assert_ne!(hash(&rc), hash(&other));
    }

    /// The new tables come after every top-level key (TOML would put a later key in a table).
    #[test]
    fn search_tables_follow_the_top_level_keys() {
        let rc = cluster(json!({
            "chunking": {"maxTokens": 128, "overlapTokens": 16},
            "search": {"defaultMode": "hybrid", "languages": ["fr", "it"], "defaultLanguage": "it"},
        }));
        let cfg = node_config(&rc);
        // Tables follow every top-level key.
        let first_table = cfg.find("\n[").unwrap();
        assert!(
            !cfg[first_table..].contains("\nlisten") && !cfg[first_table..].contains("\ndata_dir")
        );
        let tables: Vec<&str> = cfg.lines().filter(|l| l.starts_with('[')).collect();
        assert_eq!(tables, ["[chunking]", "[search]", "[keyword]", "[cluster]"]);
    }

    #[test]
    fn services_and_budget() {
        let rc = cluster(json!({}));
        let client = serde_json::to_value(client_service(&rc)).unwrap();
        assert_eq!(client["metadata"]["name"], "docs");
        assert_eq!(client["spec"]["ports"][0]["port"], 8080);
        let headless = serde_json::to_value(headless_service(&rc)).unwrap();
        assert_eq!(headless["spec"]["clusterIP"], "None");
        let pdb = pod_disruption_budget(&rc, PdbApi::V1beta1);
        assert_eq!(pdb["apiVersion"], "policy/v1beta1");
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);
        assert_eq!(
            pod_disruption_budget(&rc, PdbApi::V1)["apiVersion"],
            "policy/v1"
        );
        assert_eq!(selector_string(&selector(&rc, NODE_COMPONENT)),
            "app.kubernetes.io/component=node,app.kubernetes.io/instance=docs,app.kubernetes.io/name=rag-node");
    }

    #[test]
    fn generated_auth_secret() {
        let rc = cluster(json!({}));
        assert!(needs_generated_auth(&rc));
        let s = auth_secret(&rc, "k".repeat(32).as_str(), "t".repeat(32).as_str());
        let data = s.data.unwrap();
        assert_eq!(data[AUTH_API_KEY].0.len(), 32);
        assert_eq!(
            auth_refs(&rc).unwrap()[0],
            ("docs-auth".to_owned(), "api-key".to_owned())
        );
    }
}
