//! End to end against a real `rag-node serve` process: real documents uploaded over HTTP,
//! jobs followed to completion, searches that must find the right document and location,
//! error shapes, and a restart that must give the same results. Every answer is checked against
//! the OpenAPI document the node serves (`Server::send` and the helpers built on it).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{corpus, Server};
use rag_api::{JobState, SearchRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_ingest_search_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    let files = corpus::build(&docs);
    let data = tmp.path().join("node");
    let server = Server::start(&data, &["--max-upload-bytes", "2000000"]).await;

    // Upload everything at once: each answer is immediate and says "queued".
    let mut jobs: HashMap<String, String> = HashMap::new();
    for (name, path) in &files {
        let r = server
            .upload(
                name,
                std::fs::read(path).unwrap(),
                &[("metadata", r#"{"corpus":"e2e"}"#)],
            )
            .await;
        assert_eq!(r.status(), 202);
        assert!(r.headers().get("location").is_some());
        let body: rag_api::UploadResponse = r.json().await.unwrap();
        assert_eq!(body.status, JobState::Queued);
        jobs.insert(name.clone(), body.job_id);
    }
    let mut hostile_jobs = Vec::new();
    for (name, bytes, code) in corpus::hostile(&docs) {
        let r = server.upload(&name, bytes, &[]).await;
        assert_eq!(r.status(), 202, "{name}");
        let body: rag_api::UploadResponse = r.json().await.unwrap();
        hostile_jobs.push((name, body.job_id, code));
    }
    // The gateway route behaves the same.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(
            b"Gateway route test about lighthouses and fog horns.".to_vec(),
        )
        .file_name("gw.txt"),
    );
    let r = server
        .send(
            server
                .client
                .post(server.url("/api/v1/rag/upload"))
                .multipart(form),
        )
        .await;
    assert_eq!(r.status(), 202);
    // The original plan's gateway reads exactly these keys.
    let raw: serde_json::Value = r.json().await.unwrap();
    assert_eq!(raw["status"], "queued", "{raw}");
    assert!(
        raw["job_id"].is_string() && raw["message"].is_string(),
        "{raw}"
    );
    let gw: rag_api::UploadResponse = serde_json::from_value(raw).unwrap();

    let mut doc_ids: HashMap<String, String> = HashMap::new();
    for (name, id) in &jobs {
        let j = server.wait_job(id, Duration::from_secs(600)).await;
        assert_eq!(j.state, JobState::Completed, "{name}: {:?}", j.error);
        assert!(j.chunks.unwrap() > 0);
        assert_eq!(j.percent, 100);
        assert!(j.timings.embed_ms.is_some() && j.timings.total_ms.is_some());
        doc_ids.insert(name.clone(), j.document_id);
    }
    for (name, id, code) in &hostile_jobs {
        let j = server.wait_job(id, Duration::from_secs(120)).await;
        assert_eq!(j.state, JobState::Failed, "{name} should fail");
        let e = j.error.unwrap();
        assert_eq!(e.code, *code, "{name}: {}", e.message);
        assert!(!e.message.is_empty());
    }
    let raw: serde_json::Value = server
        .get_json(&format!("/api/v1/rag/jobs/{}", gw.job_id))
        .await;
    assert!(
        ["queued", "processing", "completed"].contains(&raw["status"].as_str().unwrap_or("")),
        "{raw}"
    );
    let gw_job: rag_api::JobStatus = serde_json::from_value(raw).unwrap();
    assert_eq!(gw_job.job_id, gw.job_id);
    assert_eq!(
        server
            .wait_job(&gw.job_id, Duration::from_secs(60))
            .await
            .state,
        JobState::Completed
    );

    // Searches find the right document and location.
    let mut results = Vec::new();
    for e in corpus::expectations() {
        let mut req = SearchRequest::new(e.query);
        req.k = 5;
        let out = server.search(&req).await;
        let top = &out.hits[0];
        assert_eq!(
            top.document_id, doc_ids[e.file],
            "query {:?} found {} ({:?})",
            e.query, top.filename, top.text
        );
        assert_eq!(top.filename, e.file);
        assert_eq!(top.metadata.get("corpus").map(String::as_str), Some("e2e"));
        if let Some(p) = e.page {
            assert_eq!(top.location.page, Some(p), "{}", e.query);
        }
        if let Some(s) = e.sheet {
            assert_eq!(top.location.sheet.as_deref(), Some(s));
        }
        if let Some(r) = e.row {
            // Small rows are packed together: the hit's row range must cover the row.
            let (a, b) = (
                top.location.row_start.unwrap(),
                top.location.row_end.unwrap(),
            );
            assert!(a <= r && r <= b, "{}: rows {a}-{b}", e.query);
        }
        if let Some(h) = e.heading {
            assert!(
                top.location.heading_path.iter().any(|x| x == h),
                "{:?} lacks heading {h}",
                top.location
            );
        }
        results.push(
            out.hits
                .iter()
                .map(|h| (h.document_id.clone(), h.chunk_index))
                .collect::<Vec<_>>(),
        );
    }

    // A repeated query is answered from the query-embedding cache.
    let again = server
        .search(&SearchRequest::new(corpus::expectations()[0].query))
        .await;
    assert_eq!(
        again.hits[0].document_id,
        doc_ids[corpus::expectations()[0].file]
    );
    let metrics = server.get_text("/metrics").await;
    let hits: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ragnode_query_cache_hits_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(hits >= 1.0, "{metrics}");

    // Filters: restricting to spreadsheets returns only the spreadsheet.
    let mut req = SearchRequest::new("lava");
    req.filter.content_types = Some(vec!["xlsx".into()]);
    let out = server.search(&req).await;
    assert!(!out.hits.is_empty() && out.hits.iter().all(|h| h.content_type == "xlsx"));

    // Server-Sent Events of a finished job: its final state, then the stream ends. Each
    // event's data is a JobStatus of the document.
    let events = format!("/api/v1/jobs/{}/events", jobs["kitchen.docx"]);
    let sse = server.send(server.client.get(server.url(&events))).await;
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let text = sse.text().await.unwrap();
    assert!(
        text.contains("event: job") && text.contains("\"status\":\"completed\""),
        "{text}"
    );
    let spec = server.spec().await;
    for data in text.lines().filter_map(|l| l.strip_prefix("data:")) {
        spec.check_schema("JobStatus", &serde_json::from_str(data.trim()).unwrap());
    }

    // Identical bytes again: no work, and the job says so.
    let (name, path) = files.iter().find(|(n, _)| n == "birds.md").unwrap();
    let r = server.upload(name, std::fs::read(path).unwrap(), &[]).await;
    let again: rag_api::UploadResponse = r.json().await.unwrap();
    let j = server
        .wait_job(&again.job_id, Duration::from_secs(60))
        .await;
    assert!(
        j.duplicate && j.state == JobState::Completed && j.chunks_embedded == Some(0),
        "{j:?}"
    );

    // Replace a document by id: old text gone, new text found, unchanged chunks not re-embedded.
    let r = server.upload("notes.md", b"# Notes\n\nThe lighthouse keeper logs every ship.\n\nSecond paragraph about harbour cranes.".to_vec(), &[("document_id", "notes")]).await;
    let first: rag_api::UploadResponse = r.json().await.unwrap();
    assert_eq!(first.document_id, "notes");
    server
        .wait_job(&first.job_id, Duration::from_secs(60))
        .await;
    let r = server.upload("notes.md", b"# Notes\n\nThe lighthouse keeper logs every ship.\n\nA new paragraph about glacier ice cores.".to_vec(), &[("document_id", "notes")]).await;
    let second: rag_api::UploadResponse = r.json().await.unwrap();
    let j = server
        .wait_job(&second.job_id, Duration::from_secs(60))
        .await;
    assert_eq!(j.state, JobState::Completed);
    let doc: rag_api::DocumentInfo = server.get_json("/api/v1/documents/notes").await;
    assert_eq!(doc.chunks, j.chunks.unwrap());
    let mut req = SearchRequest::new("glacier ice cores");
    req.filter.document_ids = Some(vec!["notes".into()]);
    let out = server.search(&req).await;
    assert!(out.hits[0].text.as_ref().unwrap().contains("glacier"));
    assert!(!out
        .hits
        .iter()
        .any(|h| h.text.as_ref().unwrap().contains("cranes")));

    // Delete removes it from search.
    let r = server
        .send(server.client.delete(server.url("/api/v1/documents/notes")))
        .await;
    assert_eq!(r.status(), 200);
    let out = server.search(&req).await;
    assert!(out.hits.is_empty());

    // Errors are JSON with stable codes.
    for (resp, status, code) in [
        (
            server
                .send(server.client.get(server.url("/api/v1/jobs/nope")))
                .await,
            404,
            "not_found",
        ),
        (
            server
                .send(server.client.get(server.url("/api/v1/nothing-here")))
                .await,
            404,
            "not_found",
        ),
        (
            // Not a WebSocket handshake.
            server
                .send(server.client.get(server.url("/api/v1/ws")))
                .await,
            400,
            "invalid_request",
        ),
        (
            server
                .send(
                    server
                        .client
                        .get(server.url("/api/v1/documents/no-such-document")),
                )
                .await,
            404,
            "not_found",
        ),
        (
            server
                .send(
                    server
                        .client
                        .post(server.url("/api/v1/search"))
                        .json(&serde_json::json!({"query": "x", "k": 0})),
                )
                .await,
            400,
            "invalid_request",
        ),
        (
            server
                .send(
                    server
                        .client
                        .post(server.url("/api/v1/search"))
                        .header("content-type", "application/json")
                        .body("{not json"),
                )
                .await,
            400,
            "invalid_request",
        ),
        (
            server.upload("big.txt", vec![b'a'; 3_000_000], &[]).await,
            413,
            "payload_too_large",
        ),
        (
            server
                .send(server.client.post(server.url("/api/v1/jobs")).body("plain"))
                .await,
            400,
            "invalid_request",
        ),
        (
            server
                .send(server.client.delete(server.url("/api/v1/search")))
                .await,
            405,
            "method_not_allowed",
        ),
    ] {
        assert_eq!(resp.status(), status);
        // Checked against the document by `send`; the codes are the ones docs/api.md lists.
        let body: rag_api::ErrorBody = resp.json().await.unwrap();
        assert_eq!(body.code, code, "{}", body.message);
    }

    // Listing, embedding, health, metrics, OpenAPI.
    let list: rag_api::JobList = server.get_json("/api/v1/jobs?status=failed&limit=2").await;
    assert_eq!(list.jobs.len(), 2);
    assert!(list.next_cursor.is_some() && list.jobs.iter().all(|j| j.state == JobState::Failed));
    // `state` is still taken as an alias of `status`.
    let alias: rag_api::JobList = server.get_json("/api/v1/jobs?state=failed&limit=2").await;
    assert_eq!(
        alias.jobs.iter().map(|j| &j.job_id).collect::<Vec<_>>(),
        list.jobs.iter().map(|j| &j.job_id).collect::<Vec<_>>()
    );
    let emb: rag_api::EmbedResponse = server
        .send(
            server
                .client
                .post(server.url("/api/v1/embed"))
                .json(&serde_json::json!({"texts": ["a", "b"]})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!((emb.embeddings.len(), emb.dimensions), (2, 384));
    let health = server
        .send(server.client.get(server.url("/api/v1/health")))
        .await;
    assert_eq!(health.status(), 200);
    let report: rag_api::HealthReport = health.json().await.unwrap();
    assert!(report.checks.iter().all(|c| c.ok), "{report:?}");
    let metrics = server.get_text("/metrics").await;
    assert!(
        metrics.contains("ragnode_jobs_total{outcome=\"failed\"} 6"),
        "{metrics}"
    );
    assert!(metrics.contains("ragnode_index_vectors"));
    let docs: rag_api::DocumentList = server.get_json("/api/v1/documents?limit=3").await;
    assert_eq!(docs.documents.len(), 3);
    assert!(docs.next_cursor.is_some());
    let _: serde_json::Value = server.get_json("/livez").await;
    let _: serde_json::Value = server.get_json("/readyz").await;
    let openapi: serde_json::Value = server.get_json("/api/v1/openapi.json").await;
    assert!(openapi["paths"]["/api/v1/search"]["post"].is_object());
    // The document served is the one `rag-node openapi` prints.
    assert_eq!(
        openapi,
        serde_json::to_value(rag_node::api::openapi_document()).unwrap()
    );

    // The checks have teeth: a schema that drifted from the answers rejects them.
    let job = server
        .send(
            server
                .client
                .get(server.url(&format!("/api/v1/jobs/{}", gw.job_id))),
        )
        .await
        .bytes()
        .await
        .unwrap();
    let json = Some("application/json");
    let check = |spec: &common::openapi::Spec| {
        spec.verify(
            "get",
            &format!("/api/v1/jobs/{}", gw.job_id),
            200,
            json,
            &job,
        )
    };
    assert_eq!(check(&common::openapi::Spec::new(openapi.clone())), Ok(()));
    let mut renamed = openapi.clone();
    let status = &mut renamed["components"]["schemas"]["JobStatus"];
    let state = status["properties"]["status"].take();
    status["properties"]["state"] = state;
    assert!(check(&common::openapi::Spec::new(renamed)).is_err());
    // A field the document does not describe (the check treats objects as closed).
    let mut forgotten = openapi.clone();
    forgotten["components"]["schemas"]["JobStatus"]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("duplicate");
    assert!(check(&common::openapi::Spec::new(forgotten)).is_err());
    let mut narrowed = openapi.clone();
    narrowed["components"]["schemas"]["JobState"]["enum"] = serde_json::json!(["queued"]);
    assert!(check(&common::openapi::Spec::new(narrowed)).is_err());
    let mut undocumented = openapi.clone();
    undocumented["paths"]["/api/v1/jobs/{id}"]["get"]["responses"]
        .as_object_mut()
        .unwrap()
        .remove("200");
    assert!(check(&common::openapi::Spec::new(undocumented)).is_err());

    // Restart: same results.
    server.stop();
    let server = Server::start(&data, &[]).await;
    for (e, before) in corpus::expectations().iter().zip(&results) {
        let mut req = SearchRequest::new(e.query);
        req.k = 5;
        let out = server.search(&req).await;
        let after: Vec<_> = out
            .hits
            .iter()
            .map(|h| (h.document_id.clone(), h.chunk_index))
            .collect();
        assert_eq!(&after, before, "{}", e.query);
    }
    server.stop();
}

/// `kill -9` while a job is being processed: after restart the job is retried and completes,
/// and jobs queued behind it are not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_job_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    let server = Server::start(&data, &[]).await;
    let long: String = (0..400)
        .map(|i| {
            format!(
                "Paragraph {i} describes the maintenance log of turbine number {i} in detail.\n\n"
            )
        })
        .collect();
    let r = server.upload("turbines.txt", long.into_bytes(), &[]).await;
    let big: rag_api::UploadResponse = r.json().await.unwrap();
    let r = server
        .upload(
            "after.txt",
            b"A short note about beekeeping and honey harvests.".to_vec(),
            &[],
        )
        .await;
    let small: rag_api::UploadResponse = r.json().await.unwrap();
    // Wait until the big job is embedding, then kill.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let j = server.job(&big.job_id).await;
        if j.state == JobState::Processing {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline && j.state == JobState::Queued,
            "{j:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();
    let server = Server::start(&data, &[]).await;
    let j = server.wait_job(&big.job_id, Duration::from_secs(600)).await;
    assert_eq!(j.state, JobState::Completed, "{:?}", j.error);
    assert_eq!(j.attempts, 2);
    let s = server
        .wait_job(&small.job_id, Duration::from_secs(120))
        .await;
    assert_eq!(s.state, JobState::Completed);
    let out = server
        .search(&SearchRequest::new("turbine maintenance log"))
        .await;
    assert_eq!(out.hits[0].document_id, j.document_id);
    let report: rag_api::HealthReport = server.get_json("/api/v1/health").await;
    assert_eq!(report.status, "ok", "{report:?}");
    assert_eq!(report.chunks as u32, j.chunks.unwrap() + s.chunks.unwrap());
    server.stop();
}

fn long_document(paragraphs: usize) -> Vec<u8> {
    (0..paragraphs)
        .map(|i| {
            format!(
                "Paragraph {i} describes the maintenance log of turbine number {i} in detail.\n\n"
            )
        })
        .collect::<String>()
        .into_bytes()
}

async fn wait_processing(server: &Server, id: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let j = server.job(id).await;
        if j.state == JobState::Processing {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline && j.state == JobState::Queued,
            "{j:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A job over its time limit fails with `timeout`, and the worker goes on with the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_time_limit_fails_the_job_not_the_node() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("node"), &["--job-timeout-secs", "1"]).await;
    let slow: rag_api::UploadResponse = server
        .upload("long.txt", long_document(4000), &[])
        .await
        .json()
        .await
        .unwrap();
    let quick: rag_api::UploadResponse = server
        .upload("short.txt", b"Bees make honey in summer.".to_vec(), &[])
        .await
        .json()
        .await
        .unwrap();
    let j = server
        .wait_job(&slow.job_id, Duration::from_secs(120))
        .await;
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(j.error.unwrap().code, "timeout");
    assert_eq!(
        server
            .wait_job(&quick.job_id, Duration::from_secs(60))
            .await
            .state,
        JobState::Completed
    );
    server.stop();
}

/// SIGTERM mid-job: the job is requeued without counting an attempt and completes after restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_requeues_the_current_job() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    let server = Server::start(&data, &[]).await;
    let up: rag_api::UploadResponse = server
        .upload("long.txt", long_document(3000), &[])
        .await
        .json()
        .await
        .unwrap();
    wait_processing(&server, &up.job_id).await;
    // Search is served while the worker embeds.
    let out = server
        .search(&SearchRequest::new("turbine maintenance"))
        .await;
    assert_eq!(out.strategy, "exact");
    assert_eq!(server.job(&up.job_id).await.state, JobState::Processing);
    server.stop();
    let server = Server::start(&data, &[]).await;
    let j = server.wait_job(&up.job_id, Duration::from_secs(600)).await;
    assert_eq!(j.state, JobState::Completed, "{:?}", j.error);
    assert_eq!(j.attempts, 1, "an interrupted job is not a failed attempt");
    server.stop();
}

/// The WebSocket streams a job's updates through to completion; bad messages get a JSON error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_streams_job_updates() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("node"), &[]).await;
    let url = format!("{}/api/v1/ws", server.base.replace("http", "ws"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text("not json")).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let spec = server.spec().await;
    let reply: serde_json::Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    spec.check_schema("ErrorBody", &reply);
    let err: rag_api::ErrorBody = serde_json::from_value(reply).unwrap();
    assert_eq!(err.code, "invalid_request");
    let up: rag_api::UploadResponse = server
        .upload(
            "w.txt",
            b"Wind turbines convert kinetic energy.".to_vec(),
            &[],
        )
        .await
        .json()
        .await
        .unwrap();
    let mut states = Vec::new();
    while states.last() != Some(&JobState::Completed) {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("an update")
            .unwrap()
            .unwrap();
        let status: serde_json::Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        spec.check_schema("JobStatus", &status);
        let status: rag_api::JobStatus = serde_json::from_value(status).unwrap();
        assert_eq!(status.job_id, up.job_id);
        if states.last() != Some(&status.state) {
            states.push(status.state);
        }
    }
    assert_eq!(
        states,
        vec![JobState::Queued, JobState::Processing, JobState::Completed]
    );
    server.stop();
}
