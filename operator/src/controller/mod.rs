//! The controllers: watches, reconcile loops and their wiring.

pub mod ingestjob;
pub mod ragcluster;

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use kube::runtime::{watcher, Controller};

use crate::context::Context;
use crate::crd::{IngestJob, RagCluster};

/// Runs both controllers until `shutdown` resolves; each finishes its running reconciles.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=rag-operator");
    let clusters = Controller::new(
        Api::<RagCluster>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<StatefulSet>::all(client.clone()), owned.clone())
    .owns(Api::<Service>::all(client.clone()), owned)
    .graceful_shutdown_on(stopped(stop_rx.clone()))
    .run(ragcluster::reconcile, ragcluster::error_policy, ctx.clone())
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "ragcluster controller");
        }
    });
    let jobs = Controller::new(
        Api::<IngestJob>::all(client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(stopped(stop_rx))
    .run(ingestjob::reconcile, ingestjob::error_policy, ctx.clone())
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "ingestjob controller");
        }
    });
    futures_util::future::join(clusters, jobs).await;
}
