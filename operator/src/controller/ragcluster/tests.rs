//! The RagCluster reconcile against an in-memory API server: which calls it makes for a new
//! cluster, with nothing changed, after one change, after someone else's edit, and on deletion.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use serde_json::{json, Value};

use super::reconcile;
use crate::context::Context;
use crate::crd::RagCluster;
use crate::fake_api::{Call, FakeApi};
use crate::metrics::Metrics;
use crate::resources::{testing, Defaults, PdbApi, FINALIZER};

const RC: &str = "/apis/rag.ragnode.dev/v1alpha1/namespaces/search/ragclusters/docs";
const NODES: &str = "/apis/apps/v1/namespaces/search/statefulsets/docs";
const PVCS: &str = "/api/v1/namespaces/search/persistentvolumeclaims";

fn context(api: &FakeApi, address_by_cluster_ip: bool) -> Arc<Context> {
    Arc::new(Context {
        client: api.client(),
        defaults: Defaults {
            address_by_cluster_ip,
            ..testing::defaults()
        },
        pdb_api: PdbApi::V1,
        metrics: Arc::new(Metrics::new()),
        redis: Default::default(),
        reporter: Reporter {
            controller: "rag-operator".into(),
            instance: None,
        },
        failures: Default::default(),
    })
}

/// A RagCluster as stored after the finalizer was added. The managed Redis gets the fake's
/// ClusterIP 127.0.0.1, where nothing answers on the Redis port: heartbeats are unknown.
fn fake_with_cluster(spec: Value) -> FakeApi {
    let api = FakeApi::default();
    let mut rc = serde_json::to_value(testing::cluster(spec)).unwrap();
    rc["metadata"]["finalizers"] = json!([FINALIZER]);
    rc["metadata"]["generation"] = json!(1);
    api.put(RC, rc);
    api
}

async fn run(api: &FakeApi, ctx: &Arc<Context>) -> (Action, Vec<Call>) {
    let rc: RagCluster = serde_json::from_value(api.get(RC).unwrap()).unwrap();
    api.take_calls();
    let action = reconcile(Arc::new(rc), ctx.clone())
        .await
        .expect("reconcile");
    (action, api.take_calls())
}

/// `METHOD kind/name` of every write to the cluster's objects (not events, not its status).
fn object_writes(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.is_write() && !c.path.contains("/events") && !c.path.ends_with("/status"))
        .map(|c| format!("{} {}", c.method, c.object()))
        .collect()
}

fn set(v: &[&str]) -> std::collections::BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

async fn converged(spec: Value) -> (FakeApi, Arc<Context>) {
    let api = fake_with_cluster(spec);
    let ctx = context(&api, true);
    for _ in 0..3 {
        run(&api, &ctx).await;
    }
    (api, ctx)
}

#[tokio::test]
async fn a_new_cluster_gets_every_object_then_its_nodes_once_redis_has_an_address() {
    let api = fake_with_cluster(json!({"replicas": 2}));
    let ctx = context(&api, true);

    let (action, calls) = run(&api, &ctx).await;
    assert_eq!(
        set(&object_writes(&calls)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()),
        set(&[
            "POST secrets",
            "POST secrets",
            "PATCH services/docs-redis",
            "PATCH statefulsets/docs-redis",
            "PATCH configmaps/docs-config",
            "PATCH services/docs-nodes",
            "PATCH services/docs",
            "PATCH poddisruptionbudgets/docs",
        ]),
        "the nodes wait for the Redis Service's address: {calls:#?}"
    );
    assert_eq!(object_writes(&calls).len(), 8);
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    assert!(
        calls.iter().any(|c| c.path.ends_with("/events")),
        "CredentialsCreated"
    );
    assert!(calls.iter().any(|c| c.path == format!("{RC}/status")));
    // Every apply is server-side apply under the operator's field manager.
    for c in calls
        .iter()
        .filter(|c| c.method == "PATCH" && !c.path.starts_with(RC))
    {
        assert!(
            c.content_type.starts_with("application/apply-patch"),
            "{c:?}"
        );
        assert!(c.query.contains("fieldManager=rag-operator"), "{c:?}");
    }

    let (action, calls) = run(&api, &ctx).await;
    assert_eq!(object_writes(&calls), ["PATCH statefulsets/docs"]);
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
    let sts = api.get(NODES).unwrap();
    assert_eq!(sts["spec"]["replicas"], 2);
    assert!(
        sts.to_string().contains("@127.0.0.1:6379"),
        "nodes address Redis by its ClusterIP"
    );
    for secret in ["docs-auth", "docs-redis"] {
        let s = api.get(&format!("/api/v1/namespaces/search/secrets/{secret}"));
        assert!(s.is_some(), "Secret {secret} created");
    }
}

#[tokio::test]
async fn with_service_names_every_object_is_written_in_the_first_reconcile() {
    let api = fake_with_cluster(json!({"redis": {"external": {"url": "redis://127.0.0.1:1"}}}));
    let ctx = context(&api, false);
    let (action, calls) = run(&api, &ctx).await;
    let writes = object_writes(&calls);
    assert_eq!(writes.len(), 6, "{writes:?}");
    assert!(writes.contains(&"PATCH statefulsets/docs".to_owned()));
    assert!(
        !writes.iter().any(|w| w.contains("redis")),
        "external Redis: {writes:?}"
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
}

#[tokio::test]
async fn a_second_reconcile_with_nothing_changed_writes_nothing() {
    let (api, ctx) = converged(json!({"replicas": 2})).await;
    let (_, calls) = run(&api, &ctx).await;
    let writes: Vec<&Call> = calls.iter().filter(|c| c.is_write()).collect();
    assert!(writes.is_empty(), "{writes:#?}");
    assert!(calls.len() >= 9, "it did read every object: {calls:#?}");
}

#[tokio::test]
async fn one_changed_field_writes_only_the_object_it_is_in() {
    let (api, ctx) = converged(json!({"replicas": 2})).await;
    api.edit(RC, |rc| {
        rc["spec"]["replicas"] = json!(3);
        rc["metadata"]["generation"] = json!(2);
    });
    let (_, calls) = run(&api, &ctx).await;
    assert_eq!(object_writes(&calls), ["PATCH statefulsets/docs"]);
    assert_eq!(api.get(NODES).unwrap()["spec"]["replicas"], 3);

    // A configuration change rolls the pods: the ConfigMap and the StatefulSet (its digest).
    api.edit(RC, |rc| rc["spec"]["maxUploadBytes"] = json!(1_000_000));
    let (_, calls) = run(&api, &ctx).await;
    assert_eq!(
        object_writes(&calls),
        ["PATCH configmaps/docs-config", "PATCH statefulsets/docs"]
    );
}

#[tokio::test]
async fn someone_elses_edit_of_a_field_we_own_is_put_back() {
    let (api, ctx) = converged(json!({"replicas": 2})).await;
    api.edit(NODES, |sts| sts["spec"]["replicas"] = json!(7));
    // A field we never set (added by someone else) is theirs: no write for it.
    api.edit("/api/v1/namespaces/search/services/docs", |svc| {
        svc["metadata"]["annotations"]["example.com/owner"] = json!("team-a")
    });
    let (_, calls) = run(&api, &ctx).await;
    assert_eq!(object_writes(&calls), ["PATCH statefulsets/docs"]);
    assert_eq!(api.get(NODES).unwrap()["spec"]["replicas"], 2);
}

#[tokio::test]
async fn deletion_removes_the_volumes_then_the_finalizer_and_applies_nothing() {
    let (api, ctx) = converged(json!({})).await;
    let pvc = |name: &str, instance: &str| {
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": name, "namespace": "search",
                 "labels": {"app.kubernetes.io/name": "rag-node", "app.kubernetes.io/instance": instance}}})
    };
    api.put(&format!("{PVCS}/data-docs-0"), pvc("data-docs-0", "docs"));
    api.put(
        &format!("{PVCS}/data-other-0"),
        pvc("data-other-0", "other"),
    );
    api.edit(RC, |rc| {
        rc["metadata"]["deletionTimestamp"] = json!("2026-12-02T00:00:00Z")
    });

    let (action, calls) = run(&api, &ctx).await;
    assert_eq!(action, Action::await_change());
    let writes = object_writes(&calls);
    assert_eq!(
        writes,
        ["DELETE persistentvolumeclaims", "PATCH ragclusters/docs"],
        "volumes, then the finalizer; nothing applied: {calls:#?}"
    );
    let paths = api.paths();
    assert!(!paths.contains(&format!("{PVCS}/data-docs-0")));
    assert!(
        paths.contains(&format!("{PVCS}/data-other-0")),
        "another cluster's volume stays"
    );
    let rc = api.get(RC).unwrap();
    assert!(
        rc["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty()),
        "{rc}"
    );
}

#[tokio::test]
async fn a_precision_the_index_does_not_have_is_refused_without_rolling_the_pods() {
    let (api, ctx) = converged(json!({"replicas": 2, "model": {"precision": "fp32"}})).await;
    let env = |api: &FakeApi| {
        api.get(NODES).unwrap()["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "RAGNODE_EMBEDDING_PRECISION")
            .map(|e| e["value"].clone())
    };
    assert_eq!(env(&api), Some(json!("fp32")));
    // The nodes reported an fp32 index (heartbeats, kept in the status).
    api.edit(RC, |rc| {
        rc["status"]["embedding"] = json!({"precision": "fp32", "kernels": {"avx512": 2}});
        rc["spec"]["model"]["precision"] = json!("bf16");
        rc["metadata"]["generation"] = json!(2);
    });
    let (_, calls) = run(&api, &ctx).await;
    assert!(
        object_writes(&calls).is_empty(),
        "{:?}",
        object_writes(&calls)
    );
    assert_eq!(
        env(&api),
        Some(json!("fp32")),
        "the pods keep their precision"
    );
    let cond = spec_rejected(&api).expect("a SpecRejected condition");
    assert_eq!(cond["status"], "True");
    assert_eq!(cond["reason"], "PrecisionChangeRefused");
    assert!(
        cond["message"].as_str().unwrap().contains("(fp32)"),
        "{cond}"
    );

    // `auto` follows the index: accepted and rolled out, the condition cleared.
    api.edit(RC, |rc| {
        rc["spec"]["model"]["precision"] = json!("auto");
        rc["metadata"]["generation"] = json!(3);
    });
    let (_, calls) = run(&api, &ctx).await;
    assert_eq!(object_writes(&calls), ["PATCH statefulsets/docs"]);
    assert_eq!(env(&api), Some(json!("auto")));
    let cond = spec_rejected(&api).unwrap();
    assert_eq!(cond["status"], "False");
}

/// The stored RagCluster's `SpecRejected` condition.
fn spec_rejected(api: &FakeApi) -> Option<Value> {
    let rc = api.get(RC)?;
    rc["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "SpecRejected")
        .cloned()
}
