//! Reconciles a RagCluster in four steps, one module each:
//! [`dereference`] (read what the objects depend on and what the server has, once) →
//! [`build`] (every object, pure) → [`apply`] (server-side apply of what differs, under one
//! field manager) → [`status`] (from what was applied and the nodes' Redis heartbeats).
//! Backups ([`backups`]) run beside the status; [`cleanup`] runs before the cluster goes.

mod apply;
mod backups;
mod build;
mod dereference;
mod status;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::ResourceExt;

use crate::context::{Context, Error};
use crate::crd::{is_paused, ClusterPhase, RagCluster};
use crate::resources::{self as res, Names, FINALIZER};

/// Heartbeats change without any Kubernetes event: look again this often.
const RESYNC: Duration = Duration::from_secs(15);
/// How soon to come back when an object waited for another's address.
const INCOMPLETE_RETRY: Duration = Duration::from_secs(1);

pub async fn reconcile(rc: Arc<RagCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = rc.namespace().unwrap_or_default();
    let retry_key = format!("ragcluster/{ns}/{}", rc.name_any());
    let api: Api<RagCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, rc, |event| async {
        match event {
            Finalizer::Apply(rc) => reconcile_cluster(&rc, &ctx).await,
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

async fn reconcile_cluster(rc: &RagCluster, ctx: &Context) -> Result<Action, Error> {
    let ns = rc.namespace().unwrap_or_default();
    let key = format!("{ns}/{}", rc.name_any());
    let previous = rc.status.clone().unwrap_or_default();

    if is_paused(&rc.metadata) {
        let mut st = previous.clone();
        st.phase = ClusterPhase::Paused;
        status::record(rc, ctx, &key, &previous, &st).await?;
        return Ok(Action::requeue(Duration::from_secs(60)));
    }

    let deref = dereference::dereference(rc, ctx).await?;
    // A precision the index does not have is refused: the nodes are built with the precision
    // their StatefulSet runs now, so nothing rolls, and a condition says why.
    let index_precision = previous
        .embedding
        .as_ref()
        .and_then(|e| e.precision.clone());
    let refusal =
        crate::status::precision_refusal(rc.spec.model.precision, index_precision.as_deref());
    let kept;
    let effective = match &refusal {
        None => rc,
        Some(_) => {
            let mut c = rc.clone();
            c.spec.model.precision = running_precision(&deref.live, &Names::of(rc).nodes());
            kept = c;
            &kept
        }
    };
    let resources = build::build(effective, &ctx.defaults, ctx.pdb_api, &deref)?;
    let complete = resources.complete();
    let applied = apply::apply(ctx, &ns, resources, &deref.live).await?;
    tracing::debug!(ragcluster = %key, writes = applied.writes, "applied");
    if applied.created_credentials {
        let secret = Names::of(rc).auth_secret();
        let note = format!("generated API key and admin token in Secret {secret}");
        ctx.event(rc, false, "CredentialsCreated", note).await;
    }

    let mut st = status::observe(rc, ctx, &applied, &deref.redis_url, &previous).await;
    status::spec_rejected(rc, &mut st, refusal.as_deref());
    let wake = match &deref.redis_url {
        Ok(url) => backups::run(rc, ctx, &mut st, &key, url).await,
        Err(why) => backups::waiting(rc, &mut st, why),
    };
    status::announce_phase(rc, ctx, &previous, &st).await;
    status::record(rc, ctx, &key, &previous, &st).await?;
    let next = if complete { RESYNC } else { INCOMPLETE_RETRY };
    Ok(Action::requeue(wake.map_or(next, |w| w.min(next))))
}

/// Runs before the RagCluster goes: its Redis keys (an external Redis outlives the cluster) and
/// `spec.model.precision` as the running node StatefulSet has it (its pods' environment).
fn running_precision(live: &dereference::Live, name: &str) -> Option<crate::crd::ModelPrecision> {
    let sts = live.statefulsets.get(name)?;
    let containers = &sts.spec.template.spec.as_ref()?.containers;
    containers
        .iter()
        .flat_map(|c| c.env.iter().flatten())
        .find(|e| e.name == "RAGNODE_EMBEDDING_PRECISION")
        .and_then(|e| e.value.as_deref())
        .and_then(crate::crd::ModelPrecision::parse)
}

/// its volumes (StatefulSet claims are not owned, so garbage collection would leave them).
async fn cleanup(rc: &RagCluster, ctx: &Context) -> Result<Action, Error> {
    let ns = rc.namespace().unwrap_or_default();
    // The same resolution as a reconcile's: one way to find the cluster's Redis.
    match dereference::dereference(rc, ctx).await?.redis_url {
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
