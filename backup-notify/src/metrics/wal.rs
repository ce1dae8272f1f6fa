//! The samples of a `status.checked` event: per target, the last archived WAL file's time,
//! the recovery window and the window the retention rules promise, and the server's
//! archiver failures (`pg_stat_archiver`, the same on every target). Written by `status`
//! (not by `wal-push`, which runs for every WAL file and must stay fast), so they are as
//! fresh as the last `status` run; a stopped `status` job leaves the timestamp behind and
//! the stalled-archiving alert fires.

use backup_core::Event;
use chrono::{DateTime, Utc};

use super::{Samples, SeriesKey};

/// Unix time of the last archived WAL file, per target.
pub const WAL_LAST_ARCHIVED: &str = "kaizen_backup_wal_last_archived_timestamp_seconds";
/// Start of the recovery window (end of the oldest physical backup), per target.
pub const WINDOW_START: &str = "kaizen_backup_recovery_window_start_timestamp_seconds";
/// End of the recovery window (the last archived WAL file), per target.
pub const WINDOW_END: &str = "kaizen_backup_recovery_window_end_timestamp_seconds";
/// Length of the recovery window the retention rules promise.
pub const WINDOW_PROMISED: &str = "kaizen_backup_recovery_window_promised_seconds";
/// The server's failed `archive_command` runs (`pg_stat_archiver.failed_count`).
pub const ARCHIVE_FAILURES: &str = "kaizen_backup_wal_archive_failures_total";
/// 1 while the server's last archive attempt failed, else 0.
pub const ARCHIVE_FAILING: &str = "kaizen_backup_wal_archive_failing";

fn unix(v: &serde_json::Value) -> Option<f64> {
    let t: DateTime<Utc> = v.as_str()?.parse().ok()?;
    Some(t.timestamp() as f64)
}

/// `details.targets[]` of a `status.checked` event: `{target, wal: {time}, recovery_window:
/// {from, to, promised_seconds}, archiver: {failed_count, failing}}`; a value that is null
/// or missing sets nothing.
pub fn samples(event: &Event) -> Samples {
    let mut s = Samples::new();
    let rows = event.details["targets"].as_array().into_iter().flatten();
    for row in rows {
        let Some(target) = row["target"].as_str() else {
            continue;
        };
        let values = [
            (WAL_LAST_ARCHIVED, unix(&row["wal"]["time"])),
            (WINDOW_START, unix(&row["recovery_window"]["from"])),
            (WINDOW_END, unix(&row["recovery_window"]["to"])),
            (
                WINDOW_PROMISED,
                row["recovery_window"]["promised_seconds"].as_f64(),
            ),
            (ARCHIVE_FAILURES, row["archiver"]["failed_count"].as_f64()),
            (
                ARCHIVE_FAILING,
                row["archiver"]["failing"].as_bool().map(f64::from),
            ),
        ];
        for (name, v) in values {
            if let Some(v) = v {
                s.insert(
                    SeriesKey {
                        name: name.to_string(),
                        database: event.database.clone(),
                        target: target.to_string(),
                    },
                    v,
                );
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use backup_core::EventKind;

    #[test]
    fn status_sets_wal_and_window_per_target_and_skips_nulls() {
        let mut ev = Event::new(EventKind::StatusChecked, "db");
        ev.details = serde_json::json!({ "targets": [
            { "target": "file:///a", "wal": { "name": "000000010000000000000003", "time": "2026-01-01T00:00:10Z" },
              "recovery_window": { "from": "2026-01-01T00:00:00Z", "to": "2026-01-01T00:00:10Z", "promised_seconds": 604800 },
              "archiver": { "failed_count": 7, "failing": true, "last_failed_wal": "000000010000000000000004" } },
            { "target": "s3://b/p", "wal": null, "recovery_window": null, "archiver": { "error": "down" } },
            { "target": "gs://c/p", "wal": null, "recovery_window": { "from": "2026-01-01T00:00:00Z", "to": null, "promised_seconds": null },
              "archiver": { "failed_count": 0, "failing": false } },
        ]});
        let s = samples(&ev);
        assert_eq!(s.len(), 9);
        let key = |name: &str| SeriesKey {
            name: name.into(),
            database: "db".into(),
            target: "file:///a".into(),
        };
        assert_eq!(s[&key(WAL_LAST_ARCHIVED)], 1_767_225_610.0);
        assert_eq!(s[&key(WINDOW_START)], 1_767_225_600.0);
        assert_eq!(s[&key(WINDOW_END)], 1_767_225_610.0);
        assert_eq!(s[&key(WINDOW_PROMISED)], 604_800.0);
        assert_eq!(s[&key(ARCHIVE_FAILURES)], 7.0);
        assert_eq!(s[&key(ARCHIVE_FAILING)], 1.0);
        let gs = |name: &str| {
            s.get(&SeriesKey {
                name: name.into(),
                database: "db".into(),
                target: "gs://c/p".into(),
            })
        };
        assert_eq!(gs(ARCHIVE_FAILING), Some(&0.0));
        assert_eq!(gs(ARCHIVE_FAILURES), Some(&0.0));
        assert_eq!(gs(WINDOW_PROMISED), None);
        // Rendered (the names are in METRICS) and read back.
        assert_eq!(super::super::parse(&super::super::render(&s)), s);
    }
}
