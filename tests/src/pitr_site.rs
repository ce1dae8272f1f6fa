//! A cluster of a test's own that archives its WAL through `kaizen-backup wal-push`, and
//! what point-in-time recovery tests do with it (issue 16).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cluster::{Cluster, give_to_postgres, postgres_tempdir};
use crate::{Cli, Output, env, wait_until};

/// A cluster whose archive_command is `kaizen-backup wal-push`, and a config that both
/// the test (as root) and the server's archiver (as postgres) use.
#[derive(Debug)]
pub struct Site {
    /// A postgres-owned directory: config, archive, restored data directories.
    pub root: tempfile::TempDir,
    /// The configuration file both the tests and the archiver use.
    pub config: PathBuf,
    /// The local archive directory (the storage target unless another was given).
    pub archive: PathBuf,
    /// The cluster being archived.
    pub cluster: Cluster,
    /// The CLI, without BACKUP_DIR (the configuration file says where backups go).
    pub cli: Cli,
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
    pub fn new(extra_config: &str) -> Self {
        Self::with_target(None, extra_config)
    }

    /// Archive and backups at `target` (a URL), or in the local `archive` directory.
    pub fn with_target(target: Option<&str>, extra_config: &str) -> Self {
        Self::build(target, extra_config, true, "")
    }

    /// A cluster that does not archive: `kaizen-backup wal-receive` streams its WAL into
    /// the local `archive` directory (spool in `ROOT/spool`). `extra_config` follows a
    /// `[wal]` section (flush_interval 1s unless it sets one); `server_conf` goes to
    /// postgresql.conf.
    pub fn streaming(extra_config: &str, server_conf: &str) -> Self {
        let wal = if extra_config.contains("flush_interval") {
            String::new()
        } else {
            "flush_interval = \"1s\"\n".to_string()
        };
        let config = format!("\n[wal]\nspool_dir = \"SPOOL\"\n{wal}{extra_config}");
        Self::build(None, &config, false, server_conf)
    }

    fn build(target: Option<&str>, extra_config: &str, archive_command: bool, conf: &str) -> Self {
        let root = postgres_tempdir("kb-pitr-");
        let archive = root.path().join("archive");
        std::fs::create_dir(&archive).unwrap();
        let mut cluster = Cluster::init("kb-pitr-cluster-", "");
        let local = archive.display().to_string();
        let spool = root.path().join("spool").display().to_string();
        let config = write_config(
            root.path(),
            cluster.port,
            target.unwrap_or(&local),
            &extra_config.replace("SPOOL", &spool),
        );
        give_to_postgres(root.path());
        if archive_command {
            cluster.append_conf(&format!(
                "wal_level = replica\narchive_mode = on\narchive_command = '{} --config {} wal-push %p'\n",
                env("KAIZEN_BACKUP_BIN"),
                config.display()
            ));
        } else {
            cluster.append_conf("wal_level = replica\nmax_wal_senders = 10\n");
        }
        cluster.append_conf(conf);
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

    /// A scratch directory `ROOT/tmp` for `restore.temp_dir` (owned by postgres, so the
    /// temporary servers can use it), with the rest of the configuration in `extra`.
    pub fn with_scratch(extra: &str) -> (Self, PathBuf) {
        let site = Self::new("");
        let tmp = site.root.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        give_to_postgres(&tmp);
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&site.config)
            .unwrap();
        writeln!(f, "\n[restore]\ntemp_dir = \"{}\"\n{extra}", tmp.display()).unwrap();
        (site, tmp)
    }

    /// `wal-fetch SEGMENT` with the configuration minus its age identity must refuse
    /// ("no key") and write nothing.
    pub fn assert_wal_fetch_needs_the_key(&self, segment: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let nokey = self.root.path().join("nokey.toml");
        let without: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("identity_file"))
            .collect();
        std::fs::write(&nokey, without.join("\n")).unwrap();
        let dest = self.root.path().join("nokey-fetched");
        let out = self.cli.run(&[
            "--config",
            nokey.to_str().unwrap(),
            "wal-fetch",
            segment,
            dest.to_str().unwrap(),
        ]);
        out.assert_code(1);
        assert!(out.all().contains("no key"), "{}", out.all());
        assert!(!dest.exists());
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let config = self.config.display().to_string();
        self.cli.run(&self.args(&config, args))
    }

    /// Start in the background, stopped at test pause point `point`.
    pub fn spawn_paused(&self, point: &str, args: &[&str]) -> std::process::Child {
        let config = self.config.display().to_string();
        self.cli.spawn_with(
            &[("KAIZEN_BACKUP_TEST_PAUSE", point)],
            &self.args(&config, args),
        )
    }

    pub fn mark(&self, i: i32) -> String {
        self.cluster.psql(
            "postgres",
            &format!("insert into marker (i) values ({i}) returning to_char(at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"),
        )
    }

    /// Switch to a new segment and wait until the archiver has stored everything before it.
    pub fn archive_now(&self) {
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

    /// Switch to a new segment and wait until `wal-receive` has stored the completed one.
    pub fn received_now(&self) -> String {
        let seg = self
            .cluster
            .psql("postgres", "select pg_walfile_name(pg_switch_wal())");
        let prefix = format!("{seg}-");
        let done = wait_until(Duration::from_secs(90), Duration::from_millis(50), || {
            names(&self.archive.join("wal"))
                .iter()
                .any(|n| n.starts_with(&prefix))
        });
        assert!(done, "segment {seg} was not stored by wal-receive");
        seg
    }

    /// Wait until the receiver's slot says everything up to the server's current position
    /// was received (pg_receivewal --synchronous reports what it has flushed to its spool).
    pub fn wait_received_locally(&self, slot: &str) {
        let lsn = self
            .cluster
            .psql("postgres", "select pg_current_wal_flush_lsn()");
        let sql = format!(
            "select coalesce(restart_lsn >= '{lsn}', false) from pg_replication_slots where slot_name = '{slot}'"
        );
        let done = wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
            self.cluster
                .try_psql("postgres", &sql)
                .is_ok_and(|s| s == "t")
        });
        assert!(done, "WAL up to {lsn} was not received through slot {slot}");
    }

    pub fn failed_count(&self) -> i64 {
        self.cluster
            .psql("postgres", "select failed_count from pg_stat_archiver")
            .parse()
            .unwrap()
    }

    /// A new (missing) data directory inside the postgres-owned root.
    pub fn new_pgdata(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// Start a restored data directory and return the markers it holds.
    pub fn start_restored(&self, pgdata: &Path) -> (Cluster, Vec<i32>) {
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

    /// Restore to the end of the archive (or `target`) into the new directory `dir`
    /// (archiving off); the restore must succeed.
    pub fn restore_pgdata(&self, dir: &str, target: &[&str]) -> (PathBuf, Output) {
        let pgdata = self.new_pgdata(dir);
        let pgdata_s = pgdata.display().to_string();
        let mut args = vec!["restore", "--pgdata", pgdata_s.as_str(), "--no-archive"];
        args.extend_from_slice(target);
        let out = self.run(&args);
        out.assert_code(0);
        (pgdata, out)
    }

    /// [`Site::restore_pgdata`], then start it and return its markers.
    pub fn restore_markers(&self, dir: &str, target: &[&str]) -> (Cluster, Vec<i32>) {
        let (pgdata, _) = self.restore_pgdata(dir, target);
        self.start_restored(&pgdata)
    }
}

/// An age key that the postgres user can read (the archiver and a restored server's
/// wal-fetch run as postgres): its directory, its path and its recipient.
pub fn age_key_for_postgres(prefix: &str) -> (tempfile::TempDir, PathBuf, String) {
    let keys = postgres_tempdir(prefix);
    let key = keys.path().join("age.key");
    let recipient = Cli::new()
        .run(&["keygen", "--output", key.to_str().unwrap()])
        .assert_code(0)
        .stdout
        .lines()
        .find(|l| l.starts_with("age1"))
        .unwrap()
        .trim()
        .to_string();
    give_to_postgres(keys.path());
    (keys, key, recipient)
}

/// Markers 1 to n.
pub fn upto(n: i32) -> Vec<i32> {
    (1..=n).collect()
}

/// Names in a local directory, sorted.
pub fn names(dir: &Path) -> Vec<String> {
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
