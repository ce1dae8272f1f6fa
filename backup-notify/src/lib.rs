//! Notifiers and metrics sinks for kaizen-backup, each behind a Cargo feature (all on by default).
//!
//! The notifier types are the variants of [`NotifierConfig`] (`slack`, `email`, `webhook`):
//! each is one file in `src/notifiers/` and one line in the registry there, and its
//! `type` name is also its Cargo feature. Every variant always parses; only building one
//! needs its feature, so a configuration naming a notifier that is not compiled in fails
//! with "slack support is not compiled in (feature `slack`)". [`features`] lists what
//! this build has.
//!
//! ```toml
//! [[notify]]
//! type = "slack"
//! webhook_url = "https://hooks.slack.com/services/T000/B000/XXXX"
//!
//! [[notify]]
//! type = "email"
//! name = "ops-mail"
//! recipients = ["ops@example.com", "dba@example.com"]
//! smtp_host = "smtp.example.com"   # smtp_port defaults by tls: 587, 465, 25
//! smtp_user = "backup"
//! smtp_password = "..."
//! tls = "starttls"                 # or "tls" (implicit) or "none"
//! on = ["backup.failed", "verify.failed", "backup.stale"]
//!
//! [[notify]]
//! type = "webhook"
//! url = "https://example.com/hooks/backup"
//! secret = "shared"                # X-Kaizen-Signature: sha256=<hex HMAC of the body>
//! headers = { Authorization = "Bearer ..." }
//! timeout_secs = 10                # per attempt: connect to end of answer, and most idle time (default 10)
//! connect_timeout_secs = 5         # to establish the connection (default 5)
//! retries = 3                      # after the first attempt, backoff 250 ms, 500 ms, 1 s, ...
//! deadline_secs = 20               # the whole delivery of one event, retries included (default 20)
//!
//! [metrics]
//! textfile = "/var/lib/node_exporter/textfile/kaizen_backup.prom"
//! pushgateway = "http://pushgateway:9091"
//! job = "kaizen_backup"
//! ```
//!
//! Use: [`build_all`] the `[[notify]]` list (the CLI maps the old scripts' variables,
//! `SLACK_WEBHOOK_URL`, `BACKUP_EMAIL_RECIPIENT`, `SMTP_*`, into that list), add [`metrics::MetricsSink::from_config`] (itself a
//! [`Notifier`]), and hand every event to [`backup_core::notify::notify_all`]. Delivery
//! retries 5xx, 429, timeouts and connection errors (not other 4xx, nor SMTP 5xx answers);
//! errors name the notifier and the server (scheme and host only: webhook URLs, header
//! values, the HMAC secret and the SMTP password never appear in errors, logs or `Debug`).
//! A receiver that accepts and never answers costs at most `deadline_secs` per event.

use std::time::Duration;

use backup_core::{Error, EventKind, Result};
use serde::{Deserialize, Serialize};

#[cfg(any(feature = "slack", feature = "webhook", feature = "pushgateway"))]
mod http;
pub mod metrics;
mod notifiers;

pub use notifiers::{
    EmailConfig, NotifierConfig, SlackConfig, SmtpTls, WebhookConfig, build, build_all,
};

/// Settings every notifier has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Common {
    /// Name in logs (default: the type).
    pub name: Option<String>,
    /// Events to send, by name: `backup.succeeded`, `backup.failed`, `verify.succeeded`,
    /// `verify.failed`, `prune.completed`, `backup.stale`, `restore.started`,
    /// `restore.completed`, `restore.failed`, `restore.refused`, `wal.stale`, `wal.gap`,
    /// `status.checked`, `drill.succeeded`, `drill.failed`, `audit`.
    ///
    /// Unset: every failure (`backup.failed`, `verify.failed`, `backup.stale`,
    /// `restore.failed`, `wal.stale`, `wal.gap`, `drill.failed`) plus
    /// `backup.succeeded` and `verify.succeeded`, which is what the old scripts announced
    /// ("backup success with size and duration ... verification results"). Set, it is the
    /// exact list, e.g. `on = ["backup.failed", "verify.failed", "backup.stale"]` for a
    /// pager that must only hear about failures. An unknown name is a configuration error.
    pub on: Option<Vec<String>>,
    /// Seconds per delivery attempt, from connecting to the end of the answer; also the
    /// most a connection may stay idle (SMTP: each command).
    pub timeout_secs: u64,
    /// Seconds to establish a connection (HTTP notifiers; SMTP uses `timeout_secs`).
    pub connect_timeout_secs: u64,
    /// Retries after the first attempt (with exponential backoff).
    pub retries: u32,
    /// Seconds for the whole delivery of one event, every attempt and pause included.
    pub deadline_secs: u64,
}

impl Default for Common {
    fn default() -> Self {
        Self {
            name: None,
            on: None,
            timeout_secs: 10,
            connect_timeout_secs: 5,
            retries: 3,
            deadline_secs: 20,
        }
    }
}

/// How long a delivery may take: per attempt, to connect, and in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// One attempt (and the most idle time within it).
    pub request: Duration,
    /// Establishing a connection.
    pub connect: Duration,
    /// The whole delivery, retries included.
    pub deadline: Duration,
}

impl Common {
    /// Parse the `on` filter into event kinds (an unknown name is a configuration error).
    pub fn events(&self) -> Result<Vec<EventKind>> {
        match &self.on {
            None => Ok(EventKind::ALL
                .iter()
                .copied()
                .filter(|k| {
                    k.is_failure()
                        || matches!(k, EventKind::BackupSucceeded | EventKind::VerifySucceeded)
                })
                .collect()),
            Some(list) => list
                .iter()
                .map(|s| {
                    EventKind::parse(s).ok_or_else(|| Error::Config {
                        key: "notify.on".into(),
                        message: format!(
                            "unknown event {s:?} (known: {})",
                            EventKind::ALL
                                .iter()
                                .map(|k| k.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    })
                })
                .collect(),
        }
    }

    /// Per-attempt timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.max(1))
    }

    /// Every limit of a delivery.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            request: self.timeout(),
            connect: Duration::from_secs(self.connect_timeout_secs.max(1)).min(self.timeout()),
            deadline: Duration::from_secs(self.deadline_secs.max(1)),
        }
    }
}

/// Pause before retry number `attempt` (1-based): 250 ms, 500 ms, 1 s, ... capped at 16 s.
#[cfg_attr(
    not(any(
        feature = "slack",
        feature = "webhook",
        feature = "email",
        feature = "pushgateway"
    )),
    allow(dead_code)
)]
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250 * (1u64 << attempt.saturating_sub(1).min(6)))
}

/// The notifier and metrics features compiled into this build, for `--version`.
pub fn features() -> Vec<&'static str> {
    let mut v = notifiers::compiled().to_vec();
    if cfg!(feature = "metrics") {
        v.push("metrics");
    }
    if cfg!(feature = "pushgateway") {
        v.push("pushgateway");
    }
    v
}

/// A short text for the body of email and Slack messages.
pub fn describe(event: &backup_core::Event) -> Vec<(String, String)> {
    let mut f = vec![("Database".to_string(), event.database.clone())];
    if let Some(b) = &event.backup {
        f.push(("Backup".into(), b.clone()));
    }
    if let Some(s) = event.size_bytes {
        f.push(("Size".into(), backup_core::util::human_size(s)));
    }
    if let Some(d) = event.duration_seconds {
        f.push(("Duration".into(), format!("{d:.1}s")));
    }
    if !event.targets.is_empty() {
        f.push(("Targets".into(), event.targets.join(", ")));
    }
    f.push(("Host".into(), event.host.clone()));
    f.push((
        "Time".into(),
        event.timestamp.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    ));
    if let Some(e) = &event.error {
        f.push(("Error".into(), e.clone()));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_parses_and_unknown_events_are_refused() {
        let cfg: Vec<NotifierConfig> = serde_json::from_value(serde_json::json!([
            {"type": "slack", "webhook_url": "https://hooks.slack.com/services/T/B/X", "on": ["backup.failed"]},
            {"type": "email", "recipients": ["ops@example.com"], "smtp_host": "smtp.example.com", "tls": "tls"},
            {"type": "webhook", "url": "https://example.com/hook", "secret": "s", "headers": {"Authorization": "Bearer t"}}
        ]))
        .unwrap();
        assert_eq!(cfg.len(), 3);
        assert_eq!(
            cfg[0].common().events().unwrap(),
            vec![EventKind::BackupFailed]
        );
        let bad = Common {
            on: Some(vec!["backup.exploded".into()]),
            ..Common::default()
        };
        assert!(
            bad.events()
                .unwrap_err()
                .to_string()
                .contains("backup.exploded")
        );
    }

    #[cfg(all(
        feature = "slack",
        feature = "email",
        feature = "webhook",
        feature = "metrics",
        feature = "pushgateway"
    ))]
    #[test]
    fn a_default_build_lists_every_feature() {
        assert_eq!(
            features(),
            ["slack", "email", "webhook", "metrics", "pushgateway"]
        );
    }

    /// Runs in builds without the feature (`cargo test -p backup-notify --no-default-features`).
    #[cfg(not(feature = "slack"))]
    #[test]
    fn a_notifier_that_is_not_compiled_in_parses_and_names_its_feature() {
        let cfg: NotifierConfig = serde_json::from_value(serde_json::json!(
            {"type": "slack", "webhook_url": "https://hooks.slack.com/services/T/B/X"}
        ))
        .unwrap();
        let err = build(&cfg).unwrap_err();
        assert_eq!(
            err.to_string(),
            "slack support is not compiled in (feature `slack`)"
        );
        assert_eq!(err.exit_code(), 2);
    }
}
