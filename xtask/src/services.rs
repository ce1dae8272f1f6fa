//! The local servers the tests talk to besides PostgreSQL: moto (S3), Azurite (Azure Blob),
//! gcp-storage-emulator (GCS), wsgidav (WebDAV), maildev (SMTP + HTTP API) and the
//! Prometheus Pushgateway. Installed once under `target/test-env/` (pip into a venv, npm
//! into a prefix, apt for the pushgateway), started on free ports, stopped on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::pg::free_port;

/// Every service name `--services` accepts, in start order.
pub const ALL: &[&str] = &["pg", "s3", "azure", "gcs", "webdav", "smtp", "pushgateway"];

/// s3s-fs, an S3 server written in Rust over a local directory: `cargo xtask bench`
/// measures uploads against it because moto (Python) costs as much CPU as the dump it
/// receives. Not in [`ALL`]: the tests use moto, and building s3s-fs takes minutes.
/// Pinned: newer releases need a newer rustc.
const S3S_FS: &str = "s3s-fs@0.14.1";

/// Bucket / container created in each object store.
pub const BUCKET: &str = "kaizen-test";

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

/// Azurite's well-known development account and key (public, documented by Microsoft).
const AZURE_ACCOUNT: &str = "devstoreaccount1";
const AZURE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Parse `--services a,b,c` (or `--services=a,b`) out of `args`; default: all.
/// Returns the selected services and the remaining arguments.
pub fn parse_services(args: &[String]) -> Result<(Vec<String>, Vec<String>)> {
    let mut selected: Option<Vec<String>> = None;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            rest.push(a.clone());
            rest.extend(it.by_ref().cloned());
            break;
        }
        let value = if a == "--services" {
            Some(
                it.next()
                    .context("--services needs a value, e.g. pg,s3")?
                    .clone(),
            )
        } else {
            a.strip_prefix("--services=").map(str::to_string)
        };
        match value {
            Some(v) => {
                let mut list = Vec::new();
                for s in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let s = if s == "all" {
                        ALL.join(",")
                    } else {
                        s.to_string()
                    };
                    for s in s.split(',') {
                        if !ALL.contains(&s) {
                            bail!("unknown service {s:?}; known: {}", ALL.join(","));
                        }
                        list.push(s.to_string());
                    }
                }
                selected = Some(list);
            }
            None => rest.push(a.clone()),
        }
    }
    let selected = selected.unwrap_or_else(|| ALL.iter().map(|s| s.to_string()).collect());
    Ok((selected, rest))
}

/// A running helper process, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Result<Self> {
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(Self { name, child, log })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Wait until `GET path` on the port answers with one of `ok` statuses.
    fn wait_http(&mut self, port: u16, path: &str, ok: &[u16]) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if crate::stopped() {
                bail!("interrupted");
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before answering; its log ({}):\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail()
                );
            }
            if let Ok((code, _)) = http(port, "GET", path, &[], b"")
                && ok.contains(&code)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer on 127.0.0.1:{port}{path} within 90 s; its log ({}):\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 request to 127.0.0.1:port; returns (status, body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status in {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    Ok((code, body.unwrap_or_default()))
}

/// The running services (not PostgreSQL) and the environment that describes them.
pub struct Running {
    procs: Vec<Proc>,
    /// `KAIZEN_TEST_*` variables for the tests.
    pub env: Vec<(String, String)>,
    dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Reverse order: last started, first stopped.
        while let Some(p) = self.procs.pop() {
            drop(p);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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

/// Start s3s-fs on a free port over `dir`, with bucket [`BUCKET`] (a directory) and
/// the keys `access`/`secret` (s3s-fs takes them only as arguments: use throwaway keys).
/// Returns the process and its endpoint URL.
pub fn start_s3s_fs(base: &Path, dir: &Path, access: &str, secret: &str) -> Result<(Proc, String)> {
    let bin = ensure_s3s_fs(base)?;
    let data = dir.join("s3s-fs-data");
    std::fs::create_dir_all(data.join(BUCKET))?;
    let port = free_port()?;
    let mut p = Proc::spawn(
        "s3s-fs (S3)",
        Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", access, "--secret-key", secret])
            .arg(&data),
        dir.join("s3s-fs.log"),
    )?;
    // Unsigned requests are refused (403): the server is up once it answers at all.
    p.wait_http(port, "/", &[200, 403])?;
    Ok((p, format!("http://127.0.0.1:{port}")))
}

/// The Prometheus Pushgateway binary, installed from Debian when missing.
pub fn ensure_pushgateway(base: &Path) -> Result<PathBuf> {
    let find = || {
        [
            "/usr/bin/prometheus-pushgateway",
            "/usr/local/bin/pushgateway",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    let _lock = InstallLock::take(base)?;
    if let Some(p) = find() {
        return Ok(p);
    }
    let hint = "install it with: sudo apt-get install prometheus-pushgateway (or leave it out: --services without pushgateway)";
    if !crate::pg::is_root() {
        bail!("prometheus-pushgateway not found; {hint}");
    }
    // Do not let the package start a system service on port 9091.
    let env = [("DEBIAN_FRONTEND", "noninteractive"), ("RUNLEVEL", "1")];
    let installed = |update: bool| -> Result<()> {
        if update {
            run_install(
                "the Debian package lists",
                Command::new("apt-get").args(["update", "-q"]).envs(env),
            )?;
        }
        run_install(
            "prometheus-pushgateway",
            Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "prometheus-pushgateway",
                ])
                .envs(env),
        )
    };
    if installed(false).is_err() {
        installed(true).with_context(|| hint.to_string())?;
    }
    find().with_context(|| format!("prometheus-pushgateway still not found after apt-get; {hint}"))
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
    let download = |update: bool| -> Result<()> {
        if update {
            run_install(
                "the Debian package lists",
                Command::new("apt-get").args(["update", "-q"]),
            )?;
        }
        run_install(
            "Debian's prometheus package (for promtool)",
            Command::new("apt-get")
                .args(["download", "prometheus"])
                .current_dir(&debs),
        )
    };
    if download(false).is_err() {
        download(crate::pg::is_root())?;
    }
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

/// Start the selected non-PostgreSQL services; their logs and data go to `dir`.
/// The tools are installed under `base` when missing.
pub fn start(base: &Path, selected: &[String], dir: PathBuf) -> Result<Running> {
    std::fs::create_dir_all(&dir)?;
    let mut running = Running {
        procs: Vec::new(),
        env: Vec::new(),
        dir: dir.clone(),
    };
    let has = |s: &str| selected.iter().any(|x| x == s);
    let venv = if ["s3", "gcs", "webdav"].iter().any(|s| has(s)) {
        let bin = ensure_venv(base)?;
        running
            .env
            .push(("KAIZEN_TEST_VENV_BIN".into(), bin.display().to_string()));
        Some(bin)
    } else {
        None
    };
    let node = if has("azure") || has("smtp") {
        Some(ensure_node(base)?)
    } else {
        None
    };
    if has("pushgateway") {
        // Monitoring tests: promtool checks the rules and the dashboard's queries.
        match ensure_promtool(base) {
            Ok(p) => running
                .env
                .push(("KAIZEN_TEST_PROMTOOL".into(), p.display().to_string())),
            Err(e) => eprintln!("xtask: promtool unavailable ({e:#}); its checks are skipped"),
        }
    }
    let pushgateway = if has("pushgateway") {
        Some(ensure_pushgateway(base)?)
    } else {
        None
    };
    let log = |n: &str| dir.join(format!("{n}.log"));

    if let (true, Some(venv)) = (has("s3"), &venv) {
        let port = free_port()?;
        let mut p = Proc::spawn(
            "moto (S3)",
            Command::new(venv.join("moto_server"))
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env("MOTO_ALLOW_NONEXISTENT_REGION", "true"),
            log("moto"),
        )?;
        p.wait_http(port, "/", &[200])?;
        let (code, body) = http(port, "PUT", &format!("/{BUCKET}"), &[], b"")?;
        if code != 200 {
            bail!("creating the S3 bucket on moto failed: HTTP {code}: {body}");
        }
        running.procs.push(p);
        running.env.extend([
            (
                "KAIZEN_TEST_S3_ENDPOINT".into(),
                format!("http://127.0.0.1:{port}"),
            ),
            ("KAIZEN_TEST_S3_BUCKET".into(), BUCKET.into()),
        ]);
        eprintln!("xtask: S3 (moto) on 127.0.0.1:{port}, bucket {BUCKET}");
    }

    if let (true, Some(node)) = (has("azure"), &node) {
        let port = free_port()?;
        let mut p = Proc::spawn(
            "Azurite (Azure Blob)",
            Command::new(node.join("azurite-blob")).args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--skipApiVersionCheck",
                "--loose",
                "--inMemoryPersistence",
            ]),
            log("azurite"),
        )?;
        // Any HTTP answer means it listens (an unauthenticated request gets 4xx).
        p.wait_http(port, "/", &[200, 400, 403, 404])?;
        azure_create_container(port, BUCKET)?;
        running.procs.push(p);
        running.env.extend([
            (
                "KAIZEN_TEST_AZURE_ENDPOINT".into(),
                format!("http://127.0.0.1:{port}/{AZURE_ACCOUNT}"),
            ),
            ("KAIZEN_TEST_AZURE_CONTAINER".into(), BUCKET.into()),
            ("KAIZEN_TEST_AZURE_ACCOUNT".into(), AZURE_ACCOUNT.into()),
            ("KAIZEN_TEST_AZURE_KEY".into(), AZURE_KEY.into()),
        ]);
        eprintln!("xtask: Azure Blob (Azurite) on 127.0.0.1:{port}, container {BUCKET}");
    }

    if let (true, Some(venv)) = (has("gcs"), &venv) {
        let port = free_port()?;
        let mut p = Proc::spawn(
            "gcp-storage-emulator (GCS)",
            Command::new(venv.join("gcp-storage-emulator")).args([
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--in-memory",
                "--default-bucket",
                BUCKET,
            ]),
            log("gcs"),
        )?;
        p.wait_http(port, &format!("/storage/v1/b/{BUCKET}"), &[200])?;
        running.procs.push(p);
        running.env.extend([
            (
                "KAIZEN_TEST_GCS_ENDPOINT".into(),
                format!("http://127.0.0.1:{port}"),
            ),
            ("KAIZEN_TEST_GCS_BUCKET".into(), BUCKET.into()),
        ]);
        eprintln!("xtask: GCS (gcp-storage-emulator) on 127.0.0.1:{port}, bucket {BUCKET}");
    }

    if let (true, Some(venv)) = (has("webdav"), &venv) {
        let port = free_port()?;
        let root = dir.join("webdav");
        std::fs::create_dir_all(&root)?;
        let mut p = Proc::spawn(
            "wsgidav (WebDAV)",
            Command::new(venv.join("wsgidav"))
                .args([
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--auth",
                    "anonymous",
                    "--no-config",
                    "--root",
                ])
                .arg(&root),
            log("webdav"),
        )?;
        p.wait_http(port, "/", &[200])?;
        running.procs.push(p);
        running.env.push((
            "KAIZEN_TEST_WEBDAV_ENDPOINT".into(),
            format!("http://127.0.0.1:{port}/"),
        ));
        eprintln!("xtask: WebDAV (wsgidav) on 127.0.0.1:{port}");
    }

    if let (true, Some(node)) = (has("smtp"), &node) {
        let smtp = free_port()?;
        let web = free_port()?;
        let mut p = Proc::spawn(
            "maildev (SMTP)",
            Command::new(node.join("maildev")).args([
                "--ip",
                "127.0.0.1",
                "--web-ip",
                "127.0.0.1",
                "--smtp",
                &smtp.to_string(),
                "--web",
                &web.to_string(),
            ]),
            log("maildev"),
        )?;
        p.wait_http(web, "/email", &[200])?;
        running.procs.push(p);
        running.env.extend([
            ("KAIZEN_TEST_SMTP_HOST".into(), "127.0.0.1".into()),
            ("KAIZEN_TEST_SMTP_PORT".into(), smtp.to_string()),
            (
                "KAIZEN_TEST_MAILDEV_API".into(),
                format!("http://127.0.0.1:{web}"),
            ),
        ]);
        eprintln!("xtask: SMTP (maildev) on 127.0.0.1:{smtp}, API on 127.0.0.1:{web}");
    }

    if let Some(bin) = &pushgateway {
        let port = free_port()?;
        let mut p = Proc::spawn(
            "Prometheus Pushgateway",
            Command::new(bin).arg(format!("--web.listen-address=127.0.0.1:{port}")),
            log("pushgateway"),
        )?;
        p.wait_http(port, "/-/ready", &[200])?;
        running.procs.push(p);
        running.env.push((
            "KAIZEN_TEST_PUSHGATEWAY_URL".into(),
            format!("http://127.0.0.1:{port}"),
        ));
        eprintln!("xtask: Pushgateway on 127.0.0.1:{port}");
    }
    Ok(running)
}

/// Create a blob container on Azurite with a SharedKey-signed request. The HMAC is
/// computed by python3's standard library (no crypto crates in xtask). urllib always sends
/// a Content-Type with a body, so it is set explicitly and signed.
fn azure_create_container(port: u16, container: &str) -> Result<()> {
    const SCRIPT: &str = r#"
import base64, hashlib, hmac, sys, urllib.request, urllib.error, email.utils
port, account, key, container = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
date = email.utils.formatdate(usegmt=True)
version = "2021-08-06"
resource = "/%s/%s/%s\nrestype:container" % (account, account, container)
to_sign = "PUT\n\n\n\n\napplication/octet-stream\n\n\n\n\n\n\nx-ms-date:%s\nx-ms-version:%s\n%s" % (date, version, resource)
sig = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
req = urllib.request.Request("http://127.0.0.1:%s/%s/%s?restype=container" % (port, account, container), method="PUT", data=b"")
req.add_header("Content-Type", "application/octet-stream")
req.add_header("x-ms-date", date)
req.add_header("x-ms-version", version)
req.add_header("Authorization", "SharedKey %s:%s" % (account, sig))
try:
    print(urllib.request.urlopen(req).status)
except urllib.error.HTTPError as e:
    if e.code == 409:
        print(409)
    else:
        sys.exit("HTTP %s: %s" % (e.code, e.read().decode(errors="replace")))
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            SCRIPT,
            &port.to_string(),
            AZURE_ACCOUNT,
            AZURE_KEY,
            container,
        ])
        .output()
        .context("running python3 to create the Azure container")?;
    if !out.status.success() {
        bail!(
            "creating the Azure container on Azurite failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
