//! Cluster mode against real processes: one `redis-server` and several `rag-node serve` nodes on
//! loopback. Uploads to any node are processed once by some node and applied by every node;
//! every node answers job status and searches identically.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::Server;
use rag_api::{JobState, SearchMode, SearchRequest};

const TOPICS: &[(&str, &str, &str)] = &[
    ("volcano", "Basaltic lava flows from shield volcanoes spread across wide areas because the magma is runny and poor in silica.", "why does lava from shield volcanoes travel far"),
    ("sourdough", "A sourdough starter is a culture of wild yeast and lactic acid bacteria that leavens bread and gives it a sour taste.", "what makes sourdough bread rise and taste sour"),
    ("tides", "Ocean tides are caused mainly by the gravitational pull of the Moon, with the Sun adding spring and neap variations.", "what causes the rise and fall of sea level twice a day"),
    ("chess", "In chess, castling moves the king two squares toward a rook and places the rook on the other side of the king.", "how does the king move when castling"),
    ("vaccine", "Vaccines train the immune system by exposing it to a harmless piece or weakened form of a pathogen.", "how do vaccinations teach the body to fight infection"),
    ("bees", "Honey bees communicate the direction and distance of flowers to their hive mates with a waggle dance.", "how do bees tell each other where food is"),
    ("compiler", "A compiler translates source code into machine code, optimising it through intermediate representations.", "what program turns source code into machine instructions"),
    ("glacier", "Glaciers carve U-shaped valleys as the moving ice plucks and grinds the bedrock beneath it.", "how do ice sheets shape mountain valleys"),
];

fn doc_text(topic: usize, variant: usize) -> String {
    let (name, sentence, _) = TOPICS[topic];
    format!("# {name} notes {variant}\n\n{sentence}\n\nNote {variant} about {name}: {sentence}\n")
}

const API_KEY: &str = "test-api-key-0123456789";
const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Everything a node of the test cluster needs: Redis, a short visibility timeout, the keys.
struct Cluster {
    redis: RedisServer,
    dir: std::path::PathBuf,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        Cluster::with_redis(dir, RedisServer::start(&dir.join("redis")))
    }

    fn with_redis(dir: &Path, redis: RedisServer) -> Cluster {
        std::fs::write(
            dir.join("cluster.toml"),
            "[cluster]\nvisibility_timeout_secs = 3\ntrim_interval_secs = 1\n",
        )
        .unwrap();
        std::fs::write(dir.join("api-key"), format!("{API_KEY}\n")).unwrap();
        std::fs::write(dir.join("admin-token"), ADMIN_TOKEN).unwrap();
        Cluster {
            redis,
            dir: dir.to_owned(),
        }
    }

    async fn node(&self, id: &str) -> Server {
        self.node_with(id, &[], &[]).await
    }

    async fn node_with(&self, id: &str, extra: &[&str], envs: &[(String, String)]) -> Server {
        let p = |name: &str| self.dir.join(name).to_string_lossy().into_owned();
        let url = self.redis.url();
        let (config, key, admin) = (p("cluster.toml"), p("api-key"), p("admin-token"));
        let mut args = vec![
            "--redis-url",
            url.as_str(),
            "--cluster",
            "test",
            "--node-id",
            id,
            "--api-key-file",
            key.as_str(),
            "--admin-token-file",
            admin.as_str(),
        ];
        if !extra.contains(&"--config") {
            args.extend(["--config", config.as_str()]);
        }
        args.extend_from_slice(extra);
        Server::start_full(&self.dir.join(id), &args, Some(API_KEY), envs).await
    }
}

/// The hits of every fixed query, as (document id, chunk text) lists.
/// Every topic query's hits in the default mode (hybrid), best first.
async fn answers(node: &Server) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (_, _, query) in TOPICS {
        let r = node.search(&SearchRequest::new(query.to_string())).await;
        out.push(
            r.hits
                .into_iter()
                .map(|h| (h.document_id, h.text.unwrap_or_default()))
                .collect(),
        );
    }
    out
}

/// Every topic query's hits in each mode, with the score they are ranked by (bit for bit):
/// what must be identical on every node.
async fn all_answers(node: &Server) -> Vec<Vec<(String, u32, u32)>> {
    let mut out = Vec::new();
    for mode in [SearchMode::Hybrid, SearchMode::Keyword, SearchMode::Dense] {
        for (name, _, query) in TOPICS {
            // Keyword queries by the topic's words as well as by the question's.
            for q in [query.to_string(), format!("{name} notes")] {
                let mut req = SearchRequest::new(q);
                req.mode = Some(mode);
                let r = node.search(&req).await;
                out.push(
                    r.hits
                        .into_iter()
                        .map(|h| (h.document_id, h.chunk_index, h.relevance.to_bits()))
                        .collect(),
                );
            }
        }
    }
    out
}

async fn document_ids(node: &Server) -> BTreeSet<String> {
    let list: rag_api::DocumentList = node.get_json("/api/v1/documents?limit=1000").await;
    list.documents.into_iter().map(|d| d.document_id).collect()
}

/// Waits until `node` holds exactly `want` documents, in the keyword index too (followers
/// commit it within the commit interval after applying).
async fn converge(node: &Server, want: &BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have = document_ids(node).await;
        if &have == want {
            let report: rag_api::HealthReport = node.get_json("/api/v1/health").await;
            if report.keyword_uncommitted == 0 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {} has {have:?}, want {want:?}",
            node.base
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn upload(node: &Server, name: &str, text: String, doc_id: &str) -> String {
    let r = node
        .upload(name, text.into_bytes(), &[("document_id", doc_id)])
        .await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    let body: rag_api::UploadResponse = r.json().await.unwrap();
    body.job_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_the_queue_and_converge() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(tmp.path());
    let redis = &cluster.redis;
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(cluster.node(&format!("n{i}")).await);
    }
    // Authentication is on in cluster mode: no key → 401, probes stay open.
    let anonymous = reqwest::Client::new();
    let r = anonymous
        .post(nodes[0].url("/api/v1/search"))
        .json(&SearchRequest::new("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");
    let r = anonymous.get(nodes[0].url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Uploads spread over the nodes; every job is readable on every node.
    let mut jobs = Vec::new();
    let mut want = BTreeSet::new();
    for (t, (name, _, _)) in TOPICS.iter().enumerate() {
        for v in 0..2 {
            let doc = format!("{name}-{v}");
            let node = &nodes[(t * 2 + v) % 3];
            jobs.push(upload(node, &format!("{doc}.md"), doc_text(t, v), &doc).await);
            want.insert(doc);
        }
    }
    for (i, job) in jobs.iter().enumerate() {
        let other = &nodes[(i + 1) % 3];
        let j = other.wait_job(job, Duration::from_secs(180)).await;
        assert_eq!(j.state, JobState::Completed, "{j:?}");
        assert_eq!(j.attempts, 1);
    }
    for n in &nodes {
        converge(n, &want).await;
    }
    // Finished jobs stay readable for the retention period, then expire.
    let ttl: i64 = redis
        .cli(&["TTL", &format!("rag:{{test}}:job:{}", jobs[0])])
        .parse()
        .unwrap();
    assert!(ttl > 0, "finished job without a TTL: {ttl}");

    // Identical answers everywhere, and the right topic first.
    let first = answers(&nodes[0]).await;
    for (q, hits) in first.iter().enumerate() {
        assert!(
            hits[0].0.starts_with(TOPICS[q].0),
            "query {q} found {:?}",
            hits[0]
        );
    }
    for n in &nodes[1..] {
        assert_eq!(answers(n).await, first, "node {} differs", n.base);
        assert_eq!(
            all_answers(n).await,
            all_answers(&nodes[0]).await,
            "node {} ranks differently",
            n.base
        );
    }

    // Deleting needs the admin token; the API key gets 403. A delete through one node reaches
    // all of them.
    let r = nodes[1]
        .client
        .delete(nodes[1].url("/api/v1/documents/chess-0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = anonymous
        .delete(nodes[1].url("/api/v1/documents/chess-0"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    want.remove("chess-0");
    for n in &nodes {
        converge(n, &want).await;
    }

    // A node that joins late replays the log and answers the same.
    let late = cluster.node("late").await;
    converge(&late, &want).await;
    assert_eq!(answers(&late).await, answers(&nodes[0]).await);
    assert_eq!(all_answers(&late).await, all_answers(&nodes[0]).await);
    // It reports where it stands in the log.
    let health: rag_api::HealthReport = late.get_json("/api/v1/health").await;
    let log = health
        .checks
        .iter()
        .find(|c| c.name == "index_log")
        .unwrap();
    assert!(
        log.ok && log.message.starts_with("applied up to"),
        "{log:?}"
    );
    let metrics = late.get_text("/metrics").await;
    assert!(metrics.contains("ragnode_log_lag_milliseconds"));

    // Nothing left queued; the bytes of finished jobs were dropped from Redis.
    assert_eq!(redis.cli(&["XLEN", "rag:{test}:jobs"]), "0");
    assert_eq!(redis.cli(&["--scan", "--pattern", "rag:{test}:blob:*"]), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_job_completes_elsewhere_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(tmp.path());
    let a = cluster.node("a").await;
    // Long enough to be caught mid-embedding.
    let job = upload(&a, "long.md", long_text(), "long").await;
    wait_state(&a, &job, JobState::Processing).await;
    a.kill9();

    let b = cluster.node("b").await;
    let j = b.wait_job(&job, Duration::from_secs(300)).await;
    assert_eq!(j.state, JobState::Completed, "{j:?}");
    assert_eq!(j.attempts, 2, "claimed by a, then reclaimed by b");
    let want: BTreeSet<String> = ["long".to_string()].into();
    converge(&b, &want).await;

    // The first node comes back, catches up from the log, and holds the document once.
    let a = cluster.node("a").await;
    converge(&a, &want).await;
    let doc: serde_json::Value = a.get_json("/api/v1/documents/long").await;
    assert_eq!(doc["chunks"], j.chunks.unwrap(), "{doc}");
    assert_eq!(answers(&a).await, answers(&b).await);
    assert_eq!(all_answers(&a).await, all_answers(&b).await);
    assert_eq!(
        cluster.redis.cli(&["XLEN", "rag:{test}:log"]),
        "1",
        "logged once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_degrades_and_recovers_without_losing_uploads() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(tmp.path());
    let a = cluster.node("a").await;
    let first = upload(&a, "volcano.md", doc_text(0, 0), "volcano-0").await;
    assert_eq!(
        a.wait_job(&first, Duration::from_secs(120)).await.state,
        JobState::Completed
    );
    // Acknowledged just before Redis dies (appendfsync always): must not be lost.
    let acked = upload(&a, "bees.md", doc_text(5, 0), "bees-0").await;
    cluster.redis.kill9();

    // Search keeps working from the local index; the node stays ready; uploads get 503.
    let hits = a.search(&SearchRequest::new(TOPICS[0].2)).await;
    assert_eq!(hits.hits[0].document_id, "volcano-0");
    let r = a.client.get(a.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = a
        .upload(
            "tides.md",
            doc_text(2, 0).into_bytes(),
            &[("document_id", "tides-0")],
        )
        .await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "queue_unavailable");

    // Redis comes back on its append-only file: the node reconnects by itself, the job
    // acknowledged before the crash completes, new uploads are accepted again.
    cluster.redis.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    let tides = loop {
        let r = a
            .upload(
                "tides.md",
                doc_text(2, 0).into_bytes(),
                &[("document_id", "tides-0")],
            )
            .await;
        if r.status() == 202 {
            break r.json::<rag_api::UploadResponse>().await.unwrap().job_id;
        }
        assert!(
            Instant::now() < deadline,
            "uploads not accepted again: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for job in [&acked, &tides] {
        let j = a.wait_job(job, Duration::from_secs(120)).await;
        assert_eq!(j.state, JobState::Completed, "{j:?}");
    }
    let want: BTreeSet<String> = ["volcano-0", "bees-0", "tides-0"].map(String::from).into();
    converge(&a, &want).await;
}

fn log_len(cluster: &Cluster) -> usize {
    cluster
        .redis
        .cli(&["XLEN", "rag:{test}:log"])
        .parse()
        .unwrap()
}

async fn ingest(node: &Server, topic: usize) -> String {
    let doc = format!("{}-0", TOPICS[topic].0);
    let job = upload(node, &format!("{doc}.md"), doc_text(topic, 0), &doc).await;
    let j = node.wait_job(&job, Duration::from_secs(120)).await;
    assert_eq!(j.state, JobState::Completed, "{j:?}");
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_to_s3_let_the_log_be_trimmed_and_nodes_restore_from_them() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(tmp.path());
    let s3 = common::s3::MotoServer::start().await;
    s3.create_bucket("rag-snapshots").await;
    let env = s3.env();
    let bootstrap = ["--bootstrap-from", "s3://rag-snapshots/test"];
    let a = cluster.node_with("a", &bootstrap, &env).await;
    let b = cluster.node_with("b", &bootstrap, &env).await;
    let mut want = BTreeSet::new();
    for t in 0..2 {
        want.insert(ingest(&a, t).await);
    }
    converge(&b, &want).await;
    // b stops; the log moves on without it.
    b.stop();
    for t in 2..4 {
        want.insert(ingest(&a, t).await);
    }

    // One node of the cluster takes the snapshot, asked through Redis (as the operator does).
    let manifest = snapshot_through(&cluster, "s3://rag-snapshots/test", &env, None);
    assert_eq!(manifest.documents, 4);
    assert_eq!(manifest.node_id, "a");
    assert!(manifest.log_position.is_some());

    want.insert(ingest(&a, 4).await);
    // Trimmed below the snapshot (b is not live, so it does not hold the log back): entries
    // 4 and 5 remain.
    let deadline = Instant::now() + Duration::from_secs(30);
    while log_len(&cluster) != 2 {
        assert!(
            Instant::now() < deadline,
            "log not trimmed: {} entries",
            log_len(&cluster)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A new node starts from the snapshot and replays the rest.
    let c = cluster.node_with("c", &bootstrap, &env).await;
    converge(&c, &want).await;
    // b's position was trimmed away: at start it restores the snapshot, then catches up.
    let b = cluster.node_with("b", &bootstrap, &env).await;
    converge(&b, &want).await;
    let expected = answers(&a).await;
    assert_eq!(answers(&b).await, expected);
    assert_eq!(answers(&c).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_uploads_are_processed_once_and_applied_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(tmp.path());
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(std::sync::Arc::new(cluster.node(&format!("n{i}")).await));
    }
    // 20 clients × 10 uploads, each client spreading its uploads over the nodes.
    let mut clients = Vec::new();
    for c in 0..20usize {
        let nodes = nodes.clone();
        clients.push(tokio::spawn(async move {
            let mut jobs = Vec::new();
            for k in 0..10usize {
                let i = c * 10 + k;
                let (name, sentence, _) = TOPICS[i % TOPICS.len()];
                let text = format!("Record {i} on {name}. {sentence}");
                let node = &nodes[(c + k) % 3];
                jobs.push(upload(node, &format!("r{i}.txt"), text, &format!("r{i}")).await);
            }
            jobs
        }));
    }
    let mut jobs = Vec::new();
    for c in clients {
        jobs.extend(c.await.unwrap());
    }
    assert_eq!(jobs.len(), 200);
    let mut chunks = 0;
    for (i, job) in jobs.iter().enumerate() {
        let j = nodes[i % 3].wait_job(job, Duration::from_secs(600)).await;
        assert_eq!(j.state, JobState::Completed, "{j:?}");
        assert_eq!(j.attempts, 1);
        chunks += j.chunks.unwrap();
    }
    let want: BTreeSet<String> = (0..200).map(|i| format!("r{i}")).collect();
    for n in &nodes {
        converge(n, &want).await;
        // No duplicate chunks: the index holds exactly the chunks the jobs produced.
        let health: rag_api::HealthReport = n.get_json("/api/v1/health").await;
        assert_eq!(health.chunks, chunks as u64, "{}", n.base);
        assert_eq!(health.documents, 200, "{}", n.base);
    }
    // One log entry per document, and identical answers everywhere.
    assert_eq!(log_len(&cluster), 200);
    let first = all_answers(&nodes[0]).await;
    for n in &nodes[1..] {
        assert_eq!(all_answers(n).await, first);
    }
    // Every node is in the registry (renewed every 5 s), with what it holds.
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let raw = cluster
                .redis
                .cli(&["GET", &format!("rag:{{test}}:node:n{i}")]);
            let hb: rag_api::cluster::NodeHeartbeat = serde_json::from_str(&raw).unwrap();
            assert_eq!(hb.node_id, format!("n{i}"));
            assert!(hb.ready && hb.applied.is_some());
            if hb.documents == 200 && hb.chunks == chunks as u64 {
                break;
            }
            assert!(Instant::now() < deadline, "{hb:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// `rag-node snapshot` through the cluster's control channel, as the operator asks for one.
fn snapshot_through(
    cluster: &Cluster,
    to: &str,
    env: &[(String, String)],
    keep: Option<u32>,
) -> rag_api::cluster::SnapshotManifest {
    let keep = keep.map(|k| vec!["--keep".to_owned(), k.to_string()]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rag-node"))
        .args(["snapshot", "--to", to, "--cluster", "test"])
        .args(keep.unwrap_or_default())
        .args(["--redis-url", &cluster.redis.url()])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_recreated_from_its_backups_serves_them_and_takes_new_uploads() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = common::s3::MotoServer::start().await;
    s3.create_bucket("rag-backups").await;
    let env = s3.env();
    let target = "s3://rag-backups/prod";
    let bootstrap = ["--bootstrap-from", target];
    let mut want = BTreeSet::new();
    let expected = {
        let dir = tmp.path().join("old");
        std::fs::create_dir_all(&dir).unwrap();
        let old = Cluster::start(&dir);
        let a = old.node_with("a", &bootstrap, &env).await;
        let mut ids = Vec::new();
        for t in 0..3 {
            want.insert(ingest(&a, t).await);
            ids.push(snapshot_through(&old, target, &env, Some(2)).id);
        }
        // Retention: the oldest of the three backups was deleted.
        assert_eq!(s3.snapshot_ids("rag-backups", "prod").await, ids[1..]);
        answers(&a).await
        // The old cluster is gone: its node and its Redis stop here, their data with them.
    };

    // A new cluster on the same backups: empty Redis, nodes without data, started together.
    let dir = tmp.path().join("new");
    std::fs::create_dir_all(&dir).unwrap();
    let new = Cluster::start(&dir);
    let (b, c) = tokio::join!(
        new.node_with("b", &bootstrap, &env),
        new.node_with("c", &bootstrap, &env)
    );
    assert_eq!(document_ids(&b).await, want);
    assert_eq!(document_ids(&c).await, want);
    assert_eq!(answers(&b).await, expected);
    // They joined one new log: what either ingests now reaches both.
    want.insert(ingest(&b, 3).await);
    want.insert(ingest(&c, 4).await);
    converge(&b, &want).await;
    converge(&c, &want).await;
    assert_eq!(answers(&b).await, answers(&c).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_log_is_detected_instead_of_diverging() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(tmp.path());
    let a = cluster.node("a").await;
    ingest(&a, 0).await;
    // Redis loses everything (a new instance, a flushed database): the next entry starts a
    // new log with a new epoch, which this node must not mix into its index.
    assert_eq!(cluster.redis.cli(&["FLUSHALL"]), "OK");
    let job = upload(&a, "bees.md", doc_text(5, 0), "bees-0").await;
    let j = a.wait_job(&job, Duration::from_secs(120)).await;
    assert_eq!(j.state, JobState::Failed, "{j:?}");
    let health: rag_api::HealthReport = a.get_json("/api/v1/health").await;
    let log = health
        .checks
        .iter()
        .find(|c| c.name == "index_log")
        .unwrap();
    assert!(!log.ok && log.message.contains("epoch"), "{log:?}");
    assert_eq!(
        health.documents, 1,
        "the old index is kept, nothing mixed in"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_redis_over_tls_with_a_password() {
    let tmp = tempfile::tempdir().unwrap();
    let redis_dir = tmp.path().join("redis");
    let cluster = Cluster::with_redis(
        tmp.path(),
        RedisServer::start_tls(&redis_dir, "redis-secret-0123"),
    );
    assert!(cluster.redis.url().starts_with("rediss://"));
    let ca = redis_dir.join("ca.crt").to_string_lossy().into_owned();
    let a = cluster.node_with("a", &["--redis-ca-file", &ca], &[]).await;
    let b = cluster.node_with("b", &["--redis-ca-file", &ca], &[]).await;
    let doc = ingest(&a, 6).await;
    converge(&b, &[doc].into()).await;
    assert_eq!(answers(&a).await, answers(&b).await);
    assert_eq!(all_answers(&a).await, all_answers(&b).await);
}

/// A document long enough to keep a worker busy for a while (~150 distinct chunks).
fn long_text() -> String {
    (0..150)
        .map(|i| {
            format!(
                "## Part {i}\n\n{}\n\n",
                doc_text(i % TOPICS.len(), i).repeat(3)
            )
        })
        .collect()
}

async fn wait_state(node: &Server, job: &str, state: JobState) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.job(job).await.state != state {
        assert!(Instant::now() < deadline, "job never reached {state:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A queued job can be cancelled (its bytes leave Redis and no node ever runs it); a running
/// one cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_are_cancelled_running_ones_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(tmp.path());
    let a = cluster.node("a").await;
    let client = rag_client::Client::builder(&a.base)
        .api_key(API_KEY)
        .build()
        .unwrap();
    let long = upload(&a, "long.md", long_text(), "long").await;
    wait_state(&a, &long, JobState::Processing).await;
    let queued = upload(&a, "tides.md", doc_text(2, 0), "tides-0").await;
    let sha = a.job(&queued).await.sha256;

    let cancelled = client.cancel_job(&queued).await.unwrap();
    assert_eq!(cancelled.state, JobState::Failed);
    assert_eq!(cancelled.error.unwrap().code, "cancelled");
    let blob = format!("rag:{{test}}:blob:{sha}");
    assert_eq!(cluster.redis.cli(&["EXISTS", &blob]).trim(), "0");
    match client.cancel_job(&long).await {
        Err(rag_client::Error::Api {
            status: 409, code, ..
        }) => assert_eq!(code, "job_not_queued"),
        other => panic!("a running job was cancelled: {other:?}"),
    }

    let done = a.wait_job(&long, Duration::from_secs(120)).await;
    assert_eq!(done.state, JobState::Completed);
    // The worker went past the cancelled entry without running it.
    let after = a.job(&queued).await;
    assert_eq!((after.state, after.attempts), (JobState::Failed, 0));
    match client.document("tides-0").await {
        Err(rag_client::Error::Api { status: 404, .. }) => {}
        other => panic!("the cancelled document was indexed: {other:?}"),
    }
    assert_eq!(cluster.redis.cli(&["XLEN", "rag:{test}:jobs"]).trim(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_limits_dead_letters_and_events_from_any_node() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(tmp.path());
    std::fs::write(
        tmp.path().join("strict.toml"),
        "max_attempts = 1\n[cluster]\nvisibility_timeout_secs = 3\n",
    )
    .unwrap();
    let strict = tmp
        .path()
        .join("strict.toml")
        .to_string_lossy()
        .into_owned();
    let args = ["--config", strict.as_str(), "--max-queue-depth", "2"];
    let a = cluster.node_with("a", &args, &[]).await;

    // The worker is busy with a long job; the stream holds it plus one more: the third upload
    // is refused with 429 and Retry-After, nothing stored.
    let long = upload(&a, "long.md", long_text(), "long").await;
    wait_state(&a, &long, JobState::Processing).await;
    let queued = upload(&a, "bees.md", doc_text(5, 0), "bees-0").await;
    let r = a
        .upload(
            "tides.md",
            doc_text(2, 0).into_bytes(),
            &[("document_id", "tides-0")],
        )
        .await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "queue_full");

    // The node dies mid-job; with max_attempts = 1 the next node fails the job and
    // dead-letters it instead of retrying. Its events reach a client of that other node.
    a.kill9();
    let b = cluster.node_with("b", &args, &[]).await;
    let client = rag_client::Client::builder(&b.base)
        .api_key(API_KEY)
        .build()
        .unwrap();
    let events: Vec<_> =
        futures_util::StreamExt::collect::<Vec<_>>(client.events(&queued).await.unwrap()).await;
    assert_eq!(
        events.last().unwrap().as_ref().unwrap().state,
        JobState::Completed
    );
    let j = b.wait_job(&long, Duration::from_secs(60)).await;
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(
        j.error.as_ref().unwrap().code,
        "attempts_exhausted",
        "{j:?}"
    );
    let dead = cluster
        .redis
        .cli(&["XRANGE", "rag:{test}:jobs:dead", "-", "+"]);
    assert!(dead.contains(&long), "{dead}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_node_fixes_the_cluster_precision_and_every_node_embeds_with_it() {
    use rag_node::embed::{Kernel, Precision};
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(tmp.path());
    let a = c.node_with("a", &["--precision", "bf16"], &[]).await;
    // A node left at `auto` on a CPU without bf16 instructions (forced here: the emulation)
    // follows the cluster's bf16 instead of making fp32 vectors.
    let env = [(
        "RAGNODE_EMBEDDING_KERNEL".to_owned(),
        Kernel::Bf16Emulated.as_str().to_owned(),
    )];
    let b = c.node_with("b", &["--precision", "auto"], &env).await;
    for (node, kernel) in [
        (&a, Kernel::best(Precision::Bf16)),
        (&b, Kernel::Bf16Emulated),
    ] {
        let h: rag_api::HealthReport = node.get_json("/api/v1/health").await;
        assert_eq!(h.embedding.precision, "bf16", "{}", node.base);
        assert_eq!(h.embedding.kernel, kernel.as_str(), "{}", node.base);
    }
    let mut want = BTreeSet::new();
    for (i, (name, _, _)) in TOPICS.iter().enumerate() {
        let job = upload(&a, &format!("{name}.txt"), doc_text(i, 0), name).await;
        wait_state(&a, &job, JobState::Completed).await;
        want.insert(name.to_string());
    }
    converge(&b, &want).await;
    // Vectors from one node, queries embedded on the other: the same documents first.
    for (name, _, query) in TOPICS {
        let mut req = SearchRequest::new(query.to_string());
        req.mode = Some(SearchMode::Dense);
        for node in [&a, &b] {
            let r = node.search(&req).await;
            assert_eq!(&r.hits[0].document_id, name, "{}: {query}", node.base);
        }
    }
    // A node configured for fp32 is refused: the cluster's index is bf16.
    let (dir, url) = (tmp.path().to_owned(), c.redis.url());
    let run = move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_rag-node"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("c"))
            .args(["--redis-url", &url, "--cluster", "test", "--node-id", "c"])
            .arg("--api-key-file")
            .arg(dir.join("api-key"))
            .arg("--admin-token-file")
            .arg(dir.join("admin-token"))
            .args(["--precision", "fp32", "--model-dir"])
            .arg(common::model_dir())
            .output()
            .unwrap()
    };
    let out = tokio::time::timeout(Duration::from_secs(60), tokio::task::spawn_blocking(run))
        .await
        .expect("the refused node exits")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("built with bf16") && err.contains("configured for fp32"),
        "{err}"
    );
    a.stop();
    b.stop();
}
