//! What `status` tells about the server's WAL archiver (`pg_stat_archiver`): failed
//! `archive_command` runs and whether archiving is failing now. Read from the server, not
//! counted by `wal-push`: PostgreSQL counts every failure, including runs where `wal-push`
//! never started (a missing binary, an unreadable configuration). Read only when
//! point-in-time recovery is in use (a target holds WAL or a physical backup), so `status`
//! of logical backups still needs no database.

use std::time::Duration;

use backup_core::stats::{self, ArchiverStats};
use backup_core::{Error, PgConfig, Result};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// The server's archiver statistics; at most twice the connect timeout.
pub async fn read(pg: &PgConfig) -> Result<ArchiverStats> {
    let limit = Duration::from_secs(pg.connect_timeout.max(1) * 2);
    let work = async {
        let client = pg.connect().await?;
        stats::archiver_stats(&client).await
    };
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| Error::Database {
            context: format!("reading pg_stat_archiver on {}", pg.target()),
            message: format!("no answer within {} s", limit.as_secs()),
        })?
}

/// The `archiver` value of a status row (the server's, the same in every row): the
/// statistics and `failing`, or `{error}` when the server cannot be asked.
pub fn json(a: &Result<ArchiverStats>) -> Value {
    match a {
        Ok(s) => json!({
            "enabled": s.enabled,
            "failing": s.failing(),
            "failed_count": s.failed_count,
            "last_failed_wal": s.last_failed_wal,
            "last_failed_time": s.last_failed_time,
            "archived_count": s.archived_count,
            "last_archived_wal": s.last_archived_wal,
            "last_archived_time": s.last_archived_time,
            "stats_reset": s.stats_reset,
        }),
        Err(e) => json!({ "error": e.to_string() }),
    }
}

fn fmt(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "an unknown time".into(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

/// The text line about the archiver of `server` (`DB@HOST:PORT`).
pub fn log_text(server: &str, a: &Result<ArchiverStats>) {
    let s = match a {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot read the server's WAL archiver statistics: {e}");
            return;
        }
    };
    let since = match s.stats_reset {
        Some(t) => format!("since {}", fmt(Some(t))),
        None => "in all".into(),
    };
    let wal = s.last_failed_wal.as_deref().unwrap_or("a WAL file");
    if !s.enabled {
        tracing::warn!("{server}: archive_mode is off: no WAL is archived");
    } else if s.failing() {
        tracing::warn!(
            "{server}: WAL archiving is failing: {wal} failed at {} ({} failed attempt(s) {since}); the server log says why",
            fmt(s.last_failed_time),
            s.failed_count
        );
    } else if s.failed_count > 0 {
        tracing::info!(
            "{server}: WAL archiving works; {} failed attempt(s) {since}, the last ({wal}) at {}",
            s.failed_count,
            fmt(s.last_failed_time)
        );
    } else {
        tracing::info!("{server}: WAL archiving works, no failed attempt {since}");
    }
}
