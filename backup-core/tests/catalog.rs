//! The catalog of a storage, read from the storage itself: complete backups newest
//! first, leftovers without a manifest, unreadable manifests, `latest`, `resolve`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use backup_core::catalog::{self, Catalog};
use backup_core::storage::{Storage, put_bytes};
use backup_core::testing::{MemoryStorage, Op, manifest, put_backup};
use backup_core::{Error, Manifest};
use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};

fn days_ago(n: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).unwrap() - Duration::days(n)
}

/// `m` with one field changed through its JSON form (the field types may change; the
/// JSON does not).
fn with(m: Manifest, field: &str, value: serde_json::Value) -> Manifest {
    let mut json = serde_json::to_value(&m).unwrap();
    json[field] = value;
    serde_json::from_value(json).unwrap()
}

fn names(cat: &Catalog) -> Vec<&str> {
    cat.backups
        .iter()
        .map(|b| b.manifest.name.as_str())
        .collect()
}

async fn put(s: &MemoryStorage, key: &str, data: &'static [u8]) {
    put_bytes(s, key, Bytes::from_static(data)).await.unwrap();
}

/// Three backups of `db` (one a safety copy, the newest), one of `other`, and what a
/// storage holds beside them.
async fn filled() -> MemoryStorage {
    let s = MemoryStorage::new("cat");
    put_backup(&s, &manifest("old", "db", days_ago(3)))
        .await
        .unwrap();
    put_backup(&s, &manifest("mid", "db", days_ago(2)))
        .await
        .unwrap();
    put_backup(&s, &manifest("theirs", "other", days_ago(1)))
        .await
        .unwrap();
    let safety = with(
        manifest("safety", "db", days_ago(0)),
        "kind",
        "safety".into(),
    );
    put_backup(&s, &safety).await.unwrap();
    // A killed run's data, a lock, a claim, a lease and a verify record.
    put(&s, "killed.dump", b"partial").await;
    put(&s, "db.lock", b"{}").await;
    put(&s, "db.lock.abc.0.lock", b"{}").await;
    put(&s, "mid.owner1.lease", b"{}").await;
    let record = serde_json::json!({
        "format_version": 1,
        "name": "mid",
        "started_at": days_ago(1),
        "finished_at": days_ago(1),
        "passed": true,
        "quick": false,
        "checks": [],
        "tool_version": "0.1.0",
    });
    put_bytes(
        &s,
        "mid.verify.json",
        Bytes::from(serde_json::to_vec(&record).unwrap()),
    )
    .await
    .unwrap();
    s
}

#[tokio::test]
async fn backups_are_listed_newest_first_with_their_verify_records() {
    let s = filled().await;
    let cat = catalog::scan(&s).await.unwrap();
    assert_eq!(names(&cat), ["safety", "theirs", "mid", "old"]);
    let mid = cat.get("mid").unwrap();
    assert_eq!(mid.verify_state(), "verified");
    assert_eq!(mid.data.as_ref().unwrap().key, "mid.dump");
    assert_eq!(cat.get("old").unwrap().verify_state(), "unverified");
    assert!(cat.get("killed").is_none());
    assert!(cat.unreadable.is_empty());
}

#[tokio::test]
async fn only_data_without_a_manifest_is_incomplete() {
    let s = filled().await;
    let cat = catalog::scan(&s).await.unwrap();
    let incomplete: Vec<&str> = cat.incomplete.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(incomplete, ["killed.dump"]);
}

#[tokio::test]
async fn latest_skips_safety_copies_and_other_databases() {
    let s = filled().await;
    let cat = catalog::scan(&s).await.unwrap();
    assert_eq!(cat.latest(Some("db")).unwrap().manifest.name, "mid");
    assert_eq!(cat.latest(Some("other")).unwrap().manifest.name, "theirs");
    assert_eq!(cat.latest(None).unwrap().manifest.name, "theirs");
    assert!(cat.latest(Some("nobody")).is_none());
}

#[tokio::test]
async fn unreadable_manifests_and_missing_data_are_reported() {
    let s = MemoryStorage::new("cat");
    put(&s, "bad.manifest.json", b"{ not json").await;
    put(&s, "bad.dump", b"data").await;
    let lost = manifest("lost", "db", days_ago(1));
    put_bytes(
        &s,
        "lost.manifest.json",
        Bytes::from(lost.to_json().unwrap()),
    )
    .await
    .unwrap();
    let cat = catalog::scan(&s).await.unwrap();
    assert_eq!(cat.unreadable.len(), 1);
    assert_eq!(cat.unreadable[0].0, "bad.manifest.json");
    assert!(
        cat.unreadable[0].1.contains("manifest is not valid JSON"),
        "{}",
        cat.unreadable[0].1
    );
    // The data of an unreadable manifest belongs to no backup.
    let incomplete: Vec<&str> = cat.incomplete.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(incomplete, ["bad.dump"]);
    assert_eq!(names(&cat), ["lost"]);
    assert!(cat.backups[0].data.is_none());
}

#[tokio::test]
async fn a_storage_that_cannot_be_listed_is_an_error() {
    let s = filled().await;
    s.fail(Op::List, "");
    let err = catalog::scan(&s).await.unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
}

#[tokio::test]
async fn resolve_finds_latest_and_names() {
    let s = filled().await;
    let st: Arc<dyn Storage> = Arc::new(s.clone());
    let no_dir = |_: &std::path::Path| -> backup_core::Result<Arc<dyn Storage>> {
        panic!("no file path was given")
    };
    let r = catalog::resolve(&st, "latest", "db", no_dir).await.unwrap();
    assert_eq!((r.name.as_str(), r.data_key.as_str()), ("mid", "mid.dump"));
    assert_eq!(r.manifest.unwrap().database, "db");
    let r = catalog::resolve(&st, "old", "db", no_dir).await.unwrap();
    assert_eq!(r.data_key, "old.dump");
    assert!(!r.is_directory());
    let err = catalog::resolve(&st, "latest", "nobody", no_dir)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    assert!(err.to_string().contains("\"nobody\""), "{err}");
    let err = catalog::resolve(&st, "gone", "db", no_dir)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("see `kaizen-backup list`"),
        "{err}"
    );
}
