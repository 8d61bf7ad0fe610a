//! Backup planning for a RagCluster, without I/O: when a backup is due (schedule or request),
//! when a running one has timed out, and what a node's answer does to the status. The
//! controller sends the commands and reads the answers (see `controller::ragcluster`).

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use rag_api::cluster::ControlResult;

use crate::crd::{BackupSpec, BackupStatus, CompletedBackup, FailedBackup, RunningBackup};
use crate::cron::Schedule;

/// Annotation whose every new value asks for one backup.
pub const REQUEST_ANNOTATION: &str = "rag.ragnode.dev/backup-request";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often a running backup's answer is looked for.
pub const POLL: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Request,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Request => "request",
        }
    }
}

#[derive(Debug, PartialEq)]
pub struct Plan {
    pub status: BackupStatus,
    /// A backup to start now, under the id given to [`plan`].
    pub start: Option<Trigger>,
    /// A running backup that ran out of time (already recorded as the last failure).
    pub timed_out: bool,
    /// When to look again.
    pub wake: Option<Duration>,
}

fn parse(t: &str) -> Option<Timestamp> {
    t.parse().ok()
}

fn until(now: Timestamp, t: Timestamp) -> Duration {
    Duration::from_secs(t.as_second().saturating_sub(now.as_second()).max(1) as u64)
}

/// Decides what to do at `now`. `request` is the annotation's value, `id` the id a new backup
/// gets. A bad schedule is an error (nothing else changes).
pub fn plan(
    spec: &BackupSpec,
    request: Option<&str>,
    previous: &BackupStatus,
    now: Timestamp,
    id: &str,
) -> Result<Plan, String> {
    let schedule = spec
        .schedule
        .as_deref()
        .map(|s| {
            s.parse::<Schedule>()
                .map_err(|e| format!("invalid backup schedule: {e}"))
        })
        .transpose()?;
    let mut st = previous.clone();
    let mut timed_out = false;
    if let Some(run) = &st.running {
        let limit = spec
            .timeout_seconds
            .map(|s| Duration::from_secs(s.into()))
            .unwrap_or(DEFAULT_TIMEOUT);
        let started = parse(&run.started_at).unwrap_or(now);
        if now.as_second() - started.as_second() >= limit.as_secs() as i64 {
            st.last_failure = Some(FailedBackup {
                time: now.to_string(),
                message: format!(
                    "backup {} got no answer within {}s (no node took it, or it is still running)",
                    run.id,
                    limit.as_secs()
                ),
            });
            st.running = None;
            timed_out = true;
        }
    }

    let mut start = None;
    if let Some(value) = request.filter(|v| Some(*v) != st.last_request.as_deref()) {
        st.last_request = Some(value.to_owned());
        start = Some(Trigger::Request);
    }
    match &schedule {
        Some(s) => {
            let next = st.next_schedule_time.as_deref().and_then(parse);
            match next {
                // Due (once, however many slots were missed while the operator was away).
                Some(next) if next <= now => {
                    st.last_schedule_time = Some(now.to_string());
                    st.next_schedule_time = s.next_after(now).map(|t| t.to_string());
                    start = start.or(Some(Trigger::Schedule));
                }
                Some(_) => {}
                // New schedule: the first backup at its first slot, not at once.
                None => st.next_schedule_time = s.next_after(now).map(|t| t.to_string()),
            }
        }
        None => st.next_schedule_time = None,
    }
    // One backup at a time: a due one while another runs is skipped (a request is kept).
    if st.running.is_some() {
        if start == Some(Trigger::Request) {
            st.last_request = previous.last_request.clone();
        }
        start = None;
    }
    if let Some(trigger) = start {
        st.running = Some(RunningBackup {
            id: id.to_owned(),
            started_at: now.to_string(),
            trigger: trigger.as_str().to_owned(),
        });
    }
    let wake = if st.running.is_some() {
        Some(POLL)
    } else {
        st.next_schedule_time
            .as_deref()
            .and_then(parse)
            .map(|t| until(now, t))
    };
    Ok(Plan {
        status: st,
        start,
        timed_out,
        wake,
    })
}

/// Records a node's answer to the running backup.
pub fn finish(previous: &BackupStatus, result: &ControlResult, now: Timestamp) -> BackupStatus {
    let mut st = previous.clone();
    st.running = None;
    match (&result.snapshot, result.ok) {
        (Some(m), true) => {
            st.last_successful = Some(CompletedBackup {
                snapshot: m.id.clone(),
                completed_at: now.to_string(),
                node: result.node_id.clone(),
                documents: m.documents as i64,
                chunks: m.chunks as i64,
                size_bytes: m.size_bytes as i64,
            })
        }
        _ => {
            st.last_failure = Some(FailedBackup {
                time: now.to_string(),
                message: format!(
                    "node {}: {}",
                    result.node_id,
                    result.error.as_deref().unwrap_or("no snapshot")
                ),
            })
        }
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use rag_api::cluster::SnapshotManifest;

    fn spec(schedule: Option<&str>) -> BackupSpec {
        serde_json::from_value(serde_json::json!({
            "target": "s3://backups/c1",
            "schedule": schedule,
        }))
        .unwrap()
    }

    fn at(t: &str) -> Timestamp {
        t.parse().unwrap()
    }

    #[test]
    fn schedule_waits_for_its_first_slot_then_runs_once_per_slot() {
        let s = spec(Some("0 * * * *"));
        let p = plan(
            &s,
            None,
            &Default::default(),
            at("2026-11-27T10:20:00Z"),
            "b1",
        )
        .unwrap();
        assert_eq!(p.start, None);
        assert_eq!(
            p.status.next_schedule_time.as_deref(),
            Some("2026-11-27T11:00:00Z")
        );
        assert_eq!(p.wake, Some(Duration::from_secs(40 * 60)));
        // Missed three slots (operator down): one backup, next slot after now.
        let p = plan(&s, None, &p.status, at("2026-11-27T13:30:00Z"), "b2").unwrap();
        assert_eq!(p.start, Some(Trigger::Schedule));
        assert_eq!(p.status.running.as_ref().unwrap().id, "b2");
        assert_eq!(
            p.status.next_schedule_time.as_deref(),
            Some("2026-11-27T14:00:00Z")
        );
        assert_eq!(p.wake, Some(POLL));
        // Still running at the next slot: skipped, not queued.
        let p = plan(&s, None, &p.status, at("2026-11-27T14:00:00Z"), "b3").unwrap();
        assert_eq!(p.start, None);
        assert_eq!(p.status.running.as_ref().unwrap().id, "b2");
    }

    #[test]
    fn each_new_request_value_runs_one_backup() {
        let s = spec(None);
        let now = at("2026-11-27T10:00:00Z");
        let p = plan(&s, Some("1"), &Default::default(), now, "b1").unwrap();
        assert_eq!(p.start, Some(Trigger::Request));
        assert_eq!(p.status.last_request.as_deref(), Some("1"));
        let done = finish(&p.status, &ok_result("b1"), now);
        assert_eq!(done.running, None);
        assert_eq!(done.last_successful.as_ref().unwrap().documents, 3);
        let p = plan(&s, Some("1"), &done, now, "b2").unwrap();
        assert_eq!(p.start, None);
        assert_eq!(p.wake, None);
        let p = plan(&s, Some("2"), &done, now, "b2").unwrap();
        assert_eq!(p.start, Some(Trigger::Request));
        // A request while a backup runs waits for it to end.
        let p2 = plan(&s, Some("3"), &p.status, now, "b3").unwrap();
        assert_eq!(p2.start, None);
        assert_eq!(p2.status.last_request.as_deref(), Some("2"));
    }

    #[test]
    fn unanswered_backups_time_out_and_failures_are_recorded() {
        let s = spec(None);
        let p = plan(
            &s,
            Some("1"),
            &Default::default(),
            at("2026-11-27T10:00:00Z"),
            "b1",
        )
        .unwrap();
        let later = plan(&s, Some("1"), &p.status, at("2026-11-27T10:59:00Z"), "x").unwrap();
        assert!(!later.timed_out && later.status.running.is_some());
        let late = plan(&s, Some("1"), &p.status, at("2026-11-27T11:00:00Z"), "x").unwrap();
        assert!(late.timed_out && late.status.running.is_none());
        assert!(late.status.last_failure.unwrap().message.contains("b1"));

        let mut failed = ok_result("b1");
        failed.ok = false;
        failed.snapshot = None;
        failed.error = Some("bucket missing".into());
        let st = finish(&p.status, &failed, at("2026-11-27T10:01:00Z"));
        assert_eq!(st.running, None);
        assert_eq!(
            st.last_failure.as_ref().unwrap().message,
            "node n1: bucket missing"
        );
        assert!(plan(
            &spec(Some("61 * * * *")),
            None,
            &st,
            at("2026-11-27T10:01:00Z"),
            "x"
        )
        .is_err());
    }

    fn ok_result(id: &str) -> ControlResult {
        ControlResult {
            id: id.into(),
            node_id: "n1".into(),
            ok: true,
            error: None,
            snapshot: Some(SnapshotManifest {
                format: 1,
                id: "20261127T100000000Z".into(),
                created_at: "2026-11-27T10:00:00Z".into(),
                node_id: "n1".into(),
                model_id: "m".into(),
                dimensions: 384,
                log_position: None,
                documents: 3,
                chunks: 9,
                size_bytes: 4096,
                sha256: "x".into(),
                version: "0".into(),
            }),
            pruned: vec![],
        }
    }
}
