//! Notifiers and metrics sinks for kaizen-backup, each behind a Cargo feature (all on by default).
//!
//! | `type` | what | feature |
//! |---|---|---|
//! | `slack` | Slack incoming webhook, Block Kit message | `slack` |
//! | `email` | SMTP (STARTTLS, implicit TLS or none, optional login), plain-text body | `email` |
//! | `webhook` | POST of the versioned JSON [`backup_core::Event`], optional HMAC-SHA256 signature | `webhook` |
//!
//! Every variant of [`NotifierConfig`] always parses; only building one needs its feature,
//! so a configuration naming a notifier that is not compiled in fails with
//! "slack support is not compiled in (feature `slack`)".
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

use std::collections::BTreeMap;
use std::time::Duration;

use backup_core::{Error, EventKind, Notifier, Result, Secret};
use serde::{Deserialize, Serialize};

#[cfg(feature = "email")]
mod email;
#[cfg(any(feature = "slack", feature = "webhook", feature = "pushgateway"))]
mod http;
pub mod metrics;
#[cfg(feature = "slack")]
mod slack;
#[cfg(feature = "webhook")]
mod webhook;

/// Settings every notifier has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Common {
    /// Name in logs (default: the type).
    pub name: Option<String>,
    /// Events to send, by name: `backup.succeeded`, `backup.failed`, `verify.succeeded`,
    /// `verify.failed`, `prune.completed`, `backup.stale`, `restore.started`,
    /// `restore.completed`, `restore.failed`, `restore.refused`, `audit`.
    ///
    /// Unset: every failure (`backup.failed`, `verify.failed`, `backup.stale`,
    /// `restore.failed`) plus
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

/// SMTP transport security.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// STARTTLS on the submission port (587).
    #[default]
    Starttls,
    /// Implicit TLS (465).
    Tls,
    /// No TLS (local relays, test servers).
    None,
}

/// One notifier in the configuration (`[[notify]]`), tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum NotifierConfig {
    /// Slack incoming webhook.
    Slack {
        /// `https://hooks.slack.com/services/...` (a secret: it grants posting).
        webhook_url: Secret,
        #[serde(flatten)]
        common: Common,
    },
    /// Email over SMTP.
    Email {
        /// Recipients.
        recipients: Vec<String>,
        /// SMTP server.
        smtp_host: String,
        /// Port (default by TLS mode: 587, 465, 25).
        #[serde(default)]
        smtp_port: Option<u16>,
        /// Login, if the server wants one.
        #[serde(default)]
        smtp_user: Option<String>,
        /// Password.
        #[serde(default)]
        smtp_password: Option<Secret>,
        /// Sender (default `kaizen-backup@<host>`).
        #[serde(default)]
        from: Option<String>,
        /// Transport security.
        #[serde(default)]
        tls: SmtpTls,
        #[serde(flatten)]
        common: Common,
    },
    /// Generic JSON webhook.
    Webhook {
        /// Where to POST (a secret: URLs often carry tokens).
        url: Secret,
        /// Shared secret for the `X-Kaizen-Signature: sha256=<hex>` header.
        #[serde(default)]
        secret: Option<Secret>,
        /// Extra headers (e.g. an authorization token).
        #[serde(default)]
        headers: BTreeMap<String, Secret>,
        #[serde(flatten)]
        common: Common,
    },
}

impl NotifierConfig {
    /// The type name (`slack`, `email`, `webhook`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Slack { .. } => "slack",
            Self::Email { .. } => "email",
            Self::Webhook { .. } => "webhook",
        }
    }

    /// Common settings.
    pub fn common(&self) -> &Common {
        match self {
            Self::Slack { common, .. }
            | Self::Email { common, .. }
            | Self::Webhook { common, .. } => common,
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

fn not_compiled(what: &str) -> Error {
    Error::NotCompiled {
        what: what.into(),
        feature: what.into(),
    }
}

/// Build one notifier. A type whose feature is not compiled in fails with
/// [`Error::NotCompiled`] ("slack support is not compiled in (feature `slack`)").
#[cfg_attr(
    not(all(feature = "slack", feature = "email", feature = "webhook")),
    allow(unused_variables)
)]
pub fn build(cfg: &NotifierConfig) -> Result<Box<dyn Notifier>> {
    let common = cfg.common();
    let events = common.events()?;
    let name = common
        .name
        .clone()
        .unwrap_or_else(|| cfg.kind().to_string());
    match cfg {
        #[cfg(feature = "slack")]
        NotifierConfig::Slack { webhook_url, .. } => Ok(Box::new(slack::Slack::new(
            name,
            webhook_url.clone(),
            events,
            common,
        )?)),
        #[cfg(feature = "email")]
        NotifierConfig::Email {
            recipients,
            smtp_host,
            smtp_port,
            smtp_user,
            smtp_password,
            from,
            tls,
            ..
        } => Ok(Box::new(email::Email::new(
            name,
            email::Settings {
                recipients: recipients.clone(),
                host: smtp_host.clone(),
                port: *smtp_port,
                user: smtp_user.clone(),
                password: smtp_password.clone(),
                from: from.clone(),
                tls: *tls,
            },
            events,
            common,
        )?)),
        #[cfg(feature = "webhook")]
        NotifierConfig::Webhook {
            url,
            secret,
            headers,
            ..
        } => Ok(Box::new(webhook::Webhook::new(
            name,
            url.clone(),
            secret.clone(),
            headers.clone(),
            events,
            common,
        )?)),
        #[allow(unreachable_patterns)]
        other => Err(not_compiled(other.kind())),
    }
}

/// Build every configured notifier.
pub fn build_all(cfgs: &[NotifierConfig]) -> Result<Vec<Box<dyn Notifier>>> {
    cfgs.iter().map(build).collect()
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
