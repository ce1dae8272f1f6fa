//! The recoverable window: which base backup a point-in-time restore starts from and
//! how far the archived WAL reaches from it without a gap.
//!
//! ```text
//! timeline 1: [seg 2][seg 3][seg 4]---switch at 0/5000100--.
//! timeline 2:                              [seg 5][seg 6]   (6 is the end: recoverable to its last commit)
//!             ^ base backup start (seg 2)   a missing seg 5 would end the window at seg 4
//! ```
//!
//! Recovery follows the newest timeline (`recovery_target_timeline = 'latest'`): for each
//! segment number it reads the newest timeline of that timeline's ancestry whose history
//! began at or before the segment, as PostgreSQL does.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use crate::wal::{Lsn, TimelineSwitch, WalFile, segment_name, timeline_at};
use crate::walarchive::ArchivedFile;

/// What the window needs to know about one physical backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackup {
    /// Backup name.
    pub name: String,
    /// Timeline the backup was taken on.
    pub timeline: u32,
    /// Where its WAL starts.
    pub start_lsn: Lsn,
    /// Where it reaches consistency.
    pub end_lsn: Lsn,
    /// When it ended (no commit before this time needs it).
    pub stop_time: DateTime<Utc>,
    /// The cluster's WAL segment size.
    pub segment_size: u64,
}

impl BaseBackup {
    /// The window's view of a listed backup; `None` for a logical one.
    pub fn of(e: &crate::catalog::BackupEntry) -> Option<Self> {
        let p = e.manifest.physical.as_ref()?;
        Some(Self {
            name: e.manifest.name.clone(),
            timeline: p.timeline,
            start_lsn: p.start_lsn,
            end_lsn: p.end_lsn,
            stop_time: e.manifest.finished_at,
            segment_size: p.wal_segment_size,
        })
    }
}

/// The newest timeline the archive knows (from history files and segments); 1 when the
/// archive is empty.
pub fn latest_timeline(files: &[ArchivedFile], segment_size: u64) -> u32 {
    files
        .iter()
        .filter_map(|f| WalFile::parse(&f.name, segment_size).ok())
        .map(|w| w.timeline())
        .max()
        .unwrap_or(1)
}

/// The timeline recovery follows: the newest the archive or one of the `physical`
/// backups knows.
pub fn recovery_timeline(
    files: &[ArchivedFile],
    segment_size: u64,
    physical: &[&crate::catalog::BackupEntry],
) -> u32 {
    latest_timeline(files, segment_size).max(
        physical
            .iter()
            .filter_map(|b| b.manifest.physical.as_ref().map(|p| p.timeline))
            .max()
            .unwrap_or(1),
    )
}

/// The timeline whose file recovery reads for segment `segno` on the way to `target`.
pub fn timeline_of_segment(
    history: &[TimelineSwitch],
    target: u32,
    segno: u64,
    segment_size: u64,
) -> u32 {
    let mut tli = history.first().map_or(target, |s| s.parent);
    for (i, s) in history.iter().enumerate() {
        if segno >= s.switchpoint.segment(segment_size) {
            tli = history.get(i + 1).map_or(target, |n| n.parent);
        }
    }
    tli
}

/// Whether a base backup lies on the way to `target` (taken on a timeline of its
/// ancestry, before that timeline was switched away from).
pub fn on_path(history: &[TimelineSwitch], target: u32, b: &BaseBackup) -> bool {
    timeline_at(history, target, b.start_lsn) == b.timeline
        && timeline_at(history, target, b.end_lsn) == b.timeline
}

/// How far the archive reaches from a starting point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// The last segment readable without a gap: `(timeline, segno)`, if any.
    pub last: Option<(u32, u64)>,
    /// The end of that segment (recovery can reach no further); for a partial segment,
    /// its start (how far into it WAL reaches, only reading it tells).
    pub end_lsn: Option<Lsn>,
    /// The last segment is a partial one (`NAME.partial`, stored by `wal-receive` while
    /// the segment was being written): recovery reads it to its last record.
    pub partial: bool,
    /// The first missing segment, when the archive holds later segments on the path
    /// (a gap in the middle, not merely the end of the archive).
    pub gap: Option<String>,
}

/// Walk the archive from `start` along the path to `target`.
pub fn coverage(
    files: &[ArchivedFile],
    history: &[TimelineSwitch],
    target: u32,
    start: Lsn,
    segment_size: u64,
) -> Coverage {
    let present: HashSet<(u32, u64)> = files
        .iter()
        .filter_map(|f| match WalFile::parse(&f.name, segment_size) {
            Ok(WalFile::Segment { timeline, segno }) => Some((timeline, segno)),
            _ => None,
        })
        .collect();
    let partials: HashSet<(u32, u64)> = files
        .iter()
        .filter_map(|f| match WalFile::parse(&f.name, segment_size) {
            Ok(WalFile::Partial { timeline, segno }) => Some((timeline, segno)),
            _ => None,
        })
        .collect();
    let want = |segno: u64| {
        (
            timeline_of_segment(history, target, segno, segment_size),
            segno,
        )
    };
    let mut seg = start.segment(segment_size);
    let mut last = None;
    while present.contains(&want(seg)) {
        last = Some(want(seg));
        seg += 1;
    }
    // The segment after the last complete one may be stored partially: the end of the
    // archive (wal-fetch serves it under the segment's name).
    let partial = partials.contains(&want(seg));
    if partial {
        last = Some(want(seg));
    }
    let gap = present
        .iter()
        .chain(&partials)
        .any(|&(t, s)| s > seg && want(s) == (t, s))
        .then(|| {
            let (t, s) = want(seg);
            segment_name(t, s, segment_size)
        });
    Coverage {
        last,
        end_lsn: last.map(|(_, s)| Lsn((s + u64::from(!partial)) * segment_size)),
        partial,
        gap,
    }
}

/// What `pg_waldump` shows of a stretch of WAL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalScan {
    /// The time of the last transaction commit or abort.
    pub last_xact_time: Option<DateTime<Utc>>,
    /// Its position.
    pub last_xact_lsn: Option<Lsn>,
    /// Restore points (`pg_create_restore_point`) with their positions.
    pub restore_points: Vec<(String, Lsn)>,
    /// Where the last record starts (a recovery target up to here is reachable).
    pub last_record_lsn: Option<Lsn>,
}

/// Read `pg_waldump` output (run with `TZ=UTC`). The tool ends with an error at the end
/// of the WAL it was given; the records before it are what counts.
pub fn parse_waldump(out: &str) -> WalScan {
    let mut scan = WalScan::default();
    for line in out.lines() {
        let Some((head, desc)) = line.split_once("desc: ") else {
            continue;
        };
        let lsn = head
            .split_once("lsn: ")
            .and_then(|(_, r)| r.split(',').next())
            .and_then(|l| l.trim().parse::<Lsn>().ok());
        if lsn.is_some() {
            scan.last_record_lsn = lsn;
        }
        if let Some(rest) = desc
            .strip_prefix("COMMIT ")
            .or_else(|| desc.strip_prefix("ABORT "))
        {
            let ts = rest.split(';').next().unwrap_or("").trim();
            let ts = ts.strip_suffix(" UTC").unwrap_or(ts);
            if let Ok(t) = chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%d %H:%M:%S%.f") {
                scan.last_xact_time = Some(t.and_utc());
                scan.last_xact_lsn = lsn;
            }
        } else if let Some(name) = desc.strip_prefix("RESTORE_POINT ")
            && let Some(l) = lsn
        {
            scan.restore_points.push((name.trim_end().to_string(), l));
        }
    }
    scan
}

/// Run `pg_waldump` over the segments `first..=last` in `dir`.
pub async fn scan_wal(
    pg_waldump: &std::path::Path,
    dir: &std::path::Path,
    first: &str,
    last: &str,
) -> crate::error::Result<WalScan> {
    let out = tokio::process::Command::new(pg_waldump)
        .arg("--path")
        .arg(dir)
        .arg(first)
        .arg(last)
        .env("TZ", "UTC")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| crate::error::Error::io(format!("cannot run {}", pg_waldump.display()), e))?;
    Ok(parse_waldump(&String::from_utf8_lossy(&out.stdout)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ObjectMeta;
    use crate::wal::{DEFAULT_SEGMENT_SIZE as SEG, parse_history};

    fn files(names: &[&str]) -> Vec<ArchivedFile> {
        names
            .iter()
            .map(|n| ArchivedFile {
                name: (*n).to_string(),
                sha256: "0".repeat(64),
                zstd: false,
                age: false,
                object: ObjectMeta {
                    key: (*n).to_string(),
                    size: 1,
                    last_modified: None,
                },
            })
            .collect()
    }

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    #[test]
    fn waldump_output_is_read() {
        let out = "rmgr: Transaction len (rec/tot):    130/   130, tx:        732, lsn: 0/03034478, prev 0/03034438, desc: COMMIT 2026-12-02 06:17:44.793901 UTC; inval msgs: catcache 63\n\
                   rmgr: XLOG        len (rec/tot):     98/    98, tx:        735, lsn: 0/03055B98, prev 0/03055B58, desc: RESTORE_POINT my point\n\
                   rmgr: Transaction len (rec/tot):     34/    34, tx:        736, lsn: 0/03055D00, prev 0/03055C40, desc: ABORT 2026-12-02 06:17:45.000001 UTC\n\
                   pg_waldump: error: error in WAL record at 0/3055D28: invalid record length\n";
        let s = parse_waldump(out);
        assert_eq!(
            s.last_xact_time.map(|t| t.to_rfc3339()),
            Some("2026-12-02T06:17:45.000001+00:00".into())
        );
        assert_eq!(s.last_xact_lsn, Some(lsn("0/3055D00")));
        assert_eq!(
            s.restore_points,
            vec![("my point".to_string(), lsn("0/3055B98"))]
        );
        assert_eq!(s.last_record_lsn, Some(lsn("0/3055D00")));
        assert_eq!(parse_waldump(""), WalScan::default());
    }

    #[test]
    fn one_timeline_contiguous_and_with_a_gap() {
        let f = files(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
        ]);
        let c = coverage(&f, &[], 1, lsn("0/2000028"), SEG);
        assert_eq!(c.last, Some((1, 4)));
        assert_eq!(c.end_lsn, Some(lsn("0/5000000")));
        assert_eq!(c.gap, None);

        let f = files(&["000000010000000000000002", "000000010000000000000004"]);
        let c = coverage(&f, &[], 1, lsn("0/2000028"), SEG);
        assert_eq!(c.last, Some((1, 2)));
        assert_eq!(c.gap.as_deref(), Some("000000010000000000000003"));

        // Nothing archived from the start: no coverage, and no gap either.
        let c = coverage(&f, &[], 1, lsn("0/9000000"), SEG);
        assert_eq!((c.last, c.gap), (None, None));
    }

    #[test]
    fn a_partial_segment_ends_the_archive_and_never_bridges_a_gap() {
        let f = files(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004.partial",
        ]);
        let c = coverage(&f, &[], 1, lsn("0/2000028"), SEG);
        assert_eq!(c.last, Some((1, 4)));
        assert!(c.partial);
        assert_eq!(c.end_lsn, Some(lsn("0/4000000")), "its start, until read");
        assert_eq!(c.gap, None);

        // Complete and partial copies of the same segment: the complete one counts.
        let f = files(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000003.partial",
        ]);
        let c = coverage(&f, &[], 1, lsn("0/2000028"), SEG);
        assert_eq!((c.last, c.partial), (Some((1, 3)), false));

        // A partial after a missing segment is not reached.
        let f = files(&[
            "000000010000000000000002",
            "000000010000000000000004.partial",
        ]);
        let c = coverage(&f, &[], 1, lsn("0/2000028"), SEG);
        assert_eq!((c.last, c.partial), (Some((1, 2)), false));
        assert_eq!(c.gap.as_deref(), Some("000000010000000000000003"));

        // The old timeline's partial (left at a switch) is not on the new timeline's path.
        let history = parse_history("1\t0/5000100\tno recovery target specified\n").unwrap();
        let f = files(&[
            "000000010000000000000004",
            "000000010000000000000005.partial",
            "00000002.history",
        ]);
        let c = coverage(&f, &history, 2, lsn("0/4000028"), SEG);
        assert_eq!((c.last, c.partial), (Some((1, 4)), false));
        let f = files(&[
            "000000010000000000000004",
            "000000010000000000000005.partial",
            "00000002.history",
            "000000020000000000000005.partial",
        ]);
        let c = coverage(&f, &history, 2, lsn("0/4000028"), SEG);
        assert_eq!((c.last, c.partial), (Some((2, 5)), true));
    }

    #[test]
    fn timelines_are_followed_at_their_switch_points() {
        let history = parse_history("1\t0/5000100\tno recovery target specified\n").unwrap();
        assert_eq!(timeline_of_segment(&history, 2, 4, SEG), 1);
        assert_eq!(timeline_of_segment(&history, 2, 5, SEG), 2);
        let f = files(&[
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005.partial",
            "000000010000000000000006", // the old primary went on: not on the path
            "00000002.history",
            "000000020000000000000005",
            "000000020000000000000006",
        ]);
        assert_eq!(latest_timeline(&f, SEG), 2);
        let c = coverage(&f, &history, 2, lsn("0/3000028"), SEG);
        assert_eq!(c.last, Some((2, 6)));
        assert_eq!(c.gap, None);

        let b = |tli, start: &str, end: &str| BaseBackup {
            name: "b".into(),
            timeline: tli,
            start_lsn: lsn(start),
            end_lsn: lsn(end),
            stop_time: Utc::now(),
            segment_size: SEG,
        };
        assert!(on_path(&history, 2, &b(1, "0/3000028", "0/3000100")));
        assert!(!on_path(&history, 2, &b(1, "0/6000028", "0/6000100")));
        assert!(on_path(&history, 2, &b(2, "0/6000028", "0/6000100")));
        assert!(!on_path(&history, 2, &b(3, "0/6000028", "0/6000100")));
    }
}
