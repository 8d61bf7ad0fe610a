//! Cluster mode against real processes: one `redis-server` and several `rag-node serve` nodes on
//! loopback. Uploads to any node are processed once by some node and applied by every node;
//! every node answers job status and searches identically.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::Server;
use rag_api::{JobState, SearchRequest};

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

fn node_args<'a>(redis: &'a str, id: &'a str, config: &'a str) -> Vec<&'a str> {
    vec![
        "--redis-url",
        redis,
        "--cluster",
        "test",
        "--node-id",
        id,
        "--config",
        config,
    ]
}

fn write_config(dir: &Path) -> String {
    let p = dir.join("cluster.toml");
    std::fs::write(&p, "[cluster]\nvisibility_timeout_secs = 3\n").unwrap();
    p.to_string_lossy().into_owned()
}

/// The hits of every fixed query, as (document id, chunk text) lists.
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

async fn document_ids(node: &Server) -> BTreeSet<String> {
    let list: rag_api::DocumentList = node
        .client
        .get(node.url("/api/v1/documents?limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list.documents.into_iter().map(|d| d.document_id).collect()
}

/// Waits until `node` holds exactly `want` documents.
async fn converge(node: &Server, want: &BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have = document_ids(node).await;
        if &have == want {
            return;
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
    let redis = RedisServer::start(&tmp.path().join("redis"));
    let url = redis.url();
    let config = write_config(tmp.path());
    let mut nodes = Vec::new();
    for i in 0..3 {
        let id = format!("n{i}");
        nodes.push(Server::start(&tmp.path().join(&id), &node_args(&url, &id, &config)).await);
    }

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
    }

    // A delete through one node reaches all of them.
    let r = nodes[1]
        .client
        .delete(nodes[1].url("/api/v1/documents/chess-0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    want.remove("chess-0");
    for n in &nodes {
        converge(n, &want).await;
    }

    // A node that joins late replays the log and answers the same.
    let late = Server::start(&tmp.path().join("late"), &node_args(&url, "late", &config)).await;
    converge(&late, &want).await;
    assert_eq!(answers(&late).await, answers(&nodes[0]).await);

    // Nothing left queued; the bytes of finished jobs were dropped from Redis.
    assert_eq!(redis.cli(&["XLEN", "rag:{test}:jobs"]), "0");
    assert_eq!(redis.cli(&["--scan", "--pattern", "rag:{test}:blob:*"]), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_job_completes_elsewhere_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(&tmp.path().join("redis"));
    let url = redis.url();
    let config = write_config(tmp.path());
    let a = Server::start(&tmp.path().join("a"), &node_args(&url, "a", &config)).await;
    // Long enough to be caught mid-embedding: ~150 chunks.
    let text: String = (0..150)
        .map(|i| {
            format!(
                "## Part {i}\n\n{}\n\n",
                doc_text(i % TOPICS.len(), i).repeat(3)
            )
        })
        .collect();
    let job = upload(&a, "long.md", text, "long").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.job(&job).await.state != JobState::Processing {
        assert!(Instant::now() < deadline, "job never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.kill9();

    let b = Server::start(&tmp.path().join("b"), &node_args(&url, "b", &config)).await;
    let j = b.wait_job(&job, Duration::from_secs(300)).await;
    assert_eq!(j.state, JobState::Completed, "{j:?}");
    assert_eq!(j.attempts, 2, "claimed by a, then reclaimed by b");
    let want: BTreeSet<String> = ["long".to_string()].into();
    converge(&b, &want).await;

    // The first node comes back, catches up from the log, and holds the document once.
    let a = Server::start(&tmp.path().join("a"), &node_args(&url, "a", &config)).await;
    converge(&a, &want).await;
    let doc: serde_json::Value = a
        .client
        .get(a.url("/api/v1/documents/long"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["chunks"], j.chunks.unwrap(), "{doc}");
    assert_eq!(answers(&a).await, answers(&b).await);
    assert_eq!(redis.cli(&["XLEN", "rag:{test}:log"]), "1", "logged once");
}
