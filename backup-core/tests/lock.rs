//! Run locks against the in-memory storage: taken and released without leftovers,
//! refused while held, waited for, taken over only when abandoned, never deleted when
//! they belong to another run.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use backup_core::Error;
use backup_core::lock::{self, LockInfo, LockOptions};
use backup_core::storage::{Storage, put_bytes};
use backup_core::testing::MemoryStorage;
use bytes::Bytes;
use chrono::Utc;

/// pid_max is below 2^22 on Linux: no process has this id.
const DEAD_PID: u32 = 4_194_999;

fn store() -> (MemoryStorage, Arc<dyn Storage>) {
    let s = MemoryStorage::new("locks");
    (s.clone(), Arc::new(s))
}

fn waiting(timeout: Duration) -> LockOptions {
    LockOptions {
        timeout,
        ..LockOptions::default()
    }
}

/// A lock written by another run: on `host`, refreshed `age` ago.
fn holder(host: &str, pid: u32, age: chrono::Duration) -> LockInfo {
    let at = Utc::now() - age;
    LockInfo {
        owner: format!("other{pid}"),
        operation: "backup".into(),
        pid,
        host: host.into(),
        user: "postgres".into(),
        started_at: at,
        refreshed_at: at,
    }
}

async fn put_lock(s: &MemoryStorage, key: &str, info: &LockInfo) {
    put_bytes(s, key, Bytes::from(serde_json::to_vec(info).unwrap()))
        .await
        .unwrap();
}

fn lock_in(s: &MemoryStorage, key: &str) -> LockInfo {
    serde_json::from_slice(&s.object(key).unwrap()).unwrap()
}

#[tokio::test]
async fn a_free_lock_is_taken_then_released_without_leftovers() {
    let (s, st) = store();
    let g = lock::acquire(st, "kaizen studio", "backup", LockOptions::default())
        .await
        .unwrap();
    assert_eq!(s.keys(), ["kaizen_studio.lock"]);
    let me = lock_in(&s, "kaizen_studio.lock");
    assert_eq!(me.owner, g.owner());
    assert_eq!(me.operation, "backup");
    assert_eq!(me.pid, std::process::id());
    assert_eq!(me.host, backup_core::util::hostname());
    g.release().await.unwrap();
    // The lock and the claim used to release it are gone.
    assert_eq!(s.keys(), Vec::<String>::new());
}

#[tokio::test]
async fn a_held_lock_is_refused_naming_its_holder() {
    let (s, st) = store();
    let g = lock::acquire(st.clone(), "db", "backup", LockOptions::default())
        .await
        .unwrap();
    let err = lock::acquire(st, "db", "prune", LockOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("another kaizen-backup run holds the lock on db in memory://locks"),
        "{msg}"
    );
    assert!(msg.contains("backup by "), "{msg}");
    assert_eq!(lock_in(&s, "db.lock").owner, g.owner());
    g.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_waiting_run_gets_the_lock_once_it_is_released() {
    let (s, st) = store();
    let first = lock::acquire(st.clone(), "db", "backup", LockOptions::default())
        .await
        .unwrap();
    let waiter = tokio::spawn(lock::acquire(
        st,
        "db",
        "prune",
        waiting(Duration::from_secs(60)),
    ));
    // On this single-threaded runtime the waiter runs until it waits for the lock.
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    assert_eq!(lock_in(&s, "db.lock").owner, first.owner());
    first.release().await.unwrap();
    let second = waiter.await.unwrap().unwrap();
    assert_eq!(lock_in(&s, "db.lock").owner, second.owner());
    assert_eq!(lock_in(&s, "db.lock").operation, "prune");
    second.release().await.unwrap();
}

#[tokio::test]
async fn waiting_ends_with_a_refusal_at_the_timeout() {
    let (_s, st) = store();
    let first = lock::acquire(st.clone(), "db", "backup", LockOptions::default())
        .await
        .unwrap();
    // One retry (the timeout is measured on the wall clock), then the refusal.
    let err = lock::acquire(st, "db", "prune", waiting(Duration::from_millis(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");
    first.release().await.unwrap();
}

#[tokio::test]
async fn an_abandoned_lock_is_taken_over() {
    let stale = holder("elsewhere", 1234, chrono::Duration::hours(1));
    let dead_here = holder(
        &backup_core::util::hostname(),
        DEAD_PID,
        chrono::Duration::zero(),
    );
    for gone in [stale, dead_here] {
        let (s, st) = store();
        put_lock(&s, "db.lock", &gone).await;
        let g = lock::acquire(st, "db", "backup", LockOptions::default())
            .await
            .unwrap();
        assert_eq!(lock_in(&s, "db.lock").owner, g.owner());
        // The claim used for the take-over is gone too.
        assert_eq!(s.keys(), ["db.lock"]);
        g.release().await.unwrap();
    }
}

#[tokio::test]
async fn a_live_lock_of_another_host_is_not_taken_over() {
    let (s, st) = store();
    let live = holder("elsewhere", 1234, chrono::Duration::seconds(5));
    put_lock(&s, "db.lock", &live).await;
    let err = lock::acquire(st, "db", "backup", LockOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("@elsewhere (pid 1234)"), "{err}");
    assert_eq!(lock_in(&s, "db.lock"), live);
}

#[tokio::test]
async fn an_unreadable_lock_is_judged_by_its_age() {
    let (s, st) = store();
    put_bytes(&s, "db.lock", Bytes::from_static(b"not json"))
        .await
        .unwrap();
    let err = lock::acquire(st.clone(), "db", "backup", LockOptions::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("an unreadable lock object"),
        "{err}"
    );
    assert_eq!(&s.object("db.lock").unwrap()[..], b"not json");
    s.set_last_modified("db.lock", Utc::now() - chrono::Duration::hours(1));
    let g = lock::acquire(st, "db", "backup", LockOptions::default())
        .await
        .unwrap();
    assert_eq!(lock_in(&s, "db.lock").owner, g.owner());
    g.release().await.unwrap();
}

#[tokio::test]
async fn the_claim_of_a_dead_run_does_not_block_a_take_over() {
    let (s, st) = store();
    let gone = holder("elsewhere", 1234, chrono::Duration::hours(1));
    put_lock(&s, "db.lock", &gone).await;
    // A run that died while taking the lock over left its claim behind.
    let claimer = holder(
        &backup_core::util::hostname(),
        DEAD_PID,
        chrono::Duration::zero(),
    );
    let claim = format!("db.lock.{}.0.lock", gone.owner);
    put_lock(&s, &claim, &claimer).await;
    let g = lock::acquire(st, "db", "backup", LockOptions::default())
        .await
        .unwrap();
    assert_eq!(lock_in(&s, "db.lock").owner, g.owner());
    assert_eq!(s.keys(), ["db.lock"]);
    g.release().await.unwrap();
}

#[tokio::test]
async fn releasing_a_lock_taken_over_meanwhile_leaves_the_new_holder_alone() {
    let (s, st) = store();
    let g = lock::acquire(st.clone(), "db", "backup", LockOptions::default())
        .await
        .unwrap();
    let newer = holder("elsewhere", 99, chrono::Duration::zero());
    st.put_replace("db.lock", Bytes::from(serde_json::to_vec(&newer).unwrap()))
        .await
        .unwrap();
    g.release().await.unwrap();
    assert_eq!(lock_in(&s, "db.lock"), newer);
    assert_eq!(s.keys(), ["db.lock"]);
}

#[tokio::test]
async fn live_holders_lists_other_live_runs_only() {
    let (s, st) = store();
    let g = lock::acquire(st.clone(), "db1", "backup", LockOptions::default())
        .await
        .unwrap();
    let live = holder("elsewhere", 7, chrono::Duration::seconds(5));
    put_lock(&s, "db2.lock", &live).await;
    put_lock(
        &s,
        "db3.lock",
        &holder("elsewhere", 8, chrono::Duration::hours(1)),
    )
    .await;
    let stale_after = LockOptions::default().stale_after;
    let others = lock::live_holders(st.as_ref(), Some(g.owner()), stale_after)
        .await
        .unwrap();
    assert_eq!(others, [live.describe()]);
    let all = lock::live_holders(st.as_ref(), None, stale_after)
        .await
        .unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    g.release().await.unwrap();
}
