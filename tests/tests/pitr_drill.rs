//! Issue 17: restore drills. With physical backups: a restore to a random point of the
//! recoverable window (or `--to-time`) in a scratch directory through the real
//! `restore_command`, a temporary server that recovers and promotes, the reached point
//! checked against the target (and a marker query), every table read, RTO and RPO
//! recorded beside the backups; then everything is removed. Without physical backups: a
//! test restore of the newest logical backup.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use kaizen_backup_e2e::Cli;
use kaizen_backup_e2e::pg::Pg;
use kaizen_backup_e2e::pitr_site::{Site, names};

/// A site with scratch directories in `ROOT/tmp` and a marker query.
fn site() -> (Site, PathBuf) {
    Site::with_scratch("[drill]\nmarker_query = \"select max(at) from marker\"")
}

fn scratch_dirs(tmp: &Path) -> Vec<String> {
    names(tmp)
        .into_iter()
        .filter(|n| n.starts_with("kaizen-restore-"))
        .collect()
}

fn record(site: &Site) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(site.archive.join("postgres.drill.json")).unwrap())
        .unwrap()
}

fn marker_rows(rec: &serde_json::Value) -> i64 {
    rec["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["database"] == "postgres")
        .unwrap()["rows"]
        .as_i64()
        .unwrap()
}

#[test]
fn a_drill_restores_a_point_of_the_window_checks_it_and_records_rto_and_rpo() {
    let (site, tmp) = site();
    site.run(&["backup", "--physical", "base"]).assert_code(0);
    let mut times = vec![String::new()];
    for i in 1..=6 {
        times.push(site.mark(i));
    }
    site.archive_now();

    // A random point: whatever it is, the copy holds no marker after it.
    let out = site.run(&["drill", "--json"]);
    out.assert_code(0);
    let rec = out.json();
    assert_eq!(rec, record(&site), "the stored record is the one printed");
    assert_eq!(rec["kind"], "physical");
    assert_eq!(rec["passed"], true);
    assert_eq!(rec["backup"], "base");
    assert!(rec["rto_seconds"].as_f64().unwrap() > 0.0);
    assert!(rec["rpo_seconds"].as_f64().unwrap() >= 0.0);
    let target = rec["target"].as_str().unwrap().to_string();
    assert!(target.starts_with("time "), "{target}");
    let rows = marker_rows(&rec);
    assert!((0..=6).contains(&rows), "{rec}");
    assert!(scratch_dirs(&tmp).is_empty(), "{:?}", names(&tmp));

    // A chosen time between markers 3 and 4: exactly 3 markers, the marker query finds
    // marker 3's time, and the last replayed transaction is not after the target.
    let t = format!("{}+00", times[4]);
    let out = site.run(&["drill", "--to-time", &t, "--json"]);
    out.assert_code(0);
    let rec = out.json();
    assert_eq!(marker_rows(&rec), 3, "{rec}");
    let marker = rec["marker"].as_str().unwrap();
    let want = times[3].replace(' ', "T");
    assert!(marker.starts_with(&want), "{marker} vs {want}");
    let reached = chrono::DateTime::parse_from_rfc3339(rec["reached"].as_str().unwrap()).unwrap();
    let target = chrono::NaiveDateTime::parse_from_str(&times[4], "%Y-%m-%d %H:%M:%S%.f")
        .unwrap()
        .and_utc();
    assert!(
        reached <= target,
        "reached {reached} after the target {target}"
    );
    assert!(rec["target"].as_str().unwrap().contains(&times[4]), "{rec}");

    // An RTO above the promise fails the drill (exit 1), recorded as failed.
    let out = site.cli.run_with(
        &[("KAIZEN_BACKUP_DRILL__RTO_TARGET", "1ms")],
        &["--config", site.config.to_str().unwrap(), "drill"],
    );
    out.assert_code(1)
        .assert_stderr_contains("drill.rto_target");
    assert_eq!(record(&site)["passed"], false);
    assert!(scratch_dirs(&tmp).is_empty(), "{:?}", names(&tmp));

    // status shows the last drill; physical backups alone are not "no backup".
    let st = site.run(&["status", "--json"]);
    st.assert_code(0);
    let row = &st.json()[0];
    assert_eq!(row["drill"]["passed"], false, "{row}");
    assert_eq!(row["drill"]["kind"], "physical");
    assert!(
        row["drill"]["error"]
            .as_str()
            .unwrap()
            .contains("rto_target"),
        "{row}"
    );
    assert_eq!(row["newest"]["name"], "base");
    let text = site.run(&["status"]);
    text.assert_code(0)
        .assert_stderr_contains("last restore drill FAILED");
}

#[test]
fn a_drill_that_cannot_restore_fails_and_leaves_nothing() {
    let (site, tmp) = site();
    site.run(&["backup", "--physical", "base"]).assert_code(0);
    site.mark(1);
    site.archive_now();
    let t = format!("{}+00", site.mark(2));
    site.mark(3);
    site.archive_now();
    // Delete the newest archived segments: the target is past the end of the archive.
    let wal = site.archive.join("wal");
    let segments: Vec<String> = names(&wal)
        .into_iter()
        .filter(|n| n.len() > 24 && n.as_bytes()[24] == b'-')
        .collect();
    for s in &segments[segments.len() - 2..] {
        std::fs::remove_file(wal.join(s)).unwrap();
    }
    let out = site.run(&["drill", "--to-time", &t]);
    out.assert_code(1);
    let rec = record(&site);
    assert_eq!(rec["passed"], false);
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("recoverable window"),
        "{rec}"
    );
    assert!(scratch_dirs(&tmp).is_empty(), "{:?}", names(&tmp));
}

#[test]
fn without_physical_backups_a_drill_is_a_test_restore_of_the_newest_logical_backup() {
    let pg = Pg::get();
    let src = pg.sample_db("kb_drill_logical");
    let cli = Cli::for_db(&src.name);
    let out = cli.run(&["drill"]);
    out.assert_code(1)
        .assert_stderr_contains("no backup of kb_drill_logical");
    cli.run(&["backup", "first"]).assert_code(0);
    let out = cli.run(&["drill", "--json"]);
    out.assert_code(0);
    let rec = out.json();
    assert_eq!(rec["kind"], "logical");
    assert_eq!(rec["backup"], "first");
    assert_eq!(rec["passed"], true);
    assert!(rec["rto_seconds"].as_f64().unwrap() > 0.0);
    assert!(
        cli.backups()
            .join(format!("{}.drill.json", src.name))
            .is_file()
    );
    // The drill's record is neither a backup nor an unfinished upload.
    let listed = cli.run(&["list", "--json"]).assert_code(0).json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    cli.run(&["drill", "--to-time", "2026-01-01 00:00:00"])
        .assert_code(2);
}
