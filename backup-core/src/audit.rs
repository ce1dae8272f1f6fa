//! The audit trail: who did what to which database and storage, and how it ended.
//! Each event is logged (target `kaizen_backup::audit`) and, when configured, appended
//! as one JSON line to an audit file created with mode 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `[audit]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Append events to this file (JSON lines).
    pub file: Option<PathBuf>,
}

/// One audit event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When.
    pub time: DateTime<Utc>,
    /// OS user.
    pub user: String,
    /// Host.
    pub host: String,
    /// `backup`, `restore`, `verify`, `prune`, `pin`, `unpin`, `config`, ...
    pub action: String,
    /// Database concerned.
    pub database: String,
    /// Storage targets (redacted URLs).
    pub storage: Vec<String>,
    /// `started`, `succeeded`, `failed`, `refused`.
    pub outcome: String,
    /// Backup name or other detail; error text on failure (never secrets).
    pub detail: String,
}

impl AuditEvent {
    /// An event stamped now, by this user on this host.
    pub fn new(
        action: &str,
        database: &str,
        storage: Vec<String>,
        outcome: &str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            time: Utc::now(),
            user: crate::util::os_user(),
            host: crate::util::hostname(),
            action: action.into(),
            database: database.into(),
            storage,
            outcome: outcome.into(),
            detail: detail.into(),
        }
    }
}

/// Record an event: a structured log line, and a JSON line in the audit file.
pub fn record(cfg: &AuditConfig, ev: &AuditEvent) -> Result<()> {
    tracing::info!(
        target: "kaizen_backup::audit",
        action = %ev.action,
        outcome = %ev.outcome,
        user = %ev.user,
        host = %ev.host,
        database = %ev.database,
        "{} {} of {} by {}@{}{}",
        ev.action,
        ev.outcome,
        ev.database,
        ev.user,
        ev.host,
        if ev.detail.is_empty() { String::new() } else { format!(": {}", ev.detail) }
    );
    let Some(path) = &cfg.file else { return Ok(()) };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let mut line = serde_json::to_vec(ev).map_err(|e| Error::other(format!("audit event: {e}")))?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("opening audit file {}", path.display()), e))?;
    f.write_all(&line)
        .map_err(|e| Error::io(format!("writing audit file {}", path.display()), e))
}
