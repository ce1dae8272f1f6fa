//! `deploy/monitoring/alerts.yaml`: well-formed Prometheus rules that only use metrics
//! this crate writes; with promtool installed, also `promtool check rules` and the rule
//! unit tests in `alerts_test.yaml`.
#![allow(clippy::unwrap_used)] // tests may unwrap (team rules)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use backup_notify::metrics::METRICS;
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
                METRICS.iter().any(|(n, _, _)| *n == m),
                "{alert} uses {m}, which backup_notify::metrics never writes"
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
}
