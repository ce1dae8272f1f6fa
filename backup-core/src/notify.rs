//! The `Notifier` trait and the events it carries.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Version of the [`Event`] JSON shape (bumped on incompatible changes).
pub const EVENT_VERSION: u32 = 1;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum EventKind {
    /// A backup committed to every required target.
    #[serde(rename = "backup.succeeded")]
    BackupSucceeded,
    /// A backup failed; nothing was committed.
    #[serde(rename = "backup.failed")]
    BackupFailed,
    /// Verification passed every check.
    #[serde(rename = "verify.succeeded")]
    VerifySucceeded,
    /// Verification failed a check.
    #[serde(rename = "verify.failed")]
    VerifyFailed,
    /// Retention ran.
    #[serde(rename = "prune.completed")]
    PruneCompleted,
    /// The newest good backup is older than allowed.
    #[serde(rename = "backup.stale")]
    BackupStale,
    /// A restore began (its backup was found).
    #[serde(rename = "restore.started")]
    RestoreStarted,
    /// A restore finished: the target database holds the backup.
    #[serde(rename = "restore.completed")]
    RestoreCompleted,
    /// A restore failed; the target database was left as it was.
    #[serde(rename = "restore.failed")]
    RestoreFailed,
    /// A restore was refused for safety (production without confirmation, a key that
    /// does not match, ...); nothing was changed.
    #[serde(rename = "restore.refused")]
    RestoreRefused,
    /// The newest archived WAL file is older than allowed (`status --max-wal-age`), or
    /// nothing is archived: point-in-time recovery would lose more than that.
    #[serde(rename = "wal.stale")]
    WalStale,
    /// `wal-receive` found WAL the archive will never hold (a lost replication slot or
    /// spool): point-in-time recovery cannot cross it (`details`: the missing segments).
    #[serde(rename = "wal.gap")]
    WalGap,
    /// `status` ran; `details.targets` lists each target's last archived WAL, recovery
    /// window (with the length retention promises) and the server's archiver statistics
    /// (what the metrics sink records). Sent to notifiers only when their `on` names it.
    #[serde(rename = "status.checked")]
    StatusChecked,
    /// A restore drill restored, started and read the backup (`details` is the drill
    /// record: RTO, RPO, the reached point).
    #[serde(rename = "drill.succeeded")]
    DrillSucceeded,
    /// A restore drill failed.
    #[serde(rename = "drill.failed")]
    DrillFailed,
    /// An audit record (sent only to notifiers whose `on` lists `audit`).
    #[serde(rename = "audit")]
    Audit,
}

impl EventKind {
    /// Every kind, each raised by some command (so each is a valid `on` entry).
    pub const ALL: &'static [EventKind] = &[
        Self::BackupSucceeded,
        Self::BackupFailed,
        Self::VerifySucceeded,
        Self::VerifyFailed,
        Self::PruneCompleted,
        Self::BackupStale,
        Self::RestoreStarted,
        Self::RestoreCompleted,
        Self::RestoreFailed,
        Self::RestoreRefused,
        Self::WalStale,
        Self::WalGap,
        Self::StatusChecked,
        Self::DrillSucceeded,
        Self::DrillFailed,
        Self::Audit,
    ];

    /// The dotted name, e.g. `backup.failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BackupSucceeded => "backup.succeeded",
            Self::BackupFailed => "backup.failed",
            Self::VerifySucceeded => "verify.succeeded",
            Self::VerifyFailed => "verify.failed",
            Self::PruneCompleted => "prune.completed",
            Self::BackupStale => "backup.stale",
            Self::RestoreStarted => "restore.started",
            Self::RestoreCompleted => "restore.completed",
            Self::RestoreFailed => "restore.failed",
            Self::RestoreRefused => "restore.refused",
            Self::WalStale => "wal.stale",
            Self::WalGap => "wal.gap",
            Self::StatusChecked => "status.checked",
            Self::DrillSucceeded => "drill.succeeded",
            Self::DrillFailed => "drill.failed",
            Self::Audit => "audit",
        }
    }

    /// Whether this event reports a failure (sent by default).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Self::BackupFailed
                | Self::VerifyFailed
                | Self::BackupStale
                | Self::RestoreFailed
                | Self::WalStale
                | Self::WalGap
                | Self::DrillFailed
        )
    }

    /// Parse a dotted name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event, as sent to every notifier. Contains no secrets by construction:
/// error texts come from [`crate::Error`] messages, which never hold secrets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Shape version ([`EVENT_VERSION`]).
    pub version: u32,
    /// What happened.
    pub kind: EventKind,
    /// When.
    pub timestamp: DateTime<Utc>,
    /// Host that ran the tool.
    pub host: String,
    /// Database concerned.
    pub database: String,
    /// Backup name, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// Storage targets (redacted URLs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// Stored size in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Duration in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// Error message for failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Free-form details (check results, deleted backups, ...).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl Event {
    /// A new event of `kind` for `database`, stamped now.
    pub fn new(kind: EventKind, database: impl Into<String>) -> Self {
        Self {
            version: EVENT_VERSION,
            kind,
            timestamp: Utc::now(),
            host: crate::util::hostname(),
            database: database.into(),
            backup: None,
            targets: Vec::new(),
            size_bytes: None,
            duration_seconds: None,
            error: None,
            details: serde_json::Value::Null,
        }
    }

    /// One-line human summary, e.g. `FAILED backup of kaizen_studio`.
    pub fn summary(&self) -> String {
        let (state, what) = match self.kind {
            EventKind::BackupSucceeded => ("SUCCEEDED", "backup"),
            EventKind::BackupFailed => ("FAILED", "backup"),
            EventKind::VerifySucceeded => ("SUCCEEDED", "verify"),
            EventKind::VerifyFailed => ("FAILED", "verify"),
            EventKind::PruneCompleted => ("COMPLETED", "prune"),
            EventKind::BackupStale => ("STALE", "backup"),
            EventKind::RestoreStarted => ("STARTED", "restore"),
            EventKind::RestoreCompleted => ("COMPLETED", "restore"),
            EventKind::RestoreFailed => ("FAILED", "restore"),
            EventKind::RestoreRefused => ("REFUSED", "restore"),
            EventKind::WalStale => ("STALE", "WAL archive"),
            EventKind::WalGap => ("GAP in", "WAL archive"),
            EventKind::StatusChecked => ("CHECKED", "status"),
            EventKind::DrillSucceeded => ("SUCCEEDED", "restore drill"),
            EventKind::DrillFailed => ("FAILED", "restore drill"),
            EventKind::Audit => ("AUDIT", "event"),
        };
        format!("{state} {what} of {}", self.database)
    }
}

/// Something that tells people or systems about events (Slack, email, webhook, ...).
#[async_trait]
pub trait Notifier: Send + Sync + std::fmt::Debug {
    /// Name for logs, e.g. `slack` or `webhook:pagerduty`.
    fn name(&self) -> String;
    /// Whether this notifier wants events of `kind` (its `on = [...]` filter).
    fn wants(&self, kind: EventKind) -> bool;
    /// Deliver one event (with the notifier's own timeouts and retries).
    async fn notify(&self, event: &Event) -> Result<()>;
    /// Cheap configuration/health check for `config check`.
    async fn check(&self) -> Result<()> {
        Ok(())
    }
}

/// Send `event` to every notifier that wants it. Failures are logged and returned
/// as messages; they never change the outcome of the operation that raised the event.
pub async fn notify_all(notifiers: &[Box<dyn Notifier>], event: &Event) -> Vec<String> {
    let sends = notifiers
        .iter()
        .filter(|n| n.wants(event.kind))
        .map(|n| async move {
            match n.notify(event).await {
                Ok(()) => {
                    tracing::debug!(notifier = %n.name(), event = %event.kind, "notification sent");
                    None
                }
                Err(e) => {
                    tracing::warn!("Notification via {} failed: {e}", n.name());
                    Some(format!("{}: {e}", n.name()))
                }
            }
        });
    futures::future::join_all(sends)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_by_its_name_and_serializes_to_it() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(*k));
            assert_eq!(
                serde_json::to_value(k).ok(),
                Some(serde_json::Value::from(k.as_str()))
            );
        }
        assert_eq!(EventKind::parse("restore.finished"), None);
    }
}
