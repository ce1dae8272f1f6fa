//! Issue 6: retention, pinning and locking, end to end through the binary.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use kaizen_backup_e2e::cli::{signal, wait};
use kaizen_backup_e2e::{Cli, Pg};

fn set_finished_at(cli: &Cli, name: &str, ts: &str) {
    let path = cli.backups().join(format!("{name}.manifest.json"));
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["finished_at"] = serde_json::json!(ts);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

fn names(cli: &Cli) -> Vec<String> {
    let mut v: Vec<String> = cli
        .list()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// Backups b0..bN of a small database, with finished_at set to the given times.
fn backups_at(cli: &Cli, times: &[&str]) {
    for (i, t) in times.iter().enumerate() {
        let name = format!("b{i}");
        cli.run(&["backup", &name, "--no-prune"]).assert_code(0);
        set_finished_at(cli, &name, t);
    }
}

fn small_db(pg: &Pg, prefix: &str) -> kaizen_backup_e2e::TestDb {
    let db = pg.create_db(prefix);
    pg.psql(
        &db.name,
        "CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 100)",
    );
    db
}

#[test]
fn keep_last_with_dry_run_and_pin() {
    let pg = Pg::get();
    let db = small_db(&pg, "kr_last");
    let cli = Cli::for_db(&db.name);
    backups_at(
        &cli,
        &[
            "2024-01-01T02:00:00Z",
            "2024-01-02T02:00:00Z",
            "2024-01-03T02:00:00Z",
            "2024-01-04T02:00:00Z",
        ],
    );
    cli.run(&["pin", "b0"]).assert_code(0);
    let before = cli.backup_files();
    let cli = cli.env("BACKUP_RETENTION_COUNT", "1");
    let out = cli.run(&["prune", "--dry-run", "--json"]);
    out.assert_code(0)
        .assert_stderr_contains("Would delete b1")
        .assert_stderr_contains("Keep b0")
        .assert_stderr_contains("pinned");
    assert_eq!(cli.backup_files(), before, "--dry-run deleted something");
    let report = out.json();
    let removed: Vec<&str> = report[0]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["removed"] == true)
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(removed, ["b2", "b1"]);
    cli.run(&["prune"]).assert_code(0);
    assert_eq!(names(&cli), ["b0", "b3"]);
    // Deleted completely: no data, manifest or verify record left behind.
    assert!(
        cli.backup_files()
            .iter()
            .all(|f| !f.starts_with("b1.") && !f.starts_with("b2.")),
        "{:?}",
        cli.backup_files()
    );
    cli.run(&["unpin", "b0"]).assert_code(0);
    cli.run(&["prune"]).assert_code(0);
    assert_eq!(names(&cli), ["b3"]);
    cli.run(&["pin", "nope"]).assert_code(1);
}

#[test]
fn calendar_rules_keep_the_newest_per_period() {
    let pg = Pg::get();
    let db = small_db(&pg, "kr_cal");
    let cli = Cli::for_db(&db.name);
    backups_at(
        &cli,
        &[
            "2024-03-01T02:00:00Z", // b0: march
            "2024-03-10T02:00:00Z", // b1: march (newest of march? no: b2)
            "2024-03-20T02:00:00Z", // b2: newest of march
            "2024-04-01T02:00:00Z", // b3
            "2024-04-01T14:00:00Z", // b4: newest of 2024-04-01
            "2024-04-02T02:00:00Z", // b5: newest overall
        ],
    );
    let cli = cli
        .env("KAIZEN_BACKUP_RETENTION__KEEP_DAILY", "2")
        .env("KAIZEN_BACKUP_RETENTION__KEEP_MONTHLY", "2");
    cli.run(&["prune"]).assert_code(0);
    // daily: b5 (04-02), b4 (04-01); monthly: b5 (april), b2 (march).
    assert_eq!(names(&cli), ["b2", "b4", "b5"]);
}

#[test]
fn max_age_and_automatic_prune_after_backup() {
    let pg = Pg::get();
    let db = small_db(&pg, "kr_age");
    let cli = Cli::for_db(&db.name);
    backups_at(&cli, &["2020-01-01T02:00:00Z", "2020-01-02T02:00:00Z"]);
    let cli = cli.env("BACKUP_RETENTION_DAYS", "30");
    // A failed backup never prunes.
    let bad = Cli::for_db(&db.name)
        .env("BACKUP_DIR", cli.backups().to_str().unwrap())
        .env("BACKUP_RETENTION_DAYS", "30")
        .env("POSTGRES_PASSWORD", "wrong");
    bad.run(&["backup", "fails"]).assert_code(1);
    assert_eq!(names(&cli), ["b0", "b1"]);
    // A good one does: the two old ones go, the new one stays.
    cli.run(&["backup", "fresh"])
        .assert_code(0)
        .assert_stderr_contains("Deleted b0");
    assert_eq!(names(&cli), ["fresh"]);
}

#[test]
fn incomplete_leftovers_are_cleaned_after_the_grace_period_only() {
    let pg = Pg::get();
    let db = small_db(&pg, "kr_left");
    let cli = Cli::for_db(&db.name).env("BACKUP_RETENTION_COUNT", "5");
    cli.run(&["backup", "good"]).assert_code(0);
    let young = cli.backups().join("young.dump");
    let old = cli.backups().join("old.dump");
    std::fs::write(&young, b"x").unwrap();
    std::fs::write(&old, b"x").unwrap();
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 86400);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(two_days_ago)
        .unwrap();
    cli.run(&["prune"]).assert_code(0);
    assert!(young.exists(), "a young leftover may still be written");
    assert!(!old.exists(), "an old leftover is cleaned");
    assert_eq!(names(&cli), ["good"]);
}

fn big_db(pg: &Pg, prefix: &str) -> kaizen_backup_e2e::TestDb {
    let db = pg.create_db(prefix);
    pg.psql(&db.name, "CREATE TABLE big AS SELECT g, md5(g::text) AS h, repeat(md5(g::text), 4) AS pad FROM generate_series(1, 1500000) g");
    db
}

fn wait_for_file(cli: &Cli, suffix: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cli.backup_files().iter().any(|f| f.ends_with(suffix)) {
        assert!(Instant::now() < deadline, "{suffix} never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn concurrent_backups_wait_or_refuse_naming_the_holder() {
    let pg = Pg::get();
    let db = big_db(&pg, "kr_conc");
    let cli = Cli::for_db(&db.name).env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "none");
    let first = cli.spawn(&["backup", "first"]);
    wait_for_file(&cli, ".lock");
    let out = cli.run(&["backup", "second"]);
    out.assert_code(1)
        .assert_stderr_contains("holds the lock")
        .assert_stderr_contains("backup by ");
    // Waiting instead: the second runs once the first is done.
    let waiting = cli.spawn(&["backup", "third", "--lock-timeout", "300"]);
    assert_eq!(wait(first).code, 0);
    let third = wait(waiting);
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert!(
        third.stderr.contains("Waiting for the lock"),
        "{}",
        third.stderr
    );
    assert_eq!(names(&cli), ["first", "third"]);
    assert!(
        !cli.backup_files().iter().any(|f| f.ends_with(".lock")),
        "lock not released"
    );
}

#[test]
fn a_killed_runs_lock_does_not_block() {
    let pg = Pg::get();
    let db = big_db(&pg, "kr_kill");
    let cli = Cli::for_db(&db.name).env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "none");
    let child = cli.spawn(&["backup", "killed"]);
    wait_for_file(&cli, ".lock");
    signal(&child, nix::sys::signal::Signal::SIGKILL);
    wait(child);
    assert!(
        cli.backup_files().iter().any(|f| f.ends_with(".lock")),
        "the killed run left its lock"
    );
    // Same host, process gone: taken over at once.
    cli.run(&["backup", "next"])
        .assert_code(0)
        .assert_stderr_contains("abandoned lock");
    assert_eq!(names(&cli), ["next"]);
}

#[test]
fn a_lock_from_another_host_blocks_until_stale() {
    let pg = Pg::get();
    let db = small_db(&pg, "kr_host");
    let cli = Cli::for_db(&db.name).env("KAIZEN_BACKUP_LOCK__STALE_AFTER_SECS", "60");
    std::fs::create_dir_all(cli.backups()).unwrap();
    let lock = |refreshed: &str| {
        serde_json::json!({
            "owner": "x", "operation": "backup", "pid": 1, "host": "other-pod-7", "user": "kaizen",
            "started_at": refreshed, "refreshed_at": refreshed
        })
        .to_string()
    };
    let now = chrono_like_now();
    std::fs::write(cli.backups().join(format!("{}.lock", db.name)), lock(&now)).unwrap();
    cli.run(&["backup", "blocked"])
        .assert_code(1)
        .assert_stderr_contains("kaizen@other-pod-7");
    assert!(names(&cli).is_empty());
    std::fs::write(
        cli.backups().join(format!("{}.lock", db.name)),
        lock("2020-01-01T00:00:00Z"),
    )
    .unwrap();
    cli.run(&["backup", "after_stale"])
        .assert_code(0)
        .assert_stderr_contains("abandoned lock");
}

/// RFC 3339 "now" without a chrono dependency in the tests.
fn chrono_like_now() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
