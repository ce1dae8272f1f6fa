//! Throwaway PostgreSQL clusters of a test's own (physical backups and WAL archiving
//! need a whole cluster each): made by initdb as the `postgres` OS user, on a free
//! port, stopped and removed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::{env, free_port, wait_until};

/// A command run as the `postgres` OS user when we are root (initdb and the server
/// refuse root).
pub fn as_postgres(cmd: &Path) -> Command {
    if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    }
}

/// Give `path` (recursively) to the `postgres` OS user when we are root.
pub fn give_to_postgres(path: &Path) {
    if nix::unistd::geteuid().is_root() {
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success(), "chown {}", path.display());
    }
}

/// One cluster: its data directory, socket directory and log live in `root`.
#[derive(Debug)]
pub struct Cluster {
    root: PathBuf,
    pub data: PathBuf,
    pub bin: PathBuf,
    pub port: u16,
    running: bool,
    _tmp: Option<tempfile::TempDir>,
}

fn check(out: &Output, what: &str, log: &Path) {
    assert!(
        out.status.success(),
        "{what} failed: {}{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// A directory in /tmp that the `postgres` user can use.
pub fn postgres_tempdir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap();
    give_to_postgres(dir.path());
    dir
}

impl Cluster {
    /// initdb a new cluster (not started). `conf` is appended to postgresql.conf.
    pub fn init(prefix: &str, conf: &str) -> Self {
        let tmp = postgres_tempdir(prefix);
        let root = tmp.path().to_path_buf();
        let bin = PathBuf::from(env("KAIZEN_TEST_PG_BIN"));
        let data = root.join("data");
        let out = as_postgres(&bin.join("initdb"))
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        check(&out, "initdb", &root.join("log"));
        let c = Self {
            root,
            data,
            bin,
            port: free_port(),
            running: false,
            _tmp: Some(tmp),
        };
        c.append_conf(conf);
        c
    }

    /// A cluster over an existing data directory (a restored one), with its socket and
    /// log in `root` (which the postgres user must be able to write).
    pub fn adopt(data: &Path, root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            data: data.to_path_buf(),
            bin: PathBuf::from(env("KAIZEN_TEST_PG_BIN")),
            port: free_port(),
            running: false,
            _tmp: None,
        }
    }

    /// Append lines to postgresql.conf.
    pub fn append_conf(&self, conf: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .unwrap();
        writeln!(f, "\n{conf}").unwrap();
    }

    /// The server log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.root.join(format!("log-{}", self.port))
    }

    /// Start and wait until it accepts connections (during recovery too: hot standby).
    pub fn start(&mut self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.root.display()
        );
        let out = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-w", "-t", "120", "-D"])
            .arg(&self.data)
            .args(["-o", &opts, "-l"])
            .arg(self.log_path())
            .arg("start")
            .output()
            .unwrap();
        check(&out, "pg_ctl start", &self.log_path());
        self.running = true;
    }

    /// Stop (`fast` or `immediate`).
    pub fn stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-w", "-D"])
            .arg(&self.data)
            .args(["-m", mode, "stop"])
            .output();
        self.running = false;
    }

    /// Run SQL as the superuser; `Err(stderr)` on failure.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        crate::pg::psql_at(
            &self.bin,
            &self.root.display().to_string(),
            &self.port.to_string(),
            "postgres",
            db,
            sql,
        )
    }

    /// Run SQL as the superuser; panics on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql failed: {e}\nSQL: {sql}\nlog:\n{}", self.log()))
    }

    /// Wait until recovery has ended (the server was promoted), with a deadline.
    pub fn wait_promoted(&self) {
        let promoted = wait_until(Duration::from_secs(120), Duration::from_millis(100), || {
            self.try_psql("postgres", "select pg_is_in_recovery()")
                .is_ok_and(|s| s == "f")
        });
        assert!(
            promoted,
            "the restored server was not promoted in time; log:\n{}",
            self.log()
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop("immediate");
    }
}
