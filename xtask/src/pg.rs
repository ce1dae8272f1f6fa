//! A throwaway PostgreSQL cluster for tests, the demo and benchmarks.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// How a cluster's server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    /// The shared test and bench cluster: durability traded for speed.
    Fast,
    /// A cluster whose WAL the bench archives: PostgreSQL's defaults (full page writes on,
    /// so the WAL stream is a production one) but fsync on a shared disk, and an
    /// environment of PATH alone, so the archiver's `archive_command` reads only the
    /// configuration file it names (not BACKUP_DIR or PG* of whoever ran the bench).
    Archiving,
}

impl Profile {
    fn settings(self) -> &'static str {
        match self {
            Profile::Fast => {
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off \
                 -c max_connections=300 -c shared_buffers=128MB"
            }
            Profile::Archiving => "-c fsync=off",
        }
    }
}

/// A running cluster; stopped and removed on drop.
pub struct Cluster {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub port: u16,
    pub password: String,
    keep: bool,
}

/// Directory with initdb/pg_ctl/postgres: the highest `/usr/lib/postgresql/N/bin`, or `pg_config --bindir`.
pub fn server_bin() -> Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if bin.join("initdb").is_file() {
            return Ok(bin);
        }
    }
    bail!(
        "PostgreSQL server binaries (initdb, pg_ctl) not found.\n\
         Install them, e.g. on Debian/Ubuntu: sudo apt-get install postgresql\n\
         (they are looked for in /usr/lib/postgresql/*/bin and via pg_config --bindir)"
    )
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Whether we run as root (then the server runs as the `postgres` OS user).
pub fn is_root() -> bool {
    nix_uid() == 0
}

fn nix_uid() -> u32 {
    // `id -u` avoids a libc dependency in xtask.
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(1)
}

/// A command that runs `bin` as the `postgres` OS user when we are root (initdb and the
/// server refuse root).
pub fn as_pg(bin: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

/// Run a server binary, as the `postgres` OS user when we are root.
pub fn run_as_pg(bin: &Path, args: &[&str]) -> Result<std::process::Output> {
    let mut cmd = as_pg(bin);
    cmd.args(args);
    cmd.output()
        .with_context(|| format!("running {}", bin.display()))
}

/// Give `path` (recursively) to the `postgres` OS user when we are root.
pub fn chown_pg(path: &Path) -> Result<()> {
    if is_root() {
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()?;
        if !st.success() {
            bail!(
                "chown postgres {} failed (is there a `postgres` OS user?)",
                path.display()
            );
        }
    }
    Ok(())
}

impl Cluster {
    /// initdb + start under `root` (a fresh directory), on a free port.
    pub fn start(root: &Path) -> Result<Self> {
        let password = Self::init(root)?;
        Self::launch(root, password, false, Profile::Fast)
    }

    /// initdb + start under `root` (a fresh directory) with `conf` appended to
    /// postgresql.conf (e.g. `archive_mode = on`), on a free port; PostgreSQL's own
    /// durability settings but fsync.
    pub fn start_archiving(root: &Path, conf: &str) -> Result<Self> {
        let password = Self::init(root)?;
        let file = root.join("data").join("postgresql.conf");
        let mut text = std::fs::read_to_string(&file)?;
        text.push_str(&format!("\n{conf}\n"));
        std::fs::write(&file, text)?;
        Self::launch(root, password, false, Profile::Archiving)
    }

    /// A cluster kept under `root` between runs (the benchmark's generated database):
    /// started again when it exists, created first when it does not. Stopped, not
    /// removed, on drop.
    pub fn start_cached(root: &Path) -> Result<Self> {
        let pwpath = root.join("password");
        let existing = root.join("data").join("PG_VERSION").is_file() && pwpath.is_file();
        let password = if existing {
            // A run killed before it stopped the server leaves it running.
            stop_dir(root);
            std::fs::read_to_string(&pwpath)?.trim().to_string()
        } else {
            if root.exists() {
                std::fs::remove_dir_all(root)?;
            }
            let password = Self::init(root)?;
            std::fs::write(&pwpath, &password)?;
            password
        };
        Self::launch(root, password, true, Profile::Fast)
    }

    /// initdb into `root/data`; returns the superuser's password.
    fn init(root: &Path) -> Result<String> {
        let bin = server_bin()?;
        std::fs::create_dir_all(root)?;
        let data = root.join("data");
        let sock = root.join("sock");
        std::fs::create_dir_all(&sock)?;
        let password = random_password();
        let pwfile = root.join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n"))?;
        chown_pg(root)?;
        let out = run_as_pg(
            &bin.join("initdb"),
            &[
                "-D",
                path_str(&data)?,
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                &format!("--pwfile={}", path_str(&pwfile)?),
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
        )?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let _ = std::fs::remove_file(&pwfile);
        Ok(password)
    }

    /// Start the server of `root/data` on a free port.
    fn launch(root: &Path, password: String, keep: bool, profile: Profile) -> Result<Self> {
        let bin = server_bin()?;
        let dir = root.to_path_buf();
        let data = dir.join("data");
        let sock = dir.join("sock");
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let opts = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 {}",
                path_str(&sock)?,
                profile.settings()
            );
            let mut cmd = as_pg(&bin.join("pg_ctl"));
            if profile == Profile::Archiving {
                cmd.env_clear()
                    .env("PATH", std::env::var_os("PATH").unwrap_or_default());
            }
            let out = cmd
                .args(["-D", path_str(&data)?, "-o", &opts, "-l"])
                .arg(dir.join("server.log"))
                .args(["-w", "-t", "60", "start"])
                .output()
                .context("running pg_ctl")?;
            if out.status.success() {
                return Ok(Self {
                    bin,
                    dir,
                    port,
                    password,
                    keep,
                });
            }
            last_err = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        }
        bail!("PostgreSQL did not start:\n{last_err}")
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Unix socket directory (trust authentication).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("sock")
    }

    /// Run SQL as the superuser over the socket.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-q", "-At", "-h"])
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Run a SQL file as the superuser.
    pub fn psql_file(&self, db: &str, file: &Path) -> Result<()> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-q", "-h"])
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-f",
            ])
            .arg(file)
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!(
                "loading {} failed: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Environment for the tests.
    pub fn test_env(&self) -> Vec<(String, String)> {
        vec![
            ("KAIZEN_TEST_PG_BIN".into(), self.bin.display().to_string()),
            ("KAIZEN_TEST_PG_HOST".into(), "127.0.0.1".into()),
            ("KAIZEN_TEST_PG_PORT".into(), self.port.to_string()),
            ("KAIZEN_TEST_PG_USER".into(), "postgres".into()),
            ("KAIZEN_TEST_PG_PASSWORD".into(), self.password.clone()),
            (
                "KAIZEN_TEST_PG_SOCKET".into(),
                self.socket_dir().display().to_string(),
            ),
        ]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        // A kept cluster is shut down cleanly (a checkpoint) so it starts fast next time.
        let mode = if self.keep { "fast" } else { "immediate" };
        if let Ok(d) = path_str(&data) {
            let _ = run_as_pg(
                &self.bin.join("pg_ctl"),
                &["-D", d, "-m", mode, "-w", "stop"],
            );
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// 32 hex characters from /dev/urandom (no rand crate in xtask).
fn random_password() -> String {
    use std::io::Read;
    let mut buf = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    if ok.is_err() {
        // Throwaway cluster on 127.0.0.1 only; a weaker password is acceptable here.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        return format!("kb{nanos:x}{}", std::process::id());
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Stop a cluster left running by a killed run (best effort).
pub fn stop_dir(dir: &Path) {
    stop_data(&dir.join("data"));
}

/// Stop the server running on data directory `data`, if any (best effort).
pub fn stop_data(data: &Path) {
    if !data.join("postmaster.pid").is_file() {
        return;
    }
    if let (Ok(bin), Ok(d)) = (server_bin(), path_str(data)) {
        let _ = run_as_pg(
            &bin.join("pg_ctl"),
            &["-D", d, "-m", "immediate", "-w", "stop"],
        );
    }
}

/// `p` as UTF-8 (the server's command lines need text).
pub fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("path is not UTF-8: {}", p.display()))
}
