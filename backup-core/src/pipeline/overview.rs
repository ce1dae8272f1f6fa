//! What one storage target holds, gathered in one call: what `status` reports and what
//! `report --html` draws, and what other Kaizen services can show.
//!
//! ```text
//! backups storage ─▶ catalog::scan ─▶ backups (manifest, verify record), incomplete leftovers
//!                 ─▶ lease::scan   ─▶ prune::plan: what retention keeps, and why
//!                 ─▶ DATABASE.drill.json of every database seen: the last drills
//! WAL archive     ─▶ walarchive::list ─▶ last archived file, segments on the recovery path,
//!                                        gaps, and the stretches a restore can reach (wal.rs)
//! ```
//!
//! Nothing here writes, and nothing fails as a whole: what cannot be read is an `Err` in
//! its own field, so one unreadable part does not hide the others.

mod wal;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::catalog::{self, BackupEntry, Catalog};
use crate::codec::DecryptKeys;
use crate::drill::DrillRecord;
use crate::error::Result;
use crate::lease;
use crate::manifest::Kind;
use crate::prune::{self, PruneEntry};
use crate::retention::RetentionPolicy;
use crate::storage::Storage;

pub use wal::{LastWal, RecoveryStretch, WalGap, WalOverview, WalRun, last_of};

/// What to gather.
#[derive(Debug, Clone)]
pub struct OverviewOptions {
    /// The configured database: its newest backup and its drill are what `status` judges.
    pub database: String,
    /// The retention rules `prune` applies.
    pub policy: RetentionPolicy,
    /// The time ages and retention are computed at.
    pub now: DateTime<Utc>,
    /// A lease not refreshed for this long belongs to a dead run (`lock.stale_after_secs`).
    pub lease_stale_after: Duration,
    /// Keys for reading a timeline history file from an encrypted WAL archive (without
    /// them, the recovery path across timelines is approximated).
    pub keys: DecryptKeys,
}

/// The last drill of one database.
#[derive(Debug)]
pub struct DrillEntry {
    /// The database the drill record is named after.
    pub database: String,
    /// Its record (None: no drill recorded).
    pub record: Result<Option<DrillRecord>>,
}

/// What [`Overview::recovery_window`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryWindow {
    /// The earliest point a restore can reach.
    pub from: DateTime<Utc>,
    /// The latest (None while nothing with a time is archived).
    pub to: Option<DateTime<Utc>>,
    /// A gap before `from`: older points need an older base backup and stop at that gap.
    pub starts_after_gap: bool,
    /// The first missing segment after `to` when archived WAL follows it.
    pub ends_before: Option<String>,
}

/// Everything about one storage target.
#[derive(Debug)]
pub struct Overview {
    /// The storage (redacted URL).
    pub target: String,
    /// When it was gathered.
    pub now: DateTime<Utc>,
    /// The configured database.
    pub database: String,
    /// Backups (newest first), verify records and incomplete leftovers.
    pub catalog: Result<Catalog>,
    /// What `prune` would do, newest first per database and kind (empty when the catalog
    /// cannot be read).
    pub retention: Result<Vec<PruneEntry>>,
    /// The retention rules applied.
    pub policy: RetentionPolicy,
    /// The WAL archive (None when no archive location was given).
    pub wal: Option<Result<WalOverview>>,
    /// The last drill of the configured database first, then of every other database
    /// with backups here.
    pub drills: Vec<DrillEntry>,
}

/// A backup as one point of a history.
#[derive(Debug, Clone)]
pub struct Point<'a> {
    /// The backup.
    pub backup: &'a BackupEntry,
    /// What retention decides about it (None when unknown).
    pub retention: Option<&'a PruneEntry>,
}

/// The backups of one database and kind (logical or physical), oldest first.
#[derive(Debug, Clone)]
pub struct Series<'a> {
    /// The database.
    pub database: &'a str,
    /// Physical backups (of the whole cluster), not dumps.
    pub physical: bool,
    /// Oldest first.
    pub points: Vec<Point<'a>>,
}

/// Gather what `backups` (and its WAL archive `wal`) hold.
pub async fn gather(
    backups: &dyn Storage,
    wal: Option<&Arc<dyn Storage>>,
    opts: &OverviewOptions,
) -> Overview {
    let catalog = catalog::scan(backups).await;
    let retention = match &catalog {
        Ok(cat) => lease::scan(backups, opts.lease_stale_after, opts.now)
            .await
            .map(|leases| {
                prune::plan(cat, &leases, &opts.policy, None, opts.now)
                    .into_iter()
                    .map(|(e, _)| e)
                    .collect()
            }),
        Err(e) => Err(crate::Error::other(format!(
            "the catalog cannot be read: {e}"
        ))),
    };
    let mut databases = vec![opts.database.clone()];
    if let Ok(cat) = &catalog {
        let seen: BTreeSet<&str> = cat
            .backups
            .iter()
            .map(|b| b.manifest.database.as_str())
            .collect();
        databases.extend(
            seen.into_iter()
                .filter(|d| *d != opts.database)
                .map(str::to_string),
        );
    }
    let mut drills = Vec::new();
    for database in databases {
        let record = DrillRecord::load(backups, &database).await;
        drills.push(DrillEntry { database, record });
    }
    let physical: Vec<&BackupEntry> = match &catalog {
        Ok(cat) => cat
            .backups
            .iter()
            .filter(|b| b.manifest.physical.is_some())
            .collect(),
        Err(_) => Vec::new(),
    };
    let wal = match wal {
        Some(store) => Some(wal::gather(store, &physical, &opts.keys).await),
        None => None,
    };
    Overview {
        target: backups.url(),
        now: opts.now,
        database: opts.database.clone(),
        catalog,
        retention,
        policy: opts.policy.clone(),
        wal,
        drills,
    }
}

impl Overview {
    /// The newest backup `database` is judged by: its newest logical backup (not a safety
    /// copy), or, in a setup with physical backups only, the newest base backup (any base
    /// backup for the configured database: it is of the whole cluster).
    pub fn newest(&self, database: &str) -> Option<&BackupEntry> {
        let cat = self.catalog.as_ref().ok()?;
        let configured = database == self.database;
        cat.latest(Some(database)).or_else(|| {
            cat.backups.iter().find(|b| {
                b.manifest.is_physical() && (configured || b.manifest.database == database)
            })
        })
    }

    /// Every database with backups here, the configured one first.
    pub fn databases(&self) -> Vec<&str> {
        let mut out = vec![self.database.as_str()];
        if let Ok(cat) = &self.catalog {
            let seen: BTreeSet<&str> = cat
                .backups
                .iter()
                .map(|b| b.manifest.database.as_str())
                .collect();
            out.extend(seen.into_iter().filter(|d| *d != self.database));
        }
        out
    }

    /// Where the recovery window starts as `status` reports it: the end of the oldest
    /// physical backup.
    pub fn window_start(&self) -> Option<DateTime<Utc>> {
        self.catalog.as_ref().ok().and_then(|cat| {
            cat.backups
                .iter()
                .rev()
                .find(|b| b.manifest.kind == Some(Kind::Physical))
                .map(|b| b.manifest.finished_at)
        })
    }

    /// The recovery window as `status` reports it: from the end of the oldest physical
    /// backup to the last archived WAL file, unless a gap in the archive cuts it. Then it
    /// is the newest gap-free stretch: from the first base backup after the last gap that
    /// a base backup bridges, to the last WAL before a gap no base backup bridges. None
    /// without a physical backup.
    pub fn recovery_window(&self) -> Option<RecoveryWindow> {
        let oldest = self.window_start()?;
        let last_wal = self.last_wal().ok().flatten().and_then(|w| w.time);
        let stretches = match &self.wal {
            Some(Ok(w)) => w.recoverable.as_slice(),
            _ => &[],
        };
        // Nothing archived yet: the window is the oldest backup's end, with no end yet.
        let Some(last) = stretches.last().filter(|_| last_wal.is_some()) else {
            return Some(RecoveryWindow {
                from: oldest,
                to: last_wal,
                starts_after_gap: false,
                ends_before: None,
            });
        };
        Some(RecoveryWindow {
            from: if stretches.len() > 1 {
                last.from
            } else {
                oldest
            },
            to: match &last.ends_before {
                None => last_wal,
                Some(_) => Some(last.to),
            },
            starts_after_gap: stretches.len() > 1,
            ends_before: last.ends_before.clone(),
        })
    }

    /// The last archived WAL file (`Ok(None)`: nothing archived, or no archive given).
    pub fn last_wal(&self) -> Result<Option<&LastWal>> {
        match &self.wal {
            None => Ok(None),
            Some(Ok(w)) => Ok(w.last.as_ref()),
            Some(Err(e)) => Err(crate::Error::other(e.to_string())),
        }
    }

    /// The last drill of `database`.
    pub fn drill(&self, database: &str) -> Option<&DrillEntry> {
        self.drills.iter().find(|d| d.database == database)
    }

    /// What retention decides about backup `name`.
    pub fn retention_of(&self, name: &str) -> Option<&PruneEntry> {
        self.retention
            .as_ref()
            .ok()
            .and_then(|r| r.iter().find(|e| e.name == name))
    }

    /// The backups per database and kind, oldest first: the histories of sizes, durations
    /// and verification outcomes. Databases in the order of [`Overview::databases`],
    /// logical before physical.
    pub fn series(&self) -> Vec<Series<'_>> {
        let Ok(cat) = &self.catalog else {
            return Vec::new();
        };
        let by_name: std::collections::HashMap<&str, &PruneEntry> = match &self.retention {
            Ok(r) => r.iter().map(|e| (e.name.as_str(), e)).collect(),
            Err(_) => Default::default(),
        };
        let mut out = Vec::new();
        for database in self.databases() {
            for physical in [false, true] {
                let points: Vec<Point<'_>> = cat
                    .backups
                    .iter()
                    .rev()
                    .filter(|b| {
                        b.manifest.database == database && b.manifest.is_physical() == physical
                    })
                    .map(|b| Point {
                        backup: b,
                        retention: by_name.get(b.manifest.name.as_str()).copied(),
                    })
                    .collect();
                if !points.is_empty() {
                    out.push(Series {
                        database,
                        physical,
                        points,
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{MemoryStorage, manifest, put_backup};

    fn opts(now: DateTime<Utc>) -> OverviewOptions {
        OverviewOptions {
            database: "db".into(),
            policy: RetentionPolicy {
                keep_last: Some(1),
                keep_verified: false,
                ..Default::default()
            },
            now,
            lease_stale_after: Duration::from_secs(600),
            keys: DecryptKeys::default(),
        }
    }

    #[tokio::test]
    async fn series_retention_and_newest() {
        let now = Utc::now();
        let s = MemoryStorage::new("overview");
        for (name, db, hours) in [("a1", "db", 30), ("a2", "db", 5), ("o1", "other", 2)] {
            let mut m = manifest(name, db, now - chrono::Duration::hours(hours));
            m.pinned = name == "a1";
            put_backup(&s, &m).await.unwrap_or_else(|e| panic!("{e}"));
        }
        let o = gather(&s, None, &opts(now)).await;
        assert_eq!(o.databases(), ["db", "other"]);
        assert_eq!(o.newest("db").map(|b| b.manifest.name.as_str()), Some("a2"));
        let series = o.series();
        assert_eq!(series.len(), 2);
        let names: Vec<&str> = series[0]
            .points
            .iter()
            .map(|p| p.backup.manifest.name.as_str())
            .collect();
        assert_eq!(names, ["a1", "a2"]);
        // keep_last 1 keeps a2; a1 stays because it is pinned.
        let a1 = o.retention_of("a1").map(|e| (e.removed, e.keep.clone()));
        assert_eq!(
            a1,
            Some((false, vec![crate::retention::KeepReason::Pinned]))
        );
        assert_eq!(o.drills.len(), 2);
        assert!(o.wal.is_none());
        assert!(matches!(o.last_wal(), Ok(None)));
    }

    #[tokio::test]
    async fn an_empty_storage_has_nothing_and_no_error() {
        let s = MemoryStorage::new("empty");
        let o = gather(&s, None, &opts(Utc::now())).await;
        assert!(o.catalog.as_ref().is_ok_and(|c| c.backups.is_empty()));
        assert!(o.series().is_empty());
        assert!(o.newest("db").is_none());
        assert_eq!(o.databases(), ["db"]);
    }
}
