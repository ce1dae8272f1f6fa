//! `cargo xtask test` and `cargo xtask env`: provision what the tests need, run them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::pg::Cluster;
use crate::services;
use crate::{build_binary, root, target_dir};

/// The running test services and the environment that describes them.
/// Dropping it stops everything and removes the run's files.
pub struct Services {
    // Field order = drop order: the other servers first, then PostgreSQL, then the run dir.
    _others: Option<services::Running>,
    _pg: Option<Cluster>,
    run_dir: PathBuf,
    /// `KAIZEN_TEST_*` and `KAIZEN_BACKUP_BIN`.
    pub env: Vec<(String, String)>,
}

impl Drop for Services {
    fn drop(&mut self) {
        self._others.take();
        self._pg.take();
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// Where the test tools are installed and the services run: `target/test-env`, or
/// `KAIZEN_TEST_ENV_DIR` (e.g. to share one install between clones).
pub fn env_dir() -> PathBuf {
    std::env::var_os("KAIZEN_TEST_ENV_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("test-env"))
}

impl Services {
    /// Copy every server's log (PostgreSQL's and the emulators') into `dest`, replacing
    /// what an earlier run left there.
    pub fn save_logs(&self, dest: &Path) -> Result<()> {
        let _ = std::fs::remove_dir_all(dest);
        std::fs::create_dir_all(dest)?;
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.run_dir.join("services"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        if let Some(pg) = &self._pg {
            logs.push(pg.dir.join("server.log"));
        }
        for log in logs {
            if let Some(name) = log.file_name() {
                let target = if name == "server.log" {
                    dest.join("postgresql.log")
                } else {
                    dest.join(name)
                };
                let _ = std::fs::copy(&log, target);
            }
        }
        Ok(())
    }
}

/// A short random id for this run's directories (pid + clock, no rand crate needed).
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{:x}", std::process::id(), nanos)
}

/// Remove the directories of earlier runs that were killed (SIGKILL leaves them behind):
/// a cluster directory whose postmaster is gone, or a run directory whose xtask is gone.
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let alive = |pid: &str| Path::new("/proc").join(pid.trim()).exists();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let path = e.path();
        // Directory names carry the pid of the xtask that made them.
        let Some(owner) = name
            .strip_prefix("pg-")
            .or_else(|| name.strip_prefix("run-"))
            .and_then(|r| r.split('-').next())
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if alive(owner) {
            continue;
        }
        if name.starts_with("pg-") {
            crate::pg::stop_dir(&path);
        }
        let _ = std::fs::remove_dir_all(&path);
    }
}

/// Start the selected services (`pg` and/or the emulators) and copy `bin` into the run
/// directory, so a concurrent `cargo build` cannot swap the binary under running tests.
pub fn start(selected: &[String], bin: Option<&Path>) -> Result<Services> {
    start_with(selected, bin, None)
}

/// As [`start`], with PostgreSQL from a cluster kept under `cached_pg` between runs.
pub fn start_with(
    selected: &[String],
    bin: Option<&Path>,
    cached_pg: Option<&Path>,
) -> Result<Services> {
    let base = env_dir();
    std::fs::create_dir_all(&base)?;
    remove_stale(&base);
    let id = run_id();
    let run_dir = base.join(format!("run-{id}"));
    std::fs::create_dir_all(&run_dir)?;
    let mut s = Services {
        _others: None,
        _pg: None,
        run_dir: run_dir.clone(),
        env: Vec::new(),
    };
    if let Some(bin) = bin {
        let copy = run_dir.join("kaizen-backup");
        std::fs::copy(bin, &copy)
            .with_context(|| format!("copying {} to {}", bin.display(), copy.display()))?;
        s.env
            .push(("KAIZEN_BACKUP_BIN".into(), copy.display().to_string()));
    }
    if selected.iter().any(|x| x == "pg") {
        let pg = match cached_pg {
            Some(dir) => Cluster::start_cached(dir)?,
            None => Cluster::start(&base.join(format!("pg-{id}")))?,
        };
        eprintln!(
            "xtask: PostgreSQL ({}) on 127.0.0.1:{}, socket {}",
            pg.bin.display(),
            pg.port,
            pg.socket_dir().display()
        );
        s.env.extend(pg.test_env());
        s._pg = Some(pg);
        // The report tests open the page in a headless browser.
        match crate::install::ensure_chromium(&base) {
            Ok(p) => s
                .env
                .push(("KAIZEN_TEST_CHROMIUM".into(), p.display().to_string())),
            Err(e) => eprintln!(
                "xtask: chromium unavailable ({e:#}); the report tests skip their browser checks"
            ),
        }
    }
    let others: Vec<String> = selected.iter().filter(|x| *x != "pg").cloned().collect();
    if !others.is_empty() {
        let running = services::start(&base, &others, run_dir.join("services"))?;
        s.env.extend(running.env.iter().cloned());
        s._others = Some(running);
    }
    Ok(s)
}

/// Arguments after `--` (or all remaining ones) go to the test runner.
fn passthrough(rest: Vec<String>) -> Vec<String> {
    match rest.iter().position(|a| a == "--") {
        Some(i) => rest[i + 1..].to_vec(),
        None => rest,
    }
}

/// `cargo xtask test`: returns the test runner's exit code.
pub fn run(args: &[String]) -> Result<i32> {
    let (selected, rest) = services::parse_services(args)?;
    let passthrough = passthrough(rest);
    let bin = build_binary(false, &["--all-features"])?;
    let services = start(&selected, Some(&bin))?;
    if crate::stopped() {
        return Ok(130);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let has_nextest = Command::new(&cargo)
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(root());
    // Run everything even after a failure (CI shows all of them), unless asked otherwise.
    let fail_fast = passthrough.iter().any(|a| a == "--fail-fast");
    if has_nextest {
        cmd.args(["nextest", "run", "--workspace", "--all-features"]);
        if !fail_fast {
            cmd.arg("--no-fail-fast");
        }
    } else {
        eprintln!(
            "xtask: cargo-nextest not found (cargo install cargo-nextest --locked); using cargo test"
        );
        cmd.args(["test", "--workspace", "--all-features"]);
        if !fail_fast {
            cmd.arg("--no-fail-fast");
        }
    }
    cmd.args(&passthrough);
    for (k, v) in &services.env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().context("starting the test runner")?;
    let mut signalled = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        // SIGINT/SIGTERM: stop the test runner, then clean up below.
        if crate::stopped() && !signalled {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            signalled = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !status.success() {
        let dest = env_dir().join("last-failure-logs");
        match services.save_logs(&dest) {
            Ok(()) => eprintln!(
                "xtask: tests failed ({status}); server logs kept in {}",
                dest.display()
            ),
            Err(e) => {
                eprintln!("xtask: tests failed ({status}); could not keep the server logs: {e:#}")
            }
        }
    }
    drop(services);
    Ok(status.code().unwrap_or(if signalled { 130 } else { 1 }))
}

/// `cargo xtask env`: start the services, write `target/test-env/env.sh`, wait for a signal.
pub fn env(args: &[String]) -> Result<()> {
    let (selected, _) = services::parse_services(args)?;
    let bin = build_binary(false, &["--all-features"])?;
    let services = start(&selected, None)?;
    let file: PathBuf = env_dir().join("env.sh");
    // The real build output (not a copy): `cargo build` during development updates it.
    let mut text = format!("export KAIZEN_BACKUP_BIN='{}'\n", bin.display());
    for (k, v) in &services.env {
        text.push_str(&format!("export {k}='{v}'\n"));
    }
    std::fs::write(&file, text)?;
    eprintln!(
        "xtask: services running; in another shell: source {}\nxtask: then e.g. cargo nextest run --workspace --all-features; Ctrl-C here stops them",
        file.display()
    );
    while !crate::stopped() {
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("xtask: stopping the services");
    drop(services);
    let _ = std::fs::remove_file(&file);
    Ok(())
}
