//! Metrics: the node_exporter textfile, and a real Pushgateway (started by `cargo xtask test`).
#![allow(clippy::unwrap_used)] // tests may unwrap (team rules)

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use backup_core::{Event, EventKind, Notifier};
use backup_notify::metrics::{METRICS, MetricsConfig, MetricsSink, parse};
use common::{event, service_var, unique_db};

/// Checks the text exposition format the way a scraper reads it: every sample line is
/// `name{label="value",...} number`, every metric has one HELP and one TYPE before its
/// samples, and no series appears twice. Returns `(name, labels) -> value`.
fn check_exposition(text: &str) -> BTreeMap<(String, String), f64> {
    let mut seen_type = std::collections::BTreeSet::new();
    let mut seen_help = std::collections::BTreeSet::new();
    let mut series = BTreeMap::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    assert!(text.ends_with('\n'), "must end with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(seen_help.insert(name.to_string()), "second HELP for {name}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split(' ');
            let name = p.next().unwrap();
            // Counters (only *_total) or gauges.
            let kind = p.next();
            assert!(
                kind == Some("gauge") || (kind == Some("counter") && name.ends_with("_total")),
                "{line}"
            );
            assert!(seen_type.insert(name.to_string()), "second TYPE for {name}");
        } else {
            let open = line
                .find('{')
                .unwrap_or_else(|| panic!("no labels: {line}"));
            let close = line.rfind('}').unwrap();
            let name = &line[..open];
            assert!(valid_name(name), "bad name in {line}");
            assert!(
                seen_type.contains(name) && seen_help.contains(name),
                "sample before TYPE/HELP: {line}"
            );
            let labels = &line[open + 1..close];
            assert!(
                labels.starts_with("database=\"") && labels.contains("\",target=\""),
                "{line}"
            );
            let value: f64 = line[close + 1..]
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad value: {line}"));
            assert!(
                series
                    .insert((name.to_string(), labels.to_string()), value)
                    .is_none(),
                "duplicate series {line}"
            );
        }
    }
    series
}

fn at(kind: EventKind, db: &str, ts: &str, targets: &[&str]) -> Event {
    let mut e = event(kind, db);
    e.timestamp = ts.parse().unwrap();
    e.targets = targets.iter().map(|t| t.to_string()).collect();
    e
}

fn textfile_sink(path: &Path) -> MetricsSink {
    MetricsSink::from_config(&MetricsConfig {
        textfile: Some(path.to_path_buf()),
        ..MetricsConfig::default()
    })
    .unwrap()
    .unwrap()
}

fn value(text: &str, name: &str, db: &str, target: &str) -> Option<f64> {
    let s = parse(text);
    s.iter()
        .find(|(k, _)| k.name == name && k.database == db && k.target == target)
        .map(|(_, v)| *v)
}

const T1: &str = "file:///var/backups/kaizen";

#[tokio::test]
async fn textfile_is_valid_and_a_failure_keeps_the_last_success() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("textfile").join("kaizen_backup.prom");
    let sink = textfile_sink(&path);
    let ok_ts = "2024-01-15T14:30:00Z";
    sink.notify(&at(
        EventKind::BackupSucceeded,
        "kaizen_studio",
        ok_ts,
        &[T1],
    ))
    .await
    .unwrap();
    sink.notify(&at(
        EventKind::VerifySucceeded,
        "kaizen_studio",
        "2024-01-15T15:00:00Z",
        &[T1],
    ))
    .await
    .unwrap();
    sink.notify(&at(
        EventKind::BackupFailed,
        "kaizen_studio",
        "2024-01-16T14:30:00Z",
        &[T1],
    ))
    .await
    .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let series = check_exposition(&text);
    let ok = 1_705_329_000.0; // 2024-01-15T14:30:00Z
    let v = |name: &str| value(&text, name, "kaizen_studio", T1);
    assert_eq!(v("kaizen_backup_last_success_timestamp_seconds"), Some(ok));
    assert_eq!(
        v("kaizen_backup_last_success_timestamp"),
        Some(ok),
        "old name kept"
    );
    assert_eq!(
        v("kaizen_backup_last_attempt_timestamp_seconds"),
        Some(ok + 86400.0)
    );
    assert_eq!(v("kaizen_backup_last_status"), Some(0.0));
    assert_eq!(v("kaizen_backup_last_size_bytes"), Some(2_411_724.0));
    assert_eq!(v("kaizen_backup_last_duration_seconds"), Some(12.34));
    assert_eq!(
        v("kaizen_backup_verify_last_success_timestamp_seconds"),
        Some(ok + 1800.0)
    );
    assert_eq!(v("kaizen_backup_verify_last_status"), Some(1.0));
    assert!(series.contains_key(&(
        "kaizen_backup_last_status".to_string(),
        format!("database=\"kaizen_studio\",target=\"{T1}\"")
    )));
    // Readable by node_exporter running as another user; no temporary file left behind.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".prom") || n.contains(".tmp."))
        .collect();
    assert_eq!(names, ["kaizen_backup.prom"]);
    promtool_check_metrics(&text);
}

#[tokio::test]
async fn drills_publish_rto_rpo_and_a_failure_keeps_the_last_success() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kaizen_backup.prom");
    let sink = textfile_sink(&path);
    let mut ok = at(
        EventKind::DrillSucceeded,
        "kaizen_studio",
        "2024-01-15T14:30:00Z",
        &[T1],
    );
    ok.details =
        serde_json::json!({"rto_seconds": 95.5, "rpo_seconds": 42.0, "rto_target_seconds": 1800.0});
    sink.notify(&ok).await.unwrap();
    let mut failed = at(
        EventKind::DrillFailed,
        "kaizen_studio",
        "2024-01-22T14:30:00Z",
        &[T1],
    );
    failed.details = serde_json::json!({"rto_seconds": null, "rpo_seconds": 30.0});
    sink.notify(&failed).await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    check_exposition(&text);
    let v = |name: &str| value(&text, name, "kaizen_studio", T1);
    let t = 1_705_329_000.0;
    assert_eq!(
        v("kaizen_backup_drill_last_success_timestamp_seconds"),
        Some(t)
    );
    assert_eq!(
        v("kaizen_backup_drill_last_attempt_timestamp_seconds"),
        Some(t + 7.0 * 86400.0)
    );
    assert_eq!(v("kaizen_backup_drill_last_status"), Some(0.0));
    assert_eq!(
        v("kaizen_backup_drill_rto_seconds"),
        Some(95.5),
        "kept from the drill that measured it"
    );
    assert_eq!(v("kaizen_backup_drill_rpo_seconds"), Some(30.0));
    assert_eq!(v("kaizen_backup_drill_rto_target_seconds"), Some(1800.0));
    promtool_check_metrics(&text);
}

#[tokio::test]
async fn failure_without_targets_marks_every_known_target_failed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kb.prom");
    let sink = textfile_sink(&path);
    let t2 = "s3://kaizen-backups/prod";
    sink.notify(&at(
        EventKind::BackupSucceeded,
        "db",
        "2024-01-15T14:30:00Z",
        &[T1, t2],
    ))
    .await
    .unwrap();
    // E.g. the database was unreachable before any storage was opened.
    sink.notify(&at(
        EventKind::BackupFailed,
        "db",
        "2024-01-16T14:30:00Z",
        &[],
    ))
    .await
    .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    check_exposition(&text);
    assert_eq!(
        value(&text, "kaizen_backup_last_status", "db", T1),
        Some(0.0)
    );
    assert_eq!(
        value(&text, "kaizen_backup_last_status", "db", t2),
        Some(0.0)
    );
    assert_eq!(value(&text, "kaizen_backup_last_status", "db", ""), None);
}

#[tokio::test]
async fn concurrent_writers_lose_nothing_and_other_lines_are_kept_per_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kb.prom");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let sink = textfile_sink(&path);
        tasks.push(tokio::spawn(async move {
            sink.notify(&at(
                EventKind::BackupSucceeded,
                &format!("db{i}"),
                "2024-01-15T14:30:00Z",
                &[T1],
            ))
            .await
            .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap();
    check_exposition(&text);
    for i in 0..8 {
        assert_eq!(
            value(&text, "kaizen_backup_last_status", &format!("db{i}"), T1),
            Some(1.0),
            "db{i} lost:\n{text}"
        );
    }
}

#[tokio::test]
async fn unwritable_textfile_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    let sink = textfile_sink(&blocker.join("kb.prom"));
    let err = sink
        .notify(&at(
            EventKind::BackupSucceeded,
            "db",
            "2024-01-15T14:30:00Z",
            &[T1],
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not-a-dir"), "{err}");
}

/// `promtool check metrics` (from Debian's `prometheus`) lints the exposition text when it is
/// installed; the checks above run either way.
fn promtool_check_metrics(text: &str) {
    let Some(promtool) = find_promtool() else {
        eprintln!("promtool not found: exposition checked by this test's own parser only");
        return;
    };
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn find_promtool() -> Option<std::path::PathBuf> {
    std::env::var_os("KAIZEN_TEST_PROMTOOL")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|d| d.join("promtool")),
        )
        .find(|p| p.is_file())
}

#[tokio::test]
async fn pushgateway_receives_metrics_and_a_failure_keeps_the_last_success() {
    let base = service_var("KAIZEN_TEST_PUSHGATEWAY_URL");
    let db = unique_db("pg_metrics");
    let sink = MetricsSink::from_config(&MetricsConfig {
        pushgateway: Some(base.clone()),
        instance: Some("test-cluster".into()),
        ..MetricsConfig::default()
    })
    .unwrap()
    .unwrap();
    sink.notify(&at(
        EventKind::BackupSucceeded,
        &db,
        "2024-01-15T14:30:00Z",
        &[T1],
    ))
    .await
    .unwrap();
    sink.notify(&at(
        EventKind::BackupFailed,
        &db,
        "2024-01-16T14:30:00Z",
        &[T1],
    ))
    .await
    .unwrap();
    let exposed = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mine: Vec<&str> = exposed
        .lines()
        .filter(|l| l.contains(&format!("database=\"{db}\"")))
        .collect();
    let find = |name: &str| -> f64 {
        let line = mine
            .iter()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .unwrap_or_else(|| panic!("{name} for {db} missing in:\n{}", mine.join("\n")));
        assert!(line.contains("job=\"kaizen_backup\""), "{line}");
        assert!(line.contains("instance=\"test-cluster\""), "{line}");
        assert!(line.contains(&format!("target=\"{T1}\"")), "{line}");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(
        find("kaizen_backup_last_success_timestamp_seconds"),
        1_705_329_000.0
    );
    assert_eq!(
        find("kaizen_backup_last_success_timestamp"),
        1_705_329_000.0
    );
    assert_eq!(
        find("kaizen_backup_last_attempt_timestamp_seconds"),
        1_705_415_400.0
    );
    assert_eq!(find("kaizen_backup_last_status"), 0.0);
    assert_eq!(find("kaizen_backup_last_size_bytes"), 2_411_724.0);
    // Every metric we push is one the Pushgateway accepted under our names.
    for line in &mine {
        let name = line.split('{').next().unwrap();
        assert!(
            METRICS.iter().any(|(n, _, _)| *n == name) || name.starts_with("push_"),
            "{line}"
        );
    }
}

#[tokio::test]
async fn unreachable_pushgateway_is_a_clear_error() {
    let port = common::closed_port();
    let sink = MetricsSink::from_config(&MetricsConfig {
        pushgateway: Some(format!("http://127.0.0.1:{port}")),
        timeout_secs: Some(2),
        ..MetricsConfig::default()
    })
    .unwrap()
    .unwrap();
    let err = sink
        .notify(&at(
            EventKind::BackupSucceeded,
            "db",
            "2024-01-15T14:30:00Z",
            &[T1],
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("http://127.0.0.1:{port}: connection failed")),
        "{err}"
    );
}

#[test]
fn nothing_configured_means_no_sink_and_bad_urls_are_refused() {
    assert!(
        MetricsSink::from_config(&MetricsConfig::default())
            .unwrap()
            .is_none()
    );
    let err = MetricsSink::from_config(&MetricsConfig {
        pushgateway: Some("pushgateway:9091 nope".into()),
        ..MetricsConfig::default()
    })
    .unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
}

#[tokio::test]
async fn pushgateway_failure_without_targets_replaces_the_old_status() {
    let base = service_var("KAIZEN_TEST_PUSHGATEWAY_URL");
    let db = unique_db("pg_notarget");
    let sink = MetricsSink::from_config(&MetricsConfig {
        pushgateway: Some(base.clone()),
        ..MetricsConfig::default()
    })
    .unwrap()
    .unwrap();
    sink.notify(&at(
        EventKind::BackupSucceeded,
        &db,
        "2024-01-15T14:30:00Z",
        &[T1],
    ))
    .await
    .unwrap();
    sink.notify(&at(
        EventKind::BackupFailed,
        &db,
        "2024-01-16T14:30:00Z",
        &[],
    ))
    .await
    .unwrap();
    let exposed = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mine: Vec<&str> = exposed
        .lines()
        .filter(|l| l.contains(&format!("database=\"{db}\"")))
        .collect();
    let status: Vec<&&str> = mine
        .iter()
        .filter(|l| l.starts_with("kaizen_backup_last_status{"))
        .collect();
    // No stale `1` left for the target: the only status series says failed.
    assert_eq!(status.len(), 1, "{mine:#?}");
    assert!(status[0].ends_with(" 0"), "{mine:#?}");
    assert!(
        mine.iter().any(
            |l| l.starts_with("kaizen_backup_last_success_timestamp_seconds{")
                && l.ends_with(" 1.705329e+09")
        ),
        "{mine:#?}"
    );
}
