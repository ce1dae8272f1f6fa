//! Prometheus metrics: a node_exporter textfile (written atomically) and/or a
//! Pushgateway. The sink is a [`Notifier`] that listens to backup, verify, prune and
//! `status.checked` events (the WAL archive, archiver failures and recovery window, see
//! `metrics/wal.rs`).
//!
//! A failed attempt never erases the last success:
//! - the textfile is read back and merged with the new values (under an advisory lock, so
//!   a backup and a verify finishing at once do not lose each other's update);
//! - the Pushgateway gets a POST, which replaces only the metric names sent in that push
//!   within the group (`job`, [`MetricsConfig::instance`], `database`); a failure sends
//!   `last_status` and `last_attempt_timestamp_seconds` only, so `last_success_*`,
//!   `last_size_bytes` and `last_duration_seconds` of the last success stay. (A PUT would
//!   replace the whole group and lose them.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use backup_core::{Error, Event, EventKind, Notifier, Result};
use serde::{Deserialize, Serialize};

mod receiver;
mod wal;

pub use receiver::RECEIVER_METRICS;

/// The `[metrics]` configuration section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// node_exporter textfile path, e.g. `/var/lib/node_exporter/textfile/kaizen_backup.prom`
    /// (node_exporter reads only files ending in `.prom`).
    pub textfile: Option<PathBuf>,
    /// Pushgateway base URL, e.g. `http://pushgateway:9091`.
    pub pushgateway: Option<String>,
    /// Pushgateway job name (default `kaizen_backup`).
    pub job: Option<String>,
    /// Optional `instance` grouping label for the Pushgateway (e.g. the cluster name), so
    /// several installations pushing the same database name do not overwrite each other.
    pub instance: Option<String>,
    /// Seconds per Pushgateway request (default 10).
    pub timeout_secs: Option<u64>,
}

/// Default Pushgateway job name.
pub const DEFAULT_JOB: &str = "kaizen_backup";

impl MetricsConfig {
    /// Whether any sink is configured.
    pub fn is_enabled(&self) -> bool {
        self.textfile.is_some() || self.pushgateway.is_some()
    }
}

/// Every metric we write: name, type, help.
pub const METRICS: &[(&str, &str, &str)] = &[
    (
        "kaizen_backup_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful backup.",
    ),
    (
        "kaizen_backup_last_success_timestamp",
        "gauge",
        "Same as kaizen_backup_last_success_timestamp_seconds (old name, kept for existing alerts).",
    ),
    (
        "kaizen_backup_last_attempt_timestamp_seconds",
        "gauge",
        "Unix time of the last backup attempt, successful or not.",
    ),
    (
        "kaizen_backup_last_duration_seconds",
        "gauge",
        "Duration of the last successful backup.",
    ),
    (
        "kaizen_backup_last_size_bytes",
        "gauge",
        "Stored size of the last successful backup.",
    ),
    (
        "kaizen_backup_last_status",
        "gauge",
        "1 if the last backup attempt succeeded, 0 if it failed.",
    ),
    (
        "kaizen_backup_verify_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last passed verification.",
    ),
    (
        "kaizen_backup_verify_last_attempt_timestamp_seconds",
        "gauge",
        "Unix time of the last verification, passed or not.",
    ),
    (
        "kaizen_backup_verify_last_status",
        "gauge",
        "1 if the last verification passed, 0 if it failed.",
    ),
    (
        "kaizen_backup_prune_last_timestamp_seconds",
        "gauge",
        "Unix time retention (prune) last ran.",
    ),
    (
        "kaizen_backup_drill_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last passed restore drill.",
    ),
    (
        "kaizen_backup_drill_last_attempt_timestamp_seconds",
        "gauge",
        "Unix time of the last restore drill, passed or not.",
    ),
    (
        "kaizen_backup_drill_last_status",
        "gauge",
        "1 if the last restore drill passed, 0 if it failed.",
    ),
    (
        "kaizen_backup_drill_rto_seconds",
        "gauge",
        "Time the last restore drill took from its start to a usable server (or verified test restore).",
    ),
    (
        "kaizen_backup_drill_rpo_seconds",
        "gauge",
        "At the last drill: seconds since the last archived transaction (or the newest logical backup).",
    ),
    (
        "kaizen_backup_drill_rto_target_seconds",
        "gauge",
        "The restore time promised in [drill] rto_target.",
    ),
    (
        wal::WAL_LAST_ARCHIVED,
        "gauge",
        "Unix time the last WAL file was archived (as of the last `status` run).",
    ),
    (
        wal::WINDOW_START,
        "gauge",
        "Start of the point-in-time recovery window: end of the oldest physical backup.",
    ),
    (
        wal::WINDOW_END,
        "gauge",
        "End of the point-in-time recovery window: the last archived WAL file.",
    ),
    (
        wal::WINDOW_PROMISED,
        "gauge",
        "Length of the recovery window the retention rules promise ([retention] max_age_days, keep_daily...).",
    ),
    (
        wal::ARCHIVE_FAILURES,
        "counter",
        "Failed archive_command runs on the server (pg_stat_archiver.failed_count; resets with its statistics).",
    ),
    (
        wal::ARCHIVE_FAILING,
        "gauge",
        "1 while the server's last WAL archive attempt failed (pg_stat_archiver), else 0.",
    ),
];

/// Identity of one series: metric name, `database` label, `target` label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    /// Metric name.
    pub name: String,
    /// `database` label.
    pub database: String,
    /// `target` label (a redacted storage URL; empty when the event named no target).
    pub target: String,
}

/// Series -> value.
pub type Samples = BTreeMap<SeriesKey, f64>;

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn unesc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(o) => out.push(o),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The samples an event sets (nothing for events metrics do not track).
pub fn samples_for(event: &Event) -> Samples {
    if event.kind == EventKind::StatusChecked {
        return wal::samples(event);
    }
    let mut s = Samples::new();
    let now = event.timestamp.timestamp() as f64;
    let targets: Vec<String> = if event.targets.is_empty() {
        vec![String::new()]
    } else {
        event.targets.clone()
    };
    for t in &targets {
        let mut set = |name: &str, v: f64| {
            s.insert(
                SeriesKey {
                    name: name.to_string(),
                    database: event.database.clone(),
                    target: t.clone(),
                },
                v,
            );
        };
        match event.kind {
            EventKind::BackupSucceeded => {
                set("kaizen_backup_last_success_timestamp_seconds", now);
                set("kaizen_backup_last_success_timestamp", now);
                set("kaizen_backup_last_attempt_timestamp_seconds", now);
                set("kaizen_backup_last_status", 1.0);
                if let Some(d) = event.duration_seconds {
                    set("kaizen_backup_last_duration_seconds", d);
                }
                if let Some(b) = event.size_bytes {
                    set("kaizen_backup_last_size_bytes", b as f64);
                }
            }
            EventKind::BackupFailed => {
                set("kaizen_backup_last_attempt_timestamp_seconds", now);
                set("kaizen_backup_last_status", 0.0);
            }
            EventKind::VerifySucceeded => {
                set("kaizen_backup_verify_last_success_timestamp_seconds", now);
                set("kaizen_backup_verify_last_attempt_timestamp_seconds", now);
                set("kaizen_backup_verify_last_status", 1.0);
            }
            EventKind::VerifyFailed => {
                set("kaizen_backup_verify_last_attempt_timestamp_seconds", now);
                set("kaizen_backup_verify_last_status", 0.0);
            }
            EventKind::PruneCompleted => set("kaizen_backup_prune_last_timestamp_seconds", now),
            EventKind::DrillSucceeded | EventKind::DrillFailed => {
                let passed = event.kind == EventKind::DrillSucceeded;
                if passed {
                    set("kaizen_backup_drill_last_success_timestamp_seconds", now);
                }
                set("kaizen_backup_drill_last_attempt_timestamp_seconds", now);
                set(
                    "kaizen_backup_drill_last_status",
                    if passed { 1.0 } else { 0.0 },
                );
                for (field, metric) in [
                    ("rto_seconds", "kaizen_backup_drill_rto_seconds"),
                    ("rpo_seconds", "kaizen_backup_drill_rpo_seconds"),
                    (
                        "rto_target_seconds",
                        "kaizen_backup_drill_rto_target_seconds",
                    ),
                ] {
                    if let Some(v) = event.details.get(field).and_then(|v| v.as_f64()) {
                        set(metric, v);
                    }
                }
            }
            _ => {}
        }
    }
    s
}

/// Merge `new` into `old`. A sample without a target (the event named none, e.g. the
/// backup failed before storage was opened) applies to every target already known for
/// its database, so an old `last_status 1` of a real target cannot hide the failure;
/// a sample with a target replaces an earlier target-less one of the same metric.
pub fn merge(old: &mut Samples, new: &Samples) {
    for (k, v) in new {
        if k.target.is_empty() {
            let known: Vec<String> = old
                .keys()
                .filter(|o| o.database == k.database && !o.target.is_empty())
                .map(|o| o.target.clone())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            if !known.is_empty() {
                for target in known {
                    old.insert(
                        SeriesKey {
                            target,
                            ..k.clone()
                        },
                        *v,
                    );
                }
                continue;
            }
        } else {
            old.remove(&SeriesKey {
                target: String::new(),
                ..k.clone()
            });
        }
        old.insert(k.clone(), *v);
    }
}

/// Render samples in the Prometheus text exposition format (0.0.4).
pub fn render(samples: &Samples) -> String {
    let mut out = String::new();
    for (name, kind, help) in METRICS {
        let rows: Vec<_> = samples.iter().filter(|(k, _)| k.name == *name).collect();
        if rows.is_empty() {
            continue;
        }
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (k, v) in rows {
            out.push_str(&format!(
                "{name}{{database=\"{}\",target=\"{}\"}} {v}\n",
                esc(&k.database),
                esc(&k.target)
            ));
        }
    }
    out
}

/// Parse `key="value",...` (our own label syntax).
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').trim().to_string();
        let body = &rest[eq + 2..];
        let mut end = None;
        let mut escaped = false;
        for (i, c) in body.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let Some(end) = end else { break };
        out.insert(key, unesc(&body[..end]));
        rest = &body[end + 1..];
    }
    out
}

/// Parse our own earlier output back (lines `name{labels} value`); foreign lines are ignored.
pub fn parse(text: &str) -> Samples {
    let mut s = Samples::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let Some(open) = line.find('{') else { continue };
        let Some(close) = line.rfind('}') else {
            continue;
        };
        let name = &line[..open];
        if close < open || !METRICS.iter().any(|(n, _, _)| *n == name) {
            continue;
        }
        let labels = parse_labels(&line[open + 1..close]);
        let Ok(v) = line[close + 1..].trim().parse::<f64>() else {
            continue;
        };
        s.insert(
            SeriesKey {
                name: name.to_string(),
                database: labels.get("database").cloned().unwrap_or_default(),
                target: labels.get("target").cloned().unwrap_or_default(),
            },
            v,
        );
    }
    s
}

/// URL-safe base64 with padding, for Pushgateway path segments (`label@base64/value`):
/// label values may hold `/`, which a plain path segment cannot.
fn base64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    if out.is_empty() {
        // The Pushgateway's spelling of an empty value.
        out.push('=');
    }
    out
}

/// `<base>/metrics/job@base64/<job>[/instance@base64/<instance>]/database@base64/<db>`.
pub fn pushgateway_url(base: &str, job: &str, instance: Option<&str>, database: &str) -> String {
    let mut url = format!(
        "{}/metrics/job@base64/{}",
        base.trim_end_matches('/'),
        base64url(job.as_bytes())
    );
    if let Some(i) = instance {
        url.push_str(&format!("/instance@base64/{}", base64url(i.as_bytes())));
    }
    url.push_str(&format!(
        "/database@base64/{}",
        base64url(database.as_bytes())
    ));
    url
}

/// Writes metrics for every event it is given.
#[derive(Debug, Clone)]
pub struct MetricsSink {
    cfg: MetricsConfig,
}

impl MetricsSink {
    /// A sink for `cfg` (`None` when nothing is configured). A Pushgateway URL without the
    /// `pushgateway` feature is refused with the feature's name.
    pub fn from_config(cfg: &MetricsConfig) -> Result<Option<Self>> {
        if !cfg.is_enabled() {
            return Ok(None);
        }
        if cfg.textfile.is_some() && !cfg!(feature = "metrics") {
            return Err(Error::NotCompiled {
                what: "metrics textfile".into(),
                feature: "metrics".into(),
            });
        }
        if let Some(pg) = &cfg.pushgateway {
            let ok = url::Url::parse(pg)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
            if !ok {
                return Err(Error::Config {
                    key: "metrics.pushgateway".into(),
                    message: "not an http(s) URL (e.g. http://pushgateway:9091)".into(),
                });
            }
            if !cfg!(feature = "pushgateway") {
                return Err(Error::NotCompiled {
                    what: "pushgateway".into(),
                    feature: "pushgateway".into(),
                });
            }
        }
        Ok(Some(Self { cfg: cfg.clone() }))
    }

    /// Record one event on every configured sink (same as [`Notifier::notify`]).
    pub async fn record(&self, event: &Event) -> Result<()> {
        let samples = samples_for(event);
        if samples.is_empty() {
            return Ok(());
        }
        if let Some(path) = &self.cfg.textfile {
            let path = path.clone();
            tokio::task::spawn_blocking(move || Self::write_textfile(&path, &samples))
                .await
                .map_err(|e| Error::other(format!("metrics writer stopped: {e}")))??;
        }
        #[cfg(feature = "pushgateway")]
        if let Some(base) = &self.cfg.pushgateway {
            self.push(base, event).await?;
        }
        Ok(())
    }

    /// Merge `samples` into the textfile at `path`, atomically: a temporary file in the same
    /// directory, fsync, rename. A reader (node_exporter) sees the old or the new file, never
    /// half of one. Mode 0644, set explicitly whatever the umask: node_exporter usually runs
    /// as another user and must read the file, and metrics hold no secrets. An advisory lock
    /// on a sidecar `.<name>.lock` file serializes concurrent writers (a backup and a verify
    /// job finishing together), so neither loses the other's values.
    pub fn write_textfile(path: &Path, samples: &Samples) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let io_err =
            |e: std::io::Error| Error::io(format!("writing metrics to {}", path.display()), e);
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let file_name = path
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or("metrics");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!(".{file_name}.lock")))
            .map_err(io_err)?;
        fs4::fs_std::FileExt::lock_exclusive(&lock).map_err(io_err)?;
        let mut all = match std::fs::read_to_string(path) {
            Ok(t) => parse(&t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Samples::new(),
            Err(e) => return Err(io_err(e)),
        };
        merge(&mut all, samples);
        let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
        let res = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
            f.write_all(render(&all).as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err(e));
        }
        // Dropping `lock` releases it.
        Ok(())
    }

    #[cfg(feature = "pushgateway")]
    async fn push(&self, base: &str, event: &Event) -> Result<()> {
        let job = self.cfg.job.as_deref().unwrap_or(DEFAULT_JOB);
        let url = pushgateway_url(base, job, self.cfg.instance.as_deref(), &event.database);
        let body = render(&samples_for(event));
        let request = std::time::Duration::from_secs(self.cfg.timeout_secs.unwrap_or(10).max(1));
        let timeouts = crate::Timeouts {
            request,
            connect: request.min(std::time::Duration::from_secs(5)),
            deadline: crate::Common::default().timeouts().deadline,
        };
        let client = crate::http::client(&timeouts)?;
        // POST, not PUT: see the module documentation.
        crate::http::send_with_retries("pushgateway", &url, 2, &timeouts, || {
            client
                .post(&url)
                .header("Content-Type", "text/plain; version=0.0.4")
                .body(body.clone())
        })
        .await
    }
}

#[async_trait]
impl Notifier for MetricsSink {
    fn name(&self) -> String {
        "metrics".into()
    }

    fn wants(&self, kind: EventKind) -> bool {
        matches!(
            kind,
            EventKind::BackupSucceeded
                | EventKind::BackupFailed
                | EventKind::VerifySucceeded
                | EventKind::VerifyFailed
                | EventKind::PruneCompleted
                | EventKind::StatusChecked
        )
    }

    async fn notify(&self, event: &Event) -> Result<()> {
        self.record(event).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, target: &str) -> SeriesKey {
        SeriesKey {
            name: name.into(),
            database: "kaizen_studio".into(),
            target: target.into(),
        }
    }

    #[test]
    fn labels_round_trip_through_the_text_format() {
        let mut s = Samples::new();
        let k = SeriesKey {
            name: "kaizen_backup_last_status".into(),
            database: "we\"ird\\db".into(),
            target: "s3://b/p,x=\"y\"}".into(),
        };
        s.insert(k.clone(), 1.0);
        assert_eq!(parse(&render(&s)), s);
    }

    #[test]
    fn targetless_failure_applies_to_known_targets() {
        let mut old = Samples::new();
        old.insert(key("kaizen_backup_last_status", "file:///b"), 1.0);
        let mut new = Samples::new();
        new.insert(key("kaizen_backup_last_status", ""), 0.0);
        merge(&mut old, &new);
        assert_eq!(old.len(), 1);
        assert_eq!(old[&key("kaizen_backup_last_status", "file:///b")], 0.0);
        // And a later success with a target replaces a target-less sample.
        let mut only_blank = Samples::new();
        only_blank.insert(key("kaizen_backup_last_status", ""), 0.0);
        let mut ok = Samples::new();
        ok.insert(key("kaizen_backup_last_status", "file:///b"), 1.0);
        merge(&mut only_blank, &ok);
        assert_eq!(only_blank.len(), 1);
    }

    #[test]
    fn base64_matches_the_pushgateway_spelling() {
        assert_eq!(base64url(b""), "=");
        assert_eq!(base64url(b"f"), "Zg==");
        assert_eq!(base64url(b"fo"), "Zm8=");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"a/b?"), "YS9iPw==");
        assert_eq!(
            pushgateway_url("http://pg:9091/", "kaizen_backup", None, "kaizen_studio"),
            "http://pg:9091/metrics/job@base64/a2FpemVuX2JhY2t1cA==/database@base64/a2FpemVuX3N0dWRpbw=="
        );
    }
}
