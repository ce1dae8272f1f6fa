//! The archived cluster and what the cases do with it: archive_command changes that
//! are waited for, base backups, restores, and wal-push under load.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::servers::{BackRest, Restored, tail};
use super::{Base, Options, Restore, SAMPLE_EVERY};
use crate::bench::{Sample, measure};
use crate::pg::{Cluster, chown_pg, path_str};

/// A path the archive and restore commands can carry unquoted (shell and SQL).
fn plain(p: &Path) -> Result<&str> {
    let s = path_str(p)?;
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+=,:@".contains(c))
    {
        bail!(
            "{s}: the PITR bench puts this path into archive_command; use a directory whose path has no spaces, quotes or shell characters"
        );
    }
    Ok(s)
}

/// The archived cluster and everything around it, in one directory the postgres OS user
/// owns (the archiver and restored servers run as that user).
pub(super) struct Site {
    pub(super) cluster: Cluster,
    /// Owned by the postgres OS user.
    pub(super) dir: PathBuf,
    bin: PathBuf,
    /// Configuration: the local archive.
    pub(super) local: PathBuf,
    /// Configuration: S3.
    pub(super) s3: PathBuf,
    pub(super) backrest: Option<BackRest>,
    segment_size: u64,
}

impl Site {
    pub(super) fn new(o: &Options, backrest_exe: Option<PathBuf>) -> Result<Self> {
        let dir = o.work.join("pitr");
        std::fs::create_dir_all(&dir)?;
        let cluster = Cluster::start_archiving(
            &dir.join("cluster"),
            // Archived to nowhere until the load is done.
            "wal_level = replica\narchive_mode = on\narchive_command = '/bin/true'",
        )?;
        let database = format!(
            "[database]\nhost = \"127.0.0.1\"\nport = {}\nname = \"bench\"\nuser = \"postgres\"\nbin_dir = \"{}\"\n\n[backup]\ncompression = \"zstd\"\n",
            cluster.port,
            cluster.bin.display()
        );
        let archive = dir.join("archive");
        std::fs::create_dir_all(&archive)?;
        let local = dir.join("local.toml");
        std::fs::write(
            &local,
            format!(
                "{database}\n[storage]\ntargets = [\"{}\"]\n",
                archive.display()
            ),
        )?;
        let s3 = dir.join("s3.toml");
        std::fs::write(
            &s3,
            format!(
                "{database}\n[storage]\ntargets = [\"s3://{}/pitr\"]\n\n[storage.s3]\nregion = \"us-east-1\"\nendpoint = \"{}\"\nallow_http = true\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
                o.s3.bucket, o.s3.endpoint, o.s3.access, o.s3.secret
            ),
        )?;
        let backrest = match backrest_exe {
            Some(exe) => {
                let repo = dir.join("pgbackrest");
                std::fs::create_dir_all(&repo)?;
                let config = dir.join("pgbackrest.conf");
                std::fs::write(
                    &config,
                    format!(
                        "[global]\nrepo1-path={}\nrepo1-retention-full=9999\ncompress-type=zst\nprocess-max=2\nstart-fast=y\nlog-level-console=warn\nlog-level-file=off\nlock-path={}\nspool-path={}\n\n[bench]\npg1-path={}\npg1-port={}\npg1-socket-path={}\npg1-user=postgres\n",
                        repo.display(),
                        dir.join("pgbackrest-lock").display(),
                        dir.join("pgbackrest-spool").display(),
                        cluster.data().display(),
                        cluster.port,
                        cluster.socket_dir().display()
                    ),
                )?;
                let out = Command::new(&exe).arg("version").output()?;
                let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
                Some(BackRest {
                    exe,
                    config,
                    repo,
                    version,
                })
            }
            None => None,
        };
        chown_pg(&dir)?;
        let mut site = Self {
            cluster,
            dir,
            bin: o.bin.to_path_buf(),
            local,
            s3,
            backrest,
            segment_size: 0,
        };
        site.cluster.psql("postgres", "CREATE DATABASE bench")?;
        let mut pgbench = site.pgbench_cmd();
        crate::bench::generate(
            &mut pgbench,
            "bench",
            &|sql| site.sql(sql).map(drop),
            o.scale,
        )?;
        site.segment_size = site
            .sql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")?
            .parse()
            .context("wal_segment_size")?;
        let mut command = site.wal_push_command(&site.local)?;
        if let Some(b) = &site.backrest {
            site.run_ok(&mut b.cmd(&["stanza-create"]))?;
            // pgBackRest's first: its backup waits until its own archive holds the
            // backup's WAL, and should not wait for ours too.
            command = format!(
                "{} --config={} --stanza=bench archive-push %p && {command}",
                plain(&b.exe)?,
                plain(&b.config)?
            );
        }
        site.set_archive_command(&command, Some(&site.local))?;
        if let Some(b) = &site.backrest {
            site.run_ok(&mut b.cmd(&["check"]))?;
        }
        Ok(site)
    }

    /// kaizen-backup with configuration `config` and nothing from our environment but
    /// PATH and the password.
    pub(super) fn ours(&self, config: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PGPASSWORD", &self.cluster.password)
            .arg("--config")
            .arg(config)
            .args(args)
            .current_dir(&self.dir);
        c
    }

    fn wal_push_command(&self, config: &Path) -> Result<String> {
        Ok(format!(
            "{} --config {} wal-push %p",
            plain(&self.bin)?,
            plain(config)?
        ))
    }

    /// Run to completion; its output in the error when it fails.
    fn run_ok(&self, cmd: &mut Command) -> Result<()> {
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "{cmd:?} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// One statement in the bench database, over the socket.
    pub(super) fn sql(&self, sql: &str) -> Result<String> {
        self.cluster.psql("bench", sql)
    }

    fn pgbench_cmd(&self) -> Command {
        let mut c = Command::new(self.cluster.bin.join("pgbench"));
        c.arg("-h").arg(self.cluster.socket_dir()).args([
            "-p",
            &self.cluster.port.to_string(),
            "-U",
            "postgres",
        ]);
        c
    }

    /// `pgbench -c 4 -T secs` on the bench database, started.
    fn pgbench(&self, secs: u32) -> Result<std::process::Child> {
        Ok(self
            .pgbench_cmd()
            .args(["-n", "-c", "4", "-T", &secs.to_string(), "bench"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    }

    /// A logical backup of the bench database, `logical`, for the restore comparison.
    pub(super) fn backup_logical(&self) -> Result<()> {
        self.run_ok(&mut self.ours(&self.local, &["backup", "logical", "-q"]))
    }

    /// `pgbench -c 4` for `secs`, then wait until its WAL is archived; MiB of WAL written.
    pub(super) fn load_and_archive(&self, secs: u32) -> Result<f64> {
        let before = self.sql("SELECT pg_current_wal_lsn()")?;
        pgbench_result(self.pgbench(secs)?)?;
        let mib = self
            .sql(&format!(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{before}') / 1048576.0"
            ))?
            .parse()
            .unwrap_or(0.0);
        let segment = self.switch_wal()?;
        self.wait_archived(&segment, Instant::now() + Duration::from_secs(900))?;
        Ok(mib)
    }

    pub(super) fn cluster_size(&self) -> Result<String> {
        self.sql("SELECT pg_size_pretty(sum(pg_database_size(oid))) FROM pg_database")
    }

    fn log_tail(&self) -> String {
        tail(&self.cluster.dir.join("server.log"))
    }

    /// Write a record, switch to a new segment; the name of the one just completed.
    fn switch_wal(&self) -> Result<String> {
        self.sql(
            "WITH m AS MATERIALIZED (SELECT pg_logical_emit_message(false, 'kaizen-bench', 'switch')) \
             SELECT pg_walfile_name(pg_switch_wal()) FROM m",
        )
    }

    /// (last archived WAL file, failed_count).
    fn archiver(&self) -> Result<(String, u64)> {
        let row = self.sql(
            "SELECT coalesce(last_archived_wal, '') || '|' || failed_count FROM pg_stat_archiver",
        )?;
        let (last, failed) = row.split_once('|').context("pg_stat_archiver")?;
        Ok((last.to_string(), failed.parse().unwrap_or(0)))
    }

    /// Wait until `segment` has been archived; a failing archive_command is an error.
    fn wait_archived(&self, segment: &str, deadline: Instant) -> Result<()> {
        let (_, failed_before) = self.archiver()?;
        loop {
            if crate::stopped() {
                bail!("interrupted");
            }
            let (last, failed) = self.archiver()?;
            if last.as_str() >= segment {
                return Ok(());
            }
            if failed > failed_before {
                bail!(
                    "archive_command failed while waiting for {segment}; server log:\n{}",
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{segment} was not archived in time (last archived: {last:?}); server log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Set archive_command and reload. With `check`, wait until a segment completed after
    /// the change can be fetched through that configuration (the archiver has read it).
    pub(super) fn set_archive_command(&self, command: &str, check: Option<&Path>) -> Result<()> {
        self.sql(&format!(
            "ALTER SYSTEM SET archive_command = '{}'",
            command.replace('\'', "''")
        ))?;
        self.sql("SELECT pg_reload_conf()")?;
        let Some(config) = check else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        let scratch = self.dir.join("switch-check");
        loop {
            let segment = self.switch_wal()?;
            self.wait_archived(&segment, deadline)?;
            let _ = std::fs::remove_file(&scratch);
            let found = self
                .ours(config, &["wal-fetch", &segment])
                .arg(&scratch)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?
                .success();
            let _ = std::fs::remove_file(&scratch);
            if found {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the archiver did not take up archive_command = {command:?} in time");
            }
        }
    }

    pub(super) fn base_backup(&self, tool: Base, round: usize) -> Result<(Sample, u64)> {
        match tool {
            Base::Ours => {
                let name = format!("base{round}");
                let s =
                    measure(&mut self.ours(&self.local, &["backup", "--physical", &name, "-q"]))?;
                let object = self
                    .dir
                    .join("archive")
                    .join(format!("{name}.base.tar.zst"));
                Ok((s, std::fs::metadata(&object)?.len()))
            }
            Base::Pipeline => {
                let file = self.dir.join("pipeline.tar.zst");
                let script = format!(
                    "set -o pipefail; '{}' -h 127.0.0.1 -p {} -U postgres -Ft -D - -X fetch -c fast | zstd -q -T0 > '{}'",
                    self.cluster.bin.join("pg_basebackup").display(),
                    self.cluster.port,
                    file.display()
                );
                let s = measure(
                    Command::new("bash")
                        .args(["-c", &script])
                        .env_clear()
                        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                        .env("PGPASSWORD", &self.cluster.password),
                )?;
                let size = std::fs::metadata(&file)?.len();
                std::fs::remove_file(&file)?;
                Ok((s, size))
            }
            Base::BackRest => {
                let b = self.backrest.as_ref().context("pgBackRest")?;
                let s = measure(&mut b.cmd(&["--type=full", "backup"]))?;
                Ok((s, b.newest_size()?))
            }
        }
    }

    /// One restore: its command's sample and the seconds until the server (or database)
    /// takes a write.
    pub(super) fn restore(&self, kind: Restore, round: usize) -> Result<(Sample, f64)> {
        let deadline = Duration::from_secs(1800);
        let pgdata = self.dir.join(format!("restored-{round}"));
        match kind {
            Restore::Ours => {
                let data = path_str(&pgdata)?;
                let start = Instant::now();
                let s = measure(&mut self.ours(
                    &self.local,
                    &["restore", "--pgdata", data, "--no-archive", "-q"],
                ))?;
                let server = Restored::start(self, &pgdata)?;
                server.wait_writable(start + deadline)?;
                Ok((s, start.elapsed().as_secs_f64()))
            }
            Restore::BackRest => {
                let b = self.backrest.as_ref().context("pgBackRest")?;
                // pgBackRest restores into an existing directory.
                std::fs::create_dir_all(&pgdata)?;
                std::fs::set_permissions(
                    &pgdata,
                    std::os::unix::fs::PermissionsExt::from_mode(0o700),
                )?;
                chown_pg(&pgdata)?;
                let start = Instant::now();
                let s = measure(&mut b.cmd(&[
                    &format!("--pg1-path={}", pgdata.display()),
                    "--archive-mode=off",
                    "restore",
                ]))?;
                let server = Restored::start(self, &pgdata)?;
                server.wait_writable(start + deadline)?;
                Ok((s, start.elapsed().as_secs_f64()))
            }
            Restore::Logical(jobs) => {
                let db = format!("logical_{round}_{jobs}");
                let s = measure(&mut self.ours(
                    &self.local,
                    &["restore", "logical", &db, "--jobs", &jobs.to_string(), "-q"],
                ))?;
                self.cluster
                    .psql("postgres", &format!("DROP DATABASE {db}"))?;
                Ok((s, s.wall))
            }
        }
    }

    /// `pgbench -c 4 -T secs` while the cluster archives through wal-push with `config`,
    /// then per-segment timings of wal-push (to `micro`, a fresh place on the same
    /// storage) and wal-fetch on up to `count` of the run's segments.
    pub(super) fn wal_push_run(
        &self,
        config: &Path,
        micro: &str,
        secs: u32,
        count: usize,
    ) -> Result<WalRun> {
        self.set_archive_command(&self.wal_push_command(config)?, Some(config))?;
        let at_start = self.archive_state()?;
        let first = at_start.current;
        let start = Instant::now();
        let child = self.pgbench(secs)?;
        // pgbench prints when it ends; its pipes are read in the background.
        let waiter = std::thread::spawn(move || pgbench_result(child));
        let mut max_behind = 0u64;
        while !waiter.is_finished() {
            if crate::stopped() {
                bail!("interrupted");
            }
            max_behind = max_behind.max(self.archive_state()?.behind(first));
            std::thread::sleep(SAMPLE_EVERY);
        }
        let load_end = Instant::now();
        let tps = waiter
            .join()
            .map_err(|_| anyhow::anyhow!("pgbench's waiter panicked"))??;
        let last_full = self.archive_state()?.current;
        let switched = self.segment_number(&self.switch_wal()?)?;
        // Sampled until everything is archived; a failing push is retried by the server
        // and counted, so only the deadline ends the wait.
        let deadline = load_end + Duration::from_secs(900);
        let at_end = loop {
            if crate::stopped() {
                bail!("interrupted");
            }
            let st = self.archive_state()?;
            max_behind = max_behind.max(st.behind(first));
            if st.last.is_some_and(|l| l >= switched) {
                break st;
            }
            if Instant::now() > deadline {
                bail!(
                    "the archive did not catch up within 15 minutes of the load's end; server log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let done = Instant::now();
        let timeline = at_start.timeline;

        // Per-segment timings on the run's complete segments (the switched one is
        // mostly empty), newest first.
        let names: Vec<String> = (first..last_full)
            .rev()
            .take(count)
            .map(|n| self.segment_name(&timeline, n))
            .collect();
        let scratch = self.dir.join("micro");
        std::fs::create_dir_all(&scratch)?;
        let mut fetch = Vec::new();
        let mut push = Vec::new();
        for name in &names {
            let dest = scratch.join(name);
            fetch.push(measure(
                self.ours(config, &["-q", "wal-fetch", name]).arg(&dest),
            )?);
        }
        for name in &names {
            let dest = scratch.join(name);
            push.push(measure(
                self.ours(config, &["-q", "--storage", micro, "wal-push"])
                    .arg(&dest),
            )?);
        }
        let _ = std::fs::remove_dir_all(&scratch);
        Ok(WalRun {
            tps,
            written: last_full.saturating_sub(first),
            archived: at_end.archived.saturating_sub(at_start.archived),
            failed: at_end.failed.saturating_sub(at_start.failed),
            max_behind,
            drain: done.duration_since(load_end).as_secs_f64(),
            elapsed: done.duration_since(start).as_secs_f64(),
            push,
            fetch,
        })
    }

    /// The current WAL segment and what pg_stat_archiver says, in one query.
    fn archive_state(&self) -> Result<ArchiveState> {
        let row = self.sql(
            "SELECT pg_walfile_name(pg_current_wal_lsn()) || '|' || coalesce(last_archived_wal, '') \
             || '|' || archived_count || '|' || failed_count FROM pg_stat_archiver",
        )?;
        let f: Vec<&str> = row.split('|').collect();
        let [current, last, archived, failed] = f[..] else {
            bail!("unexpected pg_stat_archiver row {row:?}");
        };
        Ok(ArchiveState {
            current: self.segment_number(current)?,
            // A .history file is not a position.
            last: self.segment_number(last).ok(),
            archived: archived.parse()?,
            failed: failed.parse()?,
            timeline: current.get(..8).unwrap_or("00000001").to_string(),
        })
    }

    /// The position of a WAL segment file name in the WAL stream.
    fn segment_number(&self, name: &str) -> Result<u64> {
        let hex = |r: std::ops::Range<usize>| {
            name.get(r)
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .with_context(|| format!("not a WAL segment name: {name:?}"))
        };
        Ok(hex(8..16)? * self.per_log() + hex(16..24)?)
    }

    fn segment_name(&self, timeline: &str, n: u64) -> String {
        format!(
            "{timeline}{:08X}{:08X}",
            n / self.per_log(),
            n % self.per_log()
        )
    }

    fn per_log(&self) -> u64 {
        0x1_0000_0000 / self.segment_size.max(1)
    }
}

/// One sample of the archiver.
struct ArchiveState {
    /// The segment being written.
    current: u64,
    /// The last archived segment (or the segment of the last archived `.backup` file).
    last: Option<u64>,
    archived: u64,
    failed: u64,
    timeline: String,
}

impl ArchiveState {
    /// Complete segments not archived yet; `first` stands for the last archived one
    /// before anything was.
    fn behind(&self, first: u64) -> u64 {
        let last = self.last.unwrap_or(first.saturating_sub(1));
        self.current.saturating_sub(last).saturating_sub(1)
    }
}

/// What one wal-push run measured.
pub(super) struct WalRun {
    pub(super) tps: f64,
    /// Complete segments written during the load.
    pub(super) written: u64,
    pub(super) archived: u64,
    pub(super) failed: u64,
    pub(super) max_behind: u64,
    /// Seconds from the load's end until everything was archived.
    pub(super) drain: f64,
    /// Seconds from the load's start until everything was archived.
    pub(super) elapsed: f64,
    pub(super) push: Vec<Sample>,
    pub(super) fetch: Vec<Sample>,
}

/// Wait for pgbench; its tps (`tps = N (without initial connection time)`).
fn pgbench_result(child: std::process::Child) -> Result<f64> {
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0))
}
