//! Prometheus metrics: a node_exporter textfile (written atomically) and/or a
//! Pushgateway. The sink is a [`Notifier`] that listens to every event.
//!
//! A failed attempt never erases the last success: the textfile is merged with its
//! previous content, and the Pushgateway gets a POST (which replaces only the metrics
//! sent) rather than a PUT (which would replace the whole group).

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use backup_core::{Error, Event, EventKind, Notifier, Result};
use serde::{Deserialize, Serialize};

/// The `[metrics]` configuration section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// node_exporter textfile path, e.g. `/var/lib/node_exporter/textfile/kaizen_backup.prom`.
    pub textfile: Option<PathBuf>,
    /// Pushgateway base URL, e.g. `http://pushgateway:9091`.
    pub pushgateway: Option<String>,
    /// Pushgateway job name (default `kaizen_backup`).
    pub job: Option<String>,
}

impl MetricsConfig {
    /// Whether any sink is configured.
    pub fn is_enabled(&self) -> bool {
        self.textfile.is_some() || self.pushgateway.is_some()
    }
}

/// Help text of every metric we write.
pub const METRICS: &[(&str, &str, &str)] = &[
    (
        "kaizen_backup_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful backup.",
    ),
    (
        "kaizen_backup_last_success_timestamp",
        "gauge",
        "Same as kaizen_backup_last_success_timestamp_seconds (old name).",
    ),
    (
        "kaizen_backup_last_attempt_timestamp_seconds",
        "gauge",
        "Unix time of the last backup attempt.",
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
        "kaizen_backup_verify_last_status",
        "gauge",
        "1 if the last verification passed, 0 if it failed.",
    ),
];

/// (metric, labels as rendered) -> value.
type Samples = BTreeMap<(String, String), f64>;

fn labels(database: &str, target: &str) -> String {
    let esc = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    format!("database=\"{}\",target=\"{}\"", esc(database), esc(target))
}

/// The samples an event sets.
pub fn samples_for(event: &Event) -> Samples {
    let mut s = Samples::new();
    let now = event.timestamp.timestamp() as f64;
    let targets: Vec<String> = if event.targets.is_empty() {
        vec![String::new()]
    } else {
        event.targets.clone()
    };
    for t in &targets {
        let l = labels(&event.database, t);
        let mut set = |name: &str, v: f64| {
            s.insert((name.to_string(), l.clone()), v);
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
                set("kaizen_backup_verify_last_status", 1.0);
            }
            EventKind::VerifyFailed => set("kaizen_backup_verify_last_status", 0.0),
            _ => {}
        }
    }
    s
}

/// Render samples in the Prometheus text exposition format.
pub fn render(samples: &Samples) -> String {
    let mut out = String::new();
    for (name, kind, help) in METRICS {
        let rows: Vec<_> = samples.iter().filter(|((n, _), _)| n == name).collect();
        if rows.is_empty() {
            continue;
        }
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for ((_, l), v) in rows {
            out.push_str(&format!("{name}{{{l}}} {v}\n"));
        }
    }
    out
}

/// Parse our own earlier output back (lines `name{labels} value`).
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
        if !METRICS.iter().any(|(n, _, _)| *n == name) {
            continue;
        }
        if let Ok(v) = line[close + 1..].trim().parse::<f64>() {
            s.insert((name.to_string(), line[open + 1..close].to_string()), v);
        }
    }
    s
}

/// Writes metrics for every event it is given.
#[derive(Debug, Clone)]
pub struct MetricsSink {
    cfg: MetricsConfig,
}

impl MetricsSink {
    /// A sink for `cfg` (None when nothing is configured).
    pub fn from_config(cfg: &MetricsConfig) -> Result<Option<Self>> {
        if !cfg.is_enabled() {
            return Ok(None);
        }
        #[cfg(not(feature = "pushgateway"))]
        if cfg.pushgateway.is_some() {
            return Err(Error::NotCompiled {
                what: "pushgateway".into(),
                feature: "pushgateway".into(),
            });
        }
        Ok(Some(Self { cfg: cfg.clone() }))
    }

    /// Merge `samples` into the textfile, atomically (temp file + rename in the same directory).
    /// Mode 0644: node_exporter usually runs as another user and must read it; metrics hold no secrets.
    pub fn write_textfile(path: &std::path::Path, samples: &Samples) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut all = std::fs::read_to_string(path)
            .map(|t| parse(&t))
            .unwrap_or_default();
        all.extend(samples.clone());
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let tmp = dir.join(format!(
            ".{}.tmp.{}",
            path.file_name()
                .and_then(|f| f.to_str())
                .unwrap_or("metrics"),
            std::process::id()
        ));
        let res = (|| -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&tmp)?;
            f.write_all(render(&all).as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(
                format!("writing metrics to {}", path.display()),
                e,
            ));
        }
        Ok(())
    }

    #[cfg(feature = "pushgateway")]
    async fn push(&self, base: &str, event: &Event, samples: &Samples) -> Result<()> {
        let job = self
            .cfg
            .job
            .clone()
            .unwrap_or_else(|| "kaizen_backup".into());
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let url = format!(
            "{}/metrics/job/{}/database/{}",
            base.trim_end_matches('/'),
            enc(&job),
            enc(&event.database)
        );
        let body = render(samples);
        let client = crate::http::client(std::time::Duration::from_secs(10))?;
        crate::http::send_with_retries("pushgateway", &url, 2, || {
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
        )
    }

    async fn notify(&self, event: &Event) -> Result<()> {
        let samples = samples_for(event);
        if samples.is_empty() {
            return Ok(());
        }
        if let Some(path) = &self.cfg.textfile {
            Self::write_textfile(path, &samples)?;
        }
        #[cfg(feature = "pushgateway")]
        if let Some(base) = &self.cfg.pushgateway {
            self.push(base, event, &samples).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_keeps_the_last_success() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kb.prom");
        let mut ok = Event::new(EventKind::BackupSucceeded, "kaizen_studio");
        ok.targets = vec!["file:///b".into()];
        ok.size_bytes = Some(1234);
        ok.duration_seconds = Some(2.5);
        MetricsSink::write_textfile(&path, &samples_for(&ok)).unwrap();
        let mut bad = Event::new(EventKind::BackupFailed, "kaizen_studio");
        bad.targets = vec!["file:///b".into()];
        MetricsSink::write_textfile(&path, &samples_for(&bad)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let s = parse(&text);
        let l = labels("kaizen_studio", "file:///b");
        assert_eq!(
            s[&("kaizen_backup_last_status".to_string(), l.clone())],
            0.0
        );
        assert_eq!(
            s[&("kaizen_backup_last_size_bytes".to_string(), l.clone())],
            1234.0
        );
        assert!(s.contains_key(&(
            "kaizen_backup_last_success_timestamp".to_string(),
            l.clone()
        )));
        assert!(text.contains("# TYPE kaizen_backup_last_success_timestamp_seconds gauge"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }
}
