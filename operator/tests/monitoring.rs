//! The Grafana dashboard and the alert rules we ship (config/) use only metrics that exist,
//! and every PromQL expression in them parses (`promtool check rules`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rag_operator::metrics::Metrics;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every metric name the operator and the nodes expose (sample names included).
fn exposed() -> BTreeSet<String> {
    let m = Metrics::new();
    m.reconciled("ragcluster", None, Duration::from_millis(1));
    m.cluster_observed("ns/c", Some("Running"), 1, 0);
    m.job_observed("ns/j", Some("Pending"));
    m.backup_finished("ns/c", Some(1));
    let mut names = BTreeSet::new();
    for line in m.encode().lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            names.insert(name.to_owned());
            match kind {
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{s}"));
                    }
                }
                _ => {}
            }
        }
    }
    // The nodes' metrics, as registered in rag-node/src/metrics.rs (counters get `_total`,
    // histograms their series).
    let src = std::fs::read_to_string(root().join("rag-node/src/metrics.rs")).unwrap();
    for piece in src.split('"').skip(1).step_by(2) {
        if (piece.starts_with("ragnode_") || piece.starts_with("process_"))
            && !piece.contains(['{', ' '])
        {
            for s in ["", "_total", "_bucket", "_sum", "_count"] {
                names.insert(format!("{piece}{s}"));
            }
        }
    }
    names
}

fn used_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| {
            t.starts_with("ragop_") || t.starts_with("ragnode_") || t.starts_with("process_")
        })
        .map(str::to_owned)
        .collect()
}

fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("config/dashboards/rag-operator.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(out.len() >= 10, "the dashboard has {} queries", out.len());
    out
}

fn alert_exprs() -> Vec<String> {
    let text =
        std::fs::read_to_string(root().join("config/alerts/rag-operator.rules.yaml")).unwrap();
    let rules: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut out = Vec::new();
    for g in rules["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            out.push(r["expr"].as_str().unwrap().to_owned());
        }
    }
    out
}

#[test]
fn dashboards_and_alerts_use_real_metrics() {
    let known = exposed();
    for expr in dashboard_exprs().iter().chain(alert_exprs().iter()) {
        let used = used_names(expr);
        assert!(!used.is_empty(), "no rag metric in {expr}");
        for name in used {
            assert!(
                known.contains(&name),
                "{name} (in `{expr}`) is not exposed by anything"
            );
        }
    }
}

#[test]
fn promql_parses() {
    let dir = std::env::temp_dir().join(format!("rag-promtool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The dashboard's queries as recording rules, so promtool parses each of them.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in dashboard_exprs().iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        ));
    }
    let dash_rules = dir.join("dashboard.rules.yaml");
    std::fs::write(&dash_rules, rules).unwrap();
    for file in [
        dash_rules,
        root().join("config/alerts/rag-operator.rules.yaml"),
    ] {
        let out = Command::new("promtool")
            .args(["check", "rules"])
            .arg(&file)
            .output()
            .expect("promtool (Debian package prometheus, installed by the test command)");
        assert!(
            out.status.success(),
            "promtool check rules {}:\n{}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
