//! The prune pipeline: apply the retention policy to what a storage holds.
//!
//! Computed from the storage (manifests and verify records), never from local state.
//! A removed backup loses its manifest first, then its verify record, then its data,
//! so an interrupted prune never leaves something listed as a valid backup.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::{info, warn};

use crate::catalog::{self, BackupEntry, Catalog};
use crate::error::Result;
use crate::lease::{self, Leases};
use crate::manifest::Manifest;
use crate::retention::{Candidate, KeepReason, RetentionPolicy, decide, decide_physical};
use crate::storage::Storage;

/// How to prune.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Report only; delete nothing.
    pub dry_run: bool,
    /// Only this database's backups (None: every database in the storage).
    pub database: Option<String>,
    /// Leftovers without a manifest younger than this are left alone (they may be in progress).
    pub incomplete_grace: Duration,
    /// The current time (passed in for reproducible tests).
    pub now: DateTime<Utc>,
    /// A lease not refreshed for this long belongs to a dead run (`lock.stale_after_secs`).
    pub lease_stale_after: Duration,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            database: None,
            incomplete_grace: Duration::from_secs(24 * 3600),
            now: Utc::now(),
            lease_stale_after: Duration::from_secs(600),
        }
    }
}

/// One backup's fate.
#[derive(Debug, Clone, Serialize)]
pub struct PruneEntry {
    /// Backup name.
    pub name: String,
    /// Its database.
    pub database: String,
    /// When it finished.
    pub created_at: DateTime<Utc>,
    /// Whether it is (or would be, with --dry-run) deleted.
    pub removed: bool,
    /// Why it is kept.
    pub keep: Vec<KeepReason>,
    /// Until when Object Lock keeps it (with [`KeepReason::KeptByLock`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<DateTime<Utc>>,
}

/// What a prune did or would do.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// The storage (redacted URL).
    pub target: String,
    /// Whether nothing was deleted on purpose.
    pub dry_run: bool,
    /// Every backup considered, newest first per database.
    pub backups: Vec<PruneEntry>,
    /// Incomplete leftovers deleted (or that would be).
    pub incomplete_removed: Vec<String>,
    /// Unfinished uploads of dead runs aborted (or that would be): keys they were for.
    pub uploads_aborted: Vec<String>,
    /// Deletions that failed.
    pub errors: Vec<String>,
    /// What the physical backups that stay need of the WAL archive.
    #[serde(skip)]
    pub retained_physical: Vec<crate::manifest::PhysicalInfo>,
    /// WAL files deleted (or that would be): none is needed by a retained physical backup.
    pub wal_removed: Vec<String>,
    /// WAL files retention would delete but that are still under S3 Object Lock.
    pub wal_kept_by_lock: Vec<String>,
}

impl PruneReport {
    /// Names of removed backups.
    pub fn removed(&self) -> impl Iterator<Item = &PruneEntry> {
        self.backups.iter().filter(|b| b.removed)
    }
}

/// Apply `policy` to `storage`.
pub async fn run(
    storage: &dyn Storage,
    policy: &RetentionPolicy,
    opts: &PruneOptions,
) -> Result<PruneReport> {
    let cat = catalog::scan(storage).await?;
    let leases = lease::scan(storage, opts.lease_stale_after, opts.now).await?;
    let mut report = PruneReport {
        target: storage.url(),
        dry_run: opts.dry_run,
        ..Default::default()
    };
    for (mut entry, b) in plan(&cat, &leases, policy, opts.database.as_deref(), opts.now) {
        if entry.removed {
            match locked_until(storage, &b.manifest).await {
                Ok(None) => {}
                Ok(Some(until)) => {
                    info!(
                        "Keeping {} although retention would delete it: Object Lock keeps it until {}",
                        entry.name,
                        until.format("%Y-%m-%d %H:%M:%S UTC")
                    );
                    entry.removed = false;
                    entry.keep = vec![KeepReason::KeptByLock];
                    entry.locked_until = Some(until);
                }
                Err(e) => {
                    warn!("Could not read the Object Lock of {}: {e}", entry.name);
                    report.errors.push(format!("{}: {e}", entry.name));
                    entry.removed = false;
                }
            }
        }
        if entry.keep.contains(&KeepReason::InUse)
            && let Some(h) = leases.holders(&entry.name).next()
        {
            info!(
                "Keeping {} although retention would delete it: it is being read ({})",
                entry.name,
                h.describe()
            );
        }
        if entry.removed && !opts.dry_run {
            if let Err(e) = delete_backup(storage, &b.manifest).await {
                warn!("Could not delete {}: {e}", entry.name);
                report.errors.push(format!("{}: {e}", entry.name));
                continue;
            }
            info!("Deleted backup {} ({})", entry.name, entry.database);
        }
        if !entry.removed
            && let Some(p) = &b.manifest.physical
        {
            report.retained_physical.push(p.clone());
        }
        report.backups.push(entry);
    }
    for key in &leases.expired {
        if opts.dry_run {
            continue;
        }
        match storage.delete(key).await {
            Ok(()) => info!("Deleted {key}, the lease of a run that is gone"),
            Err(e) => report.errors.push(format!("{key}: {e}")),
        }
    }
    let grace =
        chrono::Duration::from_std(opts.incomplete_grace).unwrap_or(chrono::Duration::days(1));
    for o in &cat.incomplete {
        let old = o.last_modified.is_some_and(|t| opts.now - t > grace);
        if !old {
            continue;
        }
        if !opts.dry_run {
            if let Err(e) = storage.delete(&o.key).await {
                report.errors.push(format!("{}: {e}", o.key));
                continue;
            }
            info!("Deleted incomplete leftover {}", o.key);
        }
        report.incomplete_removed.push(o.key.clone());
    }
    Ok(report)
}

/// What retention decides for each backup of `cat` (of `database` only, when given):
/// newest first per database and kind, each with the backup it is about. Retention applies
/// per database and per kind (physical backups never count towards, or push out, logical
/// ones); a backup that retention would remove but that is being read (a live lease in
/// `leases`) is kept as [`KeepReason::InUse`]. What `prune` deletes, and what a report
/// shows it would.
pub fn plan<'a>(
    cat: &'a Catalog,
    leases: &Leases,
    policy: &RetentionPolicy,
    database: Option<&str>,
    now: DateTime<Utc>,
) -> Vec<(PruneEntry, &'a BackupEntry)> {
    let mut by_db: BTreeMap<(&str, bool), Vec<&BackupEntry>> = BTreeMap::new();
    for b in &cat.backups {
        if database.is_none_or(|d| d == b.manifest.database) {
            by_db
                .entry((b.manifest.database.as_str(), b.manifest.physical.is_some()))
                .or_default()
                .push(b);
        }
    }
    let mut out = Vec::new();
    for ((db, physical), entries) in by_db {
        let candidates: Vec<Candidate> = entries
            .iter()
            .map(|b| Candidate {
                name: b.manifest.name.clone(),
                time: b.manifest.finished_at,
                pinned: b.manifest.pinned,
                verified: b.verify.as_ref().map(|v| v.passed && !v.quick),
                in_progress: false,
            })
            .collect();
        let by_name: HashMap<&str, &BackupEntry> = entries
            .iter()
            .map(|b| (b.manifest.name.as_str(), *b))
            .collect();
        let decisions = if physical {
            decide_physical(policy, &candidates, now)
        } else {
            decide(policy, &candidates, now)
        };
        for d in decisions {
            let Some(entry) = by_name.get(d.name.as_str()).copied() else {
                continue;
            };
            let mut removed = d.remove();
            let mut keep = d.keep;
            if removed && leases.holders(&d.name).next().is_some() {
                removed = false;
                keep.push(KeepReason::InUse);
            }
            out.push((
                PruneEntry {
                    name: d.name,
                    database: db.to_string(),
                    created_at: entry.manifest.finished_at,
                    removed,
                    keep,
                    locked_until: None,
                },
                entry,
            ));
        }
    }
    out
}

/// The latest retain-until date among a backup's objects, if one is still in the future.
async fn locked_until(storage: &dyn Storage, m: &Manifest) -> Result<Option<DateTime<Utc>>> {
    let mut keys = vec![
        Manifest::key_for(&m.name),
        Manifest::verify_key_for(&m.name),
        m.object.clone(),
    ];
    if let Some(r) = &m.roles {
        keys.push(r.object.clone());
    }
    let mut latest = None;
    for key in keys {
        latest = latest.max(storage.locked_until(&key).await?);
    }
    Ok(latest)
}

/// Delete one backup: manifest first (it stops being listed), then the verify record,
/// the roles object, then data.
pub async fn delete_backup(storage: &dyn Storage, m: &Manifest) -> Result<()> {
    storage.delete(&Manifest::key_for(&m.name)).await?;
    storage.delete(&Manifest::verify_key_for(&m.name)).await?;
    if let Some(r) = &m.roles {
        storage.delete(&r.object).await?;
    }
    storage.delete(&m.object).await
}

/// Set or clear a backup's `pinned` flag (rewrites its manifest).
pub async fn set_pinned(storage: &dyn Storage, name: &str, pinned: bool) -> Result<Manifest> {
    crate::name::validate(name)?;
    let key = Manifest::key_for(name);
    let mut m = match crate::storage::get_bytes(storage, &key).await {
        Ok(b) => Manifest::from_json(&b)?,
        Err(crate::Error::NotFound(_)) => {
            return Err(crate::Error::NotFound(format!(
                "backup {name:?} in {}",
                storage.url()
            )));
        }
        Err(e) => return Err(e),
    };
    m.pinned = pinned;
    storage
        .put_replace(&key, bytes::Bytes::from(m.to_json()?))
        .await?;
    Ok(m)
}
