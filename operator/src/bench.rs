//! `rag-operator bench`: the operator's own costs on a real API server, measured in-process.
//!
//! - reconcile duration (p50/p99/max) of both controllers with N RagClusters and M IngestJobs
//!   (clusters at 0 replicas on one real Redis, jobs waiting for them: the steady state the
//!   operator spends its life in);
//! - time from a scale-subresource change (what `kubectl scale` does) to the StatefulSet's new
//!   `spec.replicas`;
//! - the process' resident memory after the steady state.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;

use crate::context::Context;
use crate::crd::{IngestJob, RagCluster};

pub struct BenchArgs {
    pub clusters: usize,
    pub jobs: usize,
    pub steady_secs: u64,
    pub scale_samples: usize,
    pub namespace: String,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

struct RedisProcess(Child);

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn run(ctx: Arc<Context>, args: BenchArgs) -> anyhow::Result<()> {
    let client: Client = ctx.client.clone();
    let ns = args.namespace.as_str();
    // One real Redis for every cluster: the operator reads heartbeats and queue depth from it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let _redis = RedisProcess(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()?,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(ns).await?.is_none() {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?,
            )
            .await?;
    }
    let clusters: Api<RagCluster> = Api::namespaced(client.clone(), ns);
    let jobs: Api<IngestJob> = Api::namespaced(client.clone(), ns);

    let controllers = {
        let ctx = ctx.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(crate::controller::run(ctx, async move {
            let _ = rx.await;
        }));
        (tx, handle)
    };

    let started = Instant::now();
    for i in 0..args.clusters {
        let rc: RagCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "rag.ragnode.dev/v1alpha1", "kind": "RagCluster",
            "metadata": {"name": format!("bench-{i}")},
            "spec": {"replicas": 0, "image": "rag-node-bench:none", "imagePullPolicy": "Never",
                     "redis": {"external": {"url": format!("redis://127.0.0.1:{port}")}},
                     "auth": {"enabled": false}}
        }))?;
        clusters.create(&PostParams::default(), &rc).await?;
    }
    for i in 0..args.jobs {
        let j: IngestJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "rag.ragnode.dev/v1alpha1", "kind": "IngestJob",
            "metadata": {"name": format!("bench-{i}")},
            "spec": {"clusterRef": format!("bench-{}", i % args.clusters.max(1)),
                     "sources": [{"name": "doc", "inline": "text"}]}
        }))?;
        jobs.create(&PostParams::default(), &j).await?;
    }
    // Every object reconciled at least once.
    loop {
        let c = clusters.list(&ListParams::default()).await?;
        let j = jobs.list(&ListParams::default()).await?;
        let done = c.items.iter().filter(|c| c.status.is_some()).count()
            + j.items.iter().filter(|j| j.status.is_some()).count();
        if done == args.clusters + args.jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "created and reconciled {} RagClusters and {} IngestJobs in {:.1} s",
        args.clusters,
        args.jobs,
        started.elapsed().as_secs_f64()
    );

    ctx.metrics.keep_samples();
    tokio::time::sleep(Duration::from_secs(args.steady_secs)).await;
    let samples = ctx.metrics.take_samples();
    println!("steady state, {} s:", args.steady_secs);
    for controller in ["ragcluster", "ingestjob"] {
        let mut d: Vec<Duration> = samples
            .iter()
            .filter(|(c, _)| *c == controller)
            .map(|(_, d)| *d)
            .collect();
        d.sort();
        println!(
            "  {controller:<11} reconciles {:>6}  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
            d.len(),
            ms(percentile(&d, 0.50)),
            ms(percentile(&d, 0.99)),
            ms(d.last().copied().unwrap_or_default())
        );
    }
    println!(
        "  memory: VmRSS {} MiB, VmHWM {} MiB (operator and benchmark driver in one process)",
        rss_kib("VmRSS:") / 1024,
        rss_kib("VmHWM:") / 1024
    );

    // kubectl scale = a patch of the scale subresource.
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let mut lat = Vec::new();
    for i in 0..args.scale_samples {
        let want = if i % 2 == 0 { 1 } else { 0 };
        let t = Instant::now();
        clusters
            .patch_scale(
                "bench-0",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"replicas": want}})),
            )
            .await?;
        loop {
            if sts.get("bench-0").await?.spec.replicas == Some(want) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "scale subresource → StatefulSet spec.replicas ({} changes): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        lat.len(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default())
    );

    // Clean up while the controllers still run the finalizers.
    jobs.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    clusters
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    while !clusters
        .list(&ListParams::default())
        .await?
        .items
        .is_empty()
        || !jobs.list(&ListParams::default()).await?.items.is_empty()
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = controllers.0.send(());
    let _ = controllers.1.await;
    let _ = namespaces.delete(ns, &DeleteParams::default()).await;
    Ok(())
}
