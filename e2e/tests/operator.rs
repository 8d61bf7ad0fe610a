//! The operator on a real Kubernetes with real pods: Helm install → RagCluster with managed
//! Redis → IngestJob with real documents → search through the client Service → `kubectl
//! scale` 1→3 (every pod answers the same) → a pod deleted mid-ingest (the job still
//! succeeds) → 3→2 → backups on request to S3 (moto) with retention → delete the RagCluster
//! (everything it owned is gone) → recreate it on the same backups (the new nodes restore the
//! newest snapshot, serve every document and take new ones).
//!
//! Needs `KUBECONFIG` and the image tags; `e2e/run.sh` brings up the cluster of
//! docs/e2e-cluster.md, builds the images and runs this.

use std::collections::BTreeMap;
use std::future::Future;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::Client;
use rag_api::cluster::{Keys, NodeHeartbeat};
use rag_api::SearchRequest;
use rag_operator::crd::{ClusterPhase, IngestJob, IngestPhase, RagCluster};

const OPERATOR_NS: &str = "rag-system";
const NS: &str = "rag-e2e";

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the e2e suite with e2e/run.sh"))
}

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kubectl(args: &[&str]) -> String {
    run(Command::new("kubectl").args(args))
}

fn helm(args: &[&str]) -> String {
    let python = format!("{}/.cache/rag-node/venv-helm/bin/python", env("HOME"));
    run(Command::new(python)
        .arg(root().join("e2e/helm.py"))
        .args(args))
}

/// Polls `f` until it returns `Some`, or fails the test with `what` after `secs`.
async fn wait_for<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            let describe = Command::new("kubectl")
                .args([
                    "-n",
                    NS,
                    "get",
                    "ragclusters,ingestjobs,pods,statefulsets",
                    "-o",
                    "wide",
                ])
                .output();
            let state = describe
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            panic!("timed out after {secs}s waiting for {what}\n{state}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn image(var: &str) -> (String, String) {
    let full = env(var);
    let (repo, tag) = full.rsplit_once(':').expect("NAME:TAG");
    (repo.to_owned(), tag.to_owned())
}

async fn secret_value(client: &Client, name: &str, key: &str) -> String {
    let s = Api::<Secret>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .unwrap();
    String::from_utf8(s.data.unwrap()[key].0.clone()).unwrap()
}

fn node_client(base: String, api_key: &str) -> rag_client::Client {
    rag_client::Client::builder(base)
        .api_key(api_key)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn cluster(client: &Client) -> RagCluster {
    Api::<RagCluster>::namespaced(client.clone(), NS)
        .get("docs")
        .await
        .unwrap()
}

async fn ready_pods(client: &Client) -> Vec<Pod> {
    let pods = Api::<Pod>::namespaced(client.clone(), NS)
        .list(
            &ListParams::default()
                .labels("app.kubernetes.io/instance=docs,app.kubernetes.io/component=node"),
        )
        .await
        .unwrap();
    pods.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect()
}

/// Waits until the RagCluster reports `n` ready nodes and runs, and the StatefulSet agrees.
async fn wait_ready(client: &Client, n: i32, secs: u64) {
    wait_for(
        &format!("RagCluster with {n} ready nodes"),
        secs,
        || async {
            let rc = cluster(client).await;
            let st = rc.status.unwrap_or_default();
            let pods = ready_pods(client).await.len() as i32;
            (st.ready_replicas == n
                && st.replicas == n
                && st.phase == ClusterPhase::Running
                && pods == n)
                .then_some(())
        },
    )
    .await;
}

async fn wait_job(client: &Client, name: &str, secs: u64) -> IngestJob {
    let api = Api::<IngestJob>::namespaced(client.clone(), NS);
    wait_for(&format!("IngestJob {name} to finish"), secs, || async {
        let j = api.get(name).await.unwrap();
        j.status
            .as_ref()
            .is_some_and(|s| s.phase.is_finished())
            .then_some(j)
    })
    .await
}

/// The top hit's document id for `query` on every ready pod, once all pods have applied
/// `documents` documents.
async fn answers_of_every_pod(
    client: &Client,
    api_key: &str,
    query: &str,
    documents: usize,
) -> Vec<String> {
    let pods = ready_pods(client).await;
    let mut out = Vec::new();
    for p in pods {
        let ip = p.status.unwrap().pod_ip.unwrap();
        let c = node_client(format!("http://{ip}:8080"), api_key);
        let name = p.metadata.name.unwrap();
        let top = wait_for(
            &format!("{name} to have {documents} documents"),
            120,
            || async {
                let docs = c.documents(None, 1000).await.ok()?;
                if docs.documents.len() != documents {
                    return None;
                }
                let hits = c.search(&SearchRequest::new(query)).await.ok()?;
                hits.hits.first().map(|h| h.document_id.clone())
            },
        )
        .await;
        out.push(top);
    }
    out
}

fn heartbeats(redis_url: &str) -> Vec<NodeHeartbeat> {
    let keys = Keys::new(&format!("{NS}.docs"));
    let Ok(client) = redis::Client::open(redis_url) else {
        return vec![];
    };
    let Ok(mut c) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
        return vec![];
    };
    let ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.nodes())
        .query(&mut c)
        .unwrap_or_default();
    ids.iter()
        .filter_map(|id| {
            redis::cmd("GET")
                .arg(keys.node(id))
                .query::<Option<String>>(&mut c)
                .ok()
                .flatten()
        })
        .filter_map(|raw| serde_json::from_str(&raw).ok())
        .collect()
}

/// moto's S3 server, listening where the pods reach this host (the API server's address).
struct S3 {
    child: std::process::Child,
    endpoint: String,
}

impl S3 {
    fn start() -> S3 {
        let host = std::env::var("RAG_E2E_S3_HOST").unwrap_or_else(|_| {
            kubectl(&[
                "get",
                "endpoints",
                "kubernetes",
                "-n",
                "default",
                "-o",
                "jsonpath={.subsets[0].addresses[0].ip}",
            ])
        });
        let port = std::net::TcpListener::bind((host.as_str(), 0))
            .unwrap_or_else(|e| panic!("binding {host}: {e}"))
            .local_addr()
            .unwrap()
            .port();
        let bin = format!("{}/.cache/rag-node/venv-moto/bin/moto_server", env("HOME"));
        let child = Command::new(&bin)
            .args(["-H", &host, "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin} (scripts/setup-moto.sh installs it): {e}"));
        let s3 = S3 {
            child,
            endpoint: format!("http://{host}:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !Command::new("curl")
            .args(["-sf", "-o", "/dev/null", &s3.endpoint])
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        s3
    }

    fn create_bucket(&self, bucket: &str) {
        run(Command::new("curl").args([
            "-sf",
            "-X",
            "PUT",
            &format!("{}/{bucket}", self.endpoint),
        ]));
    }

    /// Ids of the complete snapshots under `bucket/prefix/` (those with a manifest), sorted.
    fn snapshot_ids(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let xml = run(Command::new("curl").args([
            "-sf",
            &format!("{}/{bucket}?list-type=2&prefix={prefix}/", self.endpoint),
        ]));
        let mut ids: Vec<String> = xml
            .split("<Key>")
            .skip(1)
            .filter_map(|k| k.split("</Key>").next())
            .filter_map(|k| k.strip_prefix(&format!("{prefix}/")))
            .filter_map(|k| k.strip_suffix("/manifest.json"))
            .map(str::to_owned)
            .collect();
        ids.sort();
        ids
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn long_text(topic: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("Paragraph {i} about {topic}: the {topic} record number {i} describes measurements, observations and notes taken in season {i} by the survey team, with remarks on method and error."))
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_end_to_end() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default().await.expect("KUBECONFIG");
    let (op_repo, op_tag) = image("OPERATOR_IMAGE");

    // A clean slate: no release, no CRDs (Helm installs them), no test namespace. Objects an
    // earlier failed run left behind keep their finalizers with no operator to run them.
    helm(&["uninstall", "rag-operator", OPERATOR_NS]);
    for kind in ["ragclusters.rag.ragnode.dev", "ingestjobs.rag.ragnode.dev"] {
        let names = Command::new("kubectl")
            .args(["-n", NS, "get", kind, "-o", "name"])
            .output();
        for name in names
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .lines()
        {
            let _ = Command::new("kubectl")
                .args([
                    "-n",
                    NS,
                    "patch",
                    name,
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                ])
                .output();
        }
    }
    let _ = Command::new("kubectl")
        .args([
            "delete",
            "namespace",
            NS,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=180s",
        ])
        .output();
    let _ = Command::new("kubectl")
        .args([
            "delete",
            "-f",
            root().join("crds/crds.yaml").to_str().unwrap(),
            "--ignore-not-found",
            "--wait=true",
            "--timeout=60s",
        ])
        .output();

    // 1. The operator, installed by real Helm from charts/ (CRDs, RBAC, Deployment).
    helm(&["lint", root().join("charts/rag-operator").to_str().unwrap()]);
    let values = serde_json::json!({
        "image": {"repository": op_repo, "tag": op_tag, "pullPolicy": "IfNotPresent"},
        "nodeImage": env("NODE_IMAGE"),
        "redisImage": env("REDIS_IMAGE"),
        "addressServicesBy": "cluster-ip",
        "logLevel": "info,rag_operator=debug",
    });
    helm(&[
        "install",
        root().join("charts/rag-operator").to_str().unwrap(),
        "rag-operator",
        OPERATOR_NS,
        &values.to_string(),
    ]);
    let deploys = Api::<Deployment>::namespaced(client.clone(), OPERATOR_NS);
    wait_for("2 ready operator replicas", 120, || async {
        let d = deploys.get("rag-operator").await.ok()?;
        (d.status?.ready_replicas? == 2).then_some(())
    })
    .await;
    // One of them leads.
    let leases = Api::<Lease>::namespaced(client.clone(), OPERATOR_NS);
    let holder = wait_for("the leader lease", 60, || async {
        leases
            .get("rag-operator-leader")
            .await
            .ok()?
            .spec?
            .holder_identity
    })
    .await;
    assert!(
        holder.starts_with("rag-operator-"),
        "lease held by {holder}"
    );

    // 2. A RagCluster with managed Redis, backed up to S3 (moto on this host).
    let s3 = S3::start();
    s3.create_bucket("rag-e2e");
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(NS.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // A volume of team files the nodes mount read-only (IngestJob `path` sources).
    let src_dir =
        std::path::PathBuf::from(env("HOME")).join(".cache/rag-node/e2e-cluster/volumes/e2e-src");
    let _ = std::fs::remove_dir_all(&src_dir);
    std::fs::create_dir_all(src_dir.join("handbook")).unwrap();
    std::fs::write(
        src_dir.join("handbook/travel.md"),
        "# Travel policy\n\nTravel expense reports must be filed within thirty days of the trip, with the receipts of hotels, trains and flights attached.\n",
    )
    .unwrap();
    let _ = Command::new("kubectl")
        .args([
            "delete",
            "pv",
            "rag-e2e-src",
            "--ignore-not-found",
            "--wait=true",
            "--timeout=60s",
        ])
        .output();
    let pv = format!(
        r#"{{"apiVersion":"v1","kind":"PersistentVolume","metadata":{{"name":"rag-e2e-src"}},
        "spec":{{"capacity":{{"storage":"1Gi"}},"accessModes":["ReadWriteOnce"],"persistentVolumeReclaimPolicy":"Retain",
        "storageClassName":"e2e-src","hostPath":{{"path":"{}","type":"Directory"}}}}}}"#,
        src_dir.display()
    );
    let pvc = format!(
        r#"{{"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{{"name":"team-files","namespace":"{NS}"}},
        "spec":{{"accessModes":["ReadWriteOnce"],"storageClassName":"e2e-src","volumeName":"rag-e2e-src","resources":{{"requests":{{"storage":"1Gi"}}}}}}}}"#
    );
    for obj in [pv, pvc] {
        let mut child = Command::new("kubectl")
            .args(["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), obj.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
    }

    Api::<Secret>::namespaced(client.clone(), NS)
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("s3-creds".into()),
                    ..Default::default()
                },
                string_data: Some(BTreeMap::from([
                    ("AWS_ACCESS_KEY_ID".to_owned(), "e2e".to_owned()),
                    ("AWS_SECRET_ACCESS_KEY".to_owned(), "e2e-secret".to_owned()),
                ])),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let cluster_spec = |replicas: i32| -> RagCluster {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "rag.ragnode.dev/v1alpha1", "kind": "RagCluster",
            "metadata": {"name": "docs", "namespace": NS},
            "spec": {
                "replicas": replicas,
                "storage": {"size": "1Gi"},
                "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
                "redis": {"managed": {"storage": {"size": "1Gi"}}},
                "sourceVolumes": [{"name": "shared", "persistentVolumeClaim": "team-files"}],
                "backup": {
                    "target": "s3://rag-e2e/docs", "keep": 2,
                    "s3": {"endpoint": s3.endpoint, "allowHttp": true, "region": "us-east-1", "credentialsSecret": "s3-creds"},
                },
            }
        }))
        .unwrap()
    };
    let rc = cluster_spec(1);
    let clusters = Api::<RagCluster>::namespaced(client.clone(), NS);
    clusters.create(&PostParams::default(), &rc).await.unwrap();
    wait_ready(&client, 1, 300).await;
    eprintln!("RagCluster running");
    let rc = cluster(&client).await;
    let st = rc.status.clone().unwrap();
    for (t, status) in [
        ("Available", "True"),
        ("Progressing", "False"),
        ("Degraded", "False"),
    ] {
        assert!(
            st.conditions
                .iter()
                .any(|c| c.type_ == t && c.status == status),
            "{t}: {:?}",
            st.conditions
        );
    }
    // The node's heartbeat reaches the status within a resync or two.
    wait_for(
        "the node's heartbeat in the RagCluster status",
        60,
        || async {
            let st = cluster(&client).await.status?;
            (st.live_nodes == 1 && st.documents == 0).then_some(())
        },
    )
    .await;
    let sts = Api::<StatefulSet>::namespaced(client.clone(), NS)
        .get("docs")
        .await
        .unwrap();
    let pod_spec = sts.spec.template.spec.unwrap();
    assert_eq!(
        pod_spec.security_context.unwrap().run_as_non_root,
        Some(true)
    );
    let api_key = secret_value(&client, "docs-auth", "api-key").await;
    let endpoint = st.endpoint.clone().unwrap();

    // Authentication is on: no key, no search.
    let anonymous = rag_client::Client::builder(endpoint.clone())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert!(matches!(
        anonymous.search(&SearchRequest::new("x")).await,
        Err(rag_client::Error::Api { status: 401, .. })
    ));

    // 3. An IngestJob with real documents: a PDF in a ConfigMap, Markdown in a ConfigMap,
    // text in a Secret, inline text.
    let pdf = std::fs::read("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf")
        .expect("shared-mime-info PDF (installed by the test command)");
    let cms = Api::<ConfigMap>::namespaced(client.clone(), NS);
    cms.create(&PostParams::default(), &ConfigMap {
        metadata: ObjectMeta { name: Some("library".into()), ..Default::default() },
        binary_data: Some(BTreeMap::from([("spec.pdf".to_owned(), ByteString(pdf))])),
        data: Some(BTreeMap::from([("birds.md".to_owned(),
            "# Birds\n\n## Migration\n\nMigratory birds fly south in autumn, following coastlines and mountain ridges to warmer wintering grounds.\n".to_owned())])),
        ..Default::default()
    }).await.unwrap();
    Api::<Secret>::namespaced(client.clone(), NS).create(&PostParams::default(), &Secret {
        metadata: ObjectMeta { name: Some("private-notes".into()), ..Default::default() },
        string_data: Some(BTreeMap::from([("bread.txt".to_owned(),
            "Sourdough bread rises because wild yeast and lactic acid bacteria ferment the dough overnight.".to_owned())])),
        ..Default::default()
    }).await.unwrap();
    let jobs = Api::<IngestJob>::namespaced(client.clone(), NS);
    let job: IngestJob = serde_json::from_value(serde_json::json!({
        "apiVersion": "rag.ragnode.dev/v1alpha1", "kind": "IngestJob",
        "metadata": {"name": "library", "namespace": NS},
        "spec": {
            "clusterRef": "docs",
            "metadata": {"collection": "library"},
            "sources": [
                {"name": "mime-spec", "configMapKeyRef": {"name": "library", "key": "spec.pdf"}},
                {"name": "birds", "configMapKeyRef": {"name": "library", "key": "birds.md"}},
                {"name": "bread", "secretKeyRef": {"name": "private-notes", "key": "bread.txt"}},
                {"name": "glaciers", "inline": "Glaciers carve U-shaped valleys as the moving ice grinds the bedrock beneath it."},
                {"name": "travel", "path": {"volume": "shared", "path": "handbook/travel.md"}},
            ]
        }
    }))
    .unwrap();
    jobs.create(&PostParams::default(), &job).await.unwrap();
    let done = wait_job(&client, "library", 300).await;
    let st = done.status.unwrap();
    assert_eq!(st.phase, IngestPhase::Succeeded, "{:?}", st.documents);
    assert_eq!((st.documents_succeeded, st.documents_failed), (5, 0));
    assert!(st.chunks >= 4, "chunks {}", st.chunks);
    assert!(st
        .conditions
        .iter()
        .any(|c| c.type_ == "Complete" && c.status == "True"));

    // 4. Search through the client Service.
    let svc = node_client(endpoint.clone(), &api_key);
    for (query, doc) in [
        (
            "shared MIME-info database specification for file type detection",
            "mime-spec",
        ),
        ("migratory birds flying south in autumn", "birds"),
        ("why does sourdough rise", "bread"),
        ("how do glaciers shape valleys", "glaciers"),
        ("deadline for travel expense reports", "travel"),
    ] {
        let hits = svc.search(&SearchRequest::new(query)).await.unwrap();
        assert_eq!(
            hits.hits[0].document_id,
            doc,
            "{query}: {:?}",
            hits.hits.iter().map(|h| &h.document_id).collect::<Vec<_>>()
        );
        assert_eq!(hits.hits[0].metadata["collection"], "library");
    }

    // An invalid IngestJob gets a condition, not a crash loop; a missing cluster waits.
    let bad: IngestJob = serde_json::from_value(serde_json::json!({
        "apiVersion": "rag.ragnode.dev/v1alpha1", "kind": "IngestJob",
        "metadata": {"name": "bad", "namespace": NS},
        "spec": {"clusterRef": "docs", "sources": [{"name": "x"}]}
    }))
    .unwrap();
    jobs.create(&PostParams::default(), &bad).await.unwrap();
    let orphan: IngestJob = serde_json::from_value(serde_json::json!({
        "apiVersion": "rag.ragnode.dev/v1alpha1", "kind": "IngestJob",
        "metadata": {"name": "orphan", "namespace": NS},
        "spec": {"clusterRef": "nope", "sources": [{"name": "x", "inline": "y"}]}
    }))
    .unwrap();
    jobs.create(&PostParams::default(), &orphan).await.unwrap();
    let reason = |j: &IngestJob| {
        j.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "Accepted")
                .map(|c| (s.phase, c.reason.clone()))
        })
    };
    let bad = wait_for("the invalid IngestJob's condition", 60, || async {
        reason(&jobs.get("bad").await.ok()?)
    })
    .await;
    assert_eq!(bad, (IngestPhase::Failed, "InvalidSpec".to_owned()));
    let orphan = wait_for("the orphan IngestJob's condition", 60, || async {
        reason(&jobs.get("orphan").await.ok()?)
    })
    .await;
    assert_eq!(orphan, (IngestPhase::Pending, "ClusterNotFound".to_owned()));
    jobs.delete("bad", &DeleteParams::default()).await.unwrap();
    jobs.delete("orphan", &DeleteParams::default())
        .await
        .unwrap();

    // 5. kubectl scale 1 → 3: the StatefulSet follows; every pod gives the same answers.
    kubectl(&["-n", NS, "scale", "ragcluster", "docs", "--replicas=3"]);
    let statefulsets = Api::<StatefulSet>::namespaced(client.clone(), NS);
    wait_for("the StatefulSet at 3 replicas", 30, || async {
        (statefulsets.get("docs").await.ok()?.spec.replicas? == 3).then_some(())
    })
    .await;
    wait_ready(&client, 3, 300).await;
    eprintln!("scaled to 3");
    let answers = answers_of_every_pod(&client, &api_key, "how do glaciers shape valleys", 5).await;
    assert_eq!(answers, vec!["glaciers".to_owned(); 3]);
    let scale = kubectl(&[
        "-n",
        NS,
        "get",
        "ragcluster",
        "docs",
        "-o",
        "jsonpath={.status.replicas}/{.status.selector}",
    ]);
    assert!(scale.starts_with("3/"), "{scale}");

    // 6. Delete the pod that is ingesting, mid-job: the job still succeeds, once per document.
    let redis_ip = Api::<Service>::namespaced(client.clone(), NS)
        .get("docs-redis")
        .await
        .unwrap()
        .spec
        .unwrap()
        .cluster_ip
        .unwrap();
    let redis_url = format!(
        "redis://:{}@{redis_ip}:6379",
        secret_value(&client, "docs-redis", "password").await
    );
    let topics = [
        "volcanoes",
        "tides",
        "orchards",
        "comets",
        "bridges",
        "lighthouses",
        "glassblowing",
        "beekeeping",
        "canals",
        "telescopes",
    ];
    let sources: Vec<_> = topics
        .iter()
        .map(|t| serde_json::json!({"name": t, "inline": long_text(t, 120)}))
        .collect();
    let big: IngestJob = serde_json::from_value(serde_json::json!({
        "apiVersion": "rag.ragnode.dev/v1alpha1", "kind": "IngestJob",
        "metadata": {"name": "survey", "namespace": NS},
        "spec": {"clusterRef": "docs", "sources": sources, "ttlSecondsAfterFinished": 3600}
    }))
    .unwrap();
    jobs.create(&PostParams::default(), &big).await.unwrap();
    let busy = wait_for("a node working on the survey", 180, || async {
        heartbeats(&redis_url)
            .into_iter()
            .find(|h| h.current_job.is_some())
            .map(|h| h.node_id)
    })
    .await;
    // The deletion must land while the job is still running, or this step proves nothing.
    let before = jobs.get("survey").await.unwrap().status.unwrap_or_default();
    assert!(
        !before.phase.is_finished(),
        "the survey finished before a node could be deleted"
    );
    Api::<Pod>::namespaced(client.clone(), NS)
        .delete(&busy, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eprintln!(
        "deleted {busy} while the survey was at {:?}",
        before.progress
    );
    let done = wait_job(&client, "survey", 600).await;
    let st = done.status.unwrap();
    assert_eq!(st.phase, IngestPhase::Succeeded, "{:?}", st.documents);
    assert_eq!(st.documents_succeeded, topics.len() as i32);
    wait_ready(&client, 3, 300).await;
    let answers =
        answers_of_every_pod(&client, &api_key, "tides survey records", 5 + topics.len()).await;
    assert_eq!(
        answers,
        vec!["tides".to_owned(); 3],
        "after deleting {busy}"
    );
    // Each document's chunks are indexed once (no duplicates from the interrupted attempt).
    let doc = svc.document("tides").await.unwrap();
    let hits = svc
        .search(&SearchRequest {
            k: 100,
            filter: rag_api::SearchFilter {
                document_ids: Some(vec!["tides".into()]),
                ..Default::default()
            },
            ..SearchRequest::new("tides survey records")
        })
        .await
        .unwrap();
    assert_eq!(hits.hits.len() as u64, doc.chunks.min(100) as u64);

    // 7. Scale 3 → 2: still consistent.
    kubectl(&["-n", NS, "scale", "ragcluster", "docs", "--replicas=2"]);
    wait_ready(&client, 2, 300).await;
    let answers = answers_of_every_pod(
        &client,
        &api_key,
        "why does sourdough rise",
        5 + topics.len(),
    )
    .await;
    assert_eq!(answers, vec!["bread".to_owned(); 2]);

    // 7b. Backups on request: every new value of the annotation is one backup, taken by one
    // node through the control stream; `keep: 2` leaves the newest two in the bucket.
    let documents = (5 + topics.len()) as i64;
    let mut snapshots: Vec<String> = Vec::new();
    for n in 1..=3 {
        kubectl(&[
            "-n",
            NS,
            "annotate",
            "--overwrite",
            "ragcluster",
            "docs",
            &format!("rag.ragnode.dev/backup-request={n}"),
        ]);
        let backup = wait_for(&format!("backup {n}"), 180, || async {
            let b = cluster(&client).await.status?.backup?;
            let done =
                b.last_request.as_deref() == Some(n.to_string().as_str()) && b.running.is_none();
            done.then_some(b)
        })
        .await;
        let ok = backup
            .last_successful
            .unwrap_or_else(|| panic!("backup {n} failed: {:?}", backup.last_failure));
        assert!(!snapshots.contains(&ok.snapshot), "backup {n} is not new");
        assert_eq!((ok.documents, ok.size_bytes > 0), (documents, true));
        snapshots.push(ok.snapshot);
    }
    assert_eq!(s3.snapshot_ids("rag-e2e", "docs"), snapshots[1..]);
    eprintln!("backed up: {snapshots:?}");

    // The leader's metrics tell the story (a standby has reconciled nothing).
    let leader = leases
        .get("rag-operator-leader")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    let metrics = wait_for("the leader's metrics to show 2 ready nodes", 60, || async {
        let m = kubectl(&[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/{OPERATOR_NS}/pods/{leader}:8081/proxy/metrics"),
        ]);
        m.contains(&format!(
            "ragop_cluster_ready_replicas{{cluster=\"{NS}/docs\"}} 2"
        ))
        .then_some(m)
    })
    .await;
    for line in [
        "ragop_leader 1",
        "ragop_ragclusters{phase=\"Running\"} 1",
        "ragop_ingestjobs{phase=\"Succeeded\"} 2",
        "ragop_reconcile_total{controller=\"ragcluster\",result=\"success\",error=\"none\"}",
        "ragop_reconcile_duration_seconds_count{controller=\"ingestjob\"}",
        &format!("ragop_cluster_queue_depth{{cluster=\"{NS}/docs\"}} 0"),
        &format!("ragop_backups_total{{cluster=\"{NS}/docs\",result=\"success\"}} 3"),
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }

    // 8. Delete the RagCluster: everything it owned goes, volumes and Redis included.
    clusters
        .delete("docs", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the RagCluster to go", 120, || async {
        clusters.get_opt("docs").await.ok()?.is_none().then_some(())
    })
    .await;
    let sel = ListParams::default().labels("app.kubernetes.io/instance=docs");
    wait_for("every owned object to go", 180, || async {
        let n = statefulsets.list(&sel).await.ok()?.items.len()
            + Api::<Service>::namespaced(client.clone(), NS)
                .list(&sel)
                .await
                .ok()?
                .items
                .len()
            + Api::<ConfigMap>::namespaced(client.clone(), NS)
                .list(&sel)
                .await
                .ok()?
                .items
                .len()
            + Api::<Secret>::namespaced(client.clone(), NS)
                .list(&sel)
                .await
                .ok()?
                .items
                .len()
            + Api::<PersistentVolumeClaim>::namespaced(client.clone(), NS)
                .list(&sel)
                .await
                .ok()?
                .items
                .len()
            + Api::<Pod>::namespaced(client.clone(), NS)
                .list(&sel)
                .await
                .ok()?
                .items
                .len();
        (n == 0).then_some(())
    })
    .await;
    let pdbs = kubectl(&["-n", NS, "get", "poddisruptionbudgets", "-o", "name"]);
    assert!(pdbs.trim().is_empty(), "left behind: {pdbs}");

    // 9. Recreate the cluster on the same backups: a new Redis with no log, new empty volumes.
    // The nodes restore the newest snapshot, serve every document without any re-ingest, and
    // join one new log that takes new documents.
    clusters
        .create(&PostParams::default(), &cluster_spec(2))
        .await
        .unwrap();
    wait_ready(&client, 2, 300).await;
    let api_key = secret_value(&client, "docs-auth", "api-key").await;
    let answers = answers_of_every_pod(
        &client,
        &api_key,
        "tides survey records",
        documents as usize,
    )
    .await;
    assert_eq!(answers, vec!["tides".to_owned(); 2]);
    let after: IngestJob = serde_json::from_value(serde_json::json!({
        "apiVersion": "rag.ragnode.dev/v1alpha1", "kind": "IngestJob",
        "metadata": {"name": "after-restore", "namespace": NS},
        "spec": {"clusterRef": "docs", "sources": [{"name": "orchids",
            "inline": "Orchids grow on tree bark in tropical forests, taking water from the humid air through their aerial roots."}]}
    }))
    .unwrap();
    jobs.create(&PostParams::default(), &after).await.unwrap();
    let done = wait_job(&client, "after-restore", 300).await;
    assert_eq!(done.status.unwrap().phase, IngestPhase::Succeeded);
    let answers = answers_of_every_pod(
        &client,
        &api_key,
        "plants with aerial roots on tree bark",
        documents as usize + 1,
    )
    .await;
    assert_eq!(answers, vec!["orchids".to_owned(); 2]);
    eprintln!("recreated from backups");
    clusters
        .delete("docs", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the recreated RagCluster to go", 120, || async {
        clusters.get_opt("docs").await.ok()?.is_none().then_some(())
    })
    .await;

    let _ = Command::new("kubectl")
        .args(["delete", "namespace", NS, "--wait=false"])
        .output();
}
