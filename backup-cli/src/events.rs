//! Events raised by commands: notifications, metrics and audit records, so every
//! command reports the same way. A delivery failure is logged and remembered for the
//! exit message; it never changes the outcome of the operation.
//!
//! Each notifier bounds its own delivery (`timeout_secs` per attempt, `deadline_secs` in
//! all); after a signal every delivery gets at most [`SIGNAL_NOTIFY`], so a notifier that
//! stopped answering cannot hold the exit.

use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use backup_core::notify::notify_all;
use backup_core::{Event, EventKind, Notifier};

use backup_core::backup::{BackupOutcome, Target};

/// Most a delivery may take once a signal arrived.
pub const SIGNAL_NOTIFY: Duration = Duration::from_millis(1500);

/// Where events go.
#[derive(Debug, Default)]
pub struct Reporter {
    notifiers: Vec<Box<dyn Notifier>>,
    /// Delivery failures, shown at the end of the run.
    pub failures: Mutex<Vec<String>>,
    /// Cancelled by SIGINT/SIGTERM.
    cancel: CancellationToken,
}

impl Reporter {
    /// A reporter sending to these notifiers.
    pub fn new(notifiers: Vec<Box<dyn Notifier>>) -> Self {
        Self {
            notifiers,
            failures: Mutex::new(Vec::new()),
            cancel: CancellationToken::new(),
        }
    }

    /// Shorten deliveries once `cancel` (the signal token) is cancelled.
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// Send one event everywhere it is wanted.
    pub async fn send(&self, event: &Event) {
        let failed = if self.cancel.is_cancelled() {
            match tokio::time::timeout(SIGNAL_NOTIFY, notify_all(&self.notifiers, event)).await {
                Ok(f) => f,
                Err(_) => vec![format!(
                    "{} not delivered: no answer within {:.1}s after the signal",
                    event.kind,
                    SIGNAL_NOTIFY.as_secs_f64()
                )],
            }
        } else {
            notify_all(&self.notifiers, event).await
        };
        if !failed.is_empty()
            && let Ok(mut f) = self.failures.lock()
        {
            f.extend(failed);
        }
    }

    /// Run every sink's cheap health check; returns the failures.
    pub async fn check_all(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.notifiers {
            match n.check().await {
                Ok(()) => backup_core::success!("Notifier {} is reachable", n.name()),
                Err(e) => out.push(e.to_string()),
            }
        }
        out
    }

    /// Delivery failures so far.
    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().map(|f| f.clone()).unwrap_or_default()
    }
}

/// What a restore event is about: the backup, where it goes, and when it began.
#[derive(Debug)]
pub struct RestoreSubject {
    /// Backup name (or the spec as given, before it was found).
    pub backup: String,
    /// Database being restored into.
    pub target_db: String,
    /// Storage the backup is read from (redacted URL), once known.
    pub storage: Option<String>,
    /// When the restore began.
    pub started: std::time::Instant,
}

impl RestoreSubject {
    fn event(&self, kind: EventKind) -> Event {
        let mut ev = Event::new(kind, &self.target_db);
        ev.backup = Some(self.backup.clone());
        ev.targets = self.storage.iter().cloned().collect();
        ev
    }
}

/// The events the commands raise.
impl Reporter {
    /// The newest good backup of `database` is older than allowed.
    pub async fn stale(&self, database: &str, message: &str) {
        let mut ev = Event::new(EventKind::BackupStale, database);
        ev.error = Some(message.to_string());
        self.send(&ev).await;
    }

    /// The newest archived WAL file is older than allowed, or there is none.
    pub async fn wal_stale(&self, database: &str, message: &str) {
        let mut ev = Event::new(EventKind::WalStale, database);
        ev.error = Some(message.to_string());
        self.send(&ev).await;
    }

    /// `wal-receive` found WAL the archive will never hold.
    pub async fn wal_gap(
        &self,
        database: &str,
        slot: &str,
        targets: Vec<String>,
        gap: &backup_core::walreceive::Gap,
    ) {
        let mut ev = Event::new(EventKind::WalGap, database);
        ev.targets = targets;
        ev.error = Some(gap.to_string());
        ev.details = serde_json::json!({
            "slot": slot,
            "first_missing": gap.first_missing,
            "last_missing": gap.last_missing,
            "reason": gap.reason,
        });
        self.send(&ev).await;
    }

    /// `status` ran: each target's last archived WAL, recovery window and the server's
    /// archiver statistics (`targets`, the rows the metrics sink records).
    pub async fn status_checked(&self, database: &str, targets: Vec<serde_json::Value>) {
        let mut ev = Event::new(EventKind::StatusChecked, database);
        ev.details = serde_json::json!({ "targets": targets });
        self.send(&ev).await;
    }

    /// A backup committed.
    pub async fn backup_succeeded(&self, outcome: &BackupOutcome) {
        let m = &outcome.manifest;
        let mut ev = Event::new(EventKind::BackupSucceeded, &m.database);
        ev.backup = Some(m.name.clone());
        ev.targets = outcome.committed.clone();
        ev.size_bytes = Some(m.size_bytes);
        ev.duration_seconds = Some(outcome.duration.as_secs_f64());
        if !outcome.failed_optional.is_empty() {
            ev.details = serde_json::json!({
                "failed_optional_targets": outcome
                    .failed_optional
                    .iter()
                    .map(|(t, e)| serde_json::json!({ "target": t, "error": e }))
                    .collect::<Vec<_>>()
            });
        }
        self.send(&ev).await;
    }

    /// A backup of `database` failed: nothing was committed.
    pub async fn backup_failed(
        &self,
        database: &str,
        name: &str,
        targets: &[Target],
        error: &backup_core::Error,
    ) {
        let mut ev = Event::new(EventKind::BackupFailed, database);
        ev.backup = (!name.is_empty()).then(|| name.to_string());
        ev.targets = targets.iter().map(|t| t.storage.url()).collect();
        ev.error = Some(error.to_string());
        self.send(&ev).await;
    }

    /// A restore began.
    pub async fn restore_started(&self, s: &RestoreSubject) {
        self.send(&s.event(EventKind::RestoreStarted)).await;
    }

    /// A restore ended: completed, refused (nothing changed) or failed.
    pub async fn restore_finished(
        &self,
        s: &RestoreSubject,
        result: &backup_core::Result<backup_core::restore::RestoreOutcome>,
    ) {
        let kind = match result {
            Ok(_) => EventKind::RestoreCompleted,
            Err(backup_core::Error::Refused(_)) => EventKind::RestoreRefused,
            Err(_) => EventKind::RestoreFailed,
        };
        let mut ev = s.event(kind);
        ev.duration_seconds = Some(s.started.elapsed().as_secs_f64());
        match result {
            Ok(outcome) => {
                ev.size_bytes = Some(outcome.size_bytes);
                ev.details = serde_json::json!({
                    "replaced": outcome.replaced,
                    "checksum_verified": outcome.checksum_verified,
                });
            }
            Err(e) => ev.error = Some(e.to_string()),
        }
        self.send(&ev).await;
    }
}
