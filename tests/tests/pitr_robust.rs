//! Issue 16, robustness of point-in-time recovery: a physical backup killed while
//! pg_basebackup streams leaves no backup; wal-push with the storage down fails (the
//! archiver retries) and catches up with nothing lost once it is back; a wal-push killed
//! mid-write leaves nothing wal-fetch would serve; base backup, WAL and a restore to a
//! time all through S3 (moto), and through Azure Blob Storage (Azurite) encrypted with age.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use kaizen_backup_e2e::cli::{signal, wait};
use kaizen_backup_e2e::pitr_site::{Site, age_key_for_postgres, names, upto};
use kaizen_backup_e2e::{Azure, S3, unique, wait_until};
use nix::sys::signal::Signal;

/// Partial (still being written) files in a local storage directory, with their sizes.
fn partials(dir: &Path) -> Vec<(String, u64)> {
    names(dir)
        .into_iter()
        .filter(|n| n.starts_with(".partial."))
        .map(|n| {
            let len = std::fs::metadata(dir.join(&n)).map_or(0, |m| m.len());
            (n, len)
        })
        .collect()
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_physical_backup_killed_while_streaming_leaves_no_backup_and_the_next_one_works() {
    let site = Site::new("");
    site.mark(1);
    let child = site.spawn_paused("physical-streaming", &["backup", "--physical", "doomed"]);
    // Paused mid-stream: the server is sending a base backup and the data object is
    // being written under a partial name.
    let streaming = wait_until(Duration::from_secs(120), Duration::from_millis(50), || {
        partials(&site.archive).iter().any(|(_, len)| *len > 0)
            && site
                .cluster
                .try_psql(
                    "postgres",
                    "select count(*) from pg_stat_progress_basebackup",
                )
                .is_ok_and(|n| n == "1")
    });
    assert!(
        streaming,
        "the backup never reached its pause point; files: {:?}",
        names(&site.archive)
    );
    signal(&child, Signal::SIGKILL);
    let out = wait(child);
    assert_eq!(out.code, -1, "killed: {}", out.all());

    let files = names(&site.archive);
    assert!(
        !files.iter().any(|n| n.ends_with(".manifest.json")),
        "{files:?}"
    );
    assert!(
        !files.iter().any(|n| n.starts_with("doomed.")),
        "no object under a final name: {files:?}"
    );
    // Listed only as an unfinished upload, never as a backup.
    let listed = site.run(&["list", "--json"]).assert_code(0).json();
    let listed = listed.as_array().unwrap();
    assert!(
        listed
            .iter()
            .all(|b| b["kind"] == "unfinished_upload" && b["incomplete"] == true),
        "{listed:?}"
    );

    // The server lets go of the dead backup; the next one works and restores.
    let released = wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
        site.cluster
            .try_psql(
                "postgres",
                "select count(*) from pg_stat_progress_basebackup",
            )
            .is_ok_and(|n| n == "0")
    });
    assert!(
        released,
        "the killed base backup is still running on the server"
    );
    site.run(&["backup", "--physical", "fine"]).assert_code(0);
    let listed = site.run(&["list", "--json"]).assert_code(0).json();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].to_string().contains("fine"), "{listed:?}");
    assert!(
        partials(&site.archive).is_empty(),
        "the next backup removed the killed one's partial file: {:?}",
        names(&site.archive)
    );
    site.mark(2);
    site.archive_now();
    let (_c, got) = site.restore_markers("after_kill", &[]);
    assert_eq!(got, upto(2));
}

#[test]
fn wal_push_with_the_storage_down_fails_and_catches_up_with_nothing_lost() {
    let site = Site::new("");
    site.run(&["backup", "--physical", "base"]).assert_code(0);
    site.mark(1);
    site.archive_now();
    let wal = site.archive.join("wal");
    let stored = names(&wal);
    let failed_before = site.failed_count();

    // Storage down: the archiver (the postgres OS user) cannot write the archive.
    set_mode(&wal, 0o555);
    for i in 2..=5 {
        site.mark(i);
    }
    site.cluster.psql("postgres", "select pg_switch_wal()");
    let failing = wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
        site.failed_count() > failed_before
    });
    set_mode(&wal, 0o755);
    assert!(
        failing,
        "pg_stat_archiver.failed_count did not grow; log:\n{}",
        site.cluster.log()
    );
    assert_eq!(names(&wal), stored, "nothing was written while it was down");

    // Back up: everything that waited is archived, nothing is lost.
    site.mark(6);
    site.archive_now();
    assert!(
        partials(&wal).is_empty(),
        "no partial file is left: {:?}",
        names(&wal)
    );
    let (_c, got) = site.restore_markers("caught_up", &[]);
    assert_eq!(got, upto(6));
}

#[test]
fn a_wal_push_killed_mid_write_leaves_nothing_to_fetch_and_a_repush_works() {
    let site = Site::new("");
    let dir = site.root.path().join("pg_wal_copy");
    std::fs::create_dir(&dir).unwrap();
    let name = "000000010000000000000099";
    let file = dir.join(name);
    // 64 MiB that does not compress, so the push takes many chunks.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let content: Vec<u8> = (0..64 * 1024 * 1024 / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    std::fs::write(&file, &content).unwrap();
    let file_s = file.display().to_string();
    let wal = site.archive.join("wal");

    let child = site.spawn_paused("wal-push-streaming", &["wal-push", &file_s]);
    let writing = wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
        partials(&wal)
            .iter()
            .any(|(n, len)| n.contains(name) && *len > 0)
    });
    assert!(writing, "no partial write appeared: {:?}", names(&wal));
    signal(&child, Signal::SIGKILL);
    let out = wait(child);
    assert_eq!(out.code, -1, "killed: {}", out.all());

    let finals: Vec<String> = names(&wal)
        .into_iter()
        .filter(|n| !n.starts_with(".partial."))
        .collect();
    assert!(
        finals.is_empty(),
        "an object under a final name: {finals:?}"
    );
    let dest = dir.join("RECOVERYXLOG");
    let dest_s = dest.display().to_string();
    site.run(&["wal-fetch", name, &dest_s]).assert_code(1);
    assert!(!dest.exists());

    site.run(&["wal-push", &file_s]).assert_code(0);
    site.run(&["wal-fetch", name, &dest_s]).assert_code(0);
    assert!(
        std::fs::read(&dest).unwrap() == content,
        "fetched content differs"
    );

    // prune removes what the killed push left (its process is gone), and only that.
    let stored: Vec<String> = names(&wal)
        .into_iter()
        .filter(|n| !n.starts_with(".partial."))
        .collect();
    let out = site.run(&["prune"]);
    out.assert_code(0);
    assert!(
        out.all().contains("unfinished upload") && out.all().contains(name),
        "prune says what it aborted: {}",
        out.all()
    );
    assert_eq!(names(&wal), stored, "only the partial file went");
}

#[test]
fn base_backup_wal_and_a_restore_to_a_time_through_s3() {
    let s3 = S3::get();
    let prefix = s3.prefix("pitr");
    let site = Site::with_target(
        Some(&s3.url(&prefix)),
        &format!(
            "\n[storage.s3]\nregion = \"us-east-1\"\nendpoint = \"{}\"\nallow_http = true\naccess_key_id = \"kaizen-test\"\nsecret_access_key = \"Aws-Secret-Never-Printed\"\n",
            s3.endpoint
        ),
    );
    site.run(&["backup", "--physical", "s3base"]).assert_code(0);
    let listed = site.run(&["list", "--json"]).assert_code(0).json();
    assert!(listed.to_string().contains("s3base"), "{listed}");
    let mut times = vec![String::new()];
    for i in 1..=6 {
        times.push(site.mark(i));
    }
    site.archive_now();
    assert!(
        names(&site.archive).is_empty(),
        "nothing went to the local directory"
    );

    // T between commit 3 and commit 4.
    let t = format!("{}+00", times[4]);
    let (pgdata, out) = site.restore_pgdata("from_s3", &["--to-time", &t]);
    assert!(
        !out.all().contains("Aws-Secret-Never-Printed"),
        "{}",
        out.all()
    );
    let (_c, got) = site.start_restored(&pgdata);
    assert_eq!(got, upto(3));
}

#[test]
fn base_backup_wal_and_an_encrypted_restore_to_a_time_through_azurite() {
    let az = Azure::get();
    // The archiver and the restored server's wal-fetch run as postgres: they read the key.
    let (_keys, key, recipient) = age_key_for_postgres("kb-pitr-azkey-");
    let site = Site::with_target(
        Some(&az.url(&unique("pitr"))),
        &format!(
            "\n[storage.azure]\naccount = \"{}\"\naccess_key = \"{}\"\nendpoint = \"{}\"\nallow_http = true\n\n[encryption]\ntype = \"age\"\nrecipients = [\"{recipient}\"]\nidentity_file = \"{}\"\n",
            az.account,
            az.key,
            az.endpoint,
            key.display()
        ),
    );
    site.run(&["backup", "--physical", "azbase"]).assert_code(0);
    let listed = site.run(&["list", "--json"]).assert_code(0).json();
    let base = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "azbase")
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(base["encryption"], "age", "{base}");
    let mut times = vec![String::new()];
    for i in 1..=6 {
        times.push(site.mark(i));
    }
    site.archive_now();
    assert!(
        names(&site.archive).is_empty(),
        "nothing went to the local directory"
    );

    // The archived WAL is encrypted: without the identity, wal-fetch refuses and writes nothing.
    let segment = site
        .cluster
        .psql("postgres", "select last_archived_wal from pg_stat_archiver");
    site.assert_wal_fetch_needs_the_key(&segment);

    // T between commit 3 and commit 4: exactly rows 1-3, as committed.
    let t = format!("{}+00", times[4]);
    let (pgdata, out) = site.restore_pgdata("from_azurite", &["--to-time", &t]);
    assert!(!out.all().contains(&az.key), "{}", out.all());
    let (c, got) = site.start_restored(&pgdata);
    assert_eq!(got, upto(3));
    let rows = c.psql(
        "postgres",
        "select string_agg(i || ' ' || to_char(at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), ',' order by i) from marker",
    );
    let committed: Vec<String> = (1..=3).map(|i| format!("{i} {}", times[i])).collect();
    assert_eq!(rows, committed.join(","));
}
