//! Issue 16, monitoring: `status` shows each target's last archived WAL file (the one
//! `pg_stat_archiver` names) and the recovery window; `--max-wal-age` exits 1 and sends
//! `wal.stale` once archiving has been quiet for longer; the metrics textfile gets the
//! WAL and window timestamps. A cluster of the test's own archives through `wal-push`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use kaizen_backup_e2e::http::Recorder;
use kaizen_backup_e2e::pitr_site::Site;
use kaizen_backup_e2e::wait_until;

/// Write something, then switch segments and wait until it is archived.
fn write_and_archive(site: &Site) {
    site.cluster.psql(
        "postgres",
        "insert into marker (i) select coalesce(max(i), 0) + 1 from marker",
    );
    site.archive_now();
}

fn time(v: &serde_json::Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .parse()
        .unwrap()
}

/// The value of `metric` in a Prometheus textfile.
fn sample(text: &str, metric: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{metric}{{")))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

#[test]
fn status_shows_the_last_archived_wal_and_the_window_and_flags_stalled_archiving() {
    let hook = Recorder::start();
    let metrics = tempfile::tempdir().unwrap();
    let textfile = metrics.path().join("kaizen_backup.prom");
    let site = Site::new(&format!(
        "\n[[notify]]\ntype = \"webhook\"\nurl = \"{}/h\"\non = [\"wal.stale\"]\n\n[metrics]\ntextfile = \"{}\"\n",
        hook.url,
        textfile.display()
    ));

    // No physical backup yet: no window.
    let before = site.run(&["status", "--json"]).json();
    assert!(before[0]["recovery_window"].is_null(), "{before}");

    site.run(&["backup", "--physical", "base1"]).assert_code(0);
    site.run(&["backup", "logical1", "--no-prune"])
        .assert_code(0);
    write_and_archive(&site);
    let last = site
        .cluster
        .psql("postgres", "select last_archived_wal from pg_stat_archiver");

    let out = site.run(&["status", "--json", "--max-wal-age", "1h"]);
    out.assert_code(0);
    let row = &out.json()[0];
    assert_eq!(row["wal"]["name"], last.as_str(), "{row}");
    let wal_time = time(&row["wal"]["time"]);
    let (from, to) = (
        time(&row["recovery_window"]["from"]),
        time(&row["recovery_window"]["to"]),
    );
    let now = Utc::now();
    assert!(from <= now && from <= to && to == wal_time, "{row}");
    // The existing fields are still there.
    assert_eq!(row["newest"]["name"], "logical1", "{row}");

    // The metrics textfile has the same times.
    let text = std::fs::read_to_string(&textfile).unwrap();
    assert_eq!(
        sample(&text, "kaizen_backup_wal_last_archived_timestamp_seconds"),
        Some(wal_time.timestamp() as f64),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "kaizen_backup_recovery_window_start_timestamp_seconds"
        ),
        Some(from.timestamp() as f64),
        "{text}"
    );

    // Text output: one line for the WAL, one for the window.
    let plain = site.run(&["status"]);
    plain.assert_code(0);
    assert!(
        plain.all().contains(&format!("last archived WAL {last}"))
            && plain.all().contains("recovery window"),
        "{}",
        plain.all()
    );

    // Quiet archive: stale for 1 s once its last file is older than that, never for 1 h.
    let stale = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        site.run(&["status", "--max-wal-age", "1s"]).code == 1
    });
    assert!(stale, "status --max-wal-age 1s never went stale");
    site.run(&["status", "--max-wal-age", "1s"])
        .assert_code(1)
        .assert_stderr_contains("WAL archiving is stale");
    let reqs = hook.wait_for(1, Duration::from_secs(10));
    assert!(
        reqs.iter().any(|r| r.json()["kind"] == "wal.stale"),
        "{:?}",
        reqs.iter()
            .map(|r| r.json()["kind"].clone())
            .collect::<Vec<_>>()
    );
    site.run(&["status", "--max-wal-age", "1h"]).assert_code(0);
    site.run(&["status", "--max-wal-age", "soon"])
        .assert_code(2);
}
