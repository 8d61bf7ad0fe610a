//! Backups of a RagCluster: collects the answer of a running backup and starts a due one
//! through the nodes' control channel in Redis; the decisions are `crate::backup::plan`'s.

use std::time::Duration;

use kube::api::Api;
use kube::ResourceExt;

use crate::backup;
use crate::context::Context;
use crate::crd::{BackupStatus, FailedBackup, RagCluster, RagClusterStatus};
use crate::resources as res;

/// No Redis to talk to yet: the backup status stays as it was (or goes, with the spec).
pub fn waiting(rc: &RagCluster, st: &mut RagClusterStatus, why: &str) -> Option<Duration> {
    if rc.spec.backup.is_none() {
        st.backup = None;
    } else {
        tracing::debug!(why, "no Redis address yet: backups wait");
    }
    None
}

/// Collects the answer of a running backup and starts a due one (the decisions are
/// `backup::plan`'s). Returns when to look again, if sooner than usual.
pub async fn run(
    rc: &RagCluster,
    ctx: &Context,
    st: &mut RagClusterStatus,
    key: &str,
    url: &str,
) -> Option<Duration> {
    let Some(spec) = &rc.spec.backup else {
        st.backup = None;
        return None;
    };
    let now = k8s_openapi::jiff::Timestamp::now();
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
        match ctx.redis.control_result(url, &cluster, &run.id).await {
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
        match ctx.redis.send_control(url, &cluster, &command).await {
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
