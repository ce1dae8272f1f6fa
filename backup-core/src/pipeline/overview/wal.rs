//! The WAL archive of a target as a picture needs it: the last archived file, the
//! segments on the recovery path grouped into gap-free runs, the gaps between them, and
//! the stretches of time a point-in-time restore can reach.
//!
//! ```text
//! segments:  [2 3 4]   [7 8 9 10]        runs; gap: 5 and 6 missing
//! backups:     b1 ─────┤    b2 ─────────┤ each reaches through the gap-free WAL after its start
//! window:      [b1.end, seg 4]  [b2.end, seg 10]
//! ```
//!
//! Times of segments are when the storage stored them (the archiver pushes each one once
//! it is full, so its transactions are at or before that time); without times from the
//! storage, a stretch ends at its base backup.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::catalog::BackupEntry;
use crate::codec::DecryptKeys;
use crate::error::{Error, Result};
use crate::pitr::window::{self, BaseBackup};
use crate::storage::Storage;
use crate::wal::{self, TimelineSwitch, WalFile, segment_name};
use crate::walarchive::{self, ArchivedFile};

/// The last archived WAL file of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWal {
    /// The name PostgreSQL gave it.
    pub name: String,
    /// When it was stored (the object's last-modified time; None when the storage reports
    /// no times, and the file is then the newest by name).
    pub time: Option<DateTime<Utc>>,
}

/// The newest file by last-modified time (ties: the greater name); when the storage
/// reports no times, the newest by name.
pub fn last_of(files: &[ArchivedFile]) -> Option<LastWal> {
    let timed = files
        .iter()
        .filter_map(|f| f.object.last_modified.map(|t| (t, f)))
        .max_by(|(ta, a), (tb, b)| ta.cmp(tb).then_with(|| a.name.cmp(&b.name)))
        .map(|(t, f)| LastWal {
            name: f.name.clone(),
            time: Some(t),
        });
    timed.or_else(|| {
        files
            .iter()
            .max_by(|a, b| a.name.cmp(&b.name))
            .map(|f| LastWal {
                name: f.name.clone(),
                time: None,
            })
    })
}

/// Consecutive archived segments on the recovery path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRun {
    /// The first segment's name.
    pub first: String,
    /// The last segment's name.
    pub last: String,
    /// How many segments.
    pub segments: u64,
    /// When the first one was stored.
    pub from: Option<DateTime<Utc>>,
    /// When the last one was stored.
    pub to: Option<DateTime<Utc>>,
}

/// Segments missing between two runs: recovery cannot pass them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalGap {
    /// The first missing segment's name.
    pub first_missing: String,
    /// How many segments are missing.
    pub missing: u64,
    /// When the segment before the gap was stored.
    pub after: Option<DateTime<Utc>>,
    /// When the segment after the gap was stored.
    pub before: Option<DateTime<Utc>>,
}

/// A stretch of time a point-in-time restore can reach: from the end of a base backup
/// through the gap-free WAL after its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryStretch {
    /// The earliest point (the end of the oldest base backup of the stretch).
    pub from: DateTime<Utc>,
    /// The latest point (when the last gap-free segment was stored; the base backup's
    /// end without WAL after it).
    pub to: DateTime<Utc>,
    /// The base backup it starts from.
    pub backup: String,
    /// The first segment missing after it when archived WAL follows the gap (that WAL
    /// cannot be used until a newer base backup); None when it reaches the archive's end.
    pub ends_before: Option<String>,
}

/// The WAL archive of a target.
#[derive(Debug, Clone, Default)]
pub struct WalOverview {
    /// Archived files (segments, history files, partial segments).
    pub files: usize,
    /// Their stored size.
    pub bytes: u64,
    /// The last archived file.
    pub last: Option<LastWal>,
    /// The timeline recovery follows (the newest one known).
    pub timeline: u32,
    /// Gap-free runs of segments on the way to that timeline, oldest first.
    pub runs: Vec<WalRun>,
    /// The gaps between the runs.
    pub gaps: Vec<WalGap>,
    /// What a restore can reach, oldest first (empty without a physical backup).
    pub recoverable: Vec<RecoveryStretch>,
    /// A caveat about the above (e.g. a timeline history that could not be read).
    pub note: Option<String>,
}

/// Read the archive `store` against the physical backups `physical` (newest first).
pub(super) async fn gather(
    store: &Arc<dyn Storage>,
    physical: &[&BackupEntry],
    keys: &DecryptKeys,
) -> Result<WalOverview> {
    let files = walarchive::list(store.as_ref()).await?;
    let segment_size = physical
        .iter()
        .find_map(|b| b.manifest.physical.as_ref().map(|p| p.wal_segment_size))
        .unwrap_or(wal::DEFAULT_SEGMENT_SIZE);
    let timeline = window::recovery_timeline(&files, segment_size, physical);
    let (history, note) = if timeline <= 1 {
        (Some(Vec::new()), None)
    } else {
        match read_history(store, timeline, keys).await {
            Ok(h) => (Some(h), None),
            Err(e) => (
                None,
                Some(format!(
                    "the history of timeline {timeline} cannot be read ({e}): each segment is taken from the newest timeline that has it"
                )),
            ),
        }
    };
    let mut o = analyse(&files, history.as_deref(), timeline, segment_size, physical);
    o.note = note;
    Ok(o)
}

async fn read_history(
    store: &Arc<dyn Storage>,
    timeline: u32,
    keys: &DecryptKeys,
) -> Result<Vec<TimelineSwitch>> {
    let scratch = tempfile::Builder::new()
        .prefix(&crate::util::owned_prefix(crate::leftovers::RESTORE_PREFIX))
        .tempdir()
        .map_err(|e| Error::io("cannot create a temporary directory", e))?;
    crate::pitr::history(store, timeline, keys, scratch.path()).await
}

/// The pure part of [`gather`]: `history` None means unknown (each segment is then taken
/// from the newest timeline up to `timeline` that has it).
fn analyse(
    files: &[ArchivedFile],
    history: Option<&[TimelineSwitch]>,
    timeline: u32,
    segment_size: u64,
    physical: &[&BackupEntry],
) -> WalOverview {
    let mut segments: HashMap<(u32, u64), Option<DateTime<Utc>>> = HashMap::new();
    let mut newest_tli: HashMap<u64, u32> = HashMap::new();
    for f in files {
        if let Ok(WalFile::Segment { timeline: t, segno }) = WalFile::parse(&f.name, segment_size) {
            segments.insert((t, segno), f.object.last_modified);
            if t <= timeline {
                let e = newest_tli.entry(segno).or_insert(t);
                *e = (*e).max(t);
            }
        }
    }
    let want = |segno: u64| -> u32 {
        match history {
            Some(h) => window::timeline_of_segment(h, timeline, segno, segment_size),
            None => newest_tli.get(&segno).copied().unwrap_or(timeline),
        }
    };
    // Segment number → its time, for the segments on the path.
    let on_path: BTreeMap<u64, Option<DateTime<Utc>>> = segments
        .iter()
        .filter(|((t, s), _)| want(*s) == *t)
        .map(|((_, s), time)| (*s, *time))
        .collect();
    let mut runs: Vec<WalRun> = Vec::new();
    let mut gaps = Vec::new();
    let mut prev: Option<u64> = None;
    for (&s, &time) in &on_path {
        let extends = prev.is_some_and(|p| s == p + 1);
        match runs.last_mut() {
            Some(run) if extends => {
                run.last = segment_name(want(s), s, segment_size);
                run.segments += 1;
                run.to = time;
            }
            last => {
                if let (Some(p), Some(run)) = (prev, last) {
                    gaps.push(WalGap {
                        first_missing: segment_name(want(p + 1), p + 1, segment_size),
                        missing: s - p - 1,
                        after: run.to,
                        before: time,
                    });
                }
                let name = segment_name(want(s), s, segment_size);
                runs.push(WalRun {
                    first: name.clone(),
                    last: name,
                    segments: 1,
                    from: time,
                    to: time,
                });
            }
        }
        prev = Some(s);
    }

    // What each base backup on the path reaches, merged into stretches.
    let hist = history.unwrap_or(&[]);
    let mut stretches: Vec<RecoveryStretch> = Vec::new();
    let mut bases: Vec<BaseBackup> = physical
        .iter()
        .filter_map(|b| BaseBackup::of(b))
        .filter(|b| history.is_none() || window::on_path(hist, timeline, b))
        .collect();
    bases.sort_by_key(|b| b.stop_time);
    let newest_segment = on_path.keys().next_back().copied();
    for b in bases {
        let mut s = b.start_lsn.segment(segment_size);
        let mut end = None;
        while let Some(t) = on_path.get(&s) {
            end = *t;
            s += 1;
        }
        let ends_before = newest_segment
            .filter(|n| s < *n)
            .map(|_| segment_name(want(s), s, segment_size));
        // The WAL to the backup's consistent end ships inside the base backup (-X fetch).
        let covered = s > b.end_lsn.segment(segment_size);
        let to = match end {
            Some(t) if covered => t.max(b.stop_time),
            _ => b.stop_time,
        };
        match stretches.last_mut() {
            Some(last) if b.stop_time <= last.to => {
                if to >= last.to {
                    last.to = to;
                    last.ends_before = ends_before;
                }
            }
            _ => stretches.push(RecoveryStretch {
                from: b.stop_time,
                to,
                backup: b.name.clone(),
                ends_before,
            }),
        }
    }
    WalOverview {
        files: files.len(),
        bytes: files.iter().map(|f| f.object.size).sum(),
        last: last_of(files),
        timeline,
        runs,
        gaps,
        recoverable: stretches,
        note: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ObjectMeta;
    use crate::wal::DEFAULT_SEGMENT_SIZE as SEG;

    fn file(name: &str, secs: Option<i64>) -> ArchivedFile {
        ArchivedFile {
            name: name.to_string(),
            sha256: "0".repeat(64),
            zstd: false,
            age: false,
            object: ObjectMeta {
                key: name.to_string(),
                size: 16,
                last_modified: secs.and_then(|s| DateTime::from_timestamp(s, 0)),
            },
        }
    }

    fn physical(name: &str, start: &str, end: &str, stop: i64) -> BackupEntry {
        let at = DateTime::from_timestamp(stop, 0).unwrap_or_default();
        let mut m = crate::testing::manifest(name, "db", at);
        m.kind = Some(crate::manifest::Kind::Physical);
        m.physical = Some(crate::manifest::PhysicalInfo {
            timeline: 1,
            start_lsn: start.parse().unwrap_or_default(),
            end_lsn: end.parse().unwrap_or_default(),
            system_identifier: "1".into(),
            wal_segment_size: SEG,
        });
        BackupEntry {
            manifest: m,
            verify: None,
            data: None,
        }
    }

    #[test]
    fn last_is_newest_by_time_else_by_name() {
        let files = [
            file("000000010000000000000001", Some(30)),
            file("000000010000000000000002", Some(20)),
            file("00000002.history", Some(10)),
        ];
        assert_eq!(
            last_of(&files).map(|w| w.name),
            Some("000000010000000000000001".to_string())
        );
        let untimed = [
            file("000000010000000000000002", None),
            file("000000010000000000000003", None),
        ];
        assert_eq!(
            last_of(&untimed),
            Some(LastWal {
                name: "000000010000000000000003".into(),
                time: None
            })
        );
        assert_eq!(last_of(&[]), None);
    }

    #[test]
    fn runs_gaps_and_what_each_backup_reaches() {
        let files: Vec<ArchivedFile> = [2u64, 3, 4, 7, 8, 9]
            .iter()
            .map(|s| file(&segment_name(1, *s, SEG), Some(100 * *s as i64)))
            .chain([file("000000010000000000000004.00000028.backup", Some(401))])
            .collect();
        let b1 = physical("b1", "0/2000028", "0/2000100", 150);
        let b2 = physical("b2", "0/7000028", "0/7000100", 750);
        let o = analyse(&files, Some(&[]), 1, SEG, &[&b2, &b1]);
        assert_eq!(o.runs.len(), 2);
        assert_eq!(
            (
                o.runs[0].first.as_str(),
                o.runs[0].last.as_str(),
                o.runs[0].segments
            ),
            ("000000010000000000000002", "000000010000000000000004", 3)
        );
        assert_eq!(o.gaps.len(), 1);
        assert_eq!(o.gaps[0].first_missing, "000000010000000000000005");
        assert_eq!(o.gaps[0].missing, 2);
        let t = |s| DateTime::from_timestamp(s, 0).unwrap_or_default();
        assert_eq!(
            o.recoverable,
            [
                RecoveryStretch {
                    from: t(150),
                    to: t(400),
                    backup: "b1".into(),
                    ends_before: Some("000000010000000000000005".into()),
                },
                RecoveryStretch {
                    from: t(750),
                    to: t(900),
                    backup: "b2".into(),
                    ends_before: None,
                }
            ]
        );
        assert_eq!(o.files, 7);

        // Only the older backup: WAL after the gap is unusable, the stretch says where.
        let o = analyse(&files, Some(&[]), 1, SEG, &[&b1]);
        assert_eq!(o.recoverable.len(), 1);
        assert_eq!(o.recoverable[0].to, t(400));
        assert_eq!(
            o.recoverable[0].ends_before.as_deref(),
            Some("000000010000000000000005")
        );

        // Without archived WAL a backup still reaches its own end.
        let o = analyse(&[], Some(&[]), 1, SEG, &[&b1]);
        assert!(o.runs.is_empty() && o.gaps.is_empty());
        assert_eq!(o.recoverable[0].to, t(150));
        assert_eq!(o.recoverable[0].ends_before, None);
    }

    #[test]
    fn without_history_the_newest_timeline_of_each_segment_is_taken() {
        let files = [
            file("000000010000000000000003", Some(3)),
            file("000000010000000000000004", Some(4)),
            file("000000020000000000000004", Some(5)),
            file("000000020000000000000005", Some(6)),
        ];
        let o = analyse(&files, None, 2, SEG, &[]);
        assert_eq!(o.runs.len(), 1, "{:?}", o.runs);
        assert_eq!(o.runs[0].first, "000000010000000000000003");
        assert_eq!(o.runs[0].last, "000000020000000000000005");
    }
}
