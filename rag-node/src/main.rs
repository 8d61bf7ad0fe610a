//! `rag-node`: serve, ingest, search, health, bench. See `rag-node --help`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use rag_api::SearchRequest;
use rag_node::config::Config;
use rag_node::node::Node;

// glibc's allocator hands the large temporary tensors of every layer back to the OS and
// page-faults them in again; mimalloc keeps them, nearly doubling embedding throughput.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "rag-node",
    version,
    about = "A RAG node: document uploads, sequential ingestion (extract, chunk, embed on CPU) and vector search over HTTP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// TOML configuration file (flags and RAGNODE_* variables override it).
    #[arg(long, env = "RAGNODE_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of the node's state (LMDB environment and pending uploads). Default: ./rag-data
    #[arg(long, env = "RAGNODE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Model directory (model.safetensors, tokenizer.json, config.json). Default: where
    /// scripts/setup-model.sh installs all-MiniLM-L6-v2 (~/.cache/rag-node/models/all-MiniLM-L6-v2).
    #[arg(long, env = "RAGNODE_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// Precision of the embedding GEMMs: fp32, bf16 or auto (bf16 where the CPU has AMX).
    /// Fixed when the index is created; an existing index keeps its own.
    #[arg(long, env = "RAGNODE_EMBEDDING_PRECISION")]
    precision: Option<rag_node::embed::gemm::PrecisionChoice>,
    /// Log format: text or json.
    #[arg(long, env = "RAGNODE_LOG_FORMAT")]
    log_format: Option<String>,
    /// Log filter, e.g. info, debug, rag_node=debug.
    #[arg(long, env = "RAGNODE_LOG_LEVEL")]
    log_level: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server and the ingestion worker.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on. Default: 127.0.0.1:8080
        #[arg(long, env = "RAGNODE_LISTEN")]
        listen: Option<String>,
        /// Largest accepted upload in bytes. Default: 104857600 (100 MiB)
        #[arg(long, env = "RAGNODE_MAX_UPLOAD_BYTES")]
        max_upload_bytes: Option<u64>,
        /// Jobs allowed to wait before uploads get 429. Default: 10000
        #[arg(long, env = "RAGNODE_MAX_QUEUE_DEPTH")]
        max_queue_depth: Option<u64>,
        /// Time limit of one job in seconds. Default: 600
        #[arg(long, env = "RAGNODE_JOB_TIMEOUT_SECS")]
        job_timeout_secs: Option<u64>,
        /// Cluster mode: share the job queue and the index log through this Redis
        /// (redis://[user:password@]host:port[/db]). Without it the node runs standalone.
        #[arg(long, env = "RAGNODE_REDIS_URL")]
        redis_url: Option<String>,
        /// Cluster name (prefix of the Redis keys). Default: default
        #[arg(long, env = "RAGNODE_CLUSTER")]
        cluster: Option<String>,
        /// Node id in the cluster. Default: $POD_NAME, then the host name
        #[arg(long, env = "RAGNODE_NODE_ID")]
        node_id: Option<String>,
        /// PEM file of the CA that signed Redis' certificate (rediss://); default: the system's
        /// trust store.
        #[arg(long, env = "RAGNODE_REDIS_CA_FILE")]
        redis_ca_file: Option<PathBuf>,
        /// File with the API key clients must send (`Authorization: Bearer KEY`). Required in
        /// cluster mode; RAGNODE_API_KEY may hold the key itself.
        #[arg(long, env = "RAGNODE_API_KEY_FILE")]
        api_key_file: Option<PathBuf>,
        /// File with the admin token (also needed to delete documents); RAGNODE_ADMIN_TOKEN may
        /// hold the token itself.
        #[arg(long, env = "RAGNODE_ADMIN_TOKEN_FILE")]
        admin_token_file: Option<PathBuf>,
        /// Snapshot location (directory or s3://bucket/prefix) to restore from when this node
        /// has no index yet or the cluster's index log moved past it.
        #[arg(long, env = "RAGNODE_BOOTSTRAP_FROM")]
        bootstrap_from: Option<String>,
    },
    /// Store a snapshot of the index (a compacted LMDB copy + manifest) in a directory or an
    /// S3 bucket. With --redis-url one node of the running cluster takes it; otherwise the
    /// data directory is copied (no server may be running on it).
    Snapshot {
        #[command(flatten)]
        common: Common,
        /// Directory or s3://bucket/prefix (S3 settings from AWS_* variables).
        #[arg(long)]
        to: String,
        #[arg(long, env = "RAGNODE_REDIS_URL")]
        redis_url: Option<String>,
        #[arg(long, env = "RAGNODE_CLUSTER", default_value = "default")]
        cluster: String,
        #[arg(long, env = "RAGNODE_REDIS_CA_FILE")]
        redis_ca_file: Option<PathBuf>,
        /// How long to wait for the cluster's answer.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// Afterwards delete all but the newest N snapshots under the target.
        #[arg(long, value_name = "N")]
        keep: Option<u32>,
    },
    /// Replace the data directory's index with a snapshot (the newest unless --id).
    Restore {
        #[command(flatten)]
        common: Common,
        /// Directory or s3://bucket/prefix.
        #[arg(long)]
        from: String,
        #[arg(long)]
        id: Option<String>,
        /// Replace an existing index.
        #[arg(long)]
        force: bool,
    },
    /// Ingest local files into the data directory (the server must not be running on it).
    Ingest {
        #[command(flatten)]
        common: Common,
        /// Files to ingest.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Metadata for every document, as key=value (repeatable).
        #[arg(long = "metadata", value_name = "KEY=VALUE")]
        metadata: Vec<String>,
    },
    /// Search the data directory (the server must not be running on it; use the HTTP API then).
    Search {
        #[command(flatten)]
        common: Common,
        query: String,
        /// Number of hits.
        #[arg(short, long, default_value_t = 10)]
        k: usize,
        /// `hybrid`, `dense` or `keyword`; default: the configured `search.default_mode`.
        #[arg(long, value_parser = parse_mode)]
        mode: Option<rag_api::SearchMode>,
        /// Show each hit's rank and score in the dense and the keyword ranking.
        #[arg(long)]
        explain: bool,
        /// Print the raw JSON response.
        #[arg(long)]
        json: bool,
    },
    /// Ask a running node for its detailed health report; exits non-zero unless healthy.
    Health {
        /// Base URL of the node.
        #[arg(long, env = "RAGNODE_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// API key of a node that requires one.
        #[arg(long, env = "RAGNODE_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
    },
    /// Print the OpenAPI document of the HTTP API (the one a node serves at
    /// /api/v1/openapi.json), without starting a node.
    Openapi,
    /// Benchmarks (results go to docs/benchmarks.md).
    Bench {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        what: rag_node::bench::BenchCommand,
    },
}

fn config_from(common: &Common) -> anyhow::Result<Config> {
    let mut c = Config::load(common.config.as_deref())?;
    if let Some(d) = &common.data_dir {
        c.data_dir = d.clone();
    }
    if let Some(p) = common.precision {
        c.embedding.precision = p;
    }
    if let Some(m) = &common.model_dir {
        c.model_dir = m.clone();
    }
    if let Some(f) = &common.log_format {
        c.log_format = f.clone();
    }
    if let Some(l) = &common.log_level {
        c.log_level = l.clone();
    }
    Ok(c)
}

fn init_logging(c: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&c.log_level)
        .with_context(|| format!("log level {:?}", c.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match c.log_format.as_str() {
        "json" => builder.json().flatten_event(true).init(),
        "text" => builder.init(),
        other => bail!("unknown log format {other:?} (text or json)"),
    }
    Ok(())
}

/// One-shot commands log warnings only, unless RAGNODE_LOG_LEVEL asks for more.
fn init_quiet_logging(c: &Config) -> anyhow::Result<()> {
    init_logging(&Config {
        log_level: std::env::var("RAGNODE_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
        ..c.clone()
    })
}

/// One process per data directory: a second server, or an `ingest` next to a server, would
/// recover the other's in-flight job as if it had crashed.
fn lock_data_dir(c: &Config) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(&c.data_dir)
        .with_context(|| format!("creating {}", c.data_dir.display()))?;
    let path = c.data_dir.join("LOCK");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    if f.try_lock().is_err() {
        bail!("{} is in use by another rag-node process (a running server?); use its HTTP API instead", c.data_dir.display());
    }
    Ok(f)
}

/// `mi_option_purge_delay` in the mimalloc release vendored by libmimalloc-sys 0.1.49.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> anyhow::Result<()> {
    // One TLS provider for Redis (`rediss://`), S3 and the HTTP client: with several rustls
    // users in the build, rustls cannot pick one by itself.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Keep freed memory for a second instead of returning it to the OS after 10 ms: the
    // activations of every layer are the same few large buffers, and faulting them back in costs
    // ~15% of embedding time. An idle node still gives the memory back.
    // MIMALLOC_PURGE_DELAY, when set, is mimalloc's own override and wins.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: setting an allocator option has no preconditions.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1000) };
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            common,
            listen,
            max_upload_bytes,
            max_queue_depth,
            job_timeout_secs,
            redis_url,
            cluster,
            node_id,
            redis_ca_file,
            api_key_file,
            admin_token_file,
            bootstrap_from,
        } => {
            let mut c = config_from(&common)?;
            if let Some(l) = listen {
                c.listen = l;
            }
            if let Some(v) = max_upload_bytes {
                c.max_upload_bytes = v;
            }
            if let Some(v) = max_queue_depth {
                c.max_queue_depth = v;
            }
            if let Some(v) = job_timeout_secs {
                c.job_timeout_secs = v;
            }
            if redis_url.is_some() {
                c.cluster.redis_url = redis_url;
            }
            if let Some(v) = cluster {
                c.cluster.name = v;
            }
            if node_id.is_some() {
                c.cluster.node_id = node_id;
            }
            if redis_ca_file.is_some() {
                c.cluster.redis_ca_file = redis_ca_file;
            }
            if api_key_file.is_some() {
                c.auth.api_key_file = api_key_file;
            }
            if admin_token_file.is_some() {
                c.auth.admin_token_file = admin_token_file;
            }
            if bootstrap_from.is_some() {
                c.bootstrap_from = bootstrap_from;
            }
            init_logging(&c)?;
            serve(c)
        }
        Command::Ingest {
            common,
            files,
            metadata,
        } => {
            let c = config_from(&common)?;
            init_quiet_logging(&c)?;
            ingest(c, files, metadata)
        }
        Command::Search {
            common,
            query,
            k,
            mode,
            explain,
            json,
        } => {
            let c = config_from(&common)?;
            init_logging(&Config {
                log_level: "warn".into(),
                ..c.clone()
            })?;
            let _lock = lock_data_dir(&c)?;
            let node = Node::open(c)?;
            let mut req = SearchRequest::new(query);
            req.k = k;
            req.mode = mode;
            req.explain = explain;
            let out = node.search(&req)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                for (i, h) in out.hits.iter().enumerate() {
                    let loc = describe_location(&h.location);
                    println!(
                        "{:>2}. {:.4}  {} ({}){}",
                        i + 1,
                        h.score,
                        h.filename,
                        h.document_id,
                        loc
                    );
                    if let Some(e) = &h.explain {
                        let part = |r: Option<u32>, s: Option<f32>| match (r, s) {
                            (Some(r), Some(s)) => format!("#{r} ({s:.4})"),
                            _ => "-".to_owned(),
                        };
                        println!(
                            "    relevance {:.4}; dense {}; keyword {}",
                            h.relevance,
                            part(e.dense_rank, e.dense_score),
                            part(e.keyword_rank, e.keyword_score)
                        );
                    }
                    if let Some(t) = &h.text {
                        println!(
                            "    {}",
                            t.chars().take(200).collect::<String>().replace('\n', " ")
                        );
                    }
                }
                println!(
                    "{} hit(s) in {:.1} ms ({} mode, {} search over {} chunks)",
                    out.hits.len(),
                    out.took_ms,
                    out.mode.as_str(),
                    out.strategy,
                    out.candidates
                );
            }
            Ok(())
        }
        Command::Snapshot {
            common,
            to,
            redis_url,
            cluster,
            redis_ca_file,
            timeout_secs,
            keep,
        } => {
            let c = config_from(&common)?;
            init_quiet_logging(&c)?;
            let manifest = match redis_url {
                Some(url) => {
                    let redis = rag_node::cluster::Redis::with_ca(
                        &url,
                        &cluster,
                        redis_ca_file.as_deref(),
                    )?;
                    let command = rag_api::cluster::ControlCommand::Snapshot {
                        id: uuid::Uuid::now_v7().to_string(),
                        target: to,
                        keep,
                    };
                    let r = rag_node::control::request(
                        &redis,
                        &command,
                        Duration::from_secs(timeout_secs),
                    )?;
                    match (r.ok, r.snapshot) {
                        (true, Some(m)) => m,
                        _ => bail!(
                            "node {} could not take the snapshot: {}",
                            r.node_id,
                            r.error.unwrap_or_default()
                        ),
                    }
                }
                None => {
                    let _lock = lock_data_dir(&c)?;
                    let store =
                        Arc::new(rag_node::store::Store::open(&c.db_dir(), c.map_size_bytes)?);
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async {
                        let target = rag_node::snapshot::Target::parse(&to)?;
                        let m = rag_node::snapshot::create(&store, &c.cluster.node_id(), &target)
                            .await?;
                        if let Some(keep) = keep {
                            target.prune(keep as usize).await?;
                        }
                        anyhow::Ok(m)
                    })?
                }
            };
            println!("{}", serde_json::to_string_pretty(&manifest)?);
            Ok(())
        }
        Command::Restore {
            common,
            from,
            id,
            force,
        } => {
            let c = config_from(&common)?;
            init_logging(&c)?;
            let _lock = lock_data_dir(&c)?;
            if c.db_dir().join("data.mdb").exists() && !force {
                bail!(
                    "{} already holds an index; --force replaces it",
                    c.data_dir.display()
                );
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let m = rt.block_on(async {
                let target = rag_node::snapshot::Target::parse(&from)?;
                rag_node::snapshot::restore(&target, id.as_deref(), &c.data_dir, &c.db_dir()).await
            })?;
            println!("{}", serde_json::to_string_pretty(&m)?);
            Ok(())
        }
        Command::Health { url, api_key } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut client = rag_client::Client::builder(url).timeout(Duration::from_secs(30));
            if let Some(k) = api_key {
                client = client.api_key(k);
            }
            let client = client.build()?;
            let report = rt.block_on(client.health())?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if report.status != "ok" {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Openapi => {
            let doc = rag_node::api::openapi_document();
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(())
        }
        Command::Bench { common, what } => {
            let c = config_from(&common)?;
            init_logging(&Config {
                log_level: "warn".into(),
                ..c.clone()
            })?;
            rag_node::bench::run(c, what)
        }
    }
}

fn describe_location(l: &rag_api::SourceLocation) -> String {
    let mut parts = Vec::new();
    if let Some(p) = l.page {
        parts.push(format!("page {p}"));
    }
    if let Some(s) = &l.sheet {
        parts.push(format!("sheet {s}"));
    }
    if let (Some(a), Some(b)) = (l.row_start, l.row_end) {
        parts.push(if a == b {
            format!("row {a}")
        } else {
            format!("rows {a}-{b}")
        });
    }
    if !l.heading_path.is_empty() {
        parts.push(l.heading_path.join(" > "));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" — {}", parts.join(", "))
    }
}

fn ingest(c: Config, files: Vec<PathBuf>, metadata: Vec<String>) -> anyhow::Result<()> {
    let _lock = lock_data_dir(&c)?;
    let mut meta = std::collections::BTreeMap::new();
    for kv in metadata {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--metadata {kv:?}: expected KEY=VALUE"))?;
        meta.insert(k.to_owned(), v.to_owned());
    }
    let node = Node::open(c)?;
    let bar = indicatif::ProgressBar::new(files.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed_precise} {msg}")
            .expect("valid template"),
    );
    let mut failed = 0;
    for path in &files {
        bar.set_message(path.display().to_string());
        let status = node.ingest_file(path, meta.clone())?;
        if status.state == rag_api::JobState::Completed {
            bar.println(format!(
                "ok      {}  {} chunks{}",
                path.display(),
                status.chunks.unwrap_or(0),
                if status.duplicate {
                    " (identical content already indexed)"
                } else {
                    ""
                }
            ));
        } else {
            failed += 1;
            let e = status
                .error
                .map(|e| format!("{}: {}", e.code, e.message))
                .unwrap_or_default();
            bar.println(format!("failed  {}  {e}", path.display()));
        }
        bar.inc(1);
    }
    bar.finish_with_message("done");
    let s = node.stats();
    println!(
        "{} file(s), {failed} failed; index: {} documents, {} chunks",
        files.len(),
        s.documents,
        s.chunks
    );
    if failed > 0 {
        std::process::exit(2);
    }
    Ok(())
}

fn serve(c: Config) -> anyhow::Result<()> {
    let _lock = lock_data_dir(&c)?;
    rag_node::snapshot::bootstrap(&c)?;
    tracing::info!(config = %serde_json::to_string(&c)?, "effective configuration");
    let node = Arc::new(Node::open(c)?);
    let r = node.recovery();
    if r.requeued + r.failed + r.orphans_removed > 0 {
        tracing::warn!(
            requeued = r.requeued,
            failed = r.failed,
            orphans_removed = r.orphans_removed,
            "recovered from an unclean stop"
        );
    }
    let stats = node.stats();
    tracing::info!(
        model = node.model_id(),
        documents = stats.documents,
        chunks = stats.chunks,
        "node ready"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&node.config().listen)
            .await
            .with_context(|| format!("binding {}", node.config().listen))?;
        tracing::info!(address = %listener.local_addr()?, "listening");
        let (tx, rx) = tokio::sync::watch::channel(false);
        let background = node.start(rx.clone());
        let mut server_rx = rx.clone();
        let app = rag_node::api::router(node.clone());
        let limits = rag_node::api::ServerLimits {
            header_read_timeout: Duration::from_secs(
                node.config().http.header_read_timeout_secs.max(1),
            ),
        };
        let server = tokio::spawn(rag_node::api::serve(listener, app, limits, async move {
            let _ = server_rx.changed().await;
        }));
        // A node whose log position was trimmed away cannot catch up by itself: with a snapshot
        // source it stops so that its restart restores the newest snapshot.
        let restart_needed = {
            let node = node.clone();
            async move {
                if node.config().bootstrap_from.is_none() {
                    return std::future::pending().await;
                }
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    if node.log_trimmed_past() {
                        return;
                    }
                }
            }
        };
        let mut exit_code = 0;
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = restart_needed => {
                tracing::error!("the index log moved past this node: stopping so that the restart restores a snapshot");
                exit_code = 75;
            }
        }
        tracing::info!("shutting down: finishing or requeueing the current job");
        let _ = tx.send(true);
        // The worker first: it finishes or requeues its job.
        for task in background {
            let _ = task.await;
        }
        // Open streams (SSE, WebSocket) would hold the server forever.
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        tracing::info!("stopped");
        if exit_code != 0 {
            std::process::exit(exit_code);
        }
        anyhow::Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn parse_mode(s: &str) -> Result<rag_api::SearchMode, String> {
    rag_api::SearchMode::parse(s).ok_or_else(|| format!("{s:?}: expected hybrid, dense or keyword"))
}
