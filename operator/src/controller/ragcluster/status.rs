//! Status: computed from what was applied (the node StatefulSet as the server returned it, the
//! client Service's address) and the nodes' heartbeats in Redis, then written when it changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

use super::apply::Applied;
use crate::context::{Context, Error};
use crate::crd::{ClusterPhase, RagCluster, RagClusterStatus};
use crate::resources::{self as res, Names, NODE_COMPONENT, NODE_PORT};
use crate::status::{cluster_status, ClusterObservation};

/// The status after this reconcile (backups not yet looked at).
pub async fn observe(
    rc: &RagCluster,
    ctx: &Context,
    applied: &Applied,
    redis_url: &Result<String, String>,
    previous: &RagClusterStatus,
) -> RagClusterStatus {
    let ns = rc.namespace().unwrap_or_default();
    let client_ip = applied
        .client_service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref());
    let host = res::service_host(&ctx.defaults, &Names::of(rc).nodes(), &ns, client_ip);
    let redis = match redis_url {
        Ok(url) => ctx.redis.observe(url, &res::redis_cluster_name(rc)).await,
        Err(why) => Err(why.clone()),
    };
    let obs = ClusterObservation {
        desired_replicas: rc.spec.replicas,
        generation: rc.metadata.generation,
        statefulset: applied
            .node_statefulset
            .as_ref()
            .and_then(|s| s.status.as_ref()),
        selector: res::selector_string(&res::selector(rc, NODE_COMPONENT)),
        endpoint: format!("http://{host}:{NODE_PORT}"),
        redis,
        paused: false,
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    cluster_status(&obs, previous, &now)
}

/// The `SpecRejected` condition: set while the spec asks for what the cluster cannot do
/// without re-indexing (a precision other than the index's), cleared once it no longer does.
pub fn spec_rejected(rc: &RagCluster, st: &mut RagClusterStatus, refusal: Option<&str>) {
    let had = st.conditions.iter().any(|c| c.type_ == "SpecRejected");
    if refusal.is_none() && !had {
        return;
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let (reason, message) = match refusal {
        Some(m) => ("PrecisionChangeRefused", m.to_owned()),
        None => ("Accepted", "the spec is applied".to_owned()),
    };
    crate::crd::set_condition(
        &mut st.conditions,
        "SpecRejected",
        refusal.is_some(),
        reason,
        message,
        rc.metadata.generation,
        &now,
    );
}

/// An event when the phase changed, with the reason of the condition that explains it.
pub async fn announce_phase(
    rc: &RagCluster,
    ctx: &Context,
    previous: &RagClusterStatus,
    st: &RagClusterStatus,
) {
    if st.phase == previous.phase {
        return;
    }
    let warning = matches!(st.phase, ClusterPhase::Degraded | ClusterPhase::Failed);
    let why = st
        .conditions
        .iter()
        .find(|c| c.type_ == if warning { "Degraded" } else { "Available" })
        .map(|c| c.message.clone())
        .unwrap_or_default();
    let note = format!(
        "phase {} → {}: {why}",
        previous.phase.as_str(),
        st.phase.as_str()
    );
    ctx.event(rc, warning, st.phase.as_str(), note).await;
}

/// Writes the status when it changed and updates the per-cluster metrics.
pub async fn record(
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
