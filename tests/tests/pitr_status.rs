//! Issue 16, monitoring: `status` shows each target's last archived WAL file (the one
//! `pg_stat_archiver` names) and the recovery window; `--max-wal-age` exits 1 and sends
//! `wal.stale` once archiving has been quiet for longer; the metrics textfile gets the
//! WAL and window timestamps. When archive_command fails (the archive unwritable),
//! `status` reports the server's failures and the textfile and the Pushgateway get them;
//! the window retention promises is beside the real one. A cluster of the test's own
//! archives through `wal-push`.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kaizen_backup_e2e::http::Recorder;
use kaizen_backup_e2e::pitr_site::Site;
use kaizen_backup_e2e::services::{pushgateway_metrics, pushgateway_url};
use kaizen_backup_e2e::{unique, wait_until};

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

/// The value of `metric` for `instance` in what the Pushgateway exposes.
fn pushed(metric: &str, instance: &str) -> Option<f64> {
    pushgateway_metrics()
        .lines()
        .find(|l| {
            l.starts_with(&format!("{metric}{{")) && l.contains(&format!("instance=\"{instance}\""))
        })
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

#[test]
fn status_reports_archive_failures_and_the_window_retention_promises() {
    let metrics = tempfile::tempdir().unwrap();
    let textfile = metrics.path().join("kaizen_backup.prom");
    let instance = unique("kb_archiver");
    let site = Site::new(&format!(
        "\n[retention]\nmax_age_days = 7\n\n[metrics]\ntextfile = \"{}\"\npushgateway = \"{}\"\ninstance = \"{instance}\"\n",
        textfile.display(),
        pushgateway_url(),
    ));
    site.run(&["backup", "--physical", "base"]).assert_code(0);
    // (`status` counts only logical backups as "a backup of the database".)
    site.run(&["backup", "logical", "--no-prune"])
        .assert_code(0);
    write_and_archive(&site);

    // Archiving works; the window (minutes) is shorter than the 7 days retention promises.
    let row = site.run(&["status", "--json"]).assert_code(0).json()[0].clone();
    assert_eq!(row["archiver"]["enabled"], true, "{row}");
    assert_eq!(row["archiver"]["failing"], false, "{row}");
    assert_eq!(row["archiver"]["failed_count"], 0, "{row}");
    assert_eq!(
        row["recovery_window"]["promised_seconds"],
        7 * 86400,
        "{row}"
    );
    let text = std::fs::read_to_string(&textfile).unwrap();
    assert_eq!(
        sample(&text, "kaizen_backup_recovery_window_promised_seconds"),
        Some(604_800.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "kaizen_backup_wal_archive_failing"),
        Some(0.0),
        "{text}"
    );
    let plain = site.run(&["status"]);
    plain.assert_code(0);
    assert!(
        plain
            .all()
            .contains("shorter than the 7days the retention rules promise")
            && plain.all().contains("WAL archiving works"),
        "{}",
        plain.all()
    );

    // The archive cannot be written by the archiver (the postgres OS user): every
    // archive_command run fails, and the server counts them.
    let wal = site.archive.join("wal");
    std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o555)).unwrap();
    site.cluster.psql(
        "postgres",
        "insert into marker (i) select coalesce(max(i), 0) + 1 from marker",
    );
    site.cluster.psql("postgres", "select pg_switch_wal()");
    let failing = wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
        site.cluster
            .try_psql(
                "postgres",
                "select failed_count > 0 and last_failed_time > coalesce(last_archived_time, '-infinity') from pg_stat_archiver",
            )
            .is_ok_and(|v| v == "t")
    });
    assert!(
        failing,
        "archive_command never failed; log:\n{}",
        site.cluster.log()
    );
    let failed_wal = site
        .cluster
        .psql("postgres", "select last_failed_wal from pg_stat_archiver");
    let out = site.run(&["status", "--json"]);
    let fixed = std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o755));
    out.assert_code(0);
    fixed.unwrap();
    let row = &out.json()[0];
    let failures = row["archiver"]["failed_count"].as_i64().unwrap();
    assert!(failures > 0, "{row}");
    assert_eq!(row["archiver"]["failing"], true, "{row}");
    assert_eq!(
        row["archiver"]["last_failed_wal"],
        failed_wal.as_str(),
        "{row}"
    );
    let text = std::fs::read_to_string(&textfile).unwrap();
    assert_eq!(
        sample(&text, "kaizen_backup_wal_archive_failures_total"),
        Some(failures as f64),
        "{text}"
    );
    assert_eq!(
        sample(&text, "kaizen_backup_wal_archive_failing"),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE kaizen_backup_wal_archive_failures_total counter"),
        "{text}"
    );
    assert_eq!(
        pushed("kaizen_backup_wal_archive_failures_total", &instance),
        Some(failures as f64)
    );
    assert_eq!(
        pushed("kaizen_backup_wal_archive_failing", &instance),
        Some(1.0)
    );
    assert_eq!(
        pushed("kaizen_backup_recovery_window_promised_seconds", &instance),
        Some(604_800.0)
    );

    // Writable again: the waiting files are archived, failing clears, the count stays.
    site.archive_now();
    let out = site.run(&["status"]);
    out.assert_code(0);
    assert!(
        out.all().contains("WAL archiving works;") && out.all().contains(&failed_wal),
        "{}",
        out.all()
    );
    let row = site.run(&["status", "--json"]).assert_code(0).json()[0].clone();
    assert_eq!(row["archiver"]["failing"], false, "{row}");
    assert!(
        row["archiver"]["failed_count"].as_i64().unwrap() >= failures,
        "{row}"
    );
    let text = std::fs::read_to_string(&textfile).unwrap();
    assert_eq!(
        sample(&text, "kaizen_backup_wal_archive_failing"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        pushed("kaizen_backup_wal_archive_failing", &instance),
        Some(0.0)
    );
}
