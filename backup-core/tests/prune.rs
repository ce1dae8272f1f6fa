//! Prune decisions applied to a storage: never the newest valid backup, never a pinned
//! one or one being read (a live lease); a removed backup loses its manifest first;
//! leftovers only after the grace period; a dry run changes nothing.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use backup_core::lease;
use backup_core::lock::LockInfo;
use backup_core::prune::{self, PruneOptions, PruneReport};
use backup_core::retention::{KeepReason, RetentionPolicy};
use backup_core::storage::{Storage, put_bytes};
use backup_core::testing::{Change, MemoryStorage, Op, manifest, put_backup};
use backup_core::{Error, Manifest};
use bytes::Bytes;
use chrono::{DateTime, Utc};

fn days_ago(n: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::days(n)
}

/// Keep backups younger than a day: everything below is older.
fn one_day() -> RetentionPolicy {
    RetentionPolicy {
        max_age_days: Some(1),
        keep_verified: false,
        ..RetentionPolicy::default()
    }
}

fn options() -> PruneOptions {
    PruneOptions {
        now: Utc::now(),
        ..PruneOptions::default()
    }
}

fn pinned(m: Manifest) -> Manifest {
    let mut json = serde_json::to_value(&m).unwrap();
    json["pinned"] = true.into();
    serde_json::from_value(json).unwrap()
}

/// Backups `b3` (3 days old), `b5` and `b9` of `db`, each with a verify record.
async fn three_backups() -> MemoryStorage {
    let s = MemoryStorage::new("prune");
    for (name, age) in [("b9", 9), ("b5", 5), ("b3", 3)] {
        put_backup(&s, &manifest(name, "db", days_ago(age)))
            .await
            .unwrap();
        put_bytes(
            &s,
            &Manifest::verify_key_for(name),
            Bytes::from_static(b"{}"),
        )
        .await
        .unwrap();
    }
    s
}

fn fate(report: &PruneReport, name: &str) -> (bool, Vec<KeepReason>) {
    let e = report.backups.iter().find(|b| b.name == name).unwrap();
    (e.removed, e.keep.clone())
}

fn deleted(s: &MemoryStorage) -> Vec<String> {
    s.history()
        .into_iter()
        .filter_map(|c| match c {
            Change::Deleted(k) => Some(k),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_newest_backup_is_kept_even_when_every_rule_would_remove_it() {
    let s = three_backups().await;
    let report = prune::run(&s, &one_day(), &options()).await.unwrap();
    assert_eq!(fate(&report, "b3"), (false, vec![KeepReason::Newest]));
    assert_eq!(fate(&report, "b5"), (true, vec![]));
    assert_eq!(fate(&report, "b9"), (true, vec![]));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(s.keys(), ["b3.dump", "b3.manifest.json", "b3.verify.json"]);
    // Each removed backup stops being listed first: manifest, verify record, data.
    assert_eq!(
        deleted(&s),
        [
            "b5.manifest.json",
            "b5.verify.json",
            "b5.dump",
            "b9.manifest.json",
            "b9.verify.json",
            "b9.dump",
        ]
    );
}

#[tokio::test]
async fn pinned_backups_are_kept() {
    let s = MemoryStorage::new("prune");
    put_backup(&s, &pinned(manifest("b9", "db", days_ago(9))))
        .await
        .unwrap();
    put_backup(&s, &manifest("b5", "db", days_ago(5)))
        .await
        .unwrap();
    put_backup(&s, &manifest("b3", "db", days_ago(3)))
        .await
        .unwrap();
    let report = prune::run(&s, &one_day(), &options()).await.unwrap();
    assert_eq!(fate(&report, "b9"), (false, vec![KeepReason::Pinned]));
    assert_eq!(fate(&report, "b5"), (true, vec![]));
    assert!(s.keys().contains(&"b9.dump".to_string()));
    assert!(!s.keys().contains(&"b5.manifest.json".to_string()));
}

#[tokio::test]
async fn set_pinned_rewrites_the_manifest_and_prune_then_keeps_it() {
    let s = three_backups().await;
    let m = prune::set_pinned(&s, "b9", true).await.unwrap();
    assert!(m.pinned);
    let report = prune::run(&s, &one_day(), &options()).await.unwrap();
    assert_eq!(fate(&report, "b9"), (false, vec![KeepReason::Pinned]));
    let err = prune::set_pinned(&s, "nope", true).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
}

#[tokio::test]
async fn a_backup_being_read_is_kept_and_dead_leases_are_removed() {
    let s = three_backups().await;
    let st: Arc<dyn Storage> = Arc::new(s.clone());
    let stale_after = Duration::from_secs(600);
    let live = lease::take(st.clone(), "b9", "restore", stale_after)
        .await
        .unwrap();
    let old = days_ago(1);
    let dead = LockInfo {
        owner: "gone".into(),
        operation: "verify".into(),
        pid: 1,
        host: "elsewhere".into(),
        user: "postgres".into(),
        started_at: old,
        refreshed_at: old,
    };
    let dead_key = lease::lease_key("b5", "gone");
    put_bytes(
        &s,
        &dead_key,
        Bytes::from(serde_json::to_vec(&dead).unwrap()),
    )
    .await
    .unwrap();
    let report = prune::run(&s, &one_day(), &options()).await.unwrap();
    assert_eq!(fate(&report, "b9"), (false, vec![KeepReason::InUse]));
    assert_eq!(fate(&report, "b5"), (true, vec![]));
    assert!(s.keys().contains(&"b9.manifest.json".to_string()));
    assert!(!s.keys().contains(&dead_key));
    live.release().await;
}

#[tokio::test]
async fn a_dry_run_reports_and_changes_nothing() {
    let s = three_backups().await;
    put_bytes(&s, "killed.dump", Bytes::from_static(b"partial"))
        .await
        .unwrap();
    s.set_last_modified("killed.dump", days_ago(2));
    let before = s.keys();
    let opts = PruneOptions {
        dry_run: true,
        ..options()
    };
    let report = prune::run(&s, &one_day(), &opts).await.unwrap();
    assert!(report.dry_run);
    let removed: Vec<&str> = report.removed().map(|e| e.name.as_str()).collect();
    assert_eq!(removed, ["b5", "b9"]);
    assert_eq!(report.incomplete_removed, ["killed.dump"]);
    assert_eq!(s.keys(), before);
    assert!(deleted(&s).is_empty());
}

#[tokio::test]
async fn leftovers_are_removed_only_after_the_grace_period() {
    let s = three_backups().await;
    for key in ["killed.dump", "running.dump"] {
        put_bytes(&s, key, Bytes::from_static(b"partial"))
            .await
            .unwrap();
    }
    s.set_last_modified("killed.dump", days_ago(2));
    let report = prune::run(&s, &RetentionPolicy::default(), &options())
        .await
        .unwrap();
    assert_eq!(report.incomplete_removed, ["killed.dump"]);
    assert!(s.keys().contains(&"running.dump".to_string()));
    assert!(!s.keys().contains(&"killed.dump".to_string()));
    // No rule: every backup stays.
    assert!(report.backups.iter().all(|b| !b.removed));
}

#[tokio::test]
async fn only_the_chosen_database_is_pruned() {
    let s = three_backups().await;
    put_backup(&s, &manifest("x9", "other", days_ago(9)))
        .await
        .unwrap();
    put_backup(&s, &manifest("x5", "other", days_ago(5)))
        .await
        .unwrap();
    let opts = PruneOptions {
        database: Some("other".into()),
        ..options()
    };
    let report = prune::run(&s, &one_day(), &opts).await.unwrap();
    let seen: Vec<&str> = report.backups.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(seen, ["x5", "x9"]);
    assert_eq!(fate(&report, "x9"), (true, vec![]));
    assert!(s.keys().contains(&"b9.manifest.json".to_string()));
}

#[tokio::test]
async fn a_failed_deletion_is_reported_and_the_backup_stays_listed() {
    let s = three_backups().await;
    s.fail(Op::Delete, "b9.manifest.json");
    let report = prune::run(&s, &one_day(), &options()).await.unwrap();
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert!(report.errors[0].starts_with("b9: "), "{:?}", report.errors);
    // The other removal went ahead; b9 is untouched (its manifest could not go first).
    assert_eq!(fate(&report, "b5"), (true, vec![]));
    assert!(report.backups.iter().all(|b| b.name != "b9"));
    for key in ["b9.manifest.json", "b9.verify.json", "b9.dump"] {
        assert!(s.keys().contains(&key.to_string()), "{key}");
    }
}

/// A physical backup's manifest (the shape `backup --physical` writes).
fn physical(name: &str, finished_at: DateTime<Utc>) -> Manifest {
    let mut json = serde_json::to_value(manifest(name, "db", finished_at)).unwrap();
    json["kind"] = "physical".into();
    json["physical"] = serde_json::json!({
        "timeline": 1,
        "start_lsn": "0/2000028",
        "end_lsn": "0/2000100",
        "system_identifier": "7000000000000000001",
        "wal_segment_size": 16_777_216,
    });
    serde_json::from_value(json).unwrap()
}

#[tokio::test]
async fn max_age_keeps_the_physical_backup_the_recovery_window_starts_from() {
    let s = MemoryStorage::new("prune");
    for age in [9, 5, 3] {
        put_backup(&s, &manifest(&format!("l{age}"), "db", days_ago(age)))
            .await
            .unwrap();
        put_backup(&s, &physical(&format!("p{age}"), days_ago(age)))
            .await
            .unwrap();
    }
    let policy = RetentionPolicy {
        max_age_days: Some(4),
        keep_verified: false,
        ..RetentionPolicy::default()
    };
    let report = prune::run(&s, &policy, &options()).await.unwrap();
    // Logical backups: only what is younger than 4 days.
    assert_eq!(
        fate(&report, "l3"),
        (false, vec![KeepReason::Newest, KeepReason::MaxAge])
    );
    assert_eq!(fate(&report, "l5"), (true, vec![]));
    // Physical: p5 too, or no restore could reach 4 days back.
    assert_eq!(
        fate(&report, "p3"),
        (false, vec![KeepReason::Newest, KeepReason::MaxAge])
    );
    assert_eq!(fate(&report, "p5"), (false, vec![KeepReason::WindowStart]));
    assert_eq!(fate(&report, "p9"), (true, vec![]));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}
