//! Snapshots of a standalone node to a directory: `rag-node snapshot` (offline), `restore`, and
//! a restored node answering exactly like the original; a corrupt snapshot is refused.

mod common;

use std::process::Command;
use std::time::Duration;

use common::Server;
use rag_api::{JobState, SearchMode, SearchRequest};

fn rag_node(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rag-node"))
        .args(args)
        .arg("--model-dir")
        .arg(common::model_dir())
        .output()
        .unwrap()
}

/// Hits of a few queries in every mode, with their scores: a restored node must answer
/// exactly alike (the keyword index is rebuilt from the restored chunks).
async fn answers(s: &Server) -> Vec<Vec<(String, f32, f32)>> {
    let mut out = Vec::new();
    for mode in [SearchMode::Hybrid, SearchMode::Keyword, SearchMode::Dense] {
        for q in [
            "how do bees find food",
            "what makes bread rise",
            "tides and the moon",
        ] {
            let mut req = SearchRequest::new(q);
            req.mode = Some(mode);
            let r = s.search(&req).await;
            out.push(
                r.hits
                    .into_iter()
                    .map(|h| (h.document_id, h.score, h.relevance))
                    .collect(),
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_snapshot_restores_an_identical_node() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, copy, snaps) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("snaps"),
    );
    let server = Server::start(&data, &[]).await;
    let docs = [
        ("bees", "Honey bees tell their hive mates where flowers are with a waggle dance."),
        ("bread", "A sourdough starter of wild yeast and bacteria leavens the bread and makes it sour."),
        ("tides", "Ocean tides come from the pull of the Moon, with the Sun adding spring and neap tides."),
    ];
    for (id, text) in docs {
        let r = server
            .upload(
                &format!("{id}.txt"),
                text.as_bytes().to_vec(),
                &[("document_id", id)],
            )
            .await;
        let job: rag_api::UploadResponse = r.json().await.unwrap();
        let j = server.wait_job(&job.job_id, Duration::from_secs(60)).await;
        assert_eq!(j.state, JobState::Completed);
    }
    let expected = answers(&server).await;
    // Offline: the server must not hold the data directory.
    let (d, s, c) = (
        data.to_str().unwrap(),
        snaps.to_str().unwrap(),
        copy.to_str().unwrap(),
    );
    let busy = rag_node(&["snapshot", "--data-dir", d, "--to", s]);
    assert!(
        !busy.status.success(),
        "a running server's data dir is refused"
    );
    server.stop();

    let out = rag_node(&["snapshot", "--data-dir", d, "--to", s]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: rag_api::cluster::SnapshotManifest = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((m.documents, m.chunks), (3, 3));
    assert!(snaps.join(&m.id).join("manifest.json").exists());

    let out = rag_node(&["restore", "--from", s, "--data-dir", c]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = rag_node(&["restore", "--from", s, "--data-dir", c]);
    assert!(
        !again.status.success(),
        "an existing index is not replaced without --force"
    );
    let restored = Server::start(&copy, &[]).await;
    assert_eq!(answers(&restored).await, expected);
    restored.stop();

    // A damaged copy is refused by its checksum.
    let data_file = snaps.join(&m.id).join("data.mdb");
    let mut bytes = std::fs::read(&data_file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data_file, bytes).unwrap();
    let out = rag_node(&["restore", "--from", s, "--data-dir", c, "--force"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt"));
}
