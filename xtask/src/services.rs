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

use crate::install::{
    ensure_node, ensure_promtool, ensure_pushgateway, ensure_s3s_fs, ensure_venv,
};
use crate::pg::free_port;

/// Every service name `--services` accepts, in start order.
pub const ALL: &[&str] = &["pg", "s3", "azure", "gcs", "webdav", "smtp", "pushgateway"];

/// Bucket / container created in each object store.
pub const BUCKET: &str = "kaizen-test";

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
