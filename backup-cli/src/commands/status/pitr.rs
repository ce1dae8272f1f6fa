//! What `status` tells about point-in-time recovery, per target: the last archived WAL
//! file (from the target's `wal/` location) and the recovery window, from the end of the
//! oldest physical backup to the last archived WAL file (both read by
//! [`backup_core::overview`]).

use backup_core::Result;
use backup_core::overview::{LastWal, RecoveryWindow};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

fn age_of(t: DateTime<Utc>, now: DateTime<Utc>) -> std::time::Duration {
    std::time::Duration::from_secs((now - t).num_seconds().max(0) as u64)
}

/// The `wal` value of a status row: `{name, time, age_seconds}`, null when nothing is
/// archived, `{error}` when the archive cannot be read.
pub fn wal_json(wal: &Result<Option<LastWal>>, now: DateTime<Utc>) -> Value {
    match wal {
        Ok(Some(w)) => json!({
            "name": w.name,
            "time": w.time,
            "age_seconds": w.time.map(|t| (now - t).num_seconds()),
        }),
        Ok(None) => Value::Null,
        Err(e) => json!({ "error": e.to_string() }),
    }
}

/// The `recovery_window` value: `{from, to, promised_seconds, starts_after_gap,
/// ends_before}`, null without a physical backup (`to` is null while nothing with a time
/// is archived; `promised_seconds`, how long the retention rules promise it is, null when
/// they promise no time; `ends_before`, the first missing segment when a gap cuts it).
pub fn window_json(window: Option<&RecoveryWindow>, promised: Option<chrono::Duration>) -> Value {
    match window {
        Some(w) => json!({
            "from": w.from,
            "to": w.to,
            "promised_seconds": promised.map(|p| p.num_seconds()),
            "starts_after_gap": w.starts_after_gap,
            "ends_before": w.ends_before,
        }),
        None => Value::Null,
    }
}

/// Why the archive of `url` is staler than `max` (None when it is fresh enough).
pub fn stale_reason(
    url: &str,
    wal: &Result<Option<LastWal>>,
    max: chrono::Duration,
    now: DateTime<Utc>,
) -> Option<String> {
    match wal {
        Err(e) => Some(format!("{url}: cannot read the WAL archive: {e}")),
        Ok(None) => Some(format!("{url}: no WAL file archived")),
        Ok(Some(LastWal { name, time: None })) => Some(format!(
            "{url}: last archived WAL file {name} has no time (the storage reports none)"
        )),
        Ok(Some(LastWal {
            name,
            time: Some(t),
        })) => (now - *t > max).then(|| {
            format!(
                "{url}: last archived WAL file {name} is {} old",
                humantime::format_duration(age_of(*t, now))
            )
        }),
    }
}

/// The text lines: the WAL archive and the window (and whether it is shorter than the
/// retention rules promise), when there is WAL or a physical backup.
pub fn log_text(
    url: &str,
    wal: &Result<Option<LastWal>>,
    window: Option<&RecoveryWindow>,
    promised: Option<chrono::Duration>,
    now: DateTime<Utc>,
) {
    let last = wal.as_ref().ok().and_then(|w| w.as_ref());
    if last.is_none() && window.is_none() && wal.is_ok() {
        return;
    }
    match wal {
        Ok(Some(LastWal {
            name,
            time: Some(t),
        })) => tracing::info!(
            "{url}: last archived WAL {name} at {} ({} old)",
            t.format("%Y-%m-%d %H:%M:%S UTC"),
            humantime::format_duration(age_of(*t, now))
        ),
        Ok(Some(LastWal { name, time: None })) => {
            tracing::info!("{url}: last archived WAL {name} (the storage reports no time)")
        }
        Ok(None) => tracing::warn!("{url}: no WAL archived"),
        Err(e) => tracing::warn!("{url}: cannot read the WAL archive: {e}"),
    }
    let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    if let Some(w) = window {
        if let Some(seg) = &w.ends_before {
            tracing::warn!(
                "{url}: WAL segment {seg} is missing from the archive: the recovery window ends before it, and the WAL archived after it cannot be used until the next base backup (kaizen-backup backup --physical)"
            );
        }
        if w.starts_after_gap {
            tracing::warn!(
                "{url}: a gap in the archived WAL: the recovery window starts at the first base backup after it; older points reach only up to the gap"
            );
        }
    }
    match (window.map(|w| w.from), window.and_then(|w| w.to)) {
        (Some(from), Some(to)) => {
            tracing::info!("{url}: recovery window {} to {}", fmt(from), fmt(to));
            if let Some(p) = promised.filter(|p| to - from < *p) {
                tracing::warn!(
                    "{url}: the recovery window ({}) is shorter than the {} the retention rules promise",
                    humantime::format_duration(age_of(from, to)),
                    humantime::format_duration(p.to_std().unwrap_or_default())
                );
            }
        }
        (Some(from), None) => tracing::warn!(
            "{url}: recovery window from {} (no archived WAL: nothing to recover to yet)",
            fmt(from)
        ),
        (None, _) => tracing::warn!("{url}: no recovery window: no physical backup"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn stale_when_old_missing_or_untimed() {
        let now = Utc::now();
        let wal = |secs_ago: i64| {
            Ok(Some(LastWal {
                name: "x".into(),
                time: Some(now - chrono::Duration::seconds(secs_ago)),
            }))
        };
        let max = chrono::Duration::minutes(5);
        assert!(stale_reason("u", &wal(10), max, now).is_none());
        assert!(stale_reason("u", &wal(600), max, now).is_some());
        assert!(stale_reason("u", &Ok(None), max, now).is_some());
        let untimed = Ok(Some(LastWal {
            name: "x".into(),
            time: None,
        }));
        assert!(stale_reason("u", &untimed, max, now).is_some());
    }
}
