//! `deploy/monitoring/alerts.yaml`: well-formed Prometheus rules that only use metrics
//! this crate writes; with promtool installed, also `promtool check rules` and the rule
//! unit tests in `alerts_test.yaml`. `grafana-dashboard.json`: a Grafana 10+ dashboard whose
//! every query names metrics this crate writes (and, with promtool, parses as PromQL).
#![allow(clippy::unwrap_used)] // tests may unwrap (team rules)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use backup_notify::metrics::{METRICS, RECEIVER_METRICS};
use serde_norway::Value;

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring")
}

fn rules() -> Vec<Value> {
    let text = std::fs::read_to_string(monitoring_dir().join("alerts.yaml")).unwrap();
    let doc: Value = serde_norway::from_str(&text).unwrap();
    let groups = doc["groups"]
        .as_sequence()
        .expect("top-level `groups` list");
    assert!(!groups.is_empty());
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for g in groups {
        let name = g["name"].as_str().expect("every group has a name");
        assert!(names.insert(name.to_string()), "group {name} twice");
        out.extend(
            g["rules"]
                .as_sequence()
                .expect("group has rules")
                .iter()
                .cloned(),
        );
    }
    out
}

/// `kaizen_backup_*` identifiers in a PromQL expression.
fn kaizen_metrics(expr: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("kaizen_backup_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        found.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    found
}

#[test]
fn every_alert_is_complete_and_uses_only_metrics_the_sink_writes() {
    let rules = rules();
    let mut alerts = BTreeSet::new();
    let mut used = BTreeSet::new();
    for r in &rules {
        let alert = r["alert"].as_str().expect("only alerting rules");
        assert!(alerts.insert(alert.to_string()), "alert {alert} twice");
        let expr = r["expr"].as_str().expect("expr");
        assert!(!expr.trim().is_empty());
        let severity = r["labels"]["severity"].as_str().expect("severity label");
        assert!(
            ["critical", "warning"].contains(&severity),
            "{alert}: {severity}"
        );
        assert!(
            r["annotations"]["summary"].as_str().is_some(),
            "{alert}: summary"
        );
        assert!(
            r["annotations"]["description"].as_str().is_some(),
            "{alert}: description"
        );
        if let Some(f) = r.get("for") {
            let f = f.as_str().unwrap();
            assert!(f.ends_with('m') || f.ends_with('h'), "{alert}: for {f}");
        }
        for m in kaizen_metrics(expr) {
            assert!(
                METRICS
                    .iter()
                    .chain(RECEIVER_METRICS)
                    .any(|(n, _, _)| *n == m),
                "{alert} uses {m}, which neither the metrics sink nor wal-receive serves"
            );
            used.insert(m);
        }
    }
    for want in [
        "KaizenBackupFailed",
        "KaizenBackupStale",
        "KaizenBackupVerifyFailed",
        "KaizenBackupVerifyStale",
        "KaizenBackupVolumeNearlyFull",
        "KaizenBackupWalArchivingStalled",
        "KaizenBackupWalArchivingFailing",
        "KaizenBackupRecoveryWindowShort",
        "KaizenBackupWalReceiverUnhealthy",
        "KaizenBackupWalReceiveLagging",
        "KaizenBackupWalGap",
    ] {
        assert!(alerts.contains(want), "{want} missing");
    }
    // The old README's alert: no success in 24 hours for 1 hour, under either metric name.
    let stale = rules
        .iter()
        .find(|r| r["alert"] == "KaizenBackupStale")
        .unwrap();
    let expr = stale["expr"].as_str().unwrap();
    assert!(expr.contains("> 86400"), "{expr}");
    let names = kaizen_metrics(expr);
    assert!(
        names.contains("kaizen_backup_last_success_timestamp_seconds"),
        "{expr}"
    );
    assert!(
        names.contains("kaizen_backup_last_success_timestamp"),
        "{expr}"
    );
    assert_eq!(stale["for"].as_str(), Some("1h"));
    for m in [
        "kaizen_backup_last_status",
        "kaizen_backup_verify_last_status",
        "kaizen_backup_verify_last_success_timestamp_seconds",
        "kaizen_backup_wal_last_archived_timestamp_seconds",
        "kaizen_backup_wal_archive_failing",
        "kaizen_backup_recovery_window_promised_seconds",
        "kaizen_backup_wal_receive_healthy",
        "kaizen_backup_wal_receive_lag_seconds",
        "kaizen_backup_wal_receive_gaps_total",
    ] {
        assert!(used.contains(m), "no alert on {m}");
    }
}

fn find_promtool() -> Option<PathBuf> {
    std::env::var_os("KAIZEN_TEST_PROMTOOL")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|d| d.join("promtool")),
        )
        .find(|p| p.is_file())
}

#[test]
fn promtool_checks_and_unit_tests_pass_when_promtool_is_installed() {
    let Some(promtool) = find_promtool() else {
        eprintln!(
            "promtool not installed (Debian package `prometheus`): structure checked by the other test only"
        );
        return;
    };
    for args in [
        ["check", "rules", "alerts.yaml"],
        ["test", "rules", "alerts_test.yaml"],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(monitoring_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The dashboard's queries parse as PromQL: as recording rules, variables replaced.
    let (doc, panels) = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in dashboard_queries(&doc, &panels).iter().enumerate() {
        let q = q.replace("$database", ".*").replace("$target", ".*");
        // label_values() is Grafana's, not PromQL: check its selector.
        let q = match q.strip_prefix("label_values(") {
            Some(rest) => rest
                .rsplit_once(',')
                .map(|(sel, _)| sel.to_string())
                .unwrap(),
            None => q,
        };
        rules.push_str(&format!(
            "      - record: dashboard_q{i}\n        expr: '{}'\n",
            q.replace('\'', "''")
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.yaml"), rules).unwrap();
    let out = std::process::Command::new(&promtool)
        .args(["check", "rules", "dashboard.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the dashboard's PromQL:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `deploy/monitoring/grafana-dashboard.json` with its panels flattened (rows may nest them).
fn dashboard() -> (serde_json::Value, Vec<serde_json::Value>) {
    let text = std::fs::read_to_string(monitoring_dir().join("grafana-dashboard.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let mut panels = Vec::new();
    for p in doc["panels"].as_array().expect("panels") {
        panels.extend(p["panels"].as_array().into_iter().flatten().cloned());
        panels.push(p.clone());
    }
    (doc, panels)
}

/// Every PromQL query of the dashboard: panel targets and query variables.
fn dashboard_queries(doc: &serde_json::Value, panels: &[serde_json::Value]) -> Vec<String> {
    let mut out: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("every target has a PromQL expr")
                .to_string()
        })
        .collect();
    for v in doc["templating"]["list"].as_array().expect("templating") {
        if v["type"] == "query" {
            out.push(v["query"]["query"].as_str().expect("query").to_string());
        }
    }
    out
}

#[test]
fn the_grafana_dashboard_imports_and_queries_only_metrics_we_write() {
    let (doc, panels) = dashboard();
    // Grafana 10.0 writes schema 38, 10.3+ 39: an import into 10+ needs no migration.
    let schema = doc["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((38..=39).contains(&schema), "schemaVersion {schema}");
    assert_eq!(doc["uid"], "kaizen-backup");
    assert!(doc["title"].as_str().is_some_and(|t| !t.is_empty()));
    // Imported through a data-source input, with database and target variables.
    assert_eq!(doc["__inputs"][0]["name"], "DS_PROMETHEUS");
    let vars: Vec<&str> = doc["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().expect("variable name"))
        .collect();
    for want in ["DS_PROMETHEUS", "database", "target"] {
        assert!(vars.contains(&want), "variable {want} missing: {vars:?}");
    }
    let mut ids = BTreeSet::new();
    for p in &panels {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        for k in ["x", "y", "w", "h"] {
            assert!(
                p["gridPos"][k].as_u64().is_some(),
                "panel {id}: gridPos.{k}"
            );
        }
        if p["type"] == "row" {
            continue;
        }
        assert!(
            p["title"].as_str().is_some_and(|t| !t.is_empty()),
            "panel {id}: title"
        );
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {id}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {id} queries nothing");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            // Every panel follows the variables (the receiver's metrics have no target).
            let receiver = expr.contains("kaizen_backup_wal_receive_");
            assert!(
                expr.contains("database=~\"$database\"")
                    && (receiver || expr.contains("target=~\"$target\"")),
                "panel {id} ignores the variables: {expr}"
            );
        }
    }
    let mut used = BTreeSet::new();
    for q in dashboard_queries(&doc, &panels) {
        let names = kaizen_metrics(&q);
        assert!(!names.is_empty(), "a query on no kaizen-backup metric: {q}");
        for m in names {
            assert!(
                METRICS
                    .iter()
                    .chain(RECEIVER_METRICS)
                    .any(|(n, _, _)| *n == m),
                "the dashboard queries {m}, which neither the metrics sink nor wal-receive serves"
            );
            used.insert(m);
        }
    }
    // Everything we write is on the dashboard (but the old name kept for existing alerts).
    for (m, _, _) in METRICS {
        if *m != "kaizen_backup_last_success_timestamp" {
            assert!(used.contains(*m), "{m} is on no panel");
        }
    }
}
