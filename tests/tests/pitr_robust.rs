//! Issue 16, robustness of point-in-time recovery: a physical backup killed while
//! pg_basebackup streams leaves no backup; wal-push with the storage down fails (the
//! archiver retries) and catches up with nothing lost once it is back; a wal-push killed
//! mid-write leaves nothing wal-fetch would serve; base backup, WAL and a restore to a
//! time all through S3 (moto).

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kaizen_backup_e2e::cli::{signal, wait};
use kaizen_backup_e2e::cluster::{Cluster, give_to_postgres, postgres_tempdir};
use kaizen_backup_e2e::{Cli, Output, S3, env, wait_until};
use nix::sys::signal::Signal;

/// A cluster whose archive_command is `kaizen-backup wal-push`, and a config that both
/// the test (as root) and the server's archiver (as postgres) use.
struct Site {
    root: tempfile::TempDir,
    config: PathBuf,
    archive: PathBuf,
    cluster: Cluster,
    cli: Cli,
}

fn write_config(root: &Path, port: u16, target: &str, extra: &str) -> PathBuf {
    let config = root.join("kaizen-backup.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nhost = \"127.0.0.1\"\nport = {port}\nname = \"postgres\"\nuser = \"postgres\"\nbin_dir = \"{}\"\n\n[storage]\ntargets = [\"{target}\"]\n{extra}",
            env("KAIZEN_TEST_PG_BIN"),
        ),
    )
    .unwrap();
    config
}

impl Site {
    /// Archive and backups in a local directory (`archive`).
    fn new(extra_config: &str) -> Self {
        Self::with_target(None, extra_config)
    }

    /// Archive and backups at `target` (a URL), or in the local `archive` directory.
    fn with_target(target: Option<&str>, extra_config: &str) -> Self {
        let root = postgres_tempdir("kb-pitr-");
        let archive = root.path().join("archive");
        std::fs::create_dir(&archive).unwrap();
        let mut cluster = Cluster::init("kb-pitr-cluster-", "");
        let local = archive.display().to_string();
        let config = write_config(
            root.path(),
            cluster.port,
            target.unwrap_or(&local),
            extra_config,
        );
        give_to_postgres(root.path());
        cluster.append_conf(&format!(
            "wal_level = replica\narchive_mode = on\narchive_command = '{} --config {} wal-push %p'\n",
            env("KAIZEN_BACKUP_BIN"),
            config.display()
        ));
        cluster.start();
        cluster.psql(
            "postgres",
            "create table marker (i int primary key, at timestamptz not null default clock_timestamp())",
        );
        Self {
            root,
            config,
            archive,
            cluster,
            cli: Cli::new().env_remove("BACKUP_DIR"),
        }
    }

    fn args<'a>(&'a self, config: &'a str, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec!["--config", config];
        all.extend_from_slice(args);
        all
    }

    fn run(&self, args: &[&str]) -> Output {
        let config = self.config.display().to_string();
        self.cli.run(&self.args(&config, args))
    }

    /// Start in the background, stopped at test pause point `point`.
    fn spawn_paused(&self, point: &str, args: &[&str]) -> std::process::Child {
        let config = self.config.display().to_string();
        self.cli.spawn_with(
            &[("KAIZEN_BACKUP_TEST_PAUSE", point)],
            &self.args(&config, args),
        )
    }

    fn mark(&self, i: i32) -> String {
        self.cluster.psql(
            "postgres",
            &format!("insert into marker (i) values ({i}) returning to_char(at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"),
        )
    }

    /// Switch to a new segment and wait until the archiver has stored everything before it.
    fn archive_now(&self) {
        let seg = self
            .cluster
            .psql("postgres", "select pg_walfile_name(pg_switch_wal())");
        let done = wait_until(Duration::from_secs(90), Duration::from_millis(50), || {
            self.cluster
                .try_psql(
                    "postgres",
                    "select coalesce(last_archived_wal, '') from pg_stat_archiver",
                )
                .is_ok_and(|last| last.as_str() >= seg.as_str())
        });
        assert!(
            done,
            "segment {seg} was not archived; log:\n{}",
            self.cluster.log()
        );
    }

    fn failed_count(&self) -> i64 {
        self.cluster
            .psql("postgres", "select failed_count from pg_stat_archiver")
            .parse()
            .unwrap()
    }

    /// A new (missing) data directory inside the postgres-owned root.
    fn new_pgdata(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// Start a restored data directory and return the markers it holds.
    fn start_restored(&self, pgdata: &Path) -> (Cluster, Vec<i32>) {
        let mut c = Cluster::adopt(pgdata, self.root.path());
        c.start();
        c.wait_promoted();
        let got = c.psql(
            "postgres",
            "select coalesce(string_agg(i::text, ',' order by i), '') from marker",
        );
        let got = got
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        (c, got)
    }

    /// Restore to the end of the archive (or `target`) into a new directory, start it and
    /// return its markers.
    fn restore_markers(&self, dir: &str, target: &[&str]) -> (Cluster, Vec<i32>) {
        let pgdata = self.new_pgdata(dir);
        let pgdata_s = pgdata.display().to_string();
        let mut args = vec!["restore", "--pgdata", pgdata_s.as_str(), "--no-archive"];
        args.extend_from_slice(target);
        let out = self.run(&args);
        out.assert_code(0);
        self.start_restored(&pgdata)
    }
}

fn upto(n: i32) -> Vec<i32> {
    (1..=n).collect()
}

/// Names in a local directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

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
    let pgdata = site.new_pgdata("from_s3");
    let pgdata_s = pgdata.display().to_string();
    let out = site.run(&[
        "restore",
        "--pgdata",
        &pgdata_s,
        "--to-time",
        &t,
        "--no-archive",
    ]);
    out.assert_code(0);
    assert!(
        !out.all().contains("Aws-Secret-Never-Printed"),
        "{}",
        out.all()
    );
    let (_c, got) = site.start_restored(&pgdata);
    assert_eq!(got, upto(3));
}
