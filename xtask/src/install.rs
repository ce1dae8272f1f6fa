//! Installing the test tools under `target/test-env`: the Python venv (moto,
//! gcp-storage-emulator, wsgidav), the Node prefix (Azurite, maildev), s3s-fs for the
//! bench, and Debian's Pushgateway, promtool, Chromium and pgBackRest (the bench's PITR
//! baseline). Each install is guarded by a lock file so concurrent runs sharing one
//! directory install once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// s3s-fs, an S3 server written in Rust over a local directory: `cargo xtask bench`
/// measures uploads against it because moto (Python) costs as much CPU as the dump it
/// receives. Not in [`ALL`]: the tests use moto, and building s3s-fs takes minutes.
/// Pinned: newer releases need a newer rustc.
const S3S_FS: &str = "s3s-fs@0.14.1";

/// Python packages of the venv. Changing the list reinstalls (the marker holds it).
const PIP_PACKAGES: &[&str] = &[
    "moto[server]>=5,<6",
    "gcp-storage-emulator",
    "kubernetes-validate",
    "wsgidav",
    "cheroot",
];

/// npm packages of the node prefix. maildev 2 keeps the REST API the tests use
/// (`GET /email`, `DELETE /email/all`); maildev 3 moved it under `/api`.
const NPM_PACKAGES: &[&str] = &["azurite@3", "maildev@2"];

/// A lock directory so two concurrent `cargo xtask test` runs do not install at once.
struct InstallLock(PathBuf);

impl InstallLock {
    fn take(base: &Path) -> Result<Self> {
        let dir = base.join(".install-lock");
        let deadline = Instant::now() + Duration::from_secs(1200);
        let mut told = false;
        loop {
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(Self(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // A lock older than 20 minutes belongs to a killed run.
                    let stale = std::fs::metadata(&dir)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > Duration::from_secs(1200));
                    if stale {
                        let _ = std::fs::remove_dir(&dir);
                        continue;
                    }
                    if !told {
                        eprintln!(
                            "xtask: waiting for another run installing the test tools ({})",
                            dir.display()
                        );
                        told = true;
                    }
                    if Instant::now() > deadline {
                        bail!("timed out waiting for {}", dir.display());
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
            }
        }
    }
}

impl Drop for InstallLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn run_install(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: installing {what}: {cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?} to install {what}"))?;
    if !out.status.success() {
        bail!(
            "installing {what} failed ({}): {cmd:?}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `target/test-env/venv` with the Python tools; returns its `bin` directory.
pub fn ensure_venv(base: &Path) -> Result<PathBuf> {
    let venv = base.join("venv");
    let marker = venv.join(".kaizen-installed");
    let want = PIP_PACKAGES.join(" ");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == want) {
        return Ok(venv.join("bin"));
    }
    let _lock = InstallLock::take(base)?;
    if std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == want) {
        return Ok(venv.join("bin"));
    }
    if !venv.join("bin/pip").is_file() {
        let _ = std::fs::remove_dir_all(&venv);
        run_install(
            "a Python venv (needs python3 with the venv module: apt-get install python3-venv)",
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
        )?;
    }
    run_install(
        "Python test servers",
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PIP_PACKAGES),
    )?;
    std::fs::write(&marker, format!("{want}\n"))?;
    Ok(venv.join("bin"))
}

/// `target/test-env/node` with Azurite and maildev; returns its `node_modules/.bin`.
pub fn ensure_node(base: &Path) -> Result<PathBuf> {
    let prefix = base.join("node");
    let marker = prefix.join(".kaizen-installed");
    let want = NPM_PACKAGES.join(" ");
    let bin = prefix.join("node_modules/.bin");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == want) {
        return Ok(bin);
    }
    let _lock = InstallLock::take(base)?;
    if std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == want) {
        return Ok(bin);
    }
    std::fs::create_dir_all(&prefix)?;
    run_install(
        "Node test servers (needs node and npm: apt-get install nodejs npm)",
        Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(&prefix)
            .args(NPM_PACKAGES),
    )?;
    std::fs::write(&marker, format!("{want}\n"))?;
    Ok(bin)
}

/// `target/test-env/s3s-fs/bin/s3s-fs`, built with `cargo install` when missing.
pub fn ensure_s3s_fs(base: &Path) -> Result<PathBuf> {
    let root = base.join("s3s-fs");
    let bin = root.join("bin/s3s-fs");
    let marker = root.join(".kaizen-installed");
    let ready =
        || bin.is_file() && std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == S3S_FS);
    if ready() {
        return Ok(bin);
    }
    let _lock = InstallLock::take(base)?;
    if ready() {
        return Ok(bin);
    }
    run_install(
        "s3s-fs (a Rust S3 server, for the bench)",
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                "--locked",
                "--quiet",
                S3S_FS,
                "--features",
                "binary",
            ])
            .arg("--root")
            .arg(&root)
            .env("CARGO_TARGET_DIR", root.join("build")),
    )?;
    std::fs::write(&marker, format!("{S3S_FS}\n"))?;
    let _ = std::fs::remove_dir_all(root.join("build"));
    Ok(bin)
}

/// The Prometheus Pushgateway binary, installed from Debian when missing.
pub fn ensure_pushgateway(base: &Path) -> Result<PathBuf> {
    ensure_debian_binary(
        base,
        DebianBinary {
            candidates: &[
                "/usr/bin/prometheus-pushgateway",
                "/usr/local/bin/pushgateway",
            ],
            package: "prometheus-pushgateway",
            what: "prometheus-pushgateway",
            hint_tail: " (or leave it out: --services without pushgateway)",
            // Do not let the package start a system service on port 9091.
            env: &[("DEBIAN_FRONTEND", "noninteractive"), ("RUNLEVEL", "1")],
        },
    )
}

/// Headless Chromium for the report tests (they open the page, dump its DOM and take a
/// screenshot): the system's, else Debian's `chromium` installed with apt-get (as root).
pub fn ensure_chromium(base: &Path) -> Result<PathBuf> {
    ensure_debian_binary(
        base,
        DebianBinary {
            candidates: &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
            package: "chromium",
            what: "chromium (headless browser for the report tests)",
            hint_tail: "",
            env: &[("DEBIAN_FRONTEND", "noninteractive")],
        },
    )
}

/// pgBackRest, the PITR bench's baseline: the system's, or installed from Debian when
/// missing (as root). Its package installs no service.
pub fn ensure_pgbackrest(base: &Path) -> Result<PathBuf> {
    ensure_debian_binary(
        base,
        DebianBinary {
            candidates: &["/usr/bin/pgbackrest", "/usr/local/bin/pgbackrest"],
            package: "pgbackrest",
            what: "pgbackrest",
            hint_tail: "",
            env: &[("DEBIAN_FRONTEND", "noninteractive")],
        },
    )
}

/// A program that comes from one Debian package.
struct DebianBinary<'a> {
    /// Where it may already be, first found wins.
    candidates: &'a [&'a str],
    package: &'a str,
    /// Named in progress and errors.
    what: &'a str,
    /// Appended to the "install it with" hint.
    hint_tail: &'a str,
    /// apt-get's environment.
    env: &'a [(&'a str, &'a str)],
}

/// The first of `b.candidates` that exists; else, as root, `apt-get install b.package`
/// (one installer at a time under `base`'s lock) and look again.
fn ensure_debian_binary(base: &Path, b: DebianBinary<'_>) -> Result<PathBuf> {
    let find = || b.candidates.iter().map(PathBuf::from).find(|p| p.is_file());
    if let Some(p) = find() {
        return Ok(p);
    }
    let hint = format!(
        "install it with: sudo apt-get install {}{}",
        b.package, b.hint_tail
    );
    if !crate::pg::is_root() {
        bail!("{} not found; {hint}", b.package);
    }
    let _lock = InstallLock::take(base)?;
    if let Some(p) = find() {
        return Ok(p);
    }
    apt_get(
        b.what,
        &["install", "-y", "-q", "--no-install-recommends", b.package],
        b.env,
        None,
        true,
    )
    .with_context(|| hint.clone())?;
    find().with_context(|| format!("{} still not found after apt-get; {hint}", b.package))
}

/// `promtool` (checks the alert rules and the dashboard's PromQL): the system's, or the
/// one unpacked from Debian's `prometheus` package under `base` (no service installed).
pub fn ensure_promtool(base: &Path) -> Result<PathBuf> {
    let local = base.join("prometheus/usr/bin/promtool");
    let find = || {
        [PathBuf::from("/usr/bin/promtool"), local.clone()]
            .into_iter()
            .find(|p| p.is_file())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    let _lock = InstallLock::take(base)?;
    if let Some(p) = find() {
        return Ok(p);
    }
    let debs = base.join("prometheus-deb");
    let _ = std::fs::remove_dir_all(&debs);
    std::fs::create_dir_all(&debs)?;
    apt_get(
        "Debian's prometheus package (for promtool)",
        &["download", "prometheus"],
        &[],
        Some(&debs),
        crate::pg::is_root(),
    )?;
    let deb = std::fs::read_dir(&debs)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download prometheus left no .deb")?;
    run_install(
        "promtool (unpacked from the package)",
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(base.join("prometheus")),
    )?;
    let _ = std::fs::remove_dir_all(&debs);
    find().context("promtool missing from Debian's prometheus package")
}

/// `apt-get ARGS`; when it fails and `may_update`, refresh the package lists once and try
/// again (a fresh machine has none, or stale ones).
fn apt_get(
    what: &str,
    args: &[&str],
    env: &[(&str, &str)],
    dir: Option<&Path>,
    may_update: bool,
) -> Result<()> {
    let attempt = || {
        let mut cmd = Command::new("apt-get");
        cmd.args(args).envs(env.iter().copied());
        if let Some(d) = dir {
            cmd.current_dir(d);
        }
        run_install(what, &mut cmd)
    };
    match attempt() {
        Ok(()) => Ok(()),
        Err(e) if !may_update => Err(e),
        Err(_) => {
            run_install(
                "the Debian package lists",
                Command::new("apt-get")
                    .args(["update", "-q"])
                    .envs(env.iter().copied()),
            )?;
            attempt()
        }
    }
}
