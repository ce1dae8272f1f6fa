//! Running the `kaizen-backup` binary with a clean environment in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::env;
use crate::pg::Pg;

/// The binary's result.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// stdout and stderr together, for searching.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
    /// Parse stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
    /// The first check of `verify --json`'s output that `pick` chooses (panics when none).
    #[track_caller]
    pub fn verify_check(&self, pick: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let json = self.json();
        json["checks"]
            .as_array()
            .and_then(|checks| checks.iter().find(|c| pick(c)))
            .cloned()
            .unwrap_or_else(|| panic!("no such check in {json}"))
    }
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
    #[track_caller]
    pub fn assert_stderr_contains(&self, s: &str) -> &Self {
        assert!(
            self.stderr.contains(s),
            "stderr does not contain {s:?}:\n{}",
            self.stderr
        );
        self
    }
}

/// A `kaizen-backup` invocation context: working dir, environment, database.
#[derive(Debug)]
pub struct Cli {
    pub dir: tempfile::TempDir,
    envs: Vec<(String, String)>,
}

impl Cli {
    /// A clean environment (only PATH, HOME, LANG) in a fresh temporary directory,
    /// with BACKUP_DIR = `<dir>/backups`.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut envs = vec![
            (
                "PATH".to_string(),
                std::env::var("PATH").unwrap_or_default(),
            ),
            ("HOME".to_string(), dir.path().display().to_string()),
            ("LANG".to_string(), "C.UTF-8".to_string()),
        ];
        envs.push((
            "BACKUP_DIR".into(),
            dir.path().join("backups").display().to_string(),
        ));
        Self { dir, envs }
    }

    /// The same, connected to `db` on the test cluster as the superuser over TCP.
    pub fn for_db(db: &str) -> Self {
        let pg = Pg::get();
        Self::new()
            .env("POSTGRES_HOST", &pg.host)
            .env("POSTGRES_PORT", &pg.port)
            .env("POSTGRES_USER", &pg.user)
            .env("POSTGRES_PASSWORD", &pg.password)
            .env("POSTGRES_DB", db)
    }

    /// Set (or replace) a variable.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.retain(|(key, _)| key != k);
        self.envs.push((k.to_string(), v.to_string()));
        self
    }

    /// Remove a variable.
    pub fn env_remove(mut self, k: &str) -> Self {
        self.envs.retain(|(key, _)| key != k);
        self
    }

    /// The working directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The local backup directory.
    pub fn backups(&self) -> PathBuf {
        self.dir.path().join("backups")
    }

    /// The command, ready to run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env("KAIZEN_BACKUP_BIN"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .stdin(Stdio::null());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// Run to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().unwrap();
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }

    /// Run to completion with extra variables for this run only.
    pub fn run_with(&self, envs: &[(&str, &str)], args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        cmd.envs(envs.iter().copied());
        let out = cmd.output().unwrap();
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }

    /// Run on a pseudo-terminal (util-linux `script`), typing `input`; stdout and stderr
    /// both arrive in `Output::stdout` (a terminal has one output).
    pub fn run_tty(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let mut line = quote(&env("KAIZEN_BACKUP_BIN"));
        for a in args {
            line.push(' ');
            line.push_str(&quote(a));
        }
        let mut cmd = Command::new("script");
        cmd.args(["-qefc", &line, "/dev/null"])
            .current_dir(self.dir.path())
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .expect("util-linux `script` is needed for terminal tests");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        wait(child)
    }

    /// Start in the background (stdout/stderr piped).
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.spawn_with(&[], args)
    }

    /// [`Cli::spawn`] with extra variables for this run only.
    pub fn spawn_with(&self, envs: &[(&str, &str)], args: &[&str]) -> Child {
        self.command(args)
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Files in the backup directory (sorted), including hidden ones.
    pub fn backup_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.backups())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Wait (up to 60 s) until a file whose name contains `fragment` is in the backup
    /// directory: a running backup has started writing.
    pub fn wait_for_backup_file(&self, fragment: &str) {
        let started = crate::wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
            self.backup_files().iter().any(|f| f.contains(fragment))
        });
        assert!(started, "backup never started writing {fragment}");
    }

    /// The backups `list --json` reports.
    pub fn list(&self) -> Vec<serde_json::Value> {
        let out = self.run(&["list", "--json"]);
        out.assert_code(0);
        out.json().as_array().cloned().unwrap_or_default()
    }
}

impl Default for Cli {
    fn default() -> Self {
        Self::new()
    }
}

/// Wait for a child and collect its output.
pub fn wait(child: Child) -> Output {
    let out = child.wait_with_output().unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// Send a signal to a child.
pub fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}
