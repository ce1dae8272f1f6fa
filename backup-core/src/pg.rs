//! PostgreSQL connection settings, our own connections, and the client tools; TLS,
//! `.pgpass` files and the facts read from a server live beside them.

pub(crate) mod pgpass;
pub mod roles;
pub mod server;
pub mod stats;
pub(crate) mod tls;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::error::{Error, Result};
use crate::secret::Secret;

/// How to reach the database. Shared by our own connections and by pg_dump/pg_restore,
/// which receive it through libpq environment variables (never argv).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PgConfig {
    /// Host name, IP address, or a Unix socket directory (starting with `/`).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database name.
    pub name: String,
    /// Role to connect as.
    pub user: String,
    /// Password (also read from `.pgpass` by libpq when unset).
    pub password: Option<Secret>,
    /// `disable`, `prefer`, `require`, `verify-ca`, `verify-full`.
    pub sslmode: Option<String>,
    /// CA certificate file for `verify-ca`/`verify-full`.
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate file.
    pub sslcert: Option<PathBuf>,
    /// Client key file.
    pub sslkey: Option<PathBuf>,
    /// Directory holding pg_dump/pg_restore (default: search `PATH`).
    pub bin_dir: Option<PathBuf>,
    /// Seconds to wait for a connection.
    pub connect_timeout: u64,
    /// Maintenance database used to create and drop databases.
    pub maintenance_db: String,
}

impl Default for PgConfig {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: 5432,
            name: "kaizen_studio".into(),
            user: "postgres".into(),
            password: None,
            sslmode: None,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            bin_dir: None,
            connect_timeout: 10,
            maintenance_db: "postgres".into(),
        }
    }
}

impl PgConfig {
    /// `DB@HOST:PORT`, the form the old scripts' error message used.
    pub fn target(&self) -> String {
        format!("{}@{}:{}", self.name, self.host, self.port)
    }

    /// The same settings for another database.
    pub fn with_dbname(&self, name: &str) -> Self {
        Self {
            name: name.to_string(),
            ..self.clone()
        }
    }

    /// The tokio-postgres configuration for `dbname`.
    pub fn client_config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(dbname)
            .application_name("kaizen-backup")
            .connect_timeout(Duration::from_secs(self.connect_timeout.max(1)));
        if let Some(p) = self.effective_password() {
            c.password(p.expose());
        }
        c
    }

    /// The configured password, or one from the `.pgpass` file libpq would use.
    pub fn effective_password(&self) -> Option<Secret> {
        if let Some(p) = &self.password
            && !p.is_empty()
        {
            return Some(p.clone());
        }
        crate::pgpass::lookup(&self.host, self.port, &self.name, &self.user)
    }

    /// Connect to `dbname` (our own connection, for queries), over TLS as `sslmode` and
    /// the other `ssl*` settings say, like libpq.
    pub async fn connect_to(&self, dbname: &str) -> Result<tokio_postgres::Client> {
        crate::tls::connect(self, dbname).await
    }

    /// Connect to the configured database.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        self.connect_to(&self.name).await
    }

    /// libpq environment for pg_dump/pg_restore connecting to `dbname`.
    pub fn child_env(&self, dbname: &str) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PGHOST", self.host.clone()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", self.user.clone()),
            ("PGDATABASE", dbname.to_string()),
            ("PGCONNECT_TIMEOUT", self.connect_timeout.max(1).to_string()),
            ("PGAPPNAME", "kaizen-backup".to_string()),
        ];
        if let Some(p) = &self.password
            && !p.is_empty()
        {
            env.push(("PGPASSWORD", p.expose().to_string()));
        }
        if let Some(m) = &self.sslmode {
            env.push(("PGSSLMODE", m.clone()));
        }
        for (k, v) in [
            ("PGSSLROOTCERT", &self.sslrootcert),
            ("PGSSLCERT", &self.sslcert),
            ("PGSSLKEY", &self.sslkey),
        ] {
            if let Some(p) = v {
                env.push((k, p.display().to_string()));
            }
        }
        env
    }

    /// A `Command` for a client tool with our libpq environment (and no inherited
    /// `PG*` variables that could point it elsewhere).
    pub fn command(&self, program: &Path, dbname: &str) -> Command {
        let mut cmd = Command::new(program);
        for (k, _) in std::env::vars_os().filter_map(|(k, v)| k.into_string().ok().map(|k| (k, v)))
        {
            if k.starts_with("PG") && k != "PGPASSFILE" {
                cmd.env_remove(&k);
            }
        }
        cmd.envs(self.child_env(dbname));
        cmd.kill_on_drop(true);
        cmd
    }
}

/// Turn a tokio-postgres connection error into our message (the server's reason kept).
pub fn connect_error(target: &str, e: &tokio_postgres::Error) -> Error {
    let reason = if let Some(db) = e.as_db_error() {
        db.message().to_string()
    } else {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(inner) = src {
            let t = inner.to_string();
            if !s.contains(&t) {
                s.push_str(": ");
                s.push_str(&t);
            }
            src = inner.source();
        }
        s
    };
    Error::Connect {
        target: target.to_string(),
        reason: format!("{reason} (is PostgreSQL running and are the credentials right?)"),
    }
}

/// Map a query error to ours.
pub fn db_error(context: impl std::fmt::Display, e: &tokio_postgres::Error) -> Error {
    let message = match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    };
    Error::Database {
        context: context.to_string(),
        message,
    }
}

/// A located client tool and its version.
#[derive(Debug, Clone)]
pub struct Tool {
    /// Path to the executable.
    pub path: PathBuf,
    /// `pg_dump (PostgreSQL) 15.18 (...)`
    pub version: String,
    /// Major version (15).
    pub major: u32,
}

/// What `PATH --version` prints (trimmed); `name` is the tool's name for the error.
pub(crate) async fn tool_version(name: &str, path: &Path) -> Result<String> {
    let out = Command::new(path)
        .arg("--version")
        .output()
        .await
        .map_err(|e| Error::Tool(format!("{name} at {} cannot be run: {e}", path.display())))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Find `name` in `bin_dir` or on `PATH`, and read its version.
pub async fn find_tool(name: &str, bin_dir: Option<&Path>) -> Result<Tool> {
    let path = match bin_dir {
        Some(dir) => {
            let p = dir.join(name);
            p.is_file().then_some(p)
        }
        None => std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        }),
    };
    // Debian's pg_wrapper (a Perl script behind /usr/bin/pg_dump) costs ~40 ms a call
    // and, for a remote server, runs the newest installed version anyway: run that directly.
    let path = match (path, bin_dir) {
        (Some(p), None) => {
            Some(debian_versioned(name, &p, Path::new("/usr/lib/postgresql")).unwrap_or(p))
        }
        (p, _) => p,
    };
    let Some(path) = path else {
        return Err(Error::Tool(format!(
            "{name} command not found — install the PostgreSQL client tools (Debian/Ubuntu: sudo apt-get install postgresql-client; macOS: brew install postgresql; RHEL: yum install postgresql) or set database.bin_dir"
        )));
    };
    let version = tool_version(name, &path).await?;
    let major = parse_major(&version).ok_or_else(|| {
        Error::Tool(format!(
            "cannot read the version of {} (got {version:?})",
            path.display()
        ))
    })?;
    Ok(Tool {
        path,
        version,
        major,
    })
}

/// When `found` is Debian's `pg_wrapper`, the newest `LIB/<major>/bin/<name>`.
fn debian_versioned(name: &str, found: &Path, lib: &Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(found).ok()?;
    if real.file_name()? != "pg_wrapper" {
        return None;
    }
    std::fs::read_dir(lib)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let p = e.path().join("bin").join(name);
            p.is_file().then_some((major, p))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, p)| p)
}

/// Major version from `pg_dump (PostgreSQL) 15.18 (Debian ...)` or `16beta1`.
pub fn parse_major(version: &str) -> Option<u32> {
    let rest = version.split(')').nth(1).unwrap_or(version);
    let digits: String = rest
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Refuse a tool older than the server (it cannot dump or restore a newer server's archives).
pub fn check_tool_version(tool: &Tool, server_major: u32, name: &str) -> Result<()> {
    if tool.major < server_major {
        return Err(Error::Tool(format!(
            "{name} {} is older than the server (PostgreSQL {server_major}); install client tools of version {server_major} or newer",
            tool.major
        )));
    }
    Ok(())
}

/// Quote an identifier for SQL.
/// PostgreSQL truncates identifiers longer than this many bytes (NAMEDATALEN - 1).
pub const MAX_IDENT_BYTES: usize = 63;

/// Check a database name given by the user: not empty, at most 63 bytes (longer names
/// would be silently truncated by the server, so the restore would land elsewhere).
pub fn check_database_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::usage("the target database name is empty"));
    }
    if name.len() > MAX_IDENT_BYTES {
        return Err(Error::usage(format!(
            "database name {name:?} is {} bytes long; PostgreSQL allows at most {MAX_IDENT_BYTES} bytes",
            name.len()
        )));
    }
    Ok(())
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// An identifier as a person reads it: bare when it is a plain lower-case name, else
/// double-quoted (spaces, dots, quotes and newlines stay visible and unambiguous).
pub fn display_ident(s: &str) -> String {
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        s.to_string()
    } else {
        quote_ident(s).replace('\n', "\\n")
    }
}

/// Quote a string literal for SQL.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_wrapper_resolves_to_the_newest_versioned_binary() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("share/postgresql-common")).unwrap();
        std::fs::write(
            r.join("share/postgresql-common/pg_wrapper"),
            "#!/usr/bin/perl",
        )
        .unwrap();
        std::fs::create_dir_all(r.join("bin")).unwrap();
        std::os::unix::fs::symlink(
            r.join("share/postgresql-common/pg_wrapper"),
            r.join("bin/pg_dump"),
        )
        .unwrap();
        for v in ["9.6", "13", "15", "notaversion"] {
            std::fs::create_dir_all(r.join(format!("lib/{v}/bin"))).unwrap();
            std::fs::write(r.join(format!("lib/{v}/bin/pg_dump")), "").unwrap();
        }
        // 16 is installed without pg_dump: skipped.
        std::fs::create_dir_all(r.join("lib/16/bin")).unwrap();
        assert_eq!(
            debian_versioned("pg_dump", &r.join("bin/pg_dump"), &r.join("lib")),
            Some(r.join("lib/15/bin/pg_dump"))
        );
        // Not the wrapper: kept as found.
        assert_eq!(
            debian_versioned("pg_dump", &r.join("lib/13/bin/pg_dump"), &r.join("lib")),
            None
        );
    }

    #[test]
    fn majors() {
        assert_eq!(
            parse_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_major("pg_restore (PostgreSQL) 17.2"), Some(17));
        assert_eq!(parse_major("pg_dump (PostgreSQL) 16beta1"), Some(16));
        assert_eq!(parse_major("garbage"), None);
    }

    #[test]
    fn child_env_has_no_secret_in_args() {
        let c = PgConfig {
            password: Some(Secret::new("pw")),
            ..PgConfig::default()
        };
        let env = c.child_env("db");
        assert!(env.contains(&("PGPASSWORD", "pw".into())));
        assert!(env.contains(&("PGDATABASE", "db".into())));
    }
}
