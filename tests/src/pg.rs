//! Admin access to the test cluster (superuser over the Unix socket, via psql).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{env, unique};

/// The cluster started by `cargo xtask test`.
#[derive(Debug, Clone)]
pub struct Pg {
    pub bin: PathBuf,
    pub host: String,
    pub port: String,
    pub user: String,
    pub password: String,
    pub socket: String,
}

impl Pg {
    pub fn get() -> Self {
        Self {
            bin: PathBuf::from(env("KAIZEN_TEST_PG_BIN")),
            host: env("KAIZEN_TEST_PG_HOST"),
            port: env("KAIZEN_TEST_PG_PORT"),
            user: env("KAIZEN_TEST_PG_USER"),
            password: env("KAIZEN_TEST_PG_PASSWORD"),
            socket: env("KAIZEN_TEST_PG_SOCKET"),
        }
    }

    /// Run SQL as superuser; `Err(stderr)` on failure.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        psql_at(&self.bin, &self.socket, &self.port, &self.user, db, sql)
    }

    /// Run SQL as superuser; panics on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql on {db} failed: {e}\nSQL: {sql}"))
    }

    /// Create a uniquely named empty database, dropped when the handle is dropped.
    pub fn create_db(&self, prefix: &str) -> TestDb {
        let name = unique(prefix);
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        TestDb {
            pg: self.clone(),
            name,
        }
    }

    /// A handle that drops `name` (which the tool will create) at the end of the test.
    pub fn adopt(&self, name: &str) -> TestDb {
        TestDb {
            pg: self.clone(),
            name: name.to_string(),
        }
    }

    /// A database with the Kaizen Studio sample loaded.
    pub fn sample_db(&self, prefix: &str) -> TestDb {
        let db = self.create_db(prefix);
        self.load_sample(&db.name);
        db
    }

    /// Load `tests/fixtures/kaizen_sample.sql` into the existing database `db`.
    pub fn load_sample(&self, db: &str) {
        self.psql_file(db, &sample_sql());
    }

    /// Run a SQL file as superuser; panics on failure.
    pub fn psql_file(&self, db: &str, file: &std::path::Path) {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                &self.socket,
                "-p",
                &self.port,
                "-U",
                &self.user,
                "-d",
                db,
                "-f",
            ])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "loading {} into {db} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn db_exists(&self, name: &str) -> bool {
        self.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
        ) == "1"
    }

    /// Databases whose name starts with `prefix`.
    pub fn databases_with_prefix(&self, prefix: &str) -> Vec<String> {
        let out = self.psql(
            "postgres",
            &format!(
                "SELECT datname FROM pg_database WHERE starts_with(datname, '{prefix}') ORDER BY 1"
            ),
        );
        out.lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// A database holding one known row (`keep_me`), to show that a refused operation
    /// changed nothing.
    pub fn target_with_content(&self, prefix: &str) -> TestDb {
        let t = self.create_db(prefix);
        self.psql(
            &t.name,
            "CREATE TABLE keep_me(v text); INSERT INTO keep_me VALUES ('original')",
        );
        t
    }

    /// A psql session on `db` that has run `sql` (which must take an advisory lock) and
    /// stays connected, holding it, until the returned child is killed or dropped.
    pub fn hold_advisory_lock(&self, db: &str, sql: &str) -> LockHolder {
        let app = crate::unique("holder");
        let mut child = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", &self.socket])
            .args(["-p", &self.port, "-U", &self.user, "-d", db])
            .env("PGAPPNAME", &app)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{sql};").unwrap();
        stdin.flush().unwrap();
        let held = crate::wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
            self.psql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
                     WHERE a.application_name = '{app}' AND l.locktype = 'advisory' AND l.granted"
                ),
            ) != "0"
        });
        assert!(held, "lock not taken: {sql}");
        LockHolder {
            child,
            _stdin: stdin,
        }
    }

    /// Wait up to 10 s for every pg_dump session on `db` to end; false if some remain.
    pub fn pg_dump_sessions_end(&self, db: &str) -> bool {
        crate::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            self.psql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND application_name = 'pg_dump'"
                ),
            ) == "0"
        })
    }

    /// Everything that makes a database what it is: every table's ordered content,
    /// sequence values, large objects, and the schema as pg_dump prints it.
    pub fn fingerprint(&self, db: &str) -> String {
        let tables = self.psql(
            db,
            "SELECT coalesce(string_agg(n.nspname || '.' || c.relname || ':' || \
               (xpath('/row/h/text()', query_to_xml(format('SELECT md5(coalesce(string_agg(t::text, ''|'' ORDER BY t::text), '''')) AS h FROM ONLY %I.%I t', n.nspname, c.relname), false, true, '')))[1]::text, \
               E'\\n' ORDER BY n.nspname, c.relname), '') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'",
        );
        let sequences = self.psql(
            db,
            // last_value and is_called read from each sequence itself (pg_sequences hides
            // is_called: setval(s, 5, false) and setval(s, 6, false) would look alike).
            "SELECT coalesce(string_agg(n.nspname || '.' || c.relname || '=' || \
               (xpath('/row/v/text()', query_to_xml(format('SELECT last_value || '':'' || is_called AS v FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text, \
               ',' ORDER BY n.nspname, c.relname), '') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'S'",
        );
        let los = self.psql(
            db,
            "SELECT coalesce(string_agg(oid::text || ':' || md5(lo_get(oid)), ',' ORDER BY oid), '') FROM pg_largeobject_metadata",
        );
        let out = Command::new(self.bin.join("pg_dump"))
            .args([
                "--schema-only",
                "--no-owner",
                "-h",
                &self.socket,
                "-p",
                &self.port,
                "-U",
                &self.user,
                "-d",
                db,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_dump --schema-only failed");
        let schema: String = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                !l.starts_with("--")
                    && !l.starts_with("\\restrict")
                    && !l.starts_with("\\unrestrict")
                    && !l.trim().is_empty()
            })
            .collect::<Vec<_>>()
            .join("\n");
        format!("TABLES\n{tables}\nSEQUENCES\n{sequences}\nLARGE OBJECTS\n{los}\nSCHEMA\n{schema}")
    }
}

/// Path of the Kaizen Studio sample database script.
pub fn sample_sql() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/kaizen_sample.sql")
}

/// A database dropped at the end of the test.
#[derive(Debug)]
pub struct TestDb {
    pg: Pg,
    pub name: String,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = self.pg.try_psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// Assert two fingerprints are equal, showing the first differing line (they are long).
#[track_caller]
pub fn assert_same(a: &str, b: &str) {
    if a == b {
        return;
    }
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    for i in 0..la.len().max(lb.len()) {
        let (x, y) = (
            la.get(i).copied().unwrap_or("<end>"),
            lb.get(i).copied().unwrap_or("<end>"),
        );
        if x != y {
            panic!("databases differ at line {i}:\n  left:  {x}\n  right: {y}");
        }
    }
}

/// A session holding an advisory lock; the session ends (and the lock goes) on drop.
#[derive(Debug)]
pub struct LockHolder {
    child: std::process::Child,
    _stdin: std::process::ChildStdin,
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run SQL with psql against `host` (a socket directory or address) and `port` as `user`;
/// `Err(stderr)` on failure. SQL text and results are Rust strings whatever the database's
/// encoding.
pub fn psql_at(
    bin: &std::path::Path,
    host: &str,
    port: &str,
    user: &str,
    db: &str,
    sql: &str,
) -> Result<String, String> {
    let out = Command::new(bin.join("psql"))
        .args([
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            host,
            "-p",
            port,
            "-U",
            user,
            "-d",
            db,
            "-c",
            sql,
        ])
        .env("PGCLIENTENCODING", "UTF8")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}
