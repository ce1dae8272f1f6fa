//! A temporary PostgreSQL server on a data directory: started for a check (a physical
//! backup's recovery drill), reachable only through a private socket directory, and
//! never left running.
//!
//! ```text
//! postgres -D DIR -c listen_addresses='' -c unix_socket_directories=SOCK …
//!   │ parent-death signal SIGQUIT: a killed verify takes its server with it
//!   ▼
//! wait: connected and out of recovery ─▶ read ─▶ stop (fast, then immediate, then kill)
//! ```
//!
//! The server runs as the OS user running this tool; as root (which PostgreSQL refuses)
//! it runs as `postgres`. No TCP listener: only a socket in a directory private to that
//! user, with `trust` for local connections, so no password is needed or exposed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::pg::{Tool, parse_major, quote_ident};

/// The OS account a server started by this tool runs as: `None` for the current user,
/// `postgres` when running as root.
pub fn account() -> Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name("postgres") {
        Ok(Some(u)) => Ok(Some((u.uid.as_raw(), u.gid.as_raw()))),
        _ => Err(Error::Refused(
            "PostgreSQL cannot run as root and there is no `postgres` OS user to run the temporary server as: create one, or run this as the database's OS user"
                .into(),
        )),
    }
}

/// Find a server program (`postgres`, `pg_verifybackup`, `pg_waldump`) of exactly
/// `major`: in `bin_dir` when given, else where Debian/Ubuntu and the PGDG RPMs install
/// that version, else on `PATH`.
pub async fn find_server_tool(name: &str, bin_dir: Option<&Path>, major: u32) -> Result<Tool> {
    let candidates: Vec<PathBuf> = match bin_dir {
        Some(d) => vec![d.join(name)],
        None => {
            let mut c = vec![
                PathBuf::from(format!("/usr/lib/postgresql/{major}/bin/{name}")),
                PathBuf::from(format!("/usr/pgsql-{major}/bin/{name}")),
            ];
            if let Some(paths) = std::env::var_os("PATH") {
                c.extend(std::env::split_paths(&paths).map(|d| d.join(name)));
            }
            c
        }
    };
    let Some(path) = candidates.into_iter().find(|p| p.is_file()) else {
        return Err(Error::Tool(format!(
            "{name} of PostgreSQL {major} not found: install the PostgreSQL {major} server binaries or set database.bin_dir to them"
        )));
    };
    let version = super::tool_version(name, &path).await?;
    match parse_major(&version) {
        Some(m) if m == major => Ok(Tool {
            path,
            version,
            major: m,
        }),
        _ => Err(Error::Tool(format!(
            "{} is {version:?}, but the data directory is PostgreSQL {major}: set database.bin_dir to the PostgreSQL {major} binaries",
            path.display()
        ))),
    }
}

/// How to start a temporary server.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// The `postgres` program (see [`find_server_tool`]).
    pub postgres: PathBuf,
    /// The data directory.
    pub pgdata: PathBuf,
    /// A private directory for the socket (nothing else listens).
    pub socket_dir: PathBuf,
    /// Where the server's log goes.
    pub log_file: PathBuf,
    /// The pg_hba.conf the server uses (see [`write_local_trust`]).
    pub hba_file: PathBuf,
    /// The OS account to run as (see [`account`]).
    pub account: Option<(u32, u32)>,
    /// More `-c name=value` settings, after ours.
    pub settings: Vec<(String, String)>,
}

/// Write a pg_hba.conf allowing socket connections only (`trust`: the socket directory
/// is private), and an empty pg_ident.conf beside it.
pub fn write_local_trust(hba_file: &Path) -> Result<()> {
    std::fs::write(hba_file, "local all all trust\n")
        .map_err(|e| Error::io(format!("cannot write {}", hba_file.display()), e))?;
    let ident = hba_file.with_file_name("pg_ident.conf");
    std::fs::write(&ident, "")
        .map_err(|e| Error::io(format!("cannot write {}", ident.display()), e))
}

/// The major version in a data directory's `PG_VERSION`.
pub fn data_dir_major(pgdata: &Path) -> Result<u32> {
    let p = pgdata.join("PG_VERSION");
    let text = std::fs::read_to_string(&p).map_err(|e| {
        Error::Corrupt(format!(
            "{} has no readable PG_VERSION ({e}): it is not a data directory",
            pgdata.display()
        ))
    })?;
    text.trim()
        .parse()
        .map_err(|_| Error::Corrupt(format!("{} says PostgreSQL {:?}", p.display(), text.trim())))
}

/// Make `pgdata`, inside `root` (a private scratch directory), startable here: a
/// `postgresql.conf` when it has none (Debian keeps it in /etc, so a base backup may
/// lack it), our `pg_hba.conf`, a socket directory, the `postgres` program of its major
/// version, and everything owned by the account the server will run as.
pub async fn prepare(root: &Path, pgdata: &Path, bin_dir: Option<&Path>) -> Result<ServerSpec> {
    let major = data_dir_major(pgdata)?;
    let postgres = find_server_tool("postgres", bin_dir, major).await?;
    let conf = pgdata.join("postgresql.conf");
    if !conf.exists() {
        std::fs::write(
            &conf,
            "# Written by kaizen-backup for a temporary server: the backup had none.\n",
        )
        .map_err(|e| Error::io(format!("cannot write {}", conf.display()), e))?;
    }
    let hba_file = root.join("pg_hba.conf");
    write_local_trust(&hba_file)?;
    let socket_dir = root.join("s");
    if !socket_dir.is_dir() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&socket_dir)
            .map_err(|e| Error::io(format!("cannot create {}", socket_dir.display()), e))?;
    }
    let account = account()?;
    if let Some((uid, gid)) = account {
        crate::recovery::chown_tree(root, uid, gid)?;
    }
    Ok(ServerSpec {
        postgres: postgres.path,
        pgdata: pgdata.to_path_buf(),
        socket_dir,
        log_file: root.join("server.log"),
        hba_file,
        account,
        settings: Vec::new(),
    })
}

/// A running temporary server. Dropping it stops the server (immediate shutdown).
#[derive(Debug)]
pub struct TempServer {
    child: Option<Child>,
    port: u16,
    socket_dir: PathBuf,
    log_file: PathBuf,
}

/// The settings that make any data directory start here, whatever its own
/// configuration says: no listener but the socket, no archiving, no replication
/// upstream, no files outside the directory.
fn fixed_settings(spec: &ServerSpec, port: u16) -> Vec<(String, String)> {
    let s = |k: &str, v: &str| (k.to_string(), v.to_string());
    let hba = spec.hba_file.display().to_string();
    let ident = spec
        .hba_file
        .with_file_name("pg_ident.conf")
        .display()
        .to_string();
    vec![
        s("port", &port.to_string()),
        s("listen_addresses", ""),
        s(
            "unix_socket_directories",
            &spec.socket_dir.display().to_string(),
        ),
        s("unix_socket_permissions", "0700"),
        s("hba_file", &hba),
        s("ident_file", &ident),
        s("archive_mode", "off"),
        s("hot_standby", "off"),
        s("primary_conninfo", ""),
        s("primary_slot_name", ""),
        s("synchronous_standby_names", ""),
        s("ssl", "off"),
        s("external_pid_file", ""),
        s("logging_collector", "off"),
        s("log_destination", "stderr"),
        s("huge_pages", "off"),
        s("shared_buffers", "128MB"),
        s("cluster_name", "kaizen-backup-drill"),
    ]
}

/// A port number for the socket's name (nothing listens on TCP).
fn pick_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(5432)
}

impl TempServer {
    /// Start `postgres` on `spec.pgdata`. Returns once the process runs; use
    /// [`TempServer::wait_ready`] for a usable server.
    pub fn start(spec: &ServerSpec) -> Result<Self> {
        let port = pick_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_file)
            .map_err(|e| Error::io(format!("cannot open {}", spec.log_file.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io(format!("cannot open {}", spec.log_file.display()), e))?;
        if let Some((uid, gid)) = spec.account {
            std::os::unix::fs::chown(&spec.log_file, Some(uid), Some(gid)).map_err(|e| {
                Error::io(
                    format!("cannot change the owner of {}", spec.log_file.display()),
                    e,
                )
            })?;
        }
        let mut cmd = Command::new(&spec.postgres);
        cmd.arg("-D").arg(&spec.pgdata);
        for (k, v) in fixed_settings(spec, port).iter().chain(&spec.settings) {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .env("LC_ALL", "C")
            .env_remove("PGDATA");
        if let Some((uid, gid)) = spec.account {
            cmd.uid(uid).gid(gid);
        }
        die_with_parent(&mut cmd, Signal::SIGQUIT);
        let child = cmd
            .spawn()
            .map_err(|e| Error::Tool(format!("cannot start {}: {e}", spec.postgres.display())))?;
        debug!(
            "Started a temporary server (pid {:?}) on {}",
            child.id(),
            spec.pgdata.display()
        );
        Ok(Self {
            child: Some(child),
            port,
            socket_dir: spec.socket_dir.clone(),
            log_file: spec.log_file.clone(),
        })
    }

    /// Connection settings for `user` on `dbname` through the private socket.
    pub fn config(&self, user: &str, dbname: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host_path(&self.socket_dir)
            .port(self.port)
            .user(user)
            .dbname(dbname)
            .application_name("kaizen-backup-drill")
            .connect_timeout(Duration::from_secs(10));
        c
    }

    /// Connect as `user` to `dbname`.
    pub async fn connect(&self, user: &str, dbname: &str) -> Result<tokio_postgres::Client> {
        let (client, conn) = self
            .config(user, dbname)
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| {
                Error::other(format!(
                    "cannot connect to the temporary server as {user:?} to {dbname:?}: {e}"
                ))
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!("temporary server connection closed: {e}");
            }
        });
        Ok(client)
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_file).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Wait until the server accepts connections as one of `users` and is out of
    /// recovery; returns the user that connected. Fails when the server exits, at
    /// `deadline`, or when `cancel` fires.
    pub async fn wait_ready(
        &mut self,
        users: &[&str],
        deadline: Duration,
        cancel: &CancellationToken,
    ) -> Result<String> {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(Error::other(format!(
                    "the temporary server exited ({status}) before it was usable; its log ends:\n{}",
                    self.log_tail(12)
                )));
            }
            for user in users {
                if let Ok(client) = self.connect(user, "template1").await
                    && let Ok(row) = client.query_one("SELECT pg_is_in_recovery()", &[]).await
                    && !row.get::<_, bool>(0)
                {
                    return Ok((*user).to_string());
                }
            }
            if started.elapsed() > deadline {
                return Err(Error::other(format!(
                    "the temporary server was not usable after {} s; its log ends:\n{}",
                    deadline.as_secs(),
                    self.log_tail(12)
                )));
            }
            tokio::select! {
                () = cancel.cancelled() => return Err(Error::Interrupted("a signal".into())),
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Stop the server: a fast shutdown, then an immediate one, then SIGKILL.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
            let _ = child.wait().await;
            return;
        };
        for (signal, wait) in [
            (Signal::SIGINT, Duration::from_secs(60)),
            (Signal::SIGQUIT, Duration::from_secs(10)),
            (Signal::SIGKILL, Duration::from_secs(10)),
        ] {
            let _ = kill(Pid::from_raw(pid), signal);
            if tokio::time::timeout(wait, child.wait()).await.is_ok() {
                return;
            }
            warn!("The temporary server (pid {pid}) did not stop on {signal}");
        }
    }
}

impl Drop for TempServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok())
        {
            // Immediate shutdown; its children follow the postmaster.
            let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
        }
    }
}

/// What reading one database's tables found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatabaseRead {
    /// Database name.
    pub database: String,
    /// Tables and populated materialized views read.
    pub tables: u64,
    /// Their rows (`count(*)`, each table without its inheritance children).
    pub rows: i64,
}

/// `N tables in M databases read, R rows (db T tables R rows; …)`.
pub fn describe_reads(dbs: &[DatabaseRead]) -> String {
    let tables: u64 = dbs.iter().map(|d| d.tables).sum();
    let rows: i64 = dbs.iter().map(|d| d.rows).sum();
    let parts: Vec<String> = dbs
        .iter()
        .map(|d| format!("{} {} tables {} rows", d.database, d.tables, d.rows))
        .collect();
    format!(
        "{tables} tables in {} databases read, {rows} rows ({})",
        dbs.len(),
        parts.join("; ")
    )
}

impl TempServer {
    /// Read every table and populated materialized view of every database that allows
    /// connections, as `user` (a superuser). A table that cannot be read is
    /// [`Error::Corrupt`], naming it.
    pub async fn read_every_table(
        &self,
        user: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<DatabaseRead>> {
        let client = self.connect(user, "template1").await?;
        let dbs: Vec<String> = client
            .query(
                // Not the temporary databases of our own restores and verifications, which
                // a point in time may catch half made, nor databases a crash left invalid.
                "SELECT datname::text FROM pg_database \
                  WHERE datallowconn AND NOT datistemplate AND datconnlimit <> -2 \
                    AND datname !~ '^kaizen_(verify|restore|old)_' ORDER BY 1",
                &[],
            )
            .await
            .map_err(|e| Error::other(format!("cannot list the databases: {e}")))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut out = Vec::new();
        for db in dbs {
            if cancel.is_cancelled() {
                return Err(Error::Interrupted("a signal".into()));
            }
            let c = self.connect(user, &db).await?;
            let tables: Vec<(String, String)> = c
                .query(
                    "SELECT n.nspname::text, c.relname::text FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE (c.relkind = 'r' OR (c.relkind = 'm' AND c.relispopulated)) \
                       AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                       AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
                     ORDER BY 1, 2",
                    &[],
                )
                .await
                .map_err(|e| Error::other(format!("cannot list the tables of {db:?}: {e}")))?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let mut rows = 0i64;
            for (schema, table) in &tables {
                let sql = format!(
                    "SELECT count(*) FROM ONLY {}.{}",
                    quote_ident(schema),
                    quote_ident(table)
                );
                let n: i64 = c
                    .query_one(&sql, &[])
                    .await
                    .map_err(|e| {
                        Error::Corrupt(format!(
                            "table {schema}.{table} in database {db:?} cannot be read: {e}"
                        ))
                    })?
                    .get(0);
                debug!("{db}: {schema}.{table}: {n} rows");
                rows += n;
            }
            tracing::info!("{db}: {} tables read, {rows} rows", tables.len());
            out.push(DatabaseRead {
                database: db,
                tables: tables.len() as u64,
                rows,
            });
        }
        Ok(out)
    }
}

/// Have the kernel send a child `signal` when this process dies (a server: SIGQUIT,
/// immediate shutdown), so a run killed with SIGKILL does not leave it running. The
/// signal goes when the spawning thread ends: spawn from a runtime worker, not a
/// blocking task.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn die_with_parent(cmd: &mut Command, signal: Signal) {
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // prctl(2), which is async-signal-safe; it runs after the uid change, which would
    // otherwise clear the setting.
    unsafe {
        cmd.pre_exec(move || nix::sys::prctl::set_pdeathsig(signal).map_err(std::io::Error::from));
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn die_with_parent(_cmd: &mut Command, _signal: Signal) {}

/// Stop a server a killed run left in `pgdata` (its `postmaster.pid` names a live
/// process working in that directory). Returns whether one was stopped.
pub fn stop_orphan(pgdata: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(pgdata.join("postmaster.pid")) else {
        return false;
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        return false;
    };
    // The process must be a server working in this directory (not a reused pid).
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let here = std::fs::canonicalize(pgdata).ok();
    if cwd.is_none() || cwd != here {
        return false;
    }
    for (signal, wait) in [
        (Signal::SIGQUIT, Duration::from_secs(10)),
        (Signal::SIGKILL, Duration::from_secs(10)),
    ] {
        let _ = kill(Pid::from_raw(pid), signal);
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if kill(Pid::from_raw(pid), None).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    true
}
