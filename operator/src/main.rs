//! `rag-operator`: runs the controllers (`run`, the default) or writes the CRDs (`crdgen`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::routing::get;
use clap::{Parser, Subcommand, ValueEnum};
use kube::runtime::events::Reporter;
use kube::Client;
use rag_operator::context::Context;
use rag_operator::leader::LeaderElector;
use rag_operator::metrics::Metrics;
use rag_operator::resources::{Defaults, PdbApi};

#[derive(Parser)]
#[command(
    version,
    about = "Kubernetes operator for rag-node clusters (RagCluster, IngestJob)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers (the default).
    Run(RunArgs),
    /// Measure reconcile durations, scale latency and memory on the cluster of $KUBECONFIG
    /// (needs the CRDs installed and redis-server on the PATH; docs/benchmarks.md).
    Bench {
        #[arg(long, default_value_t = 50)]
        clusters: usize,
        #[arg(long, default_value_t = 500)]
        jobs: usize,
        /// Seconds of steady state to sample.
        #[arg(long, default_value_t = 60)]
        steady_secs: u64,
        #[arg(long, default_value_t = 20)]
        scale_samples: usize,
        #[arg(long, default_value = "rag-bench")]
        namespace: String,
    },
    /// Write the CRDs as YAML (to stdout, or as crds.yaml into each `--out` directory).
    Crdgen {
        /// Directory to write crds.yaml into (repeatable), e.g. `crds` and
        /// `charts/rag-operator/crds`.
        #[arg(long)]
        out: Vec<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Addressing {
    /// `NAME.NAMESPACE.svc` names (needs cluster DNS).
    Dns,
    /// Service ClusterIPs (clusters without DNS).
    ClusterIp,
}

#[derive(Parser)]
struct RunOnly {
    #[command(flatten)]
    args: RunArgs,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Default rag-node image of RagClusters that set none.
    #[arg(long, env = "RAGOP_NODE_IMAGE", default_value = "rag-node:latest")]
    node_image: String,
    /// Default Redis image of managed Redis instances.
    #[arg(long, env = "RAGOP_REDIS_IMAGE", default_value = "redis:7")]
    redis_image: String,
    /// How pods and the operator address Services.
    #[arg(
        long,
        env = "RAGOP_ADDRESS_SERVICES_BY",
        value_enum,
        default_value = "dns"
    )]
    address_services_by: Addressing,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "RAGOP_LISTEN", default_value = "0.0.0.0:8081")]
    listen: SocketAddr,
    /// Elect one active replica through a Lease (turn off only with a single replica).
    #[arg(long, env = "RAGOP_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    #[arg(long, env = "RAGOP_LEASE_NAME", default_value = "rag-operator-leader")]
    lease_name: String,
    /// This replica's identity in the Lease; default: the pod name, then the host name.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// `json` or `text`.
    #[arg(long, env = "RAGOP_LOG_FORMAT", default_value = "json")]
    log_format: String,
    /// A tracing filter, e.g. `info` or `rag_operator=debug,info`.
    #[arg(long, env = "RAGOP_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crdgen { out }) => {
            let yaml = rag_operator::crd::yaml();
            if out.is_empty() {
                print!("{yaml}");
            }
            for dir in out {
                std::fs::create_dir_all(&dir)?;
                std::fs::write(dir.join("crds.yaml"), &yaml)?;
            }
            Ok(())
        }
        Some(Command::Run(args)) => run(args),
        Some(Command::Bench {
            clusters,
            jobs,
            steady_secs,
            scale_samples,
            namespace,
        }) => bench(rag_operator::bench::BenchArgs {
            clusters,
            jobs,
            steady_secs,
            scale_samples,
            namespace,
        }),
        // No subcommand: `run` with its defaults and environment.
        None => run(RunOnly::parse_from(["rag-operator"]).args),
    }
}

fn init_logging(args: &RunArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if args.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn bench(args: rag_operator::bench::BenchArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let run = RunOnly::parse_from(["rag-operator", "--address-services-by", "cluster-ip"]).args;
    let client = Client::try_default()
        .await
        .context("Kubernetes client configuration")?;
    let ctx = context(client, &run, "bench".into(), Arc::new(Metrics::new())).await;
    rag_operator::bench::run(ctx, args).await
}

/// The controllers' shared state; discovers which PodDisruptionBudget API the server offers.
async fn context(
    client: Client,
    args: &RunArgs,
    identity: String,
    metrics: Arc<Metrics>,
) -> Arc<Context> {
    let pdb_api = match client.list_api_group_resources("policy/v1").await {
        Ok(list)
            if list
                .resources
                .iter()
                .any(|r| r.name == "poddisruptionbudgets") =>
        {
            PdbApi::V1
        }
        _ => PdbApi::V1beta1,
    };
    Arc::new(Context {
        client,
        defaults: Defaults {
            node_image: args.node_image.clone(),
            redis_image: args.redis_image.clone(),
            address_by_cluster_ip: matches!(args.address_services_by, Addressing::ClusterIp),
        },
        pdb_api,
        metrics,
        redis: Default::default(),
        failures: Default::default(),
        reporter: Reporter {
            controller: "rag-operator".into(),
            instance: Some(identity),
        },
    })
}

#[tokio::main]
async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(&args);
    // One TLS provider for the Kubernetes client, Redis and downloads alike.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default()
        .await
        .context("Kubernetes client configuration")?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "rag-operator".into())
    });
    let metrics = Arc::new(Metrics::new());
    let ctx = context(client.clone(), &args, identity.clone(), metrics.clone()).await;
    tracing::info!(
        node_image = %args.node_image, redis_image = %args.redis_image,
        pdb = ctx.pdb_api.api_version(), identity = %identity, leader_election = args.leader_election,
        "rag-operator starting"
    );

    let ready = Arc::new(AtomicBool::new(true));
    serve_http(args.listen, metrics.clone(), ready.clone()).await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let stopping = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let elector = args.leader_election.then(|| {
        LeaderElector::new(
            client.clone(),
            &args.lease_namespace,
            &args.lease_name,
            &identity,
        )
    });
    if let Some(el) = &elector {
        // Standby until the lease is ours (or we are told to stop).
        loop {
            if *stop_rx.borrow() {
                return Ok(());
            }
            match el.try_acquire().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::select! {
                _ = tokio::time::sleep(el.renew) => {}
                _ = stopping(stop_rx.clone()) => return Ok(()),
            }
        }
        tracing::info!(lease = %args.lease_name, "leading");
        metrics.set_leader(true);
    }

    // Leadership lost (lease not renewed within its duration) ends this process: a restart
    // comes back as a standby, so two replicas never reconcile at once.
    let (lost_tx, lost_rx) = tokio::sync::watch::channel(false);
    if let Some(el) = elector.map(Arc::new) {
        let el2 = el.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut last_ok = Instant::now();
            loop {
                tokio::time::sleep(el2.renew).await;
                if *stop.borrow() {
                    return;
                }
                match el2.try_acquire().await {
                    Ok(true) => last_ok = Instant::now(),
                    Ok(false) => {
                        tracing::error!("another replica took the lease");
                        let _ = lost_tx.send(true);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "lease renewal failed");
                        if last_ok.elapsed() >= el2.lease_duration - Duration::from_secs(2) {
                            tracing::error!("could not renew the lease in time");
                            let _ = lost_tx.send(true);
                            return;
                        }
                    }
                }
            }
        });
        let (stop2, lost2) = (stop_rx.clone(), lost_rx.clone());
        rag_operator::controller::run(ctx, async move {
            tokio::select! {
                _ = stopping(stop2) => {}
                _ = stopping(lost2) => {}
            }
        })
        .await;
        if *lost_rx.borrow() {
            anyhow::bail!("leadership lost");
        }
        el.release().await;
    } else {
        rag_operator::controller::run(ctx, stopping(stop_rx.clone())).await;
    }
    ready.store(false, Ordering::Relaxed);
    Ok(())
}

async fn serve_http(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let r = ready.load(Ordering::Relaxed);
                async move {
                    if r {
                        (axum::http::StatusCode::OK, "ready")
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "stopping")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen on {addr}"))?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
