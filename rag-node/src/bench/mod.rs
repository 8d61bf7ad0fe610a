//! `rag-node bench …`: measured performance, printed as JSON lines for docs/benchmarks.md.
//! Timings live here, never in tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Subcommand;
use rag_api::SearchRequest;

use crate::config::Config;
use crate::embed::{Embedder, Kernel, Precision};
use crate::index::{AnnSettings, DocumentUpsert, Index, KeywordSettings, NewChunk};
use crate::records::DocumentRecord;
use crate::store::Store;

mod quality;

#[derive(Subcommand, Debug, Clone)]
pub enum BenchCommand {
    /// Ingest throughput (pages/s) of the given files, with the share of time per stage.
    Ingest {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// RSS of a serving node (`rag-node serve`, default model) with N chunks indexed.
    Memory {
        #[arg(long, default_value_t = 100_000)]
        chunks: usize,
    },
    /// Embedding throughput (texts/s) on a fixed corpus; run scripts/bench/reference_embed.py on the
    /// same file (written to --texts if it does not exist) for the comparison.
    Embed {
        #[arg(long, default_value = "target/bench-texts.txt")]
        texts: PathBuf,
        #[arg(long, default_value_t = 256)]
        count: usize,
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Kernels to run, comma-separated (avx512, portable, amx, avx512_bf16, emulated), or
        /// `best` (the fastest fp32 and the fastest bf16 kernel of this CPU) or `all`.
        #[arg(long, default_value = "best")]
        kernels: String,
    },
    /// GFLOP/s of each GEMM kernel on the encoder's linear-layer shapes (compare with
    /// scripts/bench/reference_gemm.py, torch.matmul on the same shapes and threads).
    Gemm {
        /// Rows (tokens of a batch): 32 texts of 200 tokens.
        #[arg(long, default_value_t = 6400)]
        tokens: usize,
        #[arg(long, default_value_t = 5)]
        repeat: usize,
    },
    /// Upload acknowledgement latency: N simultaneous multipart uploads to an in-process server on
    /// loopback while its worker ingests.
    Upload {
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
        #[arg(long, default_value_t = 1024)]
        size_kib: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Measure without the worker ingesting in the background.
        #[arg(long)]
        idle: bool,
    },
    /// Cluster mode's replicated index log against a running Redis: the CPU of applying an entry
    /// against the CPU of embedding it, apply lag at a steady ingest rate, and search latency
    /// on a node while it applies the log.
    Apply {
        #[arg(long, env = "RAGNODE_REDIS_URL")]
        redis_url: String,
        #[arg(long, default_value_t = 40)]
        docs: usize,
        #[arg(long, default_value_t = 10)]
        chunks_per_doc: usize,
        /// The replay phases apply this many times as many documents (same vectors, new ids),
        /// so that they last long enough to time.
        #[arg(long, default_value_t = 20)]
        replay_factor: usize,
    },
    /// Search latency and recall@10 on synthetic clustered vectors, ANN beside the exact scan.
    Search {
        /// Index sizes to measure.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
        sizes: Vec<usize>,
        #[arg(long, default_value_t = 200)]
        queries: usize,
        /// Also time query embedding with the real model (full search path).
        #[arg(long)]
        with_model: bool,
        #[arg(long, default_value_t = 64)]
        n_trees: usize,
        /// Values to try (each on the same index).
        #[arg(long, value_delimiter = ',', default_value = "400")]
        search_k_per_result: Vec<usize>,
        /// Spread of the synthetic clusters (higher = harder: more true neighbours in other clusters).
        #[arg(long, default_value_t = 0.5)]
        noise: f32,
    },
    /// Retrieval quality (hit@1/3/10, MRR@10) on the Debian Reference corpora of
    /// rag-node/bench/quality: dense, keyword and hybrid search, stemmed against plain keyword
    /// analysis; search latency at 100k chunks; the keyword index's share of ingest time.
    Quality {
        /// Question file (repeatable). Default: both Debian Reference files (pt, en).
        #[arg(long = "corpus", value_name = "JSON", default_values = [quality::PT, quality::EN])]
        corpora: Vec<PathBuf>,
        /// Model directory. Default: the one every bench uses (`rag-node bench --model-dir`,
        /// RAGNODE_MODEL_DIR, else the default model).
        #[arg(long)]
        model_dir: Option<PathBuf>,
        /// Also write the raw results (every question's ranked units per configuration) here.
        #[arg(long, value_name = "FILE.json")]
        out: Option<PathBuf>,
    },
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// The machine's CPU as `lscpu` names it, model name and flags, for benchmark reports.
pub fn cpu_line() -> String {
    let lscpu = std::process::Command::new("lscpu")
        .env("LC_ALL", "C")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let field = |key: &str| {
        lscpu
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into())
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "CPU: {} ({cores} logical CPUs available); flags: {}",
        field("Model name:"),
        field("Flags:")
    )
}

/// Deterministic English-like passages of roughly 200–250 tokens.
pub fn corpus(count: usize) -> Vec<String> {
    const WORDS: &[&str] = &[
        "the",
        "cluster",
        "operator",
        "reconciles",
        "documents",
        "queue",
        "index",
        "vector",
        "search",
        "latency",
        "replica",
        "storage",
        "backup",
        "restore",
        "kubernetes",
        "embedding",
        "model",
        "token",
        "chunk",
        "page",
        "table",
        "report",
        "quarterly",
        "revenue",
        "customer",
        "contract",
        "policy",
        "security",
        "network",
        "memory",
        "processor",
        "throughput",
        "benchmark",
        "analysis",
        "result",
        "between",
        "across",
        "within",
        "before",
        "after",
        "while",
        "because",
        "therefore",
        "however",
        "system",
        "service",
        "request",
        "response",
        "error",
        "message",
    ];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    (0..count)
        .map(|_| {
            let n = 120 + (x % 60) as usize;
            let mut s = String::new();
            for i in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i > 0 {
                    s.push(' ');
                }
                s.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
                if x.is_multiple_of(11) {
                    s.push('.');
                }
            }
            s
        })
        .collect()
}

pub fn run(c: Config, cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Embed {
            texts,
            count,
            repeat,
            kernels,
        } => bench_embed(&c, &texts, count, repeat, &kernels),
        BenchCommand::Gemm { tokens, repeat } => bench_gemm(tokens, repeat),
        BenchCommand::Ingest { files } => bench_ingest(c, files),
        BenchCommand::Quality {
            corpora,
            model_dir,
            out,
        } => quality::run(c, &corpora, model_dir, out.as_deref()),
        BenchCommand::Apply {
            redis_url,
            docs,
            chunks_per_doc,
            replay_factor,
        } => bench_apply(c, &redis_url, docs, chunks_per_doc, replay_factor),
        BenchCommand::Memory { chunks } => bench_memory(c, chunks),
        BenchCommand::Upload {
            concurrency,
            size_kib,
            rounds,
            idle,
        } => bench_upload(c, concurrency, size_kib, rounds, idle),
        BenchCommand::Search {
            sizes,
            queries,
            with_model,
            n_trees,
            search_k_per_result,
            noise,
        } => {
            let embedder = if with_model {
                Some(Embedder::load(&c.model_dir)?)
            } else {
                None
            };
            for n in sizes {
                let ann = AnnSettings {
                    exact_below: 0,
                    n_trees,
                    search_k_per_result: 0,
                };
                bench_search(
                    n,
                    queries,
                    embedder.as_ref(),
                    ann,
                    &search_k_per_result,
                    noise,
                )?;
            }
            Ok(())
        }
    }
}

/// Real English prose for the embedding benchmark: the license texts every Debian system ships
/// (/usr/share/common-licenses), chunked by our own chunker into passages of up to 256 tokens.
pub fn license_passages(e: &Embedder, count: usize) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir("/usr/share/common-licenses")?
        .filter_map(|d| d.ok())
        .map(|d| d.path())
        .collect();
    names.sort();
    for path in names {
        if path.is_dir() || std::fs::symlink_metadata(&path)?.file_type().is_symlink() {
            continue;
        }
        let bytes = std::fs::read(&path)?;
        let Ok(x) = crate::extract::extract(&bytes, "license.txt", &Default::default()) else {
            continue;
        };
        for c in crate::chunk::chunk_blocks(
            &x.blocks,
            e,
            &rag_api::ChunkingOptions {
                max_tokens: 256,
                overlap_tokens: 0,
            },
        ) {
            out.push(c.text.replace('\n', " "));
            if out.len() == count {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// Clustered unit vectors like real embeddings: 1,000 fixed centres plus Gaussian-ish noise.
/// The centres are the same for every `seed`, so queries drawn with another seed fall near the
/// data (as real queries do) instead of in empty space.
fn synthetic(n: usize, dims: usize, seed: u64, noise: f32) -> Vec<Vec<f32>> {
    fn rng(seed: u64) -> impl FnMut() -> f32 {
        let mut x = seed.wrapping_mul(0x2545F4914F6CDD1D) | 1;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Sum of uniforms ≈ normal
            (0..4)
                .map(|k| ((x.rotate_left(k * 16) >> 40) as f32 / (1u64 << 24) as f32) - 0.5)
                .sum::<f32>()
        }
    }
    let mut centre_rnd = rng(42);
    let centres: Vec<Vec<f32>> = (0..1000)
        .map(|_| (0..dims).map(|_| centre_rnd()).collect())
        .collect();
    let mut rnd = rng(seed.wrapping_add(1000));
    (0..n)
        .map(|i| {
            let c = &centres[(i.wrapping_mul(7919).wrapping_add(seed as usize)) % centres.len()];
            let mut v: Vec<f32> = c.iter().map(|a| a + noise * rnd()).collect();
            let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            v.iter_mut().for_each(|a| *a /= norm);
            v
        })
        .collect()
}

fn bench_search(
    n: usize,
    queries: usize,
    embedder: Option<&Embedder>,
    ann: AnnSettings,
    search_k_per_result: &[usize],
    noise: f32,
) -> anyhow::Result<()> {
    let dims = 384;
    let dir = tempfile_dir()?;
    let store = Arc::new(Store::open(&dir, 64 << 30)?);
    let index = Index::open(
        store,
        "bench@000000000000",
        dims,
        ann,
        &KeywordSettings::default(),
    )?;
    let vecs = synthetic(n, dims, 42, noise);
    let t = Instant::now();
    fill_synthetic(&index, &vecs, |d, i| format!("{d}-{i}"))?;
    let load_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    index.build_ann_if_needed()?;
    let build_s = t.elapsed().as_secs_f64();
    let qs = synthetic(queries, dims, 7, noise);
    let snap = index.snapshot();
    let mut exact_ms = Vec::new();
    let mut truth = Vec::new();
    for q in &qs {
        let t = Instant::now();
        truth.push(snap.vectors.top_k(q, 10, None));
        exact_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    exact_ms.sort_by(f64::total_cmp);
    let mut line = serde_json::json!({
        "bench": "search", "vectors": n, "dims": dims, "queries": queries, "noise": noise,
        "load_s": load_s, "ann_build_s": build_s, "n_trees": ann.n_trees,
        "exact_p50_ms": percentile(&exact_ms, 0.5), "exact_p99_ms": percentile(&exact_ms, 0.99),
        "rss_bytes": crate::metrics::process_stats().map(|s| s.1).unwrap_or(0),
    });
    let mut ann_runs = Vec::new();
    for &spr in search_k_per_result {
        let mut ann_ms = Vec::new();
        let mut found = 0usize;
        for (q, exact) in qs.iter().zip(&truth) {
            let t = Instant::now();
            let ids = index.ann_candidates(q, 10, 10 * spr, None)?;
            let mut scored: Vec<_> = ids
                .iter()
                .filter_map(|&id| {
                    snap.vectors
                        .get(id)
                        .map(|v| (id, crate::index::vectors::dot(q, v)))
                })
                .collect();
            scored.sort_by(|a, b| b.1.total_cmp(&a.1));
            scored.truncate(10);
            ann_ms.push(t.elapsed().as_secs_f64() * 1e3);
            found += scored
                .iter()
                .filter(|(id, _)| exact.iter().any(|e| e.id == *id))
                .count();
        }
        ann_ms.sort_by(f64::total_cmp);
        ann_runs.push(serde_json::json!({
            "search_k": 10 * spr, "p50_ms": percentile(&ann_ms, 0.5), "p99_ms": percentile(&ann_ms, 0.99),
            "recall_at_10": found as f64 / (queries * 10) as f64,
        }));
    }
    line["ann"] = ann_runs.into();
    if let Some(e) = embedder {
        // Full path as served: a new query's embedding (cache miss), the search with the default
        // strategy settings, and the chunk records of the hits.
        let texts = corpus(queries.min(100));
        let mut full = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let q: String =
                text.split(' ').take(12).collect::<Vec<_>>().join(" ") + &format!(" {i}");
            let t = Instant::now();
            let v = e.embed(&[q.as_str()])?.remove(0);
            let mut req = SearchRequest::new(q);
            req.include_text = false;
            // The production strategy: exact below the crossover, arroy above it.
            let _ = crate::search::search_with(
                &index,
                &v,
                &req,
                &dense_only(),
                AnnSettings::default(),
            )?;
            full.push(t.elapsed().as_secs_f64() * 1e3);
        }
        full.sort_by(f64::total_cmp);
        line["full_search_p50_ms"] = percentile(&full, 0.5).into();
        line["full_search_p99_ms"] = percentile(&full, 0.99).into();
    }
    println!("{line}");
    drop(index);
    let _ = std::fs::remove_dir_all(&dir);
    std::thread::sleep(Duration::from_millis(10));
    Ok(())
}

/// A plain-text document record named `id` (its sha256 field is made unique from the id).
fn bench_document(id: &str) -> DocumentRecord {
    DocumentRecord {
        document_id: id.to_owned(),
        filename: format!("{id}.txt"),
        content_type: "text".into(),
        sha256: format!("sha-{id}"),
        size_bytes: 0,
        pages: 1,
        metadata: Default::default(),
        created_at_ms: 0,
        updated_at_ms: 0,
        job_id: String::new(),
        first_item: 0,
        chunks: 0,
    }
}

fn process_cpu() -> f64 {
    crate::metrics::process_stats().map_or(0.0, |s| s.0)
}

fn bench_apply(
    c: Config,
    redis_url: &str,
    docs: usize,
    per_doc: usize,
    replay_factor: usize,
) -> anyhow::Result<()> {
    use crate::cluster::{Redis, RedisLog};
    use crate::log::{IndexLog, IndexOp};
    let e = Embedder::load_with(&c.model_dir, c.batch_policy())?;
    let texts = corpus(docs * per_doc);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();

    // 1. What producing costs: embedding the chunks.
    let (cpu0, t0) = (process_cpu(), Instant::now());
    let vectors = e.embed(&refs)?;
    let (embed_cpu, embed_wall) = (process_cpu() - cpu0, t0.elapsed().as_secs_f64());
    let upserts: Vec<DocumentUpsert> = (0..docs)
        .map(|d| DocumentUpsert {
            document: bench_document(&format!("doc-{d}")),
            chunks: (0..per_doc)
                .map(|k| NewChunk {
                    text: texts[d * per_doc + k].clone(),
                    location: Default::default(),
                    vector: vectors[d * per_doc + k].clone(),
                })
                .collect(),
        })
        .collect();

    let dir = tempfile_dir()?;
    let cluster = format!("bench-{}-{}", std::process::id(), crate::time::now_ms());
    let redis = Arc::new(Redis::new(redis_url, &cluster)?);
    let open = |name: &str| -> anyhow::Result<Arc<Index>> {
        let store = Arc::new(Store::open(&dir.join(name), 1 << 30)?);
        Ok(Arc::new(Index::open(
            store,
            e.model_id(),
            e.dimensions(),
            c.ann(),
            &c.keyword_settings()?,
        )?))
    };

    // 2. Steady ingest: a producer appends one document per embedding interval; a follower
    // applies. The follower's lag is sampled at every entry it applies.
    let producer = RedisLog::open(redis.clone(), open("producer")?)?;
    let follower = Arc::new(RedisLog::open(redis.clone(), open("follower")?)?);
    let interval = Duration::from_secs_f64(embed_wall / docs as f64);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (f, stop) = (follower.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut lags = Vec::new();
            let mut last = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(s) = f.status() {
                    let applied = s.position.as_ref().map_or(0, |p| p.applied);
                    if applied != last {
                        last = applied;
                        lags.push(s.lag_ms as f64);
                    }
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            lags
        })
    };
    for up in &upserts {
        let next = Instant::now() + interval;
        producer.submit(IndexOp::Upsert(up.clone()))?;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    wait_applied(&follower, docs)?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut lags = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))?;
    lags.sort_by(f64::total_cmp);
    drop(follower);
    // More entries for the replay phases: the same chunks under new document ids.
    let copies = |from: usize, to: usize| -> Vec<DocumentUpsert> {
        (from..to)
            .flat_map(|r| {
                upserts.iter().map(move |up| {
                    let mut up = up.clone();
                    up.document.document_id = format!("{}-r{r}", up.document.document_id);
                    up.document.sha256 = format!("{}-r{r}", up.document.sha256);
                    up
                })
            })
            .collect()
    };
    let replay_factor = replay_factor.max(1);
    for up in copies(1, replay_factor) {
        producer.submit(IndexOp::Upsert(up))?;
    }
    let total = docs * replay_factor;

    // 3. What applying costs: a new node replays the whole log (nothing else runs).
    let (cpu0, t0) = (process_cpu(), Instant::now());
    let open_replayed = open("replay")?;
    let replay = RedisLog::open(redis.clone(), open_replayed.clone())?;
    wait_applied(&replay, total)?;
    let (apply_cpu, apply_wall) = (process_cpu() - cpu0, t0.elapsed().as_secs_f64());

    // 4. Searches on that node while it applies as many new entries again (appended as fast
    // as the producer can), then on the same node idle.
    let queries: Vec<Vec<f32>> = vectors.iter().step_by(per_doc.max(1)).cloned().collect();
    let index = open_replayed.clone();
    let more = copies(replay_factor, 2 * replay_factor);
    let producer = Arc::new(producer);
    let feeder = {
        let producer = producer.clone();
        std::thread::spawn(move || -> anyhow::Result<()> {
            for up in more {
                producer.submit(IndexOp::Upsert(up))?;
            }
            Ok(())
        })
    };
    let mut busy = Vec::new();
    let mut i = 0;
    while replay
        .status()
        .and_then(|s| s.position)
        .map_or(0, |p| p.applied)
        < 2 * total as u64
    {
        let t = Instant::now();
        crate::search::search(
            &index,
            &queries[i % queries.len()],
            &SearchRequest::new("q"),
            &dense_only(),
        )?;
        busy.push(t.elapsed().as_secs_f64() * 1e3);
        i += 1;
    }
    feeder
        .join()
        .map_err(|_| anyhow::anyhow!("feeder panicked"))??;
    let mut idle = Vec::new();
    for q in queries.iter().cycle().take(200) {
        let t = Instant::now();
        crate::search::search(&index, q, &SearchRequest::new("q"), &dense_only())?;
        idle.push(t.elapsed().as_secs_f64() * 1e3);
    }
    busy.sort_by(f64::total_cmp);
    idle.sort_by(f64::total_cmp);
    let embedded = (docs * per_doc) as f64;
    let applied = (total * per_doc) as f64;
    let (embed_per_chunk, apply_per_chunk) = (embed_cpu / embedded, apply_cpu / applied);
    println!(
        "{}",
        serde_json::json!({
            "bench": "apply", "docs": docs, "chunks_embedded": docs * per_doc,
            "chunks_replayed": total * per_doc,
            "embed_cpu_ms_per_chunk": embed_per_chunk * 1e3,
            "apply_cpu_ms_per_chunk": apply_per_chunk * 1e3,
            "apply_wall_ms_per_doc": apply_wall * 1e3 / total as f64,
            "apply_cpu_share_of_embedding": apply_per_chunk / embed_per_chunk,
            "ingest_interval_ms": interval.as_secs_f64() * 1e3,
            "lag_p50_ms": percentile(&lags, 0.5), "lag_p99_ms": percentile(&lags, 0.99),
            "lag_samples": lags.len(),
            "search_while_applying_p50_ms": percentile(&busy, 0.5),
            "search_while_applying_p99_ms": percentile(&busy, 0.99),
            "search_while_applying_samples": busy.len(),
            "search_idle_p50_ms": percentile(&idle, 0.5), "search_idle_p99_ms": percentile(&idle, 0.99),
            "search_index_chunks": index.stats().chunks,
        })
    );
    drop((producer, replay, index, open_replayed));
    redis_cleanup(&redis);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn wait_applied(log: &crate::cluster::RedisLog, n: usize) -> anyhow::Result<()> {
    use crate::log::IndexLog;
    let deadline = Instant::now() + Duration::from_secs(120);
    while log
        .status()
        .and_then(|s| s.position)
        .map_or(0, |p| p.applied)
        < n as u64
    {
        anyhow::ensure!(Instant::now() < deadline, "replay did not finish");
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Removes the benchmark's keys from Redis.
fn redis_cleanup(redis: &crate::cluster::Redis) {
    let keys = [redis.keys.index_log(), redis.keys.log_epoch()];
    let _ = redis.run(|c| redis::cmd("DEL").arg(&keys).query::<i64>(c));
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "rag-bench-{}-{}",
        std::process::id(),
        crate::time::now_ms()
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn bench_upload(
    mut c: Config,
    concurrency: usize,
    size_kib: usize,
    rounds: usize,
    idle: bool,
) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    c.data_dir = dir.clone();
    c.max_upload_bytes = c.max_upload_bytes.max((size_kib as u64 + 64) << 10);
    let node = Arc::new(crate::node::Node::open(c)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (_tx, rx) = tokio::sync::watch::channel(false);
        if !idle {
            node.start_worker(rx);
        }
        tokio::spawn(async move { axum::serve(listener, crate::api::router(node)).await });
        let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
        let words = corpus(64).join(" ");
        let body: String = words.chars().cycle().take(size_kib << 10).collect();
        let mut lat = Vec::new();
        let (mut cpu_ms, mut wall_ms) = (0.0, 0.0);
        for round in 0..rounds {
            // Distinct bytes per upload, so none is a duplicate; made before the clock starts
            // so the client's own work does not compete with the uploads being timed.
            let bodies: Vec<Vec<u8>> = (0..concurrency)
                .map(|i| format!("{round}-{i} {body}").into_bytes())
                .collect();
            let (cpu0, wall0) = (process_cpu_ms(), Instant::now());
            let tasks: Vec<_> = bodies
                .into_iter()
                .map(|bytes| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        let form = reqwest::multipart::Form::new()
                            .part("file", reqwest::multipart::Part::bytes(bytes).file_name("bench.txt"));
                        let t = Instant::now();
                        let r = client.post(format!("http://{addr}/api/v1/jobs")).multipart(form).send().await?;
                        let status = r.status();
                        r.bytes().await?;
                        anyhow::ensure!(status == 202, "upload answered {status}");
                        anyhow::Ok(t.elapsed().as_secs_f64() * 1e3)
                    })
                })
                .collect();
            for t in tasks {
                lat.push(t.await??);
            }
            cpu_ms += process_cpu_ms() - cpu0;
            wall_ms += wall0.elapsed().as_secs_f64() * 1e3;
        }
        lat.sort_by(f64::total_cmp);
        // The floors, same bursts on the same disk without HTTP: what the spool writer alone
        // costs (SHA-256, direct I/O, fsync), and what the device needs for the bytes.
        let bytes = body.into_bytes();
        let spool = burst_floor(&dir, rounds, concurrency, |path| {
            let bytes = bytes.clone();
            async move {
                let mut w = crate::spool::SpoolWriter::create(&path).await?;
                for piece in bytes.chunks(64 << 10) {
                    w.write(piece).await?;
                }
                w.finish(true).await?;
                anyhow::Ok(())
            }
        })
        .await?;
        let device = burst_floor(&dir, rounds, concurrency, |path| async move {
            tokio::task::spawn_blocking(move || write_direct(&path, size_kib << 10)).await??;
            anyhow::Ok(())
        })
        .await?;
        let summary = |(l, cpu): &(Vec<f64>, f64)| serde_json::json!({"p50_ms": percentile(l, 0.5), "p99_ms": percentile(l, 0.99), "max_ms": l.last(), "burst_cpu_ms": cpu});
        println!(
            "{}",
            serde_json::json!({"bench": "upload", "worker_ingesting": !idle, "concurrency": concurrency, "size_kib": size_kib, "uploads": lat.len(),
                "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99), "max_ms": lat.last(),
                "burst_wall_ms": wall_ms / rounds as f64, "burst_cpu_ms": cpu_ms / rounds as f64,
                "floor_spool_only": summary(&spool), "floor_device_only": summary(&device)})
        );
        anyhow::Ok(())
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// CPU time (user + system) this process has used so far, in milliseconds.
fn process_cpu_ms() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(u.ru_utime) + ms(u.ru_stime)
}

/// Runs `rounds` bursts of `concurrency` simultaneous `op`s, each on a fresh file in `dir`, and
/// returns every op's latency in milliseconds, sorted, and the CPU time a burst took.
async fn burst_floor<F, Fut>(
    dir: &std::path::Path,
    rounds: usize,
    concurrency: usize,
    op: F,
) -> anyhow::Result<(Vec<f64>, f64)>
where
    F: Fn(PathBuf) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let floor_dir = dir.join("floor");
    let mut lat = Vec::new();
    let mut cpu_ms = 0.0;
    for _ in 0..rounds {
        std::fs::create_dir_all(&floor_dir)?;
        let cpu0 = process_cpu_ms();
        let tasks: Vec<_> = (0..concurrency)
            .map(|i| {
                let fut = op(floor_dir.join(i.to_string()));
                tokio::spawn(async move {
                    let t = Instant::now();
                    fut.await?;
                    anyhow::Ok(t.elapsed().as_secs_f64() * 1e3)
                })
            })
            .collect();
        for t in tasks {
            lat.push(t.await??);
        }
        cpu_ms += process_cpu_ms() - cpu0;
        std::fs::remove_dir_all(&floor_dir)?;
    }
    lat.sort_by(f64::total_cmp);
    Ok((lat, cpu_ms / rounds.max(1) as f64))
}

/// `len` bytes (a multiple of 4 KiB) written to a new file with `O_DIRECT` in 256 KiB blocks
/// and fsynced: the device's share of storing an upload.
fn write_direct(path: &std::path::Path, len: usize) -> std::io::Result<()> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const BLOCK: usize = 256 << 10;
    let raw = vec![b'x'; BLOCK + 4096];
    let start = raw.as_ptr().align_offset(4096);
    let block = &raw[start..start + BLOCK];
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let mut offset = 0;
    while offset < len {
        let n = BLOCK.min(len - offset);
        file.write_all_at(&block[..n], offset as u64)?;
        offset += n;
    }
    file.sync_all()
}

fn bench_ingest(mut c: Config, files: Vec<PathBuf>) -> anyhow::Result<()> {
    use crate::node::Node;
    let dir = tempfile_dir()?;
    c.data_dir = dir.clone();
    let node = Node::open(c)?;
    // Warm-up so the first file does not pay for lazy initialisation.
    node.embed(&["warm up"])?;
    for path in files {
        let size = std::fs::metadata(&path)?.len();
        let t = Instant::now();
        let s = node.ingest_file(&path, Default::default())?;
        let wall = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            s.state == rag_api::JobState::Completed,
            "{}: {:?}",
            path.display(),
            s.error
        );
        let tm = &s.timings;
        let stages =
            [tm.extract_ms, tm.chunk_ms, tm.embed_ms, tm.index_ms].map(|v| v.unwrap_or(0) as f64);
        let total: f64 = stages.iter().sum::<f64>().max(1.0);
        let pages = s.pages.unwrap_or(0);
        println!(
            "{}",
            serde_json::json!({"bench": "ingest", "file": path.display().to_string(), "content_type": s.content_type,
                "bytes": size, "pages": pages, "chunks": s.chunks, "seconds": wall, "pages_per_s": pages as f64 / wall,
                "chunks_per_s": s.chunks.unwrap_or(0) as f64 / wall,
                "share": {"extract": stages[0] / total, "chunk": stages[1] / total, "embed": stages[2] / total, "index": stages[3] / total}})
        );
    }
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn bench_memory(c: Config, chunks: usize) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let data = dir.join("node");
    {
        // A real node's data directory (the default model's id), filled with synthetic chunks.
        let e = Embedder::load(&c.model_dir)?;
        let store = Arc::new(Store::open(&data.join("db"), 4 << 30)?);
        let index = Index::open(
            store,
            e.model_id(),
            e.dimensions(),
            AnnSettings::default(),
            &KeywordSettings::default(),
        )?;
        let vecs = synthetic(chunks, e.dimensions(), 3, 0.5);
        let text = corpus(1).remove(0);
        fill_synthetic(&index, &vecs, |d, i| format!("{d}-{i} {text}"))?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log-level",
            "warn",
            "--data-dir",
        ])
        .arg(&data)
        .arg("--model-dir")
        .arg(&c.model_dir)
        .spawn()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let client = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let ready = client.get(format!("{base}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "node did not become ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for q in corpus(50) {
            let q: String = q.split(' ').take(10).collect::<Vec<_>>().join(" ");
            client.post(format!("{base}/api/v1/search")).json(&SearchRequest::new(q)).send().await?.error_for_status()?;
        }
        let metrics = client.get(format!("{base}/metrics")).send().await?.text().await?;
        let rss = metrics
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        // Anonymous memory is the node's own; file-backed pages are LMDB and the model weights
        // mapped from disk, which the kernel can drop under pressure.
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        let kib = |key: &str| -> f64 {
            status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0.0)
        };
        println!(
            "{}",
            serde_json::json!({"bench": "memory", "chunks": chunks, "rss_bytes": rss, "rss_mib": rss / 1048576.0,
                "rss_anon_mib": kib("RssAnon:") / 1024.0, "rss_file_mib": kib("RssFile:") / 1024.0})
        );
        anyhow::Ok(())
    });
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Stores synthetic vectors as documents of 1,000 chunks each.
fn fill_synthetic(
    index: &Index,
    vecs: &[Vec<f32>],
    text: impl Fn(usize, usize) -> String,
) -> anyhow::Result<()> {
    for (d, part) in vecs.chunks(1000).enumerate() {
        let chunks = part
            .iter()
            .enumerate()
            .map(|(i, v)| NewChunk {
                text: text(d, i),
                location: Default::default(),
                vector: v.clone(),
            })
            .collect();
        let document = bench_document(&format!("d{d}"));
        index.apply_upsert(&DocumentUpsert { document, chunks })?;
    }
    Ok(())
}

/// The vector benchmarks measure the vector index alone, as before hybrid search existed.
fn dense_only() -> crate::search::SearchDefaults {
    crate::search::SearchDefaults {
        mode: rag_api::SearchMode::Dense,
        ..Default::default()
    }
}

fn kernels_named(list: &str) -> anyhow::Result<Vec<Kernel>> {
    Ok(match list {
        "best" => vec![Kernel::best(Precision::Fp32), Kernel::best(Precision::Bf16)],
        "all" => [Precision::Fp32, Precision::Bf16]
            .into_iter()
            .flat_map(Kernel::available)
            .collect(),
        _ => list
            .split(',')
            .map(|s| {
                let k = Kernel::parse(s.trim())
                    .ok_or_else(|| anyhow::anyhow!("unknown kernel {s:?}"))?;
                anyhow::ensure!(
                    Kernel::available(k.precision()).contains(&k),
                    "this CPU cannot run the {} kernel",
                    k.as_str()
                );
                Ok(k)
            })
            .collect::<anyhow::Result<_>>()?,
    })
}

fn bench_embed(
    c: &Config,
    texts: &std::path::Path,
    count: usize,
    repeat: usize,
    kernels: &str,
) -> anyhow::Result<()> {
    let kernels = kernels_named(kernels)?;
    println!(
        "{}",
        serde_json::json!({"cpu": cpu_line(), "features": crate::embed::gemm::cpu::describe()})
    );
    let prompts = crate::embed::Prompts::default();
    if !texts.exists() {
        let e = Embedder::load_with(&c.model_dir, c.batch_policy())?;
        if let Some(p) = texts.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::write(texts, license_passages(&e, count)?.join("\n"))?;
    }
    let lines: Vec<String> = std::fs::read_to_string(texts)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    // fp32 vectors of the fastest fp32 kernel: what each kernel's vectors are compared with.
    let mut baseline: Option<Vec<Vec<f32>>> = None;
    for kernel in kernels {
        let e = Embedder::load_with_kernel(&c.model_dir, c.batch_policy(), &prompts, kernel)?;
        e.embed(&refs[..refs.len().min(32)])?; // warm-up
        let mut runs = Vec::new();
        let mut vectors = Vec::new();
        for _ in 0..repeat {
            let t = Instant::now();
            vectors = e.embed(&refs)?;
            runs.push(refs.len() as f64 / t.elapsed().as_secs_f64());
        }
        let min_cos = match &baseline {
            None => {
                baseline = Some(vectors);
                1.0
            }
            Some(b) => b
                .iter()
                .zip(&vectors)
                .map(|(x, y)| x.iter().zip(y).map(|(a, b)| a * b).sum::<f32>())
                .fold(1.0f32, f32::min),
        };
        runs.sort_by(f64::total_cmp);
        let tokens: usize = refs
            .iter()
            .map(|t| {
                e.tokenizer()
                    .encode(*t, true)
                    .map(|x| x.get_ids().len())
                    .unwrap_or(0)
            })
            .sum();
        println!(
            "{}",
            serde_json::json!({"impl": "rag-node", "precision": kernel.precision().as_str(), "kernel": kernel.as_str(),
                "texts": refs.len(), "threads": rayon::current_num_threads(),
                "batch": c.embedding.batch_size, "mean_tokens": (tokens as f64 / refs.len() as f64 * 10.0).round() / 10.0,
                "weight_mib": (e.weight_bytes() as f64 / 1048576.0 * 10.0).round() / 10.0,
                "min_cos_vs_first": (min_cos as f64 * 1e5).round() / 1e5,
                "median_texts_per_s": (runs[runs.len() / 2] * 100.0).round() / 100.0, "runs": runs})
        );
    }
    Ok(())
}

/// The encoder's linear layers at all-MiniLM-L6-v2's sizes: (in, out) of QKV, attention output,
/// intermediate and output.
const GEMM_SHAPES: [(usize, usize); 4] = [(384, 1152), (384, 384), (384, 1536), (1536, 384)];

fn bench_gemm(tokens: usize, repeat: usize) -> anyhow::Result<()> {
    use crate::embed::gemm::{Epilogue, Packed};
    println!(
        "{}",
        serde_json::json!({"cpu": cpu_line(), "features": crate::embed::gemm::cpu::describe(), "threads": rayon::current_num_threads()})
    );
    let data = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0)
            .collect()
    };
    for kernel in kernels_named("all")? {
        let mut row = serde_json::Map::new();
        row.insert("kernel".into(), kernel.as_str().into());
        let (mut flops, mut secs) = (0f64, 0f64);
        for (k, n) in GEMM_SHAPES {
            let p = Packed::new(&data(n * k), &data(n), n, k, kernel);
            let x = data(tokens * k);
            p.forward(&x, tokens, Epilogue::None);
            let mut times: Vec<f64> = (0..repeat)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(p.forward(&x, tokens, Epilogue::None));
                    t.elapsed().as_secs_f64()
                })
                .collect();
            times.sort_by(f64::total_cmp);
            let t = times[times.len() / 2];
            let f = 2.0 * (tokens * k * n) as f64;
            row.insert(
                format!("{k}x{n}_gflops"),
                ((f / t / 1e9 * 10.0).round() / 10.0).into(),
            );
            flops += f;
            secs += t;
        }
        row.insert(
            "all_gflops".into(),
            ((flops / secs / 1e9 * 10.0).round() / 10.0).into(),
        );
        println!("{}", serde_json::Value::Object(row));
    }
    Ok(())
}
