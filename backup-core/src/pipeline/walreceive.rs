//! WAL streaming (`kaizen-backup wal-receive`): a long-running receiver that fills the
//! same archive as `wal-push`, through a physical replication slot.
//!
//! ```text
//! PostgreSQL ─slot─▶ pg_receivewal --slot S --synchronous -D SPOOL/stream
//!                      │ complete segments, .history          │ NNN.partial (being written)
//!                      ▼ every second                          ▼ every wal.flush_interval
//!          gap check ─▶ walarchive::push ─▶ remove        copy ─▶ walarchive::push_partial
//!                       (drop the segment's partial)              (replaces the older version)
//! ```
//!
//! - pg_receivewal resumes from the spool's newest file, or (spool empty) from the slot,
//!   which the server keeps WAL for; a completed segment stays in the spool until it is
//!   stored, so a killed receiver loses nothing while its spool survives.
//! - The archive's end (its newest segment, or partial) says which segment must come next;
//!   a later one means WAL is missing (a lost slot, a lost spool): a [`Gap`] is reported
//!   and the recovery window ends there (`window::coverage`).
//! - A partial version never replaces one holding more WAL (a receiver that restarts a
//!   segment from its start catches up first).
//! - Cancelled (SIGTERM), pg_receivewal is stopped, everything received is stored, and
//!   `run` returns `Ok`.

mod receiver;
mod spool;
mod status;

pub use receiver::run;
pub use status::{ReceiverStatus, SharedStatus};

/// The `application_name` of the receiver's replication connection, as the server shows it
/// in `pg_stat_replication` (a physical backup checks it to know the WAL is streamed).
pub const APPLICATION_NAME: &str = "kaizen-backup-wal-receive";

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::process::Child;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::error::{Error, Result};
use crate::pg::{PgConfig, Tool, db_error, find_tool};
use crate::storage::Storage;
use crate::wal::{self, Lsn, WalFile, segment_name};
use crate::walarchive::{self, PushOptions};
use spool::{Spool, segment_of, written_len};

/// The `[wal]` settings of the receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReceiveSettings {
    /// The physical replication slot to stream through (`--slot` overrides it).
    pub slot: String,
    /// How often the segment being received is stored as a partial segment (the most
    /// committed work a lost server can take with it), e.g. `10s`, `500ms`.
    pub flush_interval: String,
    /// The receiver's private spool (default: `kaizen-backup-wal-SLOT` in the system's
    /// temporary directory). Put it on a persistent volume: WAL received but not yet
    /// stored survives a restart only there.
    pub spool_dir: Option<PathBuf>,
}

impl Default for ReceiveSettings {
    fn default() -> Self {
        Self {
            slot: "kaizen_backup".into(),
            flush_interval: "10s".into(),
            spool_dir: None,
        }
    }
}

impl ReceiveSettings {
    /// The flush interval (100 ms to 1 h).
    pub fn flush_interval(&self) -> Result<Duration> {
        let bad = |why: String| Error::Config {
            key: "wal.flush_interval".into(),
            message: why,
        };
        let d = humantime::parse_duration(self.flush_interval.trim()).map_err(|e| {
            bad(format!(
                "{:?} is not a duration ({e}); e.g. 10s, 500ms",
                self.flush_interval
            ))
        })?;
        if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
            return Err(bad(format!(
                "{:?} is outside 100ms to 1h",
                self.flush_interval
            )));
        }
        Ok(d)
    }

    /// The spool directory.
    pub fn spool_dir(&self) -> PathBuf {
        self.spool_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("kaizen-backup-wal-{}", self.slot))
        })
    }

    /// Check the settings.
    pub fn validate(&self) -> Result<()> {
        check_slot_name(&self.slot).map_err(|message| Error::Config {
            key: "wal.slot".into(),
            message,
        })?;
        self.flush_interval().map(|_| ())
    }
}

/// A replication slot name as PostgreSQL accepts it: lower-case letters, digits and `_`,
/// at most 63 characters.
pub fn check_slot_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty()
        || name.len() > crate::pg::MAX_IDENT_BYTES
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "{name:?} is not a replication slot name (1 to 63 lower-case letters, digits and _)"
        ));
    }
    Ok(())
}

/// What one receiver run does.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// The `[wal]` settings (with `--slot` applied).
    pub settings: ReceiveSettings,
    /// Create the slot when it is missing (and again when the server invalidated it).
    pub create_slot: bool,
    /// How files are stored (as `wal-push` stores them).
    pub push: PushOptions,
}

/// Where received WAL goes: required stores (a failure is retried, the file stays in the
/// spool) and optional ones (a failure is a warning).
#[derive(Debug, Clone, Default)]
pub struct Stores {
    /// Required WAL archives.
    pub required: Vec<Arc<dyn Storage>>,
    /// Optional WAL archives.
    pub optional: Vec<Arc<dyn Storage>>,
}

/// WAL the archive will never hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    /// The first missing segment (None when unknown: the archive was empty).
    pub first_missing: Option<String>,
    /// The last missing segment (None when unknown).
    pub last_missing: Option<String>,
    /// Why.
    pub reason: String,
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.first_missing, &self.last_missing) {
            (Some(a), Some(b)) if a == b => write!(f, "WAL segment {a} is missing")?,
            (Some(a), Some(b)) => write!(f, "WAL segments {a} to {b} are missing")?,
            (Some(a), None) => write!(f, "WAL from segment {a} on is missing")?,
            _ => write!(f, "WAL is missing")?,
        }
        write!(
            f,
            " from the archive ({}); point-in-time recovery cannot cross it: take a new base backup (backup --physical)",
            self.reason
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn settings_are_checked() {
        let s = ReceiveSettings::default();
        assert!(s.validate().is_ok());
        assert_eq!(s.flush_interval().unwrap(), Duration::from_secs(10));
        for bad in ["", "Slot", "a-b", &"x".repeat(64)] {
            assert!(check_slot_name(bad).is_err(), "{bad:?}");
        }
        for (bad, key) in [
            ("soon", "wal.flush_interval"),
            ("10ms", "wal.flush_interval"),
        ] {
            let s = ReceiveSettings {
                flush_interval: bad.into(),
                ..Default::default()
            };
            match s.validate() {
                Err(Error::Config { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn health_follows_streaming_and_storing() {
        let now = Utc::now();
        let allowed = Duration::from_secs(30);
        let mut s = ReceiverStatus::default();
        assert!(s.health(now, allowed).is_err(), "starting");
        s.synced_at = Some(now);
        assert!(s.health(now, allowed).is_ok());
        s.down_since = Some(now - chrono::Duration::seconds(10));
        assert!(s.health(now, allowed).is_ok(), "a short restart");
        s.down_since = Some(now - chrono::Duration::seconds(60));
        s.last_error = Some("connection refused".into());
        let why = s.health(now, allowed).unwrap_err();
        assert!(why.contains("connection refused"), "{why}");
        s.down_since = None;
        s.synced_at = Some(now - chrono::Duration::seconds(60));
        assert!(s.health(now, allowed).is_err());
        s.server_lsn = Some(Lsn(0x300_0100));
        s.archived_lsn = Some(Lsn(0x300_0000));
        assert_eq!(s.lag_bytes(), Some(0x100));
    }

    #[test]
    fn gaps_say_what_is_missing() {
        let g = Gap {
            first_missing: Some("000000010000000000000003".into()),
            last_missing: Some("000000010000000000000005".into()),
            reason: "a lost slot".into(),
        };
        let text = g.to_string();
        assert!(
            text.contains("000000010000000000000003 to 000000010000000000000005"),
            "{text}"
        );
    }
}
