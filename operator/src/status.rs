//! Status of both resources computed from what the controllers observed, without I/O.

use k8s_openapi::api::apps::v1::StatefulSetStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use rag_api::cluster::NodeHeartbeat;

use crate::crd::{
    set_condition, ClusterPhase, DocumentProgress, EmbeddingStatus, IngestJobStatus, IngestPhase,
    ModelPrecision, RagClusterStatus,
};

/// What the RagCluster controller saw this round.
pub struct ClusterObservation<'a> {
    pub desired_replicas: i32,
    pub generation: Option<i64>,
    pub statefulset: Option<&'a StatefulSetStatus>,
    pub selector: String,
    pub endpoint: String,
    /// Heartbeats and queue depth read from Redis, or why they could not be read.
    pub redis: Result<(Vec<NodeHeartbeat>, u64), String>,
    pub paused: bool,
}

/// The live nodes' precision and kernels; `None` when no live node reports them.
fn embedding_status(nodes: &[NodeHeartbeat]) -> Option<EmbeddingStatus> {
    let mut out = EmbeddingStatus::default();
    for n in nodes {
        if let Some(p) = &n.precision {
            out.precision = Some(p.clone());
        }
        if let Some(k) = &n.kernel {
            *out.kernels.entry(k.clone()).or_default() += 1;
        }
    }
    (out.precision.is_some() || !out.kernels.is_empty()).then_some(out)
}

/// Why a spec's precision is refused: it names another precision than the one the cluster's
/// index was built with (vectors of two precisions are never mixed; changing it needs index
/// generations). `auto` and unset follow the index.
pub fn precision_refusal(spec: Option<ModelPrecision>, index: Option<&str>) -> Option<String> {
    let wanted = match spec? {
        ModelPrecision::Auto => return None,
        p => p.as_str(),
    };
    let index = index?;
    (wanted != index).then(|| {
        format!(
            "spec.model.precision {wanted} differs from the precision of the cluster's index ({index}): an index never mixes precisions, so the change is not rolled out (set it back to {index} or auto)"
        )
    })
}

pub fn cluster_status(
    obs: &ClusterObservation,
    previous: &RagClusterStatus,
    now: &Time,
) -> RagClusterStatus {
    let mut st = previous.clone();
    let sts = obs.statefulset;
    st.replicas = sts.map(|s| s.replicas).unwrap_or(0);
    st.ready_replicas = sts.and_then(|s| s.ready_replicas).unwrap_or(0);
    st.selector = Some(obs.selector.clone());
    st.endpoint = Some(obs.endpoint.clone());
    st.observed_generation = obs.generation;
    let desired = obs.desired_replicas;
    let ready = st.ready_replicas;
    let updated = sts.and_then(|s| s.updated_replicas).unwrap_or(0);
    let rolling = sts
        .is_some_and(|s| s.current_revision.is_some() && s.current_revision != s.update_revision)
        || updated < desired;
    let scaling = st.replicas != desired;
    let gen = obs.generation;

    match &obs.redis {
        Ok((nodes, depth)) => {
            st.live_nodes = nodes.len() as i32;
            st.documents = nodes.iter().map(|n| n.documents).max().unwrap_or(0) as i64;
            st.chunks = nodes.iter().map(|n| n.chunks).max().unwrap_or(0) as i64;
            st.max_apply_lag_ms = nodes.iter().map(|n| n.lag_ms).max().unwrap_or(0) as i64;
            st.queue_depth = *depth as i64;
            st.embedding = embedding_status(nodes).or(st.embedding.take());
        }
        Err(_) => st.live_nodes = 0,
    }

    let c = &mut st.conditions;
    set_condition(
        c,
        "Available",
        ready > 0,
        if ready > 0 {
            "NodesReady"
        } else if desired == 0 {
            "ScaledToZero"
        } else {
            "NoNodeReady"
        },
        format!("{ready} of {desired} nodes ready"),
        gen,
        now,
    );
    let progressing = scaling || rolling || ready < desired;
    set_condition(
        c,
        "Progressing",
        progressing,
        if scaling {
            "Scaling"
        } else if rolling {
            "RollingUpdate"
        } else if ready < desired {
            "NodesStarting"
        } else {
            "Stable"
        },
        if progressing {
            format!(
                "{} pods, {updated} updated, {ready} ready, {desired} wanted",
                st.replicas
            )
        } else {
            "every node runs the current spec".to_owned()
        },
        gen,
        now,
    );
    let (degraded, reason, message) = match &obs.redis {
        Err(e) => (
            true,
            "RedisUnavailable",
            format!("cannot read the cluster's Redis: {e}"),
        ),
        Ok((nodes, _)) if nodes.iter().any(|n| n.log_error.is_some()) => {
            let n = nodes.iter().find(|n| n.log_error.is_some()).unwrap();
            (
                true,
                "IndexLogError",
                format!("{}: {}", n.node_id, n.log_error.clone().unwrap_or_default()),
            )
        }
        _ if ready < desired && !progressing => (
            true,
            "NodesNotReady",
            format!("{ready} of {desired} nodes ready"),
        ),
        _ if ready < desired
            && desired > 0
            && previous_was_up(previous)
            && !scaling
            && !rolling =>
        {
            (
                true,
                "NodesNotReady",
                format!("{ready} of {desired} nodes ready"),
            )
        }
        _ => (false, "Healthy", "nodes and Redis healthy".to_owned()),
    };
    set_condition(c, "Degraded", degraded, reason, message, gen, now);

    st.phase = if obs.paused {
        ClusterPhase::Paused
    } else if desired == 0 || (ready >= desired && !degraded) {
        ClusterPhase::Running
    } else if ready == 0 {
        if previous_was_up(previous) {
            ClusterPhase::Failed
        } else {
            ClusterPhase::Provisioning
        }
    } else if degraded || (ready < desired && previous_was_up(previous) && !scaling) {
        ClusterPhase::Degraded
    } else {
        ClusterPhase::Provisioning
    };
    st
}

fn previous_was_up(previous: &RagClusterStatus) -> bool {
    matches!(
        previous.phase,
        ClusterPhase::Running | ClusterPhase::Degraded
    )
}

/// Totals, progress and phase of an IngestJob from its documents.
pub fn ingest_status(
    previous: &IngestJobStatus,
    documents: Vec<DocumentProgress>,
    now: &Time,
) -> IngestJobStatus {
    let mut st = previous.clone();
    let total = documents.len() as i32;
    let ok = documents.iter().filter(|d| d.state == "completed").count() as i32;
    let failed = documents.iter().filter(|d| d.state == "failed").count() as i32;
    let running = documents.iter().any(|d| d.state == "processing")
        || (ok + failed > 0 && ok + failed < total);
    let all_uploaded = documents
        .iter()
        .all(|d| d.job_id.is_some() || d.is_finished());
    st.documents_total = total;
    st.documents_succeeded = ok;
    st.documents_failed = failed;
    st.chunks = documents.iter().filter_map(|d| d.chunks).sum();
    st.progress = Some(format!("{}/{total}", ok + failed));
    st.documents = documents;
    st.phase = if ok + failed == total {
        if failed == 0 {
            IngestPhase::Succeeded
        } else {
            IngestPhase::Failed
        }
    } else if running {
        IngestPhase::Running
    } else if all_uploaded {
        IngestPhase::Queued
    } else if st.documents.iter().any(|d| d.job_id.is_some()) {
        IngestPhase::Running
    } else {
        IngestPhase::Pending
    };
    if st.started_at.is_none() && st.phase != IngestPhase::Pending {
        st.started_at = Some(now.clone());
    }
    let gen = st.observed_generation;
    if st.phase.is_finished() {
        if st.completed_at.is_none() {
            st.completed_at = Some(now.clone());
        }
        let msg = if failed == 0 {
            format!("{ok} documents indexed, {} chunks", st.chunks)
        } else {
            let first = st.documents.iter().find(|d| d.state == "failed").unwrap();
            format!(
                "{failed} of {total} documents failed; {}: {}",
                first.source,
                first.message.clone().unwrap_or_default()
            )
        };
        set_condition(
            &mut st.conditions,
            "Complete",
            failed == 0,
            if failed == 0 {
                "AllDocumentsIndexed"
            } else {
                "DocumentsFailed"
            },
            msg.clone(),
            gen,
            now,
        );
        set_condition(
            &mut st.conditions,
            "Failed",
            failed > 0,
            if failed == 0 {
                "AllDocumentsIndexed"
            } else {
                "DocumentsFailed"
            },
            msg,
            gen,
            now,
        );
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::condition_is;

    fn now() -> Time {
        Time("2026-11-27T00:00:00Z".parse().unwrap())
    }

    fn sts(replicas: i32, ready: i32) -> StatefulSetStatus {
        StatefulSetStatus {
            replicas,
            ready_replicas: Some(ready),
            updated_replicas: Some(replicas),
            current_revision: Some("r1".into()),
            update_revision: Some("r1".into()),
            ..Default::default()
        }
    }

    fn hb(id: &str, docs: u64, lag: u64) -> NodeHeartbeat {
        serde_json::from_value(serde_json::json!({
            "node_id": id, "ready": true, "current_job": null, "applied": null, "lag_ms": lag,
            "log_error": null, "documents": docs, "chunks": docs * 10, "index_bytes": 1,
            "version": "0.1.0", "updated_at_ms": 1
        }))
        .unwrap()
    }

    fn obs<'a>(
        desired: i32,
        s: Option<&'a StatefulSetStatus>,
        redis: Result<(Vec<NodeHeartbeat>, u64), String>,
    ) -> ClusterObservation<'a> {
        ClusterObservation {
            desired_replicas: desired,
            generation: Some(2),
            statefulset: s,
            selector: "a=b".into(),
            endpoint: "http://docs.search.svc:8080".into(),
            redis,
            paused: false,
        }
    }

    #[test]
    fn a_precision_other_than_the_index_is_refused() {
        use crate::crd::ModelPrecision::*;
        assert_eq!(precision_refusal(None, Some("fp32")), None);
        assert_eq!(precision_refusal(Some(Auto), Some("bf16")), None);
        assert_eq!(precision_refusal(Some(Bf16), Some("bf16")), None);
        assert_eq!(
            precision_refusal(Some(Bf16), None),
            None,
            "no index known yet"
        );
        let m = precision_refusal(Some(Bf16), Some("fp32")).unwrap();
        assert!(m.contains("bf16") && m.contains("(fp32)"), "{m}");
    }

    #[test]
    fn the_status_counts_the_nodes_per_kernel() {
        let mut nodes = vec![hb("a", 1, 0), hb("b", 1, 0), hb("c", 1, 0)];
        for (n, k) in nodes.iter_mut().zip(["amx", "amx", "emulated"]) {
            n.precision = Some("bf16".into());
            n.kernel = Some(k.into());
        }
        let e = embedding_status(&nodes).unwrap();
        assert_eq!(e.precision.as_deref(), Some("bf16"));
        assert_eq!(e.kernels.get("amx"), Some(&2));
        assert_eq!(e.kernels.get("emulated"), Some(&1));
        assert_eq!(
            embedding_status(&[hb("old", 1, 0)]),
            None,
            "older nodes report none"
        );
    }

    #[test]
    fn provisioning_then_running_with_node_figures() {
        let s0 = sts(3, 0);
        let st = cluster_status(
            &obs(3, Some(&s0), Ok((vec![], 0))),
            &Default::default(),
            &now(),
        );
        assert_eq!(st.phase, ClusterPhase::Provisioning);
        assert!(condition_is(&st.conditions, "Available", "False"));
        assert!(condition_is(&st.conditions, "Progressing", "True"));

        let s3 = sts(3, 3);
        let nodes = vec![hb("a", 5, 3), hb("b", 7, 40), hb("c", 7, 1)];
        let st = cluster_status(&obs(3, Some(&s3), Ok((nodes, 4))), &st, &now());
        assert_eq!(st.phase, ClusterPhase::Running);
        assert_eq!((st.replicas, st.ready_replicas, st.live_nodes), (3, 3, 3));
        assert_eq!(
            (st.documents, st.chunks, st.queue_depth, st.max_apply_lag_ms),
            (7, 70, 4, 40)
        );
        assert!(condition_is(&st.conditions, "Available", "True"));
        assert!(condition_is(&st.conditions, "Progressing", "False"));
        assert!(condition_is(&st.conditions, "Degraded", "False"));
        assert_eq!(st.observed_generation, Some(2));
        assert_eq!(st.selector.as_deref(), Some("a=b"));
    }

    #[test]
    fn scaling_is_progress_not_degradation() {
        let running = RagClusterStatus {
            phase: ClusterPhase::Running,
            ..Default::default()
        };
        let s = sts(1, 1);
        let st = cluster_status(&obs(3, Some(&s), Ok((vec![], 0))), &running, &now());
        assert_eq!(st.phase, ClusterPhase::Provisioning);
        let c = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Progressing")
            .unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Scaling"));
        assert!(condition_is(&st.conditions, "Degraded", "False"));
    }

    #[test]
    fn lost_pods_and_redis_outage_degrade() {
        let running = RagClusterStatus {
            phase: ClusterPhase::Running,
            ..Default::default()
        };
        let s = sts(3, 0);
        let st = cluster_status(
            &obs(3, Some(&s), Err("connection refused".into())),
            &running,
            &now(),
        );
        assert_eq!(st.phase, ClusterPhase::Failed);
        let d = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .unwrap();
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "RedisUnavailable")
        );
        let s = sts(3, 3);
        let st = cluster_status(&obs(3, Some(&s), Err("down".into())), &running, &now());
        assert_eq!(st.phase, ClusterPhase::Degraded);
    }

    fn doc(name: &str, state: &str, job: Option<&str>, chunks: Option<i64>) -> DocumentProgress {
        DocumentProgress {
            source: name.into(),
            document_id: name.into(),
            job_id: job.map(Into::into),
            state: state.into(),
            chunks,
            message: (state == "failed").then(|| "pdf_encrypted: the PDF is encrypted".into()),
        }
    }

    #[test]
    fn ingest_phases() {
        let st = ingest_status(
            &Default::default(),
            vec![doc("a", "pending", None, None)],
            &now(),
        );
        assert_eq!(st.phase, IngestPhase::Pending);
        assert!(st.started_at.is_none());
        let st = ingest_status(
            &st,
            vec![
                doc("a", "queued", Some("j1"), None),
                doc("b", "queued", Some("j2"), None),
            ],
            &now(),
        );
        assert_eq!(st.phase, IngestPhase::Queued);
        assert!(st.started_at.is_some());
        let st = ingest_status(
            &st,
            vec![
                doc("a", "completed", Some("j1"), Some(4)),
                doc("b", "processing", Some("j2"), None),
            ],
            &now(),
        );
        assert_eq!(st.phase, IngestPhase::Running);
        assert_eq!(st.progress.as_deref(), Some("1/2"));
        let st = ingest_status(
            &st,
            vec![
                doc("a", "completed", Some("j1"), Some(4)),
                doc("b", "completed", Some("j2"), Some(6)),
            ],
            &now(),
        );
        assert_eq!(st.phase, IngestPhase::Succeeded);
        assert_eq!((st.documents_succeeded, st.chunks), (2, 10));
        assert!(condition_is(&st.conditions, "Complete", "True"));
        assert!(st.completed_at.is_some());
    }

    #[test]
    fn one_failed_document_fails_the_job_with_its_reason() {
        let st = ingest_status(
            &Default::default(),
            vec![
                doc("a", "completed", Some("j1"), Some(1)),
                doc("bad", "failed", Some("j2"), None),
            ],
            &now(),
        );
        assert_eq!(st.phase, IngestPhase::Failed);
        assert_eq!(st.documents_failed, 1);
        let f = st.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
        assert_eq!(f.status, "True");
        assert!(f.message.contains("bad: pdf_encrypted"), "{}", f.message);
    }
}
