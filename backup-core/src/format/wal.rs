//! Write-ahead log vocabulary: LSNs, WAL file names, timelines and their history.
//!
//! A WAL segment file is named `TTTTTTTTXXXXXXXXYYYYYYYY`: the timeline, then the
//! segment number split into a "log" (high 32 bits of the LSN) and the segment inside
//! that log. How many segments a log holds depends on the cluster's
//! `wal_segment_size`, which a base backup records. Besides segments the archive holds
//! timeline history files (`TTTTTTTT.history`), backup history files
//! (`…YYYYYYYY.XXXXXXXX.backup`) and partial segments (`….partial`).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The default `wal_segment_size` (16 MiB).
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// A position in the write-ahead log, written `X/Y` in hexadecimal as PostgreSQL does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The segment number holding this position.
    pub fn segment(self, segment_size: u64) -> u64 {
        self.0 / segment_size
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::usage(format!("invalid LSN {s:?}: expected the form 0/16B3748"));
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let part = |p: &str| {
            if p.is_empty() || p.len() > 8 {
                return Err(bad());
            }
            u32::from_str_radix(p, 16).map_err(|_| bad())
        };
        Ok(Lsn((u64::from(part(hi)?) << 32) | u64::from(part(lo)?)))
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a file in the WAL archive is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalFile {
    /// A complete segment.
    Segment {
        /// Timeline.
        timeline: u32,
        /// Segment number (LSN / segment size).
        segno: u64,
    },
    /// A partial segment (the last one of a timeline that was switched away from).
    Partial {
        /// Timeline.
        timeline: u32,
        /// Segment number.
        segno: u64,
    },
    /// A timeline history file.
    History {
        /// The timeline it describes.
        timeline: u32,
    },
    /// A backup history file (written by the server after each base backup).
    BackupLabel {
        /// Timeline.
        timeline: u32,
        /// Segment number of the backup's start.
        segno: u64,
        /// Offset of the start inside that segment.
        offset: u32,
    },
}

fn hex8(s: &str) -> Option<u32> {
    (s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(s, 16).ok())
        .flatten()
}

impl WalFile {
    /// Parse a WAL archive file name; `segment_size` turns the name's log/segment pair
    /// into a segment number.
    pub fn parse(name: &str, segment_size: u64) -> Result<Self> {
        let bad = || {
            Error::usage(format!(
                "{name:?} is not a WAL file name (a segment such as 000000010000000000000002, \
                 a .history, .backup or .partial file)"
            ))
        };
        let per_log = segments_per_log(segment_size);
        let segment = |s: &str| -> Option<(u32, u64)> {
            if s.len() != 24 {
                return None;
            }
            let (t, log, seg) = (hex8(&s[..8])?, hex8(&s[8..16])?, hex8(&s[16..])?);
            if u64::from(seg) >= per_log {
                return None;
            }
            Some((t, u64::from(log) * per_log + u64::from(seg)))
        };
        if let Some(t) = name.strip_suffix(".history") {
            let timeline = hex8(t).ok_or_else(bad)?;
            return Ok(WalFile::History { timeline });
        }
        if let Some(s) = name.strip_suffix(".partial") {
            let (timeline, segno) = segment(s).ok_or_else(bad)?;
            return Ok(WalFile::Partial { timeline, segno });
        }
        if let Some(s) = name.strip_suffix(".backup") {
            let (seg, off) = s.split_once('.').ok_or_else(bad)?;
            let (timeline, segno) = segment(seg).ok_or_else(bad)?;
            let offset = hex8(off).ok_or_else(bad)?;
            return Ok(WalFile::BackupLabel {
                timeline,
                segno,
                offset,
            });
        }
        let (timeline, segno) = segment(name).ok_or_else(bad)?;
        Ok(WalFile::Segment { timeline, segno })
    }

    /// The timeline the file belongs to.
    pub fn timeline(&self) -> u32 {
        match *self {
            WalFile::Segment { timeline, .. }
            | WalFile::Partial { timeline, .. }
            | WalFile::History { timeline }
            | WalFile::BackupLabel { timeline, .. } => timeline,
        }
    }
}

/// How many segments one "log" (4 GiB of WAL) holds.
pub fn segments_per_log(segment_size: u64) -> u64 {
    0x1_0000_0000 / segment_size.max(1)
}

/// The file name of segment `segno` on `timeline`.
pub fn segment_name(timeline: u32, segno: u64, segment_size: u64) -> String {
    let per_log = segments_per_log(segment_size);
    format!(
        "{timeline:08X}{:08X}{:08X}",
        segno / per_log,
        segno % per_log
    )
}

/// Whether `segment_size` is one PostgreSQL allows (a power of two, 1 MiB to 1 GiB).
pub fn valid_segment_size(segment_size: u64) -> bool {
    segment_size.is_power_of_two() && (1 << 20..=1 << 30).contains(&segment_size)
}

/// One line of a timeline history file: `parent` ended at `switchpoint`, where the
/// next timeline of the file (or the file's own timeline, for the last line) began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineSwitch {
    /// The timeline that ended.
    pub parent: u32,
    /// The LSN at which it was switched away from.
    pub switchpoint: Lsn,
}

/// Parse a `TTTTTTTT.history` file (lines `parent<TAB>X/Y<TAB>reason`, `#` comments).
pub fn parse_history(text: &str) -> Result<Vec<TimelineSwitch>> {
    let mut out: Vec<TimelineSwitch> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(tli), Some(lsn)) = (fields.next(), fields.next()) else {
            return Err(Error::Corrupt(format!(
                "timeline history: bad line {line:?}"
            )));
        };
        let parent: u32 = tli
            .parse()
            .map_err(|_| Error::Corrupt(format!("timeline history: bad timeline in {line:?}")))?;
        let switchpoint: Lsn = lsn
            .parse()
            .map_err(|_| Error::Corrupt(format!("timeline history: bad LSN in {line:?}")))?;
        if out
            .last()
            .is_some_and(|p| p.parent >= parent || p.switchpoint > switchpoint)
        {
            return Err(Error::Corrupt(
                "timeline history: timelines or switch points out of order".into(),
            ));
        }
        out.push(TimelineSwitch {
            parent,
            switchpoint,
        });
    }
    Ok(out)
}

/// The timeline that holds `lsn` on the way to a timeline whose history is `history`
/// (its ancestors' switch points, oldest first) and which is `target` itself.
pub fn timeline_at(history: &[TimelineSwitch], target: u32, lsn: Lsn) -> u32 {
    history
        .iter()
        .find(|s| lsn < s.switchpoint)
        .map_or(target, |s| s.parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = DEFAULT_SEGMENT_SIZE;

    #[test]
    fn lsn_round_trips_and_rejects_garbage() {
        let l: Lsn = "0/2000028".parse().unwrap();
        assert_eq!(l.0, 0x0200_0028);
        assert_eq!(l.to_string(), "0/2000028");
        let big: Lsn = "1A/FF000000".parse().unwrap();
        assert_eq!(big.to_string(), "1A/FF000000");
        for bad in ["", "0", "/1", "0/", "x/1", "123456789/0", "0/1/2"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn names_parse_and_print() {
        let s = WalFile::parse("000000010000000A000000FF", SEG).unwrap();
        assert_eq!(
            s,
            WalFile::Segment {
                timeline: 1,
                segno: 0xA * 256 + 0xFF
            }
        );
        assert_eq!(
            segment_name(1, 0xA * 256 + 0xFF, SEG),
            "000000010000000A000000FF"
        );
        assert_eq!(
            WalFile::parse("00000002.history", SEG).unwrap(),
            WalFile::History { timeline: 2 }
        );
        assert_eq!(
            WalFile::parse("000000010000000000000002.00000028.backup", SEG).unwrap(),
            WalFile::BackupLabel {
                timeline: 1,
                segno: 2,
                offset: 0x28
            }
        );
        assert_eq!(
            WalFile::parse("000000010000000000000003.partial", SEG).unwrap(),
            WalFile::Partial {
                timeline: 1,
                segno: 3
            }
        );
        for bad in [
            "",
            "../etc/passwd",
            "00000001000000000000000",
            "0000000100000000000001000", // 25 characters
            "000000010000000000000100",  // segment 0x100 does not exist with 16 MiB
            "0000000g0000000000000001",
            "1.history",
            "000000010000000000000002.backup",
        ] {
            assert!(WalFile::parse(bad, SEG).is_err(), "{bad:?} parsed");
        }
        // With 64 MiB segments a log holds 64 of them.
        assert_eq!(segments_per_log(64 << 20), 64);
        assert!(WalFile::parse("000000010000000000000040", 64 << 20).is_err());
        assert!(valid_segment_size(SEG) && !valid_segment_size(3 << 20));
    }

    #[test]
    fn lsn_to_segment() {
        let l: Lsn = "0/2000028".parse().unwrap();
        assert_eq!(l.segment(SEG), 2);
        let l: Lsn = "1/0".parse().unwrap();
        assert_eq!(
            segment_name(1, l.segment(SEG), SEG),
            "000000010000000100000000"
        );
    }

    #[test]
    fn history_files() {
        let text = "1\t0/3000000\tno recovery target specified\n\n\
                    2\t0/5000A0\tat restore point \"x\"\n";
        let h = parse_history(text);
        assert!(h.is_err(), "switch points going backwards must be refused");
        let text = "1\t0/3000000\tno recovery target specified\n2\t0/5000000\treason\n";
        let h = parse_history(text).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(timeline_at(&h, 3, "0/1000000".parse().unwrap()), 1);
        assert_eq!(timeline_at(&h, 3, "0/3000000".parse().unwrap()), 2);
        assert_eq!(timeline_at(&h, 3, "0/6000000".parse().unwrap()), 3);
        assert!(parse_history("garbage").is_err());
        assert!(parse_history("# comment only\n").unwrap().is_empty());
    }
}
