//! `kaizen-backup wal-receive` running in the background for a [`Site`]: its log in a
//! file (a pipe nobody reads would block it), its metrics and health over HTTP.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::pitr_site::Site;
use crate::{free_port, wait_until};

/// A running receiver.
#[derive(Debug)]
pub struct Receiver {
    child: Option<Child>,
    log: PathBuf,
    /// `127.0.0.1:PORT` of `--metrics-listen`.
    pub addr: String,
    /// The slot it streams through.
    pub slot: String,
}

impl Receiver {
    /// Start `wal-receive --create-slot` with metrics on a free port; `n` numbers the log.
    pub fn start(site: &Site, n: u32, extra: &[&str]) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = site.root.path().join(format!("receiver-{n}.log"));
        let config = site.config.display().to_string();
        let mut args = vec![
            "--config",
            config.as_str(),
            "-v",
            "wal-receive",
            "--create-slot",
            "--metrics-listen",
            addr.as_str(),
        ];
        args.extend_from_slice(extra);
        let mut cmd = site.cli.command(&args);
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .current_dir(site.root.path());
        // As the server's OS user, as a receiver beside the server would run: the archive
        // it writes is then readable by the restored servers' restore_command.
        if nix::unistd::geteuid().is_root() {
            use std::os::unix::process::CommandExt;
            let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            cmd.uid(pg.uid.as_raw()).gid(pg.gid.as_raw());
        }
        let child = cmd.spawn().unwrap();
        let slot = extra
            .iter()
            .position(|a| *a == "--slot")
            .map_or("kaizen_backup".to_string(), |i| extra[i + 1].to_string());
        Self {
            child: Some(child),
            log,
            addr,
            slot,
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until its slot is in use on the server (pg_receivewal streams).
    pub fn wait_streaming(&self, site: &Site) {
        let sql = format!(
            "select count(*) from pg_replication_slots where slot_name = '{}' and active",
            self.slot
        );
        let ok = wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
            site.cluster
                .try_psql("postgres", &sql)
                .is_ok_and(|s| s == "1")
        });
        assert!(ok, "the receiver is not streaming; log:\n{}", self.log());
    }

    /// `GET path`: status code and body (None when nothing answers).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    }

    /// The value of metric `name` on /metrics.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics")?;
        body.lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Wait until the archive holds WAL up to the server's current flushed position.
    pub fn wait_archived(&self, site: &Site) {
        let lsn = site.cluster.psql(
            "postgres",
            "select pg_current_wal_flush_lsn() - '0/0'::pg_lsn",
        );
        let want: f64 = lsn.parse().unwrap();
        let ok = wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
            self.metric("kaizen_backup_wal_receive_archived_lsn")
                .is_some_and(|v| v >= want)
        });
        assert!(ok, "the archive never reached {want}; log:\n{}", self.log());
    }

    /// SIGKILL (no chance to store anything).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and the exit code.
    pub fn term(&mut self) -> i32 {
        let mut c = self.child.take().expect("running");
        crate::cli::signal(&c, nix::sys::signal::Signal::SIGTERM);
        let st = c.wait().unwrap();
        st.code().unwrap_or(-1)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.kill9();
    }
}
