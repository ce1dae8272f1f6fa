//! Issue 13: run locks and what killed runs leave behind, end to end through the binary.
//! (The lock itself is hammered without the binary in backup-storage/tests/locks.rs.)

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kaizen_backup_e2e::cli::{signal, wait};
use kaizen_backup_e2e::proxy::Proxy;
use kaizen_backup_e2e::services::S3;
use kaizen_backup_e2e::{Cli, Pg, TestDb, unique, wait_until};
use nix::sys::signal::Signal;

fn small_db(pg: &Pg, prefix: &str) -> TestDb {
    let db = pg.create_db(prefix);
    pg.psql(
        &db.name,
        "CREATE TABLE t(x int primary key, v text); \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
    );
    db
}

/// Entries of `dir` whose name starts with `prefix`.
fn entries(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Sessions on `db` waiting for a lock (the run's snapshot counts or pg_dump, blocked by
/// a test's LOCK TABLE).
fn blocked_sessions(pg: &Pg, db: &str) -> usize {
    pg.psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' \
             AND wait_event_type = 'Lock'"
        ),
    )
    .parse()
    .unwrap()
}

#[test]
fn simultaneous_backups_never_overlap() {
    let pg = Pg::get();
    let db = small_db(&pg, "khl_sim");
    let cli = Cli::for_db(&db.name);
    // Four runs at once, each waiting for the lock: every one must get it in turn.
    let runs: Vec<_> = (0..4)
        .map(|i| cli.spawn(&["backup", &format!("sim{i}"), "--lock-timeout", "120"]))
        .collect();
    for r in runs {
        let out = wait(r);
        out.assert_code(0);
    }
    // What each run did while holding the lock, by its manifest: no two intervals meet.
    let mut spans: Vec<(String, String, String)> = cli
        .list()
        .iter()
        .map(|b| {
            (
                b["started_at"].as_str().unwrap().to_string(),
                b["created_at"].as_str().unwrap().to_string(),
                b["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(spans.len(), 4, "{spans:?}");
    spans.sort();
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap();
    for w in spans.windows(2) {
        assert!(
            parse(&w[0].1) <= parse(&w[1].0),
            "{} and {} ran at the same time: {spans:?}",
            w[0].2,
            w[1].2
        );
    }
    // Nothing is left: no lock, no claim, no partial file.
    let files = cli.backup_files();
    assert!(
        !files
            .iter()
            .any(|f| f.ends_with(".lock") || f.starts_with(".partial.")),
        "{files:?}"
    );
}

#[test]
fn a_killed_parallel_backup_leaves_private_staging_that_the_next_run_removes() {
    let pg = Pg::get();
    let db = small_db(&pg, "khl_stage");
    let cli = Cli::for_db(&db.name);
    let staging = cli.path().join("staging");
    let cli = cli.env(
        "KAIZEN_BACKUP_BACKUP__STAGING_DIR",
        staging.to_str().unwrap(),
    );
    // pg_dump waits behind this lock, so each run stays at a known step: its staging
    // directory made, pg_dump running.
    let key: u32 = rand::random::<u32>() >> 1;
    let holder = pg.hold_advisory_lock(
        &db.name,
        &format!("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_advisory_lock({key})"),
    );

    let killed = cli.spawn(&["backup", "killed", "--jobs", "2"]);
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
            blocked_sessions(&pg, &db.name) >= 1 && entries(&staging, "kaizen-dump-").len() == 1
        }),
        "the backup never reached pg_dump with its staging directory"
    );
    let left = entries(&staging, "kaizen-dump-");
    signal(&killed, Signal::SIGKILL);
    wait(killed);
    assert!(left[0].exists(), "the killed run's staging is gone already");
    assert_eq!(mode(&left[0]), 0o700, "staging is not private");

    // The next run removes the dead run's staging, and keeps its own while it lives.
    let live = cli.spawn(&["backup", "live", "--jobs", "2"]);
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
            let now = entries(&staging, "kaizen-dump-");
            now.len() == 1 && now[0] != left[0]
        }),
        "the dead run's staging was not removed: {:?}",
        entries(&staging, "kaizen-dump-")
    );
    let mine = entries(&staging, "kaizen-dump-");
    assert_eq!(mode(&mine[0]), 0o700);
    // A third run (refused: the live one holds the lock) must not touch the live staging.
    cli.run(&["backup", "third", "--lock-timeout", "0"])
        .assert_code(1)
        .assert_stderr_contains("holds the lock");
    assert_eq!(entries(&staging, "kaizen-dump-"), mine);

    drop(holder);
    let out = wait(live);
    out.assert_code(0);
    assert_eq!(entries(&staging, "kaizen-dump-"), Vec::<PathBuf>::new());
    assert!(pg.pg_dump_sessions_end(&db.name));
}

#[test]
fn unfinished_s3_uploads_are_listed_and_aborted_only_when_their_run_is_gone() {
    let pg = Pg::get();
    let s3 = S3::get();
    let db = pg.create_db("khl_mpu");
    pg.psql(&db.name, "CREATE TABLE big AS SELECT g, md5(g::text) AS a, md5((g*3)::text) AS b FROM generate_series(1, 300000) g");
    let other = pg.create_db("khl_mpu_live");
    pg.psql(&other.name, "CREATE TABLE big AS SELECT g, md5(g::text) AS a, md5((g*3)::text) AS b FROM generate_series(1, 300000) g");
    let url = s3.url(&unique("mpu"));
    let cli = s3
        .cli(&db.name)
        .env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "none");
    let unfinished = |cli: &Cli| -> Vec<String> {
        let out = cli.run(&["--storage", &url, "list", "--json"]);
        out.assert_code(0);
        out.json()
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"] == "unfinished_upload")
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect()
    };

    // A live run of another database, held mid-upload in the same storage.
    let live_proxy = Proxy::start(&s3.endpoint);
    live_proxy.freeze_after(2 * 1024 * 1024);
    let live_cli = s3
        .cli(&other.name)
        .env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "none");
    let live = live_cli.spawn_with(
        &[("AWS_ENDPOINT_URL", &live_proxy.url)],
        &["--storage", &url, "backup", "live"],
    );
    assert!(live_proxy.wait_frozen(Duration::from_secs(120)));
    assert_eq!(unfinished(&cli), ["live.dump"]);

    // A run killed mid-upload (the proxy holds its upload 2 MiB in). It started while the
    // live run held its lock, so it removed nothing of the live run's.
    let dead_proxy = Proxy::start(&s3.endpoint);
    dead_proxy.freeze_after(2 * 1024 * 1024);
    let dead = cli.spawn_with(
        &[("AWS_ENDPOINT_URL", &dead_proxy.url)],
        &["--storage", &url, "backup", "killed"],
    );
    assert!(dead_proxy.wait_frozen(Duration::from_secs(120)));
    signal(&dead, Signal::SIGKILL);
    wait(dead);
    assert_eq!(unfinished(&cli), ["killed.dump", "live.dump"]);
    let text = cli.run(&["--storage", &url, "list"]);
    text.assert_code(0);
    assert!(
        text.stdout.contains("killed.dump") && text.stdout.contains("UNFINISHED UPLOAD"),
        "{}",
        text.stdout
    );

    // prune cannot prove either run gone (a live lock is in the storage): both stay.
    let out = cli.run(&["--storage", &url, "prune"]);
    out.assert_code(0);
    assert_eq!(unfinished(&cli), ["killed.dump", "live.dump"]);

    // The live run finishes its backup; now prune aborts the dead run's upload.
    live_proxy.thaw();
    wait(live).assert_code(0);
    let out = cli.run(&["--storage", &url, "prune", "--json"]);
    out.assert_code(0);
    assert_eq!(
        out.json()[0]["uploads_aborted"],
        serde_json::json!(["killed.dump"])
    );
    assert_eq!(unfinished(&cli), Vec::<String>::new());
    let names: Vec<String> = cli
        .run(&["--storage", &url, "list", "--json"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["live"]);
}

#[test]
fn a_killed_backups_upload_is_aborted_by_the_next_backup() {
    let pg = Pg::get();
    let s3 = S3::get();
    let db = pg.create_db("khl_next");
    pg.psql(&db.name, "CREATE TABLE big AS SELECT g, md5(g::text) AS a, md5((g*3)::text) AS b FROM generate_series(1, 300000) g");
    let url = s3.url(&unique("next"));
    let cli = s3
        .cli(&db.name)
        .env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "none");
    let proxy = Proxy::start(&s3.endpoint);
    proxy.freeze_after(2 * 1024 * 1024);
    let dead = cli.spawn_with(
        &[("AWS_ENDPOINT_URL", &proxy.url)],
        &["--storage", &url, "backup", "killed"],
    );
    assert!(proxy.wait_frozen(Duration::from_secs(120)));
    signal(&dead, Signal::SIGKILL);
    wait(dead);
    // Its lock is left too: the next run takes it over (the process is gone) and aborts
    // the upload it left.
    let out = cli.run(&["--storage", &url, "backup", "after", "--lock-timeout", "0"]);
    out.assert_code(0);
    assert!(
        out.stderr
            .contains("Aborted an unfinished upload of killed.dump"),
        "{}",
        out.stderr
    );
    let rows = cli.run(&["--storage", &url, "list", "--json"]).json();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["name"], "after");
}

#[test]
fn a_killed_local_backups_partial_file_is_listed_then_removed_by_the_next_backup() {
    let pg = Pg::get();
    let db = small_db(&pg, "khl_partial");
    let cli = Cli::for_db(&db.name);
    // pg_dump waits behind this lock with its output file open: a known step.
    let key: u32 = rand::random::<u32>() >> 1;
    let holder = pg.hold_advisory_lock(
        &db.name,
        &format!("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_advisory_lock({key})"),
    );
    let killed = cli.spawn(&["backup", "killed"]);
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
            blocked_sessions(&pg, &db.name) >= 1
                && !entries(&cli.backups(), ".partial.killed.dump").is_empty()
        }),
        "the backup never reached pg_dump with its partial file: {:?}",
        cli.backup_files()
    );
    signal(&killed, Signal::SIGKILL);
    wait(killed);
    drop(holder);
    let partial = entries(&cli.backups(), ".partial.killed.dump");
    assert_eq!(partial.len(), 1, "{:?}", cli.backup_files());
    assert_eq!(
        mode(&partial[0]) & 0o077,
        0,
        "a partial file is readable by others"
    );
    // Invisible as a backup, shown as an unfinished upload.
    let list = cli.run(&["list", "--json"]);
    list.assert_code(0);
    let rows = list.json();
    let rows = rows.as_array().unwrap();
    assert!(
        rows.iter().all(|r| r["kind"] == "unfinished_upload"),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r["name"].as_str().is_some_and(|n| n.contains("killed"))
                || r.to_string().contains("killed.dump")),
        "the killed run's partial file is not listed: {rows:?}"
    );
    // The next backup removes it (its writer's process is gone on this host) and works.
    cli.run(&["backup", "after", "--lock-timeout", "0"])
        .assert_code(0);
    assert!(
        entries(&cli.backups(), ".partial.").is_empty(),
        "left: {:?}",
        cli.backup_files()
    );
    let names: Vec<String> = cli
        .list()
        .iter()
        .filter(|r| r["kind"] != "unfinished_upload")
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["after"]);
}
