//! rag-client against a real `rag-node serve` process: every call, the error shapes, the events
//! stream, and the circuit breaker against a node that is gone.

mod common;

use std::time::Duration;

use common::Server;
use futures_util::StreamExt;
use rag_api::{JobState, SearchRequest};
use rag_client::{Client, Error, RetryPolicy, Upload};

const KEY: &str = "client-test-key-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_drives_a_node() {
    let tmp = tempfile::tempdir().unwrap();
    let key_file = tmp.path().join("key");
    std::fs::write(&key_file, KEY).unwrap();
    let key_arg = key_file.to_string_lossy().into_owned();
    let server = Server::start(&tmp.path().join("node"), &["--api-key-file", &key_arg]).await;
    let client = Client::builder(&server.base).api_key(KEY).build().unwrap();

    // Without the key: a typed 401.
    let anonymous = Client::builder(&server.base)
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    match anonymous.search(&SearchRequest::new("x")).await {
        Err(Error::Api {
            status: 401, code, ..
        }) => assert_eq!(code, "unauthorized"),
        other => panic!("expected 401, got {other:?}"),
    }

    let text = "Glaciers carve U-shaped valleys as the moving ice grinds the bedrock.";
    let opts = Upload {
        document_id: Some("glacier".into()),
        metadata: [("team".to_string(), "geo".to_string())].into(),
        chunking: Some(rag_api::ChunkingOptions {
            max_tokens: 64,
            overlap_tokens: 8,
        }),
        language: Some("English".into()),
    };
    let up = client
        .upload("glacier.txt", text.as_bytes().to_vec(), &opts)
        .await
        .unwrap();
    assert_eq!(up.document_id, "glacier");
    // The events stream ends with the final state.
    let events: Vec<_> = client.events(&up.job_id).await.unwrap().collect().await;
    let last = events.last().unwrap().as_ref().unwrap();
    assert_eq!(last.state, JobState::Completed, "{events:?}");
    let job = client
        .wait_for_job(&up.job_id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Completed);
    // The per-upload chunking reached the node.
    assert_eq!(job.chunking.max_tokens, 64);
    // Only queued jobs can be cancelled.
    match client.cancel_job(&up.job_id).await {
        Err(Error::Api {
            status: 409, code, ..
        }) => assert_eq!(code, "job_not_queued"),
        other => panic!("expected 409, got {other:?}"),
    }
    match client.cancel_job("no-such-job").await {
        Err(Error::Api { status: 404, .. }) => {}
        other => panic!("expected 404, got {other:?}"),
    }

    let hits = client
        .search(&SearchRequest::new("how do glaciers shape valleys"))
        .await
        .unwrap();
    assert_eq!(hits.hits[0].document_id, "glacier");
    assert_eq!(hits.hits[0].metadata["team"], "geo");
    // The given language, normalised to its code, travels with the document's metadata.
    assert_eq!(hits.hits[0].metadata["language"], "en");
    let docs = client.documents(None, 10).await.unwrap();
    assert_eq!(docs.documents.len(), 1);
    assert_eq!(client.document("glacier").await.unwrap().chunks, 1);
    match client.document("missing").await {
        Err(Error::Api {
            status: 404, code, ..
        }) => assert_eq!(code, "not_found"),
        other => panic!("expected 404, got {other:?}"),
    }
    assert_eq!(client.health().await.unwrap().status, "ok");
    let deleted = client.delete_document("glacier").await.unwrap();
    assert!(deleted.deleted);
    assert!(client
        .documents(None, 10)
        .await
        .unwrap()
        .documents
        .is_empty());

    // The node goes away: calls fail, and after three failures the breaker answers at once.
    let base = server.base.clone();
    server.kill9();
    let client = Client::builder(base)
        .retry(RetryPolicy::none())
        .circuit_breaker(3, Duration::from_secs(60))
        .build()
        .unwrap();
    for _ in 0..3 {
        assert!(matches!(client.job("x").await, Err(Error::Transport(_))));
    }
    assert!(matches!(client.job("x").await, Err(Error::CircuitOpen)));
}
