//! A hostile client against real `rag-node serve` processes: malformed, oversized, stalled and
//! racing requests. Every one gets a JSON `{code, message}` answer where the server can answer
//! at all, holds nothing once it is answered, and never reaches outside the node's limits. The
//! answers are checked against the OpenAPI document the node serves: the route's schema for its
//! status, or `ErrorBody` for what the HTTP parser refuses before any route.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::redis::RedisServer;
use common::Server;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const API_KEY: &str = "hostile-test-api-key-0123";
const ADMIN_TOKEN: &str = "hostile-test-admin-token-0123";
/// Time-outs of the node under test, short so the suite stays quick.
const HEADER_TIMEOUT_SECS: u64 = 2;
const BODY_IDLE_SECS: u64 = 2;

struct Node {
    server: Server,
    dir: PathBuf,
    root: PathBuf,
}

/// A standalone node with authentication, an import root, and short client time-outs.
async fn node(dir: &Path, extra: &[&str], extra_toml: &str) -> Node {
    let root = dir.join("roots/a");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(dir.join("api-key"), API_KEY).unwrap();
    std::fs::write(dir.join("admin-token"), ADMIN_TOKEN).unwrap();
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "import_roots = [{root:?}]\n{extra_toml}\n[http]\nheader_read_timeout_secs = {HEADER_TIMEOUT_SECS}\nbody_idle_timeout_secs = {BODY_IDLE_SECS}\n"
        ),
    )
    .unwrap();
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let (config, key, admin) = (
        config.to_string_lossy().into_owned(),
        p("api-key"),
        p("admin-token"),
    );
    let mut args = vec![
        "--config",
        config.as_str(),
        "--api-key-file",
        key.as_str(),
        "--admin-token-file",
        admin.as_str(),
    ];
    args.extend_from_slice(extra);
    let server = Server::start_with_key(&dir.join("data"), &args, Some(API_KEY)).await;
    Node {
        server,
        dir: dir.to_owned(),
        root,
    }
}

fn addr(s: &Server) -> String {
    s.base.trim_start_matches("http://").to_owned()
}

/// Sends `request` as raw bytes (while reading, so an answer that comes before the request is
/// all sent is still seen) and returns the status and the body of the answer, whose body must
/// be an `ErrorBody` of the OpenAPI document.
async fn raw(s: &Server, request: Vec<u8>) -> (u16, String) {
    let stream = TcpStream::connect(addr(s)).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        // Keep the write half open: closing it could end the exchange before the answer.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if let Some(body) = complete_body(&got) {
                        return Some(body);
                    }
                }
            }
        }
        None
    })
    .await;
    writer.abort();
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(
        matches!(read, Ok(Some(_))),
        "no complete answer; got {text:?}"
    );
    let status = text[9..12].parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert_eq!(
        header(head, "content-type"),
        Some("application/json"),
        "{text}"
    );
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    s.spec().await.check_schema("ErrorBody", &json);
    (status, body.to_owned())
}

/// The value of header `name` in a raw answer's head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The body of a complete `content-length` answer in `got`.
fn complete_body(got: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(got).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    (body.len() >= len).then(|| body.to_owned())
}

fn error_code(body: &str) -> String {
    let e: rag_api::ErrorBody =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not a JSON error ({e}): {body:?}"));
    assert!(!e.message.is_empty(), "empty message: {body}");
    e.code
}

async fn post_json(s: &Server, path: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
    let r = s
        .send(
            s.client
                .post(s.url(path))
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Uploads `text` and waits until its job completed.
async fn ingest(s: &Server, name: &str, text: &str) -> rag_api::UploadResponse {
    let r = s.upload(name, text.as_bytes().to_vec(), &[]).await;
    assert_eq!(r.status(), 202);
    let up: rag_api::UploadResponse = r.json().await.unwrap();
    let job = s.wait_job(&up.job_id, Duration::from_secs(60)).await;
    assert_eq!(job.state, rag_api::JobState::Completed, "{:?}", job.error);
    up
}

fn files_named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_named(&p, prefix));
            } else if e.file_name().to_string_lossy().starts_with(prefix) {
                out.push(p);
            }
        }
    }
    out
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Malformed and mistyped requests: one error contract (400 `invalid_request`, JSON) whatever
/// layer refuses them, the documented JSON limit at its boundary, the auth scheme in any case,
/// and answers for what hyper itself refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_one_json_error_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let n = node(tmp.path(), &[], "").await;
    let s = &n.server;

    // Mistyped and malformed JSON bodies: 400 invalid_request, never 422.
    let search_bodies = [
        r#"{"query":"x","k":-1}"#,
        r#"{"query":"x","k":"5"}"#,
        r#"{"query":"x","k":0}"#,
        r#"{"query":"x","k":1.5}"#,
        r#"{}"#,
        r#"{"query":null}"#,
        r#"{"query":"x","filter":{"nope":1}}"#,
        r#"{"query":"x","filter":{"document_ids":"a"}}"#,
        r#"{"query":"x","bogus":true}"#,
        r#"{"query":"x","diversity":"high"}"#,
        r#"[]"#,
        r#"not json"#,
        r#"{"query":"#,
        "",
    ];
    for body in search_bodies {
        let (status, text) = post_json(s, "/api/v1/search", body).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert_eq!(error_code(&text), "invalid_request", "{body}");
    }
    for (path, body) in [
        ("/api/v1/embed", r#"{"texts":"a"}"#),
        ("/api/v1/embed", r#"{"texts":[1]}"#),
        ("/api/v1/jobs/import", r#"{"path":5}"#),
        ("/api/v1/jobs/import", r#"{"path":"/x","extra":1}"#),
    ] {
        let (status, text) = post_json(s, path, body).await;
        assert_eq!(status, 400, "{path} {body}: {text}");
        assert_eq!(error_code(&text), "invalid_request");
    }
    for q in ["limit=abc", "limit=-1", "bogus=1", "limit=0"] {
        let r = s
            .send(s.client.get(s.url(&format!("/api/v1/jobs?{q}"))))
            .await;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, 400, "{q}: {text}");
        assert_eq!(error_code(&text), "invalid_request");
    }
    // No content type: a clear 415, still JSON.
    let r = s
        .send(
            s.client
                .post(s.url("/api/v1/search"))
                .body(r#"{"query":"x"}"#),
        )
        .await;
    assert_eq!(r.status(), 415);
    assert_eq!(
        error_code(&r.text().await.unwrap()),
        "unsupported_media_type"
    );

    // The JSON limit documented in docs/api.md (4 MiB) is the real one: a body of exactly the
    // limit is read (and refused for its content), one byte more is refused for its size.
    let limit = 4 << 20;
    let body = |len: usize| format!(r#"{{"query":"{}"}}"#, "a".repeat(len - 12));
    assert_eq!(body(limit).len(), limit);
    let (status, text) = post_json(s, "/api/v1/search", body(limit)).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("16 KiB"), "{text}");
    let (status, text) = post_json(s, "/api/v1/search", body(limit + 1)).await;
    assert_eq!(status, 413, "{text}");
    assert_eq!(error_code(&text), "payload_too_large");

    // Authentication: the scheme in any case; a wrong key is a JSON 401.
    let plain = reqwest::Client::new();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = s
            .send(
                plain
                    .get(s.url("/api/v1/jobs"))
                    .header("authorization", format!("{scheme} {API_KEY}")),
            )
            .await;
        assert_eq!(r.status(), 200, "{scheme}");
    }
    for auth in [
        format!("Bearer {API_KEY}x"),
        format!("Basic {API_KEY}"),
        "Bearer".into(),
    ] {
        let r = s
            .send(
                plain
                    .get(s.url("/api/v1/jobs"))
                    .header("authorization", auth.clone()),
            )
            .await;
        assert_eq!(r.status(), 401, "{auth}");
        assert_eq!(error_code(&r.text().await.unwrap()), "unauthorized");
    }

    // What hyper refuses before any handler runs: still a JSON error.
    let auth = format!("authorization: Bearer {API_KEY}\r\n");
    let huge_header = format!(
        "GET /api/v1/jobs HTTP/1.1\r\nhost: x\r\n{auth}x-big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let many_headers = format!(
        "GET /api/v1/jobs HTTP/1.1\r\nhost: x\r\n{auth}{}\r\n",
        (0..200)
            .map(|i| format!("x-h{i}: v\r\n"))
            .collect::<String>()
    );
    let conflicting = format!(
        "POST /api/v1/search HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\ncontent-length: 13\r\ncontent-length: 14\r\n\r\n{{\"query\":\"x\"}}"
    );
    // The start of a TLS ClientHello, as a client configured for https:// sends it.
    let mut tls = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    tls.extend((0..64u8).map(|i| i.wrapping_mul(37)));
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "1 MiB header",
            huge_header.into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "200 headers",
            many_headers.into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "conflicting content-length",
            conflicting.into_bytes(),
            400,
            "invalid_request",
        ),
        ("TLS to the plain port", tls, 400, "invalid_request"),
        (
            "garbage request line",
            b"\x00\x01\x02 / HTTP/1.1\r\n\r\n".to_vec(),
            400,
            "invalid_request",
        ),
    ];
    for (what, request, want, code) in cases {
        let (status, body) = raw(s, request).await;
        assert_eq!(status, want, "{what}: {body}");
        assert_eq!(error_code(&body), code, "{what}");
    }
    // And the node still serves.
    let r = s.send(s.client.get(s.url("/livez"))).await;
    assert_eq!(r.status(), 200);
}

/// Uploads: one file per form, every text field capped while it streams (memory stays flat
/// under huge fields), a stalled upload aborted and its spool file removed, deletes of what
/// does not exist refused before the index log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_capped_and_stalled_clients_hold_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let n = node(tmp.path(), &[], "").await;
    let s = &n.server;
    let pid = s.child.id();

    // Two `file` parts: refused, not "last one wins".
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"one".to_vec()).file_name("a.txt"),
        )
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"two".to_vec()).file_name("b.txt"),
        );
    let r = s
        .send(s.client.post(s.url("/api/v1/jobs")).multipart(form))
        .await;
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert_eq!(error_code(&text), "invalid_request");
    assert!(text.contains("more than one \\\"file\\\""), "{text}");
    let r = s
        .upload(
            "a.txt",
            b"x".to_vec(),
            &[("document_id", "a"), ("document_id", "b")],
        )
        .await;
    assert_eq!(r.status(), 400);

    // Oversized text fields: refused as they pass their cap.
    let r = s
        .upload(
            "a.txt",
            b"x".to_vec(),
            &[("document_id", &"d".repeat(5000))],
        )
        .await;
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(&r.text().await.unwrap()), "field_too_large");
    let before = rss_kib(pid);
    let big = Arc::new(format!("{{\"k\":\"{}\"}}", "m".repeat(95_000_000)));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (client, url, big) = (s.client.clone(), s.url("/api/v1/jobs"), big.clone());
        tasks.push(tokio::spawn(async move {
            let form = reqwest::multipart::Form::new()
                .text("metadata", big.as_str().to_owned())
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(b"x".to_vec()).file_name("a.txt"),
                );
            let r = client.post(url).multipart(form).send().await.unwrap();
            let json = r.headers()["content-type"] == "application/json";
            (r.status().as_u16(), json, r.text().await.unwrap())
        }));
    }
    for t in tasks {
        let (status, json, text) = t.await.unwrap();
        let json = json.then_some("application/json");
        s.check("post", "/api/v1/jobs", status, json, text.as_bytes())
            .await;
        assert_eq!(status, 413, "{text}");
        assert_eq!(error_code(&text), "field_too_large");
    }
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "four 95 MB metadata fields grew the node by {grown} KiB"
    );

    // Stalled uploads: each is answered 408 once it has sent nothing for the idle time-out,
    // and its spool file and connection are released.
    let fds_before = open_fds(pid);
    let head = format!(
        "POST /api/v1/jobs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {API_KEY}\r\ncontent-type: multipart/form-data; boundary=XyZ\r\ncontent-length: 5000000\r\n\r\n--XyZ\r\ncontent-disposition: form-data; name=\"file\"; filename=\"stall.txt\"\r\n\r\nabc"
    );
    let stalled: Vec<_> = (0..40)
        .map(|_| {
            let (addr, head) = (addr(s), head.clone());
            tokio::spawn(async move {
                let mut c = TcpStream::connect(addr).await.unwrap();
                c.write_all(head.as_bytes()).await.unwrap();
                let mut got = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut got)).await;
                String::from_utf8_lossy(&got).into_owned()
            })
        })
        .collect();
    // While they stall, their spool files exist…
    tokio::time::sleep(Duration::from_millis(BODY_IDLE_SECS * 1000 / 2)).await;
    assert!(
        !files_named(&n.dir, ".spool-").is_empty(),
        "the stalled uploads were never spooled"
    );
    for t in stalled {
        let got = t.await.unwrap();
        assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
        let (head, body) = got.split_once("\r\n\r\n").unwrap();
        let content_type = header(head, "content-type");
        s.check("post", "/api/v1/jobs", 408, content_type, body.as_bytes())
            .await;
        assert_eq!(error_code(body), "upload_stalled");
    }
    // …and once answered nothing is left of them.
    assert_eq!(files_named(&n.dir, ".spool-"), Vec::<PathBuf>::new());
    let fds_after = open_fds(pid);
    assert!(
        fds_after <= fds_before + 2,
        "file descriptors {fds_before} before the stalled uploads, {fds_after} after"
    );

    // Deletes: an invalid id is refused as such, an unknown one is not found.
    let admin = reqwest::Client::new();
    let delete = |id: String| {
        s.send(
            admin
                .delete(s.url(&format!("/api/v1/documents/{id}")))
                .bearer_auth(ADMIN_TOKEN),
        )
    };
    let r = delete("no-such-doc".into()).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(&r.text().await.unwrap()), "not_found");
    let r = delete("x".repeat(10_000)).await;
    assert_eq!(r.status(), 400);
    // The API key where the admin token is needed.
    let r = s
        .send(s.client.delete(s.url("/api/v1/documents/no-such-doc")))
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(&r.text().await.unwrap()), "forbidden");

    // The clean case still works after all this.
    ingest(s, "clean.md", "# Tides\n\nThe moon pulls the oceans.").await;
}

/// Slow clients: a head sent a byte at a time, and an idle keep-alive connection, are both
/// closed by the server after the header-read time-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let n = node(tmp.path(), &[], "").await;
    let s = &n.server;

    let c = TcpStream::connect(addr(s)).await.unwrap();
    let (mut rd, mut wr) = c.into_split();
    let trickle = tokio::spawn(async move {
        let head = b"GET /livez HTTP/1.1\r\nhost: x\r\nx-slow: ";
        for b in head.iter().chain(std::iter::repeat(&b'a')).take(200) {
            if wr.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    });
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(
        Duration::from_secs(HEADER_TIMEOUT_SECS * 5),
        rd.read_to_end(&mut sink),
    )
    .await;
    assert!(
        closed.is_ok(),
        "a head trickling in a byte at a time kept its connection open"
    );
    trickle.abort();

    let mut c = TcpStream::connect(addr(s)).await.unwrap();
    c.write_all(b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while complete_body(&got).is_none() {
        let k = c.read(&mut buf).await.unwrap();
        assert!(k > 0, "closed before answering");
        got.extend_from_slice(&buf[..k]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    let closed = tokio::time::timeout(
        Duration::from_secs(HEADER_TIMEOUT_SECS * 5),
        c.read(&mut buf),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "an idle keep-alive connection stayed open"
    );
}

fn swap(a: &Path, b: &Path) {
    let (a, b) = (
        CString::new(a.as_os_str().as_bytes()).unwrap(),
        CString::new(b.as_os_str().as_bytes()).unwrap(),
    );
    // SAFETY: both paths are NUL-terminated and live through the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(rc, 0, "renameat2: {}", std::io::Error::last_os_error());
}

/// The import route: one answer for every path outside the roots, a FIFO refused at once, and
/// a directory swapped with a link to the outside, over and over while imports run, never
/// yields the outside file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_never_leave_their_roots() {
    let tmp = tempfile::tempdir().unwrap();
    let n = node(tmp.path(), &[], "").await;
    let s = &n.server;
    let import = |path: String| async move {
        let r = s
            .send(
                s.client
                    .post(s.url("/api/v1/jobs/import"))
                    .json(&serde_json::json!({ "path": path })),
            )
            .await;
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    };
    let outside = n.dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let secret = b"the outside secret: zebra-4242";
    std::fs::write(outside.join("f.txt"), secret).unwrap();

    // Outside the roots, existing or not: the same 403.
    for p in [
        "/etc/shadow".to_string(),
        "/etc/no-such-file".into(),
        outside.join("f.txt").to_string_lossy().into_owned(),
        outside.join("missing.txt").to_string_lossy().into_owned(),
        n.root
            .join("../../outside/f.txt")
            .to_string_lossy()
            .into_owned(),
        n.root
            .join("../../outside/missing.txt")
            .to_string_lossy()
            .into_owned(),
        "relative/path.txt".into(),
    ] {
        let (status, text) = import(p.clone()).await;
        assert_eq!(
            (status, error_code(&text).as_str()),
            (403, "path_not_allowed"),
            "{p}: {text}"
        );
    }
    let (status, text) = import(n.root.join("missing.txt").to_string_lossy().into_owned()).await;
    assert_eq!(
        (status, error_code(&text).as_str()),
        (404, "not_found"),
        "{text}"
    );

    // A FIFO is refused at once (the client would give up after 60 s).
    let fifo = n.root.join("pipe");
    let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let (status, text) = import(fifo.to_string_lossy().into_owned()).await;
    assert_eq!(
        (status, error_code(&text).as_str()),
        (400, "not_a_file"),
        "{text}"
    );

    // The swap race.
    std::fs::create_dir_all(n.root.join("d")).unwrap();
    std::fs::write(n.root.join("d/f.txt"), "inside the root").unwrap();
    std::os::unix::fs::symlink(&outside, n.root.join("l")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, a, b) = (stop.clone(), n.root.join("d"), n.root.join("l"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                swap(&a, &b);
            }
        })
    };
    let outside_id = format!("doc-{}", &hex::encode(Sha256::digest(secret))[..24]);
    let target = n.root.join("d/f.txt").to_string_lossy().into_owned();
    let mut accepted = 0;
    for _ in 0..150 {
        let (status, text) = import(target.clone()).await;
        match status {
            202 => {
                let up: rag_api::UploadResponse = serde_json::from_str(&text).unwrap();
                assert_ne!(
                    up.document_id, outside_id,
                    "an import read the file outside the root"
                );
                accepted += 1;
            }
            403 | 404 => {}
            _ => panic!("unexpected {status}: {text}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(accepted > 0, "no import got through between swaps");
    let docs: rag_api::DocumentList = s.get_json("/api/v1/documents").await;
    assert!(docs.documents.iter().all(|d| d.document_id != outside_id));
}

/// Redis stopped with SIGSTOP (connections accepted, never answered): the probe still says
/// ready (degraded) within its bound, searches answer from the local index, uploads and job
/// lookups get a fast 503, and everything works again once Redis does. Deletes of documents
/// that do not exist never reach the index log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_leaves_probes_and_search_answering() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(&tmp.path().join("redis"));
    let url = redis.url();
    let n = node(
        tmp.path(),
        &[
            "--redis-url",
            &url,
            "--cluster",
            "hostile",
            "--node-id",
            "n1",
        ],
        "",
    )
    .await;
    let s = &n.server;
    let up = ingest(
        s,
        "tides.md",
        "# Tides\n\nThe moon pulls the oceans twice a day.",
    )
    .await;

    // Deletes that change nothing stay out of the replicated log.
    let log_key = rag_api::cluster::Keys::new("hostile").index_log();
    let log_len = || redis.cli(&["XLEN", &log_key]);
    let before = log_len();
    let admin = reqwest::Client::new();
    for id in [
        "missing-1".to_string(),
        "missing-2".into(),
        "x".repeat(10_000),
    ] {
        let r = s
            .send(
                admin
                    .delete(s.url(&format!("/api/v1/documents/{id}")))
                    .bearer_auth(ADMIN_TOKEN),
            )
            .await;
        assert!(matches!(r.status().as_u16(), 400 | 404), "{}", r.status());
    }
    assert_eq!(
        log_len(),
        before,
        "deletes of unknown documents reached the index log"
    );

    redis.signal("STOP");
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {API_KEY}").parse().unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    for _ in 0..5 {
        // (A time-out panics in `send`: /readyz must answer within 1 s.)
        let r = s.send(quick.get(s.url("/readyz"))).await;
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["status"], "ready");
        assert!(v["degraded"].is_string(), "{v}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let hits = s
        .search(&rag_api::SearchRequest::new("what pulls the oceans"))
        .await;
    assert_eq!(hits.hits[0].document_id, up.document_id);
    let fast = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    for _ in 0..3 {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(b"new".to_vec()).file_name("n.txt"),
        );
        // (A time-out panics in `send`: the upload must be answered within 2 s.)
        let r = s
            .send(
                fast.post(s.url("/api/v1/jobs"))
                    .bearer_auth(API_KEY)
                    .multipart(form),
            )
            .await;
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        assert_eq!(error_code(&r.text().await.unwrap()), "queue_unavailable");
        let r = s
            .send(
                fast.get(s.url(&format!("/api/v1/jobs/{}", up.job_id)))
                    .bearer_auth(API_KEY),
            )
            .await;
        assert_eq!(r.status(), 503);
    }

    redis.signal("CONT");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v: serde_json::Value = s.get_json("/readyz").await;
        if v.get("degraded").is_none() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still degraded: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ingest(s, "after.md", "# After\n\nRedis is back.").await;
}
