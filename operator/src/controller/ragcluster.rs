//! Reconciles a RagCluster: Secrets (created once), the managed Redis, configuration,
//! Services, the rag-node StatefulSet and its PodDisruptionBudget, all with server-side apply
//! under one field manager; then status from the StatefulSet and the nodes' Redis heartbeats.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::backup;
use crate::context::{Context, Error};
use crate::crd::{
    is_paused, BackupStatus, ClusterPhase, FailedBackup, RagCluster, RagClusterStatus,
};
use crate::resources::{self as res, Names, FIELD_MANAGER, FINALIZER, NODE_COMPONENT};
use crate::status::{cluster_status, ClusterObservation};

/// Heartbeats change without any Kubernetes event: look again this often.
const RESYNC: Duration = Duration::from_secs(15);

pub async fn reconcile(rc: Arc<RagCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = rc.namespace().unwrap_or_default();
    let retry_key = format!("ragcluster/{ns}/{}", rc.name_any());
    let api: Api<RagCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, rc, |event| async {
        match event {
            Finalizer::Apply(rc) => apply(&rc, &ctx).await,
            Finalizer::Cleanup(rc) => cleanup(&rc, &ctx).await,
        }
    })
    .await
    .map_err(Error::from);
    ctx.metrics.reconciled(
        "ragcluster",
        result.as_ref().err().map(Error::metric_label),
        started.elapsed(),
    );
    if result.is_ok() {
        ctx.outcome(retry_key, true);
    }
    result
}

pub fn error_policy(rc: Arc<RagCluster>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(ragcluster = %rc.name_any(), namespace = ?rc.namespace(), error = %err, "reconcile failed");
    let key = format!(
        "ragcluster/{}/{}",
        rc.namespace().unwrap_or_default(),
        rc.name_any()
    );
    Action::requeue(ctx.outcome(key, false))
}

pub(crate) async fn ssa<K>(api: &Api<K>, obj: &K) -> Result<K, Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?)
}

fn token() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..40)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Creates a generated Secret once; an existing one (ours or the user's) is never rewritten, so
/// credentials stay stable across reconciles and operator restarts.
async fn ensure_secret(api: &Api<Secret>, secret: Secret) -> Result<bool, Error> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    if api.get_opt(&name).await?.is_some() {
        return Ok(false);
    }
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn apply(rc: &RagCluster, ctx: &Context) -> Result<Action, Error> {
    let ns = rc.namespace().unwrap_or_default();
    let names = Names::of(rc);
    let client = ctx.client.clone();
    let key = format!("{ns}/{}", rc.name_any());
    let previous = rc.status.clone().unwrap_or_default();

    if is_paused(&rc.metadata) {
        let mut st = previous.clone();
        st.phase = ClusterPhase::Paused;
        record(rc, ctx, &key, &previous, &st).await?;
        return Ok(Action::requeue(Duration::from_secs(60)));
    }

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    if res::needs_generated_auth(rc)
        && ensure_secret(&secrets, res::auth_secret(rc, &token(), &token())).await?
    {
        ctx.event(
            rc,
            false,
            "CredentialsCreated",
            format!(
                "generated API key and admin token in Secret {}",
                names.auth_secret()
            ),
        )
        .await;
    }
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let mut redis_host = String::new();
    if res::is_managed(rc) {
        ensure_secret(&secrets, res::redis_secret(rc, &token())).await?;
        let svc = ssa(&services, &res::redis_service(rc)).await?;
        let ip = svc.spec.and_then(|s| s.cluster_ip);
        redis_host = res::service_host(&ctx.defaults, &names.redis(), &ns, ip.as_deref());
        ssa(&statefulsets, &res::redis_statefulset(rc, &ctx.defaults)).await?;
    }
    let redis_base = res::redis_base_url(rc, &redis_host);

    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    ssa(&configmaps, &res::config_map(rc)).await?;
    ssa(&services, &res::headless_service(rc)).await?;
    let client_svc = ssa(&services, &res::client_service(rc)).await?;
    let client_ip = client_svc.spec.and_then(|s| s.cluster_ip);
    let endpoint = format!(
        "http://{}:{}",
        res::service_host(&ctx.defaults, &names.nodes(), &ns, client_ip.as_deref()),
        res::NODE_PORT
    );

    let pdb = res::pod_disruption_budget(rc, ctx.pdb_api);
    let (group, version) = ctx.pdb_api.api_version().split_once('/').unwrap();
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        group,
        version,
        "PodDisruptionBudget",
    ));
    let pdbs: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let pdb_obj: DynamicObject = serde_json::from_value(pdb).map_err(|error| Error::Build {
        kind: "PodDisruptionBudget",
        error,
    })?;
    pdbs.patch(
        &names.nodes(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&pdb_obj),
    )
    .await?;

    let sts = ssa(
        &statefulsets,
        &res::node_statefulset(rc, &ctx.defaults, &redis_base),
    )
    .await?;

    let redis = match ctx.redis_url(rc).await {
        Ok(url) => ctx.redis.observe(&url, &res::redis_cluster_name(rc)).await,
        Err(e) => Err(e.to_string()),
    };
    let obs = ClusterObservation {
        desired_replicas: rc.spec.replicas,
        generation: rc.metadata.generation,
        statefulset: sts.status.as_ref(),
        selector: res::selector_string(&res::selector(rc, NODE_COMPONENT)),
        endpoint,
        redis,
        paused: false,
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut st = cluster_status(&obs, &previous, &now);
    let wake = run_backups(rc, ctx, &mut st, &key).await;
    if st.phase != previous.phase {
        let warning = matches!(st.phase, ClusterPhase::Degraded | ClusterPhase::Failed);
        let why = st
            .conditions
            .iter()
            .find(|c| c.type_ == if warning { "Degraded" } else { "Available" })
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ctx.event(
            rc,
            warning,
            st.phase.as_str(),
            format!(
                "phase {} → {}: {why}",
                previous.phase.as_str(),
                st.phase.as_str()
            ),
        )
        .await;
    }
    record(rc, ctx, &key, &previous, &st).await?;
    Ok(Action::requeue(wake.map_or(RESYNC, |w| w.min(RESYNC))))
}

/// Collects the answer of a running backup and starts a due one (the decisions are
/// `backup::plan`'s). Returns when to look again, if sooner than usual.
async fn run_backups(
    rc: &RagCluster,
    ctx: &Context,
    st: &mut RagClusterStatus,
    key: &str,
) -> Option<Duration> {
    let Some(spec) = &rc.spec.backup else {
        st.backup = None;
        return None;
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    let url = match ctx.redis_url(rc).await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "no Redis address yet: backups wait");
            return None;
        }
    };
    let cluster = res::redis_cluster_name(rc);
    // Backups have effects outside Kubernetes (a command sent, an answer counted): decide on
    // the stored object, not on the cached copy, which can predate the last reconcile's patch
    // and would start or count a backup twice.
    let api: Api<RagCluster> =
        Api::namespaced(ctx.client.clone(), &rc.namespace().unwrap_or_default());
    let stored = match api.get(&rc.name_any()).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "reading the RagCluster for its backups");
            return None;
        }
    };
    let mut bst = stored
        .status
        .as_ref()
        .and_then(|s| s.backup.clone())
        .unwrap_or_default();
    if let Some(run) = bst.running.clone() {
        match ctx.redis.control_result(&url, &cluster, &run.id).await {
            Ok(Some(result)) => {
                bst = backup::finish(&bst, &result, now);
                match (&bst.last_successful, result.ok) {
                    (Some(done), true) => {
                        ctx.metrics.backup_finished(key, Some(now.as_second()));
                        let pruned = if result.pruned.is_empty() {
                            String::new()
                        } else {
                            format!("; deleted {} older", result.pruned.len())
                        };
                        ctx.event(
                            rc,
                            false,
                            "BackupCompleted",
                            format!(
                                "snapshot {} by node {}: {} documents, {} chunks, {} bytes{pruned}",
                                done.snapshot,
                                done.node,
                                done.documents,
                                done.chunks,
                                done.size_bytes
                            ),
                        )
                        .await;
                    }
                    _ => backup_failed(rc, ctx, key, &bst).await,
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "reading the backup's answer"),
        }
    }
    let request = stored
        .annotations()
        .get(backup::REQUEST_ANNOTATION)
        .map(String::as_str);
    let id = format!(
        "backup-{}-{:08x}",
        now.as_millisecond(),
        rand::random::<u32>()
    );
    let plan = match backup::plan(spec, request, &bst, now, &id) {
        Ok(p) => p,
        Err(message) => {
            if bst.last_failure.as_ref().map(|f| &f.message) != Some(&message) {
                ctx.event(rc, true, "InvalidBackupSchedule", message.clone())
                    .await;
                bst.last_failure = Some(FailedBackup {
                    time: now.to_string(),
                    message,
                });
            }
            st.backup = Some(bst);
            return None;
        }
    };
    let mut bst = plan.status;
    if plan.timed_out {
        backup_failed(rc, ctx, key, &bst).await;
    }
    if let Some(trigger) = plan.start {
        let command = rag_api::cluster::ControlCommand::Snapshot {
            id: id.clone(),
            target: spec.target.clone(),
            keep: (spec.keep > 0).then_some(spec.keep),
        };
        match ctx.redis.send_control(&url, &cluster, &command).await {
            Ok(()) => {
                ctx.event(
                    rc,
                    false,
                    "BackupStarted",
                    format!("backup {id} ({}) to {}", trigger.as_str(), spec.target),
                )
                .await
            }
            Err(e) => {
                bst.running = None;
                bst.last_failure = Some(FailedBackup {
                    time: now.to_string(),
                    message: format!("could not ask the nodes for a backup: {e}"),
                });
                backup_failed(rc, ctx, key, &bst).await;
            }
        }
    }
    st.backup = Some(bst);
    plan.wake
}

/// Counts a failed backup and says why (the message recorded as `lastFailure`).
async fn backup_failed(rc: &RagCluster, ctx: &Context, key: &str, bst: &BackupStatus) {
    ctx.metrics.backup_finished(key, None);
    let why = bst.last_failure.as_ref().map(|f| f.message.clone());
    ctx.event(rc, true, "BackupFailed", why.unwrap_or_default())
        .await;
}

/// Writes the status when it changed and updates the per-cluster metrics.
async fn record(
    rc: &RagCluster,
    ctx: &Context,
    key: &str,
    previous: &RagClusterStatus,
    st: &RagClusterStatus,
) -> Result<(), Error> {
    if st != previous {
        patch_status(rc, ctx, st).await?;
    }
    ctx.metrics.cluster_observed(
        key,
        Some(st.phase.as_str()),
        st.ready_replicas as i64,
        st.queue_depth,
    );
    Ok(())
}

async fn patch_status(rc: &RagCluster, ctx: &Context, st: &RagClusterStatus) -> Result<(), Error> {
    let api: Api<RagCluster> =
        Api::namespaced(ctx.client.clone(), &rc.namespace().unwrap_or_default());
    api.patch_status(
        &rc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": st})),
    )
    .await?;
    Ok(())
}

/// Runs before the RagCluster goes: its Redis keys (an external Redis outlives the cluster) and
/// its volumes (StatefulSet claims are not owned, so garbage collection would leave them).
async fn cleanup(rc: &RagCluster, ctx: &Context) -> Result<Action, Error> {
    let ns = rc.namespace().unwrap_or_default();
    match ctx.redis_url(rc).await {
        Ok(url) => match ctx
            .redis
            .delete_cluster(&url, &res::redis_cluster_name(rc))
            .await
        {
            Ok(n) => {
                tracing::info!(ragcluster = %rc.name_any(), keys = n, "removed the cluster's Redis keys")
            }
            Err(e) => {
                ctx.event(
                    rc,
                    true,
                    "RedisCleanupFailed",
                    format!("could not remove the cluster's Redis keys: {e}"),
                )
                .await;
            }
        },
        Err(e) => tracing::info!(error = %e, "no Redis to clean"),
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let lp = ListParams::default().labels(&format!(
        "app.kubernetes.io/name=rag-node,app.kubernetes.io/instance={}",
        rc.name_any()
    ));
    pvcs.delete_collection(&DeleteParams::background(), &lp)
        .await?;
    ctx.metrics
        .cluster_observed(&format!("{ns}/{}", rc.name_any()), None, 0, 0);
    Ok(Action::await_change())
}
