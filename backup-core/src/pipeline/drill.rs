//! Restore drills: prove on a schedule that the newest backups restore, and measure how
//! long it takes (RTO) and how much would be lost (RPO).
//!
//! ```text
//! physical backups?  ── yes ─▶ target: --to-time, or a random point in the recoverable window
//!        │                       ▼
//!        │              restore into a scratch directory (the real restore_command: wal-fetch)
//!        │                       ▼
//!        │              temporary server: recovers, promotes  ◀── RTO stops here
//!        │                       ▼
//!        │              reached point ≤ target; marker query ≤ target; every table read
//!        no
//!        ▼
//!   verify latest (a test restore of the newest logical backup)
//! ```
//!
//! The outcome is stored beside the backups as `DATABASE.drill.json` ([`DrillRecord`]),
//! which `status` shows and the metrics publish.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::error::{Error, Result};
use crate::pg::server::{self, DatabaseRead, TempServer};
use crate::pitr::{self, PitrOptions, Window};
use crate::recovery::{RecoveryTarget, format_time};
use crate::storage::Storage;

/// Suffix of drill records: `DATABASE.drill.json`.
pub const DRILL_SUFFIX: &str = ".drill.json";

/// How long a drill's server may take to recover.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(60 * 60);

/// The stored outcome of a drill.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrillRecord {
    /// Record format version.
    pub format_version: u32,
    /// The configured database.
    pub database: String,
    /// `physical` (point-in-time restore) or `logical` (test restore of the newest dump).
    pub kind: String,
    /// The backup restored.
    pub backup: Option<String>,
    /// Where recovery was asked to stop (physical).
    pub target: Option<String>,
    /// When the drill started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
    /// Whether every step passed.
    pub passed: bool,
    /// Seconds from the start to a usable server (physical) or to a verified test
    /// restore (logical).
    pub rto_seconds: Option<f64>,
    /// How much would be lost now: seconds from the last archived transaction (physical)
    /// or the newest backup (logical) to the drill's start.
    pub rpo_seconds: Option<f64>,
    /// The last transaction recovery replayed (physical).
    pub reached: Option<DateTime<Utc>>,
    /// What `drill.marker_query` returned in the restored copy.
    pub marker: Option<DateTime<Utc>>,
    /// Tables read per database.
    pub databases: Vec<DatabaseRead>,
    /// Why it failed.
    pub error: Option<String>,
    /// Version of kaizen-backup.
    pub tool_version: String,
}

impl DrillRecord {
    /// The storage key of `database`'s drill record.
    pub fn key_for(database: &str) -> String {
        format!("{database}{DRILL_SUFFIX}")
    }

    /// Read `database`'s last drill record from `storage`, if any.
    pub async fn load(storage: &dyn Storage, database: &str) -> Result<Option<Self>> {
        let key = Self::key_for(database);
        match crate::storage::get_bytes(storage, &key).await {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Corrupt(format!("{key}: {e}"))),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Store it beside the backups, replacing the previous one.
    pub async fn store(&self, storage: &dyn Storage) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::other(format!("cannot serialize the drill record: {e}")))?;
        storage
            .put_replace(&Self::key_for(&self.database), json.into())
            .await
    }
}

/// How to run a physical drill.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// The restore; `pgdata` is ignored (a scratch directory is used) and `target`
    /// replaced by a random point when it is [`RecoveryTarget::Latest`].
    pub pitr: PitrOptions,
    /// Where the scratch directory goes.
    pub temp_dir: Option<PathBuf>,
    /// Roles to connect as first (the backup role); a superuser is found from there.
    pub users: Vec<String>,
    /// The database and query of `drill.marker_query`.
    pub marker: Option<(String, String)>,
    /// Stops the drill (the server is stopped and the directory removed).
    pub cancel: CancellationToken,
}

/// What a physical drill found.
#[derive(Debug, Clone)]
pub struct DrillOutcome {
    /// The base backup used.
    pub backup: String,
    /// The target.
    pub target: RecoveryTarget,
    /// The window at the start.
    pub window: Window,
    /// Start to usable server.
    pub rto: Duration,
    /// The last replayed transaction.
    pub reached: Option<DateTime<Utc>>,
    /// The marker query's result.
    pub marker: Option<DateTime<Utc>>,
    /// Tables read.
    pub databases: Vec<DatabaseRead>,
}

/// A random time in the window (its end when the window is a single point).
pub fn random_time(window: &Window) -> RecoveryTarget {
    use rand::Rng;
    match window.to_time {
        Some(to) if to > window.from_time => {
            let span = (to - window.from_time)
                .num_microseconds()
                .unwrap_or(0)
                .max(1);
            let offset = rand::rng().random_range(0..=span);
            RecoveryTarget::Time(window.from_time + chrono::Duration::microseconds(offset))
        }
        Some(to) => RecoveryTarget::Time(to),
        None => RecoveryTarget::BackupEnd,
    }
}

/// Restore to the target in a scratch directory, start it, check it, remove it.
pub async fn run_physical(
    backups: &Arc<dyn Storage>,
    wal: &Arc<dyn Storage>,
    mut opts: DrillOptions,
) -> Result<DrillOutcome> {
    let started = Instant::now();
    let base = opts.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)
        .map_err(|e| Error::io(format!("cannot create {}", base.display()), e))?;
    let scratch = tempfile::Builder::new()
        .prefix(&crate::util::owned_prefix(crate::leftovers::RESTORE_PREFIX))
        .tempdir_in(&base)
        .map_err(|e| {
            Error::io(
                format!("cannot create a scratch directory in {}", base.display()),
                e,
            )
        })?;
    set_private(scratch.path())?;
    opts.pitr.pgdata = scratch.path().join("pgdata");
    if opts.pitr.target == RecoveryTarget::Latest {
        let (_, window) = pitr::plan(backups.as_ref(), wal, &opts.pitr).await?;
        opts.pitr.target = random_time(&window);
    }
    info!("Drill: restoring to {}", opts.pitr.target);
    let restored = pitr::restore(backups, wal, &opts.pitr).await?;
    let spec = server::prepare(
        scratch.path(),
        &opts.pitr.pgdata,
        opts.pitr.bin_dir.as_deref(),
    )
    .await?;
    let mut srv = TempServer::start(&spec)?;
    let checked = check(&mut srv, &opts, started).await;
    srv.stop().await;
    let (rto, reached, marker, databases) = checked?;
    Ok(DrillOutcome {
        backup: restored.backup,
        target: opts.pitr.target,
        window: restored.window,
        rto,
        reached,
        marker,
        databases,
    })
}

type Checked = (
    Duration,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Vec<DatabaseRead>,
);

async fn check(srv: &mut TempServer, opts: &DrillOptions, started: Instant) -> Result<Checked> {
    let users: Vec<&str> = opts.users.iter().map(String::as_str).collect();
    let user = srv
        .wait_ready(&users, RECOVERY_DEADLINE, &opts.cancel)
        .await?;
    let rto = started.elapsed();
    info!(
        "Drill: the restored server is usable after {:.1} s",
        rto.as_secs_f64()
    );
    crate::util::pause_point("drill.ready").await;
    let client = srv.connect(&user, "template1").await?;
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT rolname::text FROM pg_roles WHERE oid = 10), {}",
                utc_text("pg_last_xact_replay_timestamp()")
            ),
            &[],
        )
        .await
        .map_err(|e| Error::other(format!("cannot read the restored server: {e}")))?;
    let superuser: String = row.get(0);
    let reached = time_of(row.get(1))?;
    let target_time = match &opts.pitr.target {
        RecoveryTarget::Time(t) => Some(*t),
        _ => None,
    };
    if let (Some(t), Some(r)) = (target_time, reached)
        && r > t
    {
        return Err(Error::Corrupt(format!(
            "recovery replayed a transaction of {} past the target {}",
            format_time(&r),
            format_time(&t)
        )));
    }
    let marker = match &opts.marker {
        Some((db, sql)) => {
            let c = srv.connect(&superuser, db).await?;
            // One row, one timestamptz column: read it as UTC text.
            let wrapped = format!(
                "SELECT {} FROM ({sql}) AS marker(m)",
                utc_text("marker.m::timestamptz")
            );
            let row = c.query_one(wrapped.as_str(), &[]).await.map_err(|e| Error::Config {
                key: "drill.marker_query".into(),
                message: format!(
                    "must return one row with one timestamptz; in the restored copy of {db:?}: {e}"
                ),
            })?;
            let m = time_of(row.get(0))?;
            if let (Some(t), Some(m)) = (target_time, m)
                && m > t
            {
                return Err(Error::Corrupt(format!(
                    "the marker query found {} in the restored copy, after the target {}",
                    format_time(&m),
                    format_time(&t)
                )));
            }
            m
        }
        None => None,
    };
    let databases = srv.read_every_table(&superuser, &opts.cancel).await?;
    Ok((rto, reached, marker, databases))
}

/// SQL for `expr` (a timestamptz) as UTC text with microseconds.
fn utc_text(expr: &str) -> String {
    format!("to_char(({expr}) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")
}

fn time_of(text: Option<String>) -> Result<Option<DateTime<Utc>>> {
    text.map(|t| crate::recovery::parse_time(&t)).transpose()
}

fn set_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("cannot set the mode of {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::wal::Lsn;

    fn window(from: &str, to: Option<&str>) -> Window {
        Window {
            from_time: crate::recovery::parse_time(from).unwrap(),
            from_lsn: Lsn(0),
            to_time: to.map(|t| crate::recovery::parse_time(t).unwrap()),
            to_lsn: Lsn(0),
            gap: None,
            timeline: 1,
            partial: false,
        }
    }

    #[test]
    fn random_targets_stay_inside_the_window() {
        let w = window("2026-01-01 00:00:00", Some("2026-01-01 00:00:10"));
        for _ in 0..200 {
            let RecoveryTarget::Time(t) = random_time(&w) else {
                panic!("a time target")
            };
            assert!(t >= w.from_time && Some(t) <= w.to_time, "{t}");
        }
        let point = window("2026-01-01 00:00:00", Some("2026-01-01 00:00:00"));
        assert_eq!(random_time(&point), RecoveryTarget::Time(point.from_time));
        assert_eq!(
            random_time(&window("2026-01-01 00:00:00", None)),
            RecoveryTarget::BackupEnd
        );
    }
}
