//! Issue 16: point-in-time recovery. A cluster of the test's own archives its WAL
//! through `kaizen-backup wal-push`; a physical base backup; marker rows committed one
//! per transaction; restores to a time, an LSN and a restore point into new data
//! directories, started for real: the markers are exactly those committed up to the
//! target. Refusals leave nothing written.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kaizen_backup_e2e::pitr_site::{Site, age_key_for_postgres, upto};
use kaizen_backup_e2e::wait_until;

fn archived(site: &Site) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(site.archive.join("wal"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn restore_to_a_time_an_lsn_and_a_restore_point_is_exact() {
    let site = Site::new("");
    site.run(&["backup", "--physical", "base1"]).assert_code(0);
    let listed = site.run(&["list", "--json"]).assert_code(0).json();
    let text = listed.to_string();
    assert!(
        text.contains("base1") && text.contains("physical"),
        "{text}"
    );

    let mut times = vec![String::new()];
    for i in 1..=30 {
        times.push(site.mark(i));
        if i == 20 {
            // Markers up to 20 are committed before this position.
            let lsn = site.cluster.psql("postgres", "select pg_current_wal_lsn()");
            std::fs::write(site.root.path().join("lsn20"), lsn).unwrap();
        }
        if i == 25 {
            site.cluster
                .psql("postgres", "select pg_create_restore_point('after 25')");
        }
    }
    site.archive_now();
    let lsn20 = std::fs::read_to_string(site.root.path().join("lsn20")).unwrap();

    // T between commit 10 and commit 11: marker 11's row was stamped after commit 10.
    let t = format!("{}+00", times[11]);
    let cases: Vec<(&str, Vec<&str>, Vec<i32>)> = vec![
        ("to_time", vec!["--to-time", &t], upto(10)),
        ("to_lsn", vec!["--to-lsn", &lsn20], upto(20)),
        ("to_name", vec!["--to-name", "after 25"], upto(25)),
        ("latest", vec![], upto(30)),
    ];
    for (dir, target, want) in cases {
        let pgdata = site.new_pgdata(dir);
        let pgdata_s = pgdata.display().to_string();
        // --no-archive: these looks at the past must not add timelines to the archive.
        let mut args = vec!["restore", "--pgdata", pgdata_s.as_str(), "--no-archive"];
        args.extend(target.iter().copied());
        let out = site.run(&args);
        out.assert_code(0);
        assert!(
            out.all().contains("pg_ctl"),
            "restore says how to start it: {}",
            out.all()
        );
        assert!(pgdata.join("recovery.signal").is_file());
        assert!(!pgdata.join("recovery.conf").exists());
        let (_c, got) = site.start_restored(&pgdata);
        assert_eq!(got, want, "{dir}: markers after recovery");
    }
}

#[test]
fn targets_outside_the_window_and_bad_directories_are_refused_with_nothing_written() {
    let site = Site::new("");
    let before = chrono::Utc::now() - chrono::Duration::minutes(5);
    site.run(&["backup", "--physical", "base"]).assert_code(0);
    site.mark(1);
    site.archive_now();

    let pgdata = site.new_pgdata("refused");
    let pgdata_s = pgdata.display().to_string();
    let early = before.format("%Y-%m-%d %H:%M:%S").to_string();
    let out = site.run(&["restore", "--pgdata", &pgdata_s, "--to-time", &early]);
    out.assert_code(1);
    assert!(out.all().contains("recoverable window"), "{}", out.all());
    assert!(!pgdata.exists(), "nothing is written for a refused restore");

    let late = (chrono::Utc::now() + chrono::Duration::hours(1))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    let out = site.run(&["restore", "--pgdata", &pgdata_s, "--to-time", &late]);
    out.assert_code(1);
    assert!(out.all().contains("recoverable window"), "{}", out.all());
    assert!(!pgdata.exists());

    let out = site.run(&["restore", "--pgdata", &pgdata_s, "--to-time", "yesterday"]);
    out.assert_code(2);
    let out = site.run(&["restore", "--pgdata", &pgdata_s, "--to-lsn", "0/XYZ"]);
    out.assert_code(2);
    assert!(out.all().contains("invalid LSN"), "{}", out.all());
    let long = "n".repeat(64);
    site.run(&["restore", "--pgdata", &pgdata_s, "--to-name", &long])
        .assert_code(2);
    // A password in a storage URL would land in postgresql.auto.conf and in every
    // wal-fetch's arguments: refused, and not repeated.
    let out = site.run(&[
        "--storage",
        "webdav://backup:pw-never-shown@127.0.0.1:9/kaizen",
        "restore",
        "--pgdata",
        &pgdata_s,
    ]);
    out.assert_code(2);
    assert!(!out.all().contains("pw-never-shown"), "{}", out.all());
    assert!(out.all().contains("restore_command"), "{}", out.all());
    assert!(!pgdata.exists());

    std::fs::create_dir(&pgdata).unwrap();
    std::fs::write(pgdata.join("keep.txt"), "mine").unwrap();
    let out = site.run(&["restore", "--pgdata", &pgdata_s]);
    out.assert_code(1);
    assert!(out.all().contains("not empty"), "{}", out.all());
    assert_eq!(
        std::fs::read_to_string(pgdata.join("keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(&pgdata).unwrap().count(), 1);
}

#[test]
fn a_missing_segment_is_found_before_starting_and_a_corrupt_one_is_named() {
    let site = Site::new("");
    site.run(&["backup", "--physical", "base"]).assert_code(0);
    for i in 1..=3 {
        site.mark(i);
        site.archive_now();
    }
    let lsn = site.cluster.psql("postgres", "select pg_current_wal_lsn()");
    site.mark(4);
    site.archive_now();
    let segments: Vec<String> = archived(&site)
        .into_iter()
        .filter(|n| n.len() > 24 && n.as_bytes()[24] == b'-')
        .collect();
    assert!(segments.len() >= 4, "{segments:?}");

    // Corrupt one stored segment: wal-fetch names it and writes nothing.
    let victim = &segments[segments.len() - 2];
    let path = site.archive.join("wal").join(victim);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let name = &victim[..24];
    let dest = site.root.path().join("fetched");
    let out = site.run(&["wal-fetch", name, dest.to_str().unwrap()]);
    out.assert_code(1);
    assert!(out.all().contains(name), "{}", out.all());
    assert!(!dest.exists());
    assert!(!site.root.path().join("fetched.kaizen-fetch").exists());

    // Remove it: a restore past it is refused before anything is written, naming it.
    std::fs::remove_file(&path).unwrap();
    let pgdata = site.new_pgdata("gap");
    let out = site.run(&[
        "restore",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--to-lsn",
        &lsn,
    ]);
    out.assert_code(1);
    assert!(out.all().contains(name), "{}", out.all());
    assert!(!pgdata.exists());

    // An unknown file is "not found" for PostgreSQL: exit 1, nothing written.
    let out = site.run(&[
        "wal-fetch",
        "0000000100000000000000FE",
        dest.to_str().unwrap(),
    ]);
    out.assert_code(1);
    assert!(!dest.exists());
}

#[test]
fn wal_push_is_idempotent_and_never_overwrites() {
    let site = Site::new("");
    let dir = site.root.path().join("pg_wal_copy");
    std::fs::create_dir(&dir).unwrap();
    let name = "000000010000000000000077";
    let file = dir.join(name);
    std::fs::write(&file, vec![7u8; 16 * 1024 * 1024]).unwrap();
    site.run(&["wal-push", file.to_str().unwrap()])
        .assert_code(0);
    site.run(&["wal-push", file.to_str().unwrap()])
        .assert_code(0);
    let stored: Vec<String> = archived(&site)
        .into_iter()
        .filter(|n| n.starts_with(name))
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");

    std::fs::write(&file, vec![8u8; 16 * 1024 * 1024]).unwrap();
    let out = site.run(&["wal-push", file.to_str().unwrap()]);
    out.assert_code(1);
    assert!(out.all().contains("different content"), "{}", out.all());
    let after: Vec<String> = archived(&site)
        .into_iter()
        .filter(|n| n.starts_with(name))
        .collect();
    assert_eq!(after, stored, "the stored copy is untouched");

    // Fetch gives back the first content, exactly.
    let dest = dir.join("RECOVERYXLOG");
    site.run(&["wal-fetch", name, dest.to_str().unwrap()])
        .assert_code(0);
    assert_eq!(std::fs::read(&dest).unwrap(), vec![7u8; 16 * 1024 * 1024]);

    // Not a WAL file name: a usage error, nothing stored.
    let odd = dir.join("notes.txt");
    std::fs::write(&odd, "x").unwrap();
    site.run(&["wal-push", odd.to_str().unwrap()])
        .assert_code(2);
}

#[test]
fn timelines_are_followed_after_a_promotion() {
    let site = Site::new("");
    site.run(&["backup", "--physical", "base"]).assert_code(0);
    let mut times = vec![String::new()];
    for i in 1..=6 {
        times.push(site.mark(i));
    }
    site.archive_now();
    // Restore to between 3 and 4, promote: timeline 2, archiving into the same place.
    let first = site.new_pgdata("first");
    let t = format!("{}+00", times[4]);
    site.run(&[
        "restore",
        "--pgdata",
        first.to_str().unwrap(),
        "--to-time",
        &t,
    ])
    .assert_code(0);
    let (mut c2, got) = site.start_restored(&first);
    assert_eq!(got, upto(3));
    site.cluster.psql("postgres", "select 1");
    let mut t2 = vec![String::new()];
    for i in 100..=103 {
        t2.push(c2.psql(
            "postgres",
            &format!("insert into marker (i) values ({i}) returning to_char(at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"),
        ));
    }
    let seg = c2.psql("postgres", "select pg_walfile_name(pg_switch_wal())");
    assert!(seg.starts_with("00000002"), "{seg}");
    let done = wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
        c2.try_psql(
            "postgres",
            "select coalesce(last_archived_wal, '') from pg_stat_archiver",
        )
        .is_ok_and(|l| l.as_str() >= seg.as_str())
    });
    assert!(done, "timeline 2 archived; log:\n{}", c2.log());
    c2.stop("fast");
    assert!(
        archived(&site)
            .iter()
            .any(|n| n.starts_with("00000002.history"))
    );

    // A time on the new timeline: between 101 and 102.
    let second = site.new_pgdata("second");
    let t = format!("{}+00", t2[3]);
    site.run(&[
        "restore",
        "--pgdata",
        second.to_str().unwrap(),
        "--to-time",
        &t,
    ])
    .assert_code(0);
    let (_c3, got) = site.start_restored(&second);
    assert_eq!(got, vec![1, 2, 3, 100, 101]);
}

#[test]
fn retention_deletes_exactly_the_wal_no_retained_backup_needs() {
    let site = Site::new("[retention]\nkeep_last = 1\nmin_keep = 1\n");
    site.run(&["backup", "--physical", "--no-prune", "old"])
        .assert_code(0);
    for i in 1..=3 {
        site.mark(i);
        site.archive_now();
    }
    site.run(&["backup", "--physical", "--no-prune", "new"])
        .assert_code(0);
    site.mark(4);
    site.archive_now();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(site.archive.join("new.manifest.json")).unwrap())
            .unwrap();
    let start = manifest["physical"]["start_lsn"]
        .as_str()
        .unwrap()
        .to_string();
    let keep_from = site.cluster.psql(
        "postgres",
        &format!("select pg_walfile_name('{start}'::pg_lsn)"),
    );
    let segments = |names: &[String]| -> Vec<String> {
        names
            .iter()
            .filter(|n| n.len() > 25 && n.as_bytes()[24] == b'-')
            .map(|n| n[..24].to_string())
            .collect()
    };
    let before = archived(&site);
    let below: Vec<String> = segments(&before)
        .into_iter()
        .filter(|s| s.as_str() < keep_from.as_str())
        .collect();
    assert!(!below.is_empty(), "{before:?}");

    // Dry run: says the range, deletes nothing.
    let out = site.run(&["prune", "--dry-run"]);
    out.assert_code(0);
    assert!(out.all().contains("Would delete WAL"), "{}", out.all());
    assert!(out.all().contains(&below[0]), "{}", out.all());
    assert_eq!(archived(&site), before);

    site.run(&["prune"]).assert_code(0);
    let after = archived(&site);
    let left = segments(&after);
    assert!(
        left.iter().all(|s| s.as_str() >= keep_from.as_str()),
        "{left:?}"
    );
    assert!(left.contains(&keep_from), "{left:?}");
    assert!(!site.archive.join("old.manifest.json").exists());
    // What remains still restores: the newest backup to the end of the archive.
    let (_c, got) = site.restore_markers("after_prune", &[]);
    assert_eq!(got, upto(4));
}

#[test]
fn encrypted_base_backup_and_wal_restore_to_a_time() {
    let (_keys, key, recipient) = age_key_for_postgres("kb-pitr-key-");
    let site = Site::new(&format!(
        "[encryption]\ntype = \"age\"\nrecipients = [\"{recipient}\"]\nidentity_file = \"{}\"\n",
        key.display()
    ));
    site.run(&["backup", "--physical", "secret"]).assert_code(0);
    let mut times = vec![String::new()];
    for i in 1..=4 {
        times.push(site.mark(i));
    }
    site.archive_now();
    let stored = archived(&site);
    assert!(
        stored
            .iter()
            .all(|n| n.ends_with(".age") || n.contains(".history")),
        "{stored:?}"
    );
    let base = std::fs::read_dir(&site.archive)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("secret.base.tar"))
        .unwrap();
    assert!(base.ends_with(".zst.age"), "{base}");

    // Without the identity, wal-fetch refuses and writes nothing.
    let segment = stored
        .iter()
        .find(|n| n.as_bytes().get(24) == Some(&b'-'))
        .unwrap();
    site.assert_wal_fetch_needs_the_key(&segment[..24]);

    let t = format!("{}+00", times[3]);
    let (_c, got) = site.restore_markers("decrypted", &["--to-time", &t]);
    assert_eq!(got, upto(2));
}
