//! The operator's Prometheus metrics (`ragop_*`), shown by the Grafana dashboard we ship.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    controller: String,
    result: String,
    /// The failed reconcile's `Error::metric_label`; `none` after a success.
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabel {
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackupLabels {
    cluster: String,
    result: String,
}

pub struct Metrics {
    registry: Registry,
    reconcile_total: Family<ReconcileLabels, Counter>,
    reconcile_duration: Family<ControllerLabel, Histogram>,
    clusters: Family<PhaseLabel, Gauge>,
    ingestjobs: Family<PhaseLabel, Gauge>,
    queue_depth: Family<ClusterLabel, Gauge>,
    ready_replicas: Family<ClusterLabel, Gauge>,
    backups: Family<BackupLabels, Counter>,
    backup_last_success: Family<ClusterLabel, Gauge>,
    leader: Gauge,
    /// Phase of every object seen, so the per-phase gauges are exact counts.
    cluster_phases: Mutex<HashMap<String, &'static str>>,
    job_phases: Mutex<HashMap<String, &'static str>>,
    /// Every reconcile duration, kept only while a benchmark asks for them.
    samples: Mutex<Option<Vec<(&'static str, Duration)>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ragop");
        let reconcile_total = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconcile",
            "Reconciliations by controller and result",
            reconcile_total.clone(),
        );
        let reconcile_duration = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconciliation",
            reconcile_duration.clone(),
        );
        let clusters = Family::<PhaseLabel, Gauge>::default();
        registry.register("ragclusters", "RagClusters by phase", clusters.clone());
        let ingestjobs = Family::<PhaseLabel, Gauge>::default();
        registry.register("ingestjobs", "IngestJobs by phase", ingestjobs.clone());
        let queue_depth = Family::<ClusterLabel, Gauge>::default();
        registry.register(
            "cluster_queue_depth",
            "Jobs waiting in a cluster's queue (namespace/name)",
            queue_depth.clone(),
        );
        let ready_replicas = Family::<ClusterLabel, Gauge>::default();
        registry.register(
            "cluster_ready_replicas",
            "Ready rag-node pods of a cluster (namespace/name)",
            ready_replicas.clone(),
        );
        let backups = Family::<BackupLabels, Counter>::default();
        registry.register(
            "backups",
            "Backups finished, by cluster (namespace/name) and result (success, failure)",
            backups.clone(),
        );
        let backup_last_success = Family::<ClusterLabel, Gauge>::default();
        registry.register(
            "backup_last_success_timestamp_seconds",
            "Unix time of a cluster's last successful backup",
            backup_last_success.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        Metrics {
            registry,
            reconcile_total,
            reconcile_duration,
            clusters,
            ingestjobs,
            queue_depth,
            ready_replicas,
            backups,
            backup_last_success,
            leader,
            cluster_phases: Mutex::default(),
            job_phases: Mutex::default(),
            samples: Mutex::default(),
        }
    }

    /// Starts (or restarts) keeping every reconcile duration; see [`Metrics::take_samples`].
    pub fn keep_samples(&self) {
        *self.samples.lock().unwrap() = Some(Vec::new());
    }

    pub fn take_samples(&self) -> Vec<(&'static str, Duration)> {
        self.samples.lock().unwrap().take().unwrap_or_default()
    }

    /// Counts a reconcile: `error` is the failure's label, `None` after a success.
    pub fn reconciled(
        &self,
        controller: &'static str,
        error: Option<&'static str>,
        took: Duration,
    ) {
        if let Some(s) = self.samples.lock().unwrap().as_mut() {
            s.push((controller, took));
        }
        self.reconcile_total
            .get_or_create(&ReconcileLabels {
                controller: controller.into(),
                result: if error.is_none() { "success" } else { "error" }.into(),
                error: error.unwrap_or("none").into(),
            })
            .inc();
        self.reconcile_duration
            .get_or_create(&ControllerLabel {
                controller: controller.into(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn cluster_observed(&self, key: &str, phase: Option<&'static str>, ready: i64, queue: i64) {
        let cluster = ClusterLabel {
            cluster: key.into(),
        };
        match phase {
            Some(_) => {
                self.queue_depth.get_or_create(&cluster).set(queue);
                self.ready_replicas.get_or_create(&cluster).set(ready);
            }
            None => {
                self.queue_depth.remove(&cluster);
                self.ready_replicas.remove(&cluster);
                self.backup_last_success.remove(&cluster);
                for result in ["success", "failure"] {
                    self.backups.remove(&BackupLabels {
                        cluster: key.into(),
                        result: result.into(),
                    });
                }
            }
        }
        Self::count(
            &self.cluster_phases,
            &self.clusters,
            key,
            phase,
            &crate::crd::ClusterPhase::ALL.map(|p| p.as_str()),
        );
    }

    /// A backup of cluster `key` ended; `success_at` is its Unix time when it succeeded.
    pub fn backup_finished(&self, key: &str, success_at: Option<i64>) {
        let result = if success_at.is_some() {
            "success"
        } else {
            "failure"
        };
        self.backups
            .get_or_create(&BackupLabels {
                cluster: key.into(),
                result: result.into(),
            })
            .inc();
        if let Some(t) = success_at {
            self.backup_last_success
                .get_or_create(&ClusterLabel {
                    cluster: key.into(),
                })
                .set(t);
        }
    }

    pub fn job_observed(&self, key: &str, phase: Option<&'static str>) {
        Self::count(
            &self.job_phases,
            &self.ingestjobs,
            key,
            phase,
            &crate::crd::IngestPhase::ALL.map(|p| p.as_str()),
        );
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(leader as i64);
    }

    fn count(
        map: &Mutex<HashMap<String, &'static str>>,
        family: &Family<PhaseLabel, Gauge>,
        key: &str,
        phase: Option<&'static str>,
        all: &[&'static str],
    ) {
        let mut m = map.lock().unwrap();
        match phase {
            Some(p) => m.insert(key.to_owned(), p),
            None => m.remove(key),
        };
        for p in all {
            let n = m.values().filter(|v| *v == p).count();
            family
                .get_or_create(&PhaseLabel { phase: (*p).into() })
                .set(n as i64);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("metrics encode");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_counted_per_object() {
        let m = Metrics::new();
        m.cluster_observed("a/x", Some("Running"), 3, 2);
        m.cluster_observed("a/y", Some("Running"), 1, 0);
        m.cluster_observed("a/y", Some("Degraded"), 0, 0);
        m.job_observed("a/j", Some("Succeeded"));
        m.reconciled("ragcluster", None, Duration::from_millis(3));
        m.reconciled("ingestjob", Some("upload"), Duration::from_millis(3));
        let text = m.encode();
        assert!(
            text.contains("ragop_ragclusters{phase=\"Running\"} 1"),
            "{text}"
        );
        assert!(text.contains("ragop_ragclusters{phase=\"Degraded\"} 1"));
        assert!(text.contains("ragop_cluster_queue_depth{cluster=\"a/x\"} 2"));
        assert!(text.contains("ragop_cluster_ready_replicas{cluster=\"a/x\"} 3"));
        assert!(text.contains("ragop_ingestjobs{phase=\"Succeeded\"} 1"));
        assert!(
            text.contains("ragop_reconcile_total{controller=\"ragcluster\",result=\"success\",error=\"none\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "ragop_reconcile_total{controller=\"ingestjob\",result=\"error\",error=\"upload\"} 1"
        ));
        assert!(
            text.contains("ragop_reconcile_duration_seconds_count{controller=\"ragcluster\"} 1")
        );
        m.backup_finished("a/x", Some(1_790_000_000));
        m.backup_finished("a/x", None);
        let text = m.encode();
        assert!(text.contains("ragop_backups_total{cluster=\"a/x\",result=\"success\"} 1"));
        assert!(text.contains("ragop_backups_total{cluster=\"a/x\",result=\"failure\"} 1"));
        assert!(text
            .contains("ragop_backup_last_success_timestamp_seconds{cluster=\"a/x\"} 1790000000"));
        m.cluster_observed("a/x", None, 0, 0);
        assert!(!m.encode().contains("cluster=\"a/x\""));
    }
}
