//! The servers around the archived cluster: pgBackRest (the baseline) and a server
//! started on a restored data directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::site::Site;
use crate::pg::{as_pg, free_port, path_str};

/// pgBackRest with its configuration and repository in the site.
pub(super) struct BackRest {
    pub(super) exe: PathBuf,
    pub(super) config: PathBuf,
    pub(super) repo: PathBuf,
    pub(super) version: String,
}

impl BackRest {
    /// `pgbackrest --config=FILE --stanza=bench ARGS`, as the postgres OS user.
    pub(super) fn cmd(&self, args: &[&str]) -> Command {
        let mut c = as_pg(&self.exe);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .arg(format!("--config={}", self.config.display()))
            .arg("--stanza=bench")
            .args(args);
        c
    }

    /// Stored size of the newest full backup.
    pub(super) fn newest_size(&self) -> Result<u64> {
        let dir = self.repo.join("backup").join("bench");
        let mut labels: Vec<String> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with('F') && n.len() >= 16)
            .collect();
        labels.sort();
        let newest = labels.last().context("pgBackRest stored no full backup")?;
        Ok(tree_size(&dir.join(newest)))
    }
}

/// Total size of the files under `path`.
fn tree_size(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| tree_size(&e.path()))
            .sum(),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// The last lines of a log file.
pub(super) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A server started on a restored data directory; stopped and removed on drop.
pub(super) struct Restored {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    socket: PathBuf,
    port: u16,
}

impl Restored {
    /// `pg_ctl start` without waiting: the caller waits for what it needs.
    pub(super) fn start(site: &Site, data: &Path) -> Result<Self> {
        let port = free_port()?;
        let socket = site.cluster.socket_dir();
        let log = data.with_extension("log");
        let server = Self {
            bin: site.cluster.bin.clone(),
            data: data.to_path_buf(),
            log,
            socket,
            port,
        };
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c archive_mode=off",
            path_str(&server.socket)?
        );
        let out = as_pg(&server.bin.join("pg_ctl"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .args([
                "-D",
                path_str(data)?,
                "-o",
                &opts,
                "-l",
                path_str(&server.log)?,
                "start",
            ])
            .output()?;
        if !out.status.success() {
            bail!(
                "pg_ctl start {} failed: {}{}",
                data.display(),
                String::from_utf8_lossy(&out.stderr),
                tail(&server.log)
            );
        }
        Ok(server)
    }

    /// Wait until recovery has ended and a write commits. The log says when the server
    /// is ready for writes; a probe every half second does not depend on its wording.
    pub(super) fn wait_writable(&self, deadline: Instant) -> Result<()> {
        let pid = self.data.join("postmaster.pid");
        let started = Instant::now();
        let mut seen_pid = false;
        let mut probed: Option<Instant> = None;
        loop {
            if crate::stopped() {
                bail!("interrupted");
            }
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let ready = log.contains("database system is ready to accept connections");
            if ready || probed.is_none_or(|t| t.elapsed() > Duration::from_millis(500)) {
                probed = Some(Instant::now());
                let ok = Command::new(self.bin.join("psql"))
                    .args(["-X", "-q", "-h"])
                    .arg(&self.socket)
                    .args([
                        "-p",
                        &self.port.to_string(),
                        "-U",
                        "postgres",
                        "-d",
                        "postgres",
                    ])
                    .args(["-c", "CREATE TABLE kaizen_bench_probe AS SELECT 1 AS i"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()?
                    .success();
                if ok {
                    return Ok(());
                }
            }
            let running = pid.is_file();
            if (seen_pid && !running) || (!seen_pid && started.elapsed() > Duration::from_secs(60))
            {
                bail!(
                    "the restored server is not running; its log:\n{}",
                    tail(&self.log)
                );
            }
            seen_pid |= running;
            if Instant::now() > deadline {
                bail!(
                    "the restored server did not take a write in time; its log:\n{}",
                    tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        if let Ok(d) = path_str(&self.data) {
            let _ = crate::pg::run_as_pg(
                &self.bin.join("pg_ctl"),
                &["-D", d, "-m", "immediate", "-w", "stop"],
            );
        }
        let _ = std::fs::remove_dir_all(&self.data);
        let _ = std::fs::remove_file(&self.log);
    }
}
