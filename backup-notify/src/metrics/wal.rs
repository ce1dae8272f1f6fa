//! The samples of a `status.checked` event: per target, the last archived WAL file's time
//! and the recovery window. Written by `status` (not by `wal-push`, which runs for every
//! WAL file and must stay fast), so they are as fresh as the last `status` run; a stopped
//! `status` job leaves the timestamp behind and the stalled-archiving alert fires.

use backup_core::Event;
use chrono::{DateTime, Utc};

use super::{Samples, SeriesKey};

/// Unix time of the last archived WAL file, per target.
pub const WAL_LAST_ARCHIVED: &str = "kaizen_backup_wal_last_archived_timestamp_seconds";
/// Start of the recovery window (end of the oldest physical backup), per target.
pub const WINDOW_START: &str = "kaizen_backup_recovery_window_start_timestamp_seconds";
/// End of the recovery window (the last archived WAL file), per target.
pub const WINDOW_END: &str = "kaizen_backup_recovery_window_end_timestamp_seconds";

fn unix(v: &serde_json::Value) -> Option<f64> {
    let t: DateTime<Utc> = v.as_str()?.parse().ok()?;
    Some(t.timestamp() as f64)
}

/// `details.targets[]` of a `status.checked` event: `{target, wal: {time}, recovery_window:
/// {from, to}}`; a value that is null or missing sets nothing.
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
              "recovery_window": { "from": "2026-01-01T00:00:00Z", "to": "2026-01-01T00:00:10Z" } },
            { "target": "s3://b/p", "wal": null, "recovery_window": null },
        ]});
        let s = samples(&ev);
        assert_eq!(s.len(), 3);
        let key = |name: &str| SeriesKey {
            name: name.into(),
            database: "db".into(),
            target: "file:///a".into(),
        };
        assert_eq!(s[&key(WAL_LAST_ARCHIVED)], 1_767_225_610.0);
        assert_eq!(s[&key(WINDOW_START)], 1_767_225_600.0);
        assert_eq!(s[&key(WINDOW_END)], 1_767_225_610.0);
        // Rendered (the names are in METRICS) and read back.
        assert_eq!(super::super::parse(&super::super::render(&s)), s);
    }
}
