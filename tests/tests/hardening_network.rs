//! Issue 13, networks that hang: a storage endpoint that freezes mid-upload (process
//! stopped, connection open), a signal during such a freeze, a notifier that accepts and
//! never answers, and a bucket that does not exist.
//!
//! The frozen endpoint is the harness's [`Proxy`]: it forwards to moto until a byte count,
//! then holds every connection open without answering. Tests wait for it to freeze (an
//! observable state), never sleep. Time bounds are generous (CI is slow) but far below
//! what a hang used to cost (minutes).

#![allow(clippy::unwrap_used)]

use std::process::Child;
use std::time::{Duration, Instant};

use kaizen_backup_e2e::cli::{Output, signal, wait};
use kaizen_backup_e2e::proxy::Proxy;
use kaizen_backup_e2e::services::S3;
use kaizen_backup_e2e::{Cli, Pg, TestDb, unique, wait_until};

/// A database of about 50 MB (several 8 MiB parts, uncompressed).
fn big_db(pg: &Pg, prefix: &str) -> TestDb {
    let db = pg.create_db(prefix);
    pg.psql(
        &db.name,
        "CREATE TABLE big AS SELECT g, md5(g::text) AS a, md5((g*3)::text) AS b FROM generate_series(1, 700000) g",
    );
    db
}

/// Wait for `child` to exit, at most `limit` (then kill it and fail the test); returns
/// its output and how long it ran from `since`.
fn exit_within(
    mut child: Child,
    since: Instant,
    limit: Duration,
    what: &str,
) -> (Output, Duration) {
    let exited = wait_until(limit, Duration::from_millis(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    let took = since.elapsed();
    if !exited {
        let _ = child.kill();
        let out = wait(child);
        panic!(
            "{what}: still running after {:.1}s (limit {}s)\nstderr:\n{}",
            took.as_secs_f64(),
            limit.as_secs(),
            out.stderr
        );
    }
    (wait(child), took)
}

/// The `[ERROR]` lines of a run.
fn errors(out: &Output) -> Vec<&str> {
    out.stderr
        .lines()
        .filter(|l| l.contains("[ERROR]"))
        .collect()
}

/// Backups `list` sees, asked directly of moto (not through the frozen proxy).
fn listed(cli: &Cli, url: &str) -> Vec<serde_json::Value> {
    let out = cli.run(&["--storage", url, "list", "--json"]);
    out.assert_code(0);
    out.json().as_array().cloned().unwrap_or_default()
}

#[test]
fn a_frozen_s3_endpoint_fails_the_backup_in_bounded_time_naming_the_upload() {
    let pg = Pg::get();
    let s3 = S3::get();
    let db = big_db(&pg, "khn_frozen");
    let url = s3.url(&unique("frozen"));
    let cli = s3
        .cli(&db.name)
        .env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "none")
        .env("KAIZEN_BACKUP_STORAGE__TIMEOUTS__CONNECT_SECS", "1")
        .env("KAIZEN_BACKUP_STORAGE__TIMEOUTS__REQUEST_SECS", "2")
        .env("KAIZEN_BACKUP_STORAGE__TIMEOUTS__IDLE_SECS", "2")
        .env("KAIZEN_BACKUP_STORAGE__TIMEOUTS__RETRIES", "1")
        .env("KAIZEN_BACKUP_STORAGE__TIMEOUTS__RETRY_SECS", "3")
        .env("KAIZEN_BACKUP_STORAGE__TIMEOUTS__CLEANUP_SECS", "3");
    let proxy = Proxy::start(&s3.endpoint);
    // Everything goes through the proxy; it stops answering 2 MiB into the upload.
    proxy.freeze_after(2 * 1024 * 1024);
    let started = Instant::now();
    let child = cli.spawn_with(
        &[("AWS_ENDPOINT_URL", &proxy.url)],
        &["--storage", &url, "backup", "hung"],
    );
    let (out, took) = exit_within(child, started, Duration::from_secs(90), "frozen backup");
    assert!(proxy.wait_frozen(Duration::ZERO), "the proxy never froze");
    out.assert_code(1);
    // Request, retry and cleanup budgets are a few seconds each: far below 90 s.
    assert!(
        took < Duration::from_secs(60),
        "took {took:?}\n{}",
        out.stderr
    );
    // The error names the upload that hung and its target, not the abort that failed after it.
    let errs = errors(&out);
    let last = errs.last().copied().unwrap_or_default();
    assert!(
        last.contains(&url) && last.contains("hung.dump") && last.contains("upload"),
        "{}",
        out.stderr
    );
    assert!(last.contains("timed out"), "{}", out.stderr);
    assert!(!last.contains("abort"), "{}", out.stderr);
    assert!(!out.all().contains("Aws-Secret-Never-Printed"));
    proxy.thaw();
    assert!(listed(&cli, &url).is_empty(), "a failed backup is visible");
}

#[test]
fn sigterm_during_a_frozen_upload_exits_within_ten_seconds() {
    let pg = Pg::get();
    let s3 = S3::get();
    let db = big_db(&pg, "khn_term");
    let url = s3.url(&unique("term"));
    // Default timeouts: the signal, not a timeout, has to end the run.
    let cli = s3
        .cli(&db.name)
        .env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "none");
    let proxy = Proxy::start(&s3.endpoint);
    proxy.freeze_after(2 * 1024 * 1024);
    let child = cli.spawn_with(
        &[("AWS_ENDPOINT_URL", &proxy.url)],
        &["--storage", &url, "backup", "termed"],
    );
    assert!(
        proxy.wait_frozen(Duration::from_secs(120)),
        "the backup never got 2 MiB into its upload"
    );
    let signalled = Instant::now();
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    // The endpoint stays frozen: aborting the upload and releasing the lock cannot reach it.
    let (out, took) = exit_within(child, signalled, Duration::from_secs(60), "SIGTERM");
    assert!(
        took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM\n{}",
        out.stderr
    );
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("SIGTERM"), "{}", out.stderr);
    // Nothing visible: no backup, no manifest.
    proxy.thaw();
    assert!(
        listed(&cli, &url).is_empty(),
        "an interrupted backup is visible"
    );
    // And the next run works (the lock of the dead run is taken over at once).
    cli.run(&["--storage", &url, "backup", "after", "--lock-timeout", "0"])
        .assert_code(0);
    let names: Vec<_> = listed(&cli, &url)
        .iter()
        .map(|b| b["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, ["after"]);
}

/// A TCP server that accepts connections and never reads or answers.
fn silent_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    url
}

#[test]
fn a_notifier_that_never_answers_costs_a_bounded_time() {
    let pg = Pg::get();
    let db = pg.create_db("khn_hook");
    pg.psql(
        &db.name,
        "CREATE TABLE t(x int primary key); INSERT INTO t SELECT generate_series(1, 100)",
    );
    let hook = silent_server();
    let cli = Cli::for_db(&db.name);
    // Default timeouts and retries: 4 attempts of 10 s used to hold the run for 42 s.
    std::fs::write(
        cli.path().join("kaizen-backup.toml"),
        format!("[[notify]]\ntype = \"webhook\"\nurl = \"{hook}/hook?token=Hook-Token-123\"\n"),
    )
    .unwrap();
    let started = Instant::now();
    let child = cli.spawn(&["backup", "notified"]);
    let (out, took) = exit_within(child, started, Duration::from_secs(120), "backup");
    out.assert_code(0)
        .assert_stderr_contains("Notification not delivered")
        .assert_stderr_contains("deadline");
    assert!(
        took < Duration::from_secs(35),
        "a silent notifier held the backup for {took:?}\n{}",
        out.stderr
    );
    assert!(!out.all().contains("Hook-Token-123"));
    assert_eq!(cli.list().len(), 1);
}

#[test]
fn a_missing_bucket_is_named_with_its_endpoint() {
    let pg = Pg::get();
    let s3 = S3::get();
    let db = pg.create_db("khn_nobucket");
    let bucket = unique("kaizen-missing").replace('_', "-");
    let url = format!("s3://{bucket}/backups");
    let cli = s3.cli(&db.name);
    let want = format!("the bucket \"{bucket}\" does not exist at {}", s3.endpoint);
    for args in [
        vec!["--storage", url.as_str(), "backup", "nb"],
        vec!["--storage", url.as_str(), "list"],
    ] {
        let out = cli.run(&args);
        out.assert_code(1).assert_stderr_contains(&want);
        assert!(!out.stderr.contains("not found:"), "{}", out.stderr);
        assert!(!out.all().contains("Aws-Secret-Never-Printed"));
    }
    // `config check --connect` says the same.
    let out = cli.run(&["--storage", &url, "config", "check", "--connect"]);
    out.assert_code(1).assert_stderr_contains(&want);
}
