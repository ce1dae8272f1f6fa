//! Pipelines more than one command runs: verification (`verify`, and `backup` with
//! `--verify`) and pruning (`prune`, and `backup` after a good backup).

use std::time::Instant;

use backup_core::prune::{self, PruneOptions, PruneReport};
use backup_core::retention::KeepReason;
use backup_core::{Event, EventKind, Result, VerifyContext, VerifyRecord};
use backup_verify::{failure_error, store_record};
use tracing::{info, warn};

use super::Ctx;

impl Ctx {
    /// Verify `<BACKUP>`. The record is stored beside the backup and announced
    /// (`verify.succeeded` or `verify.failed`); a failed check is in the record (see
    /// [`failure_error`]), an error is what kept the checks from running.
    pub async fn verify(&self, spec: &str, quick: bool) -> Result<VerifyRecord> {
        let resolved = self.resolve(spec).await?;
        if !quick {
            // A key that does not match is said as such, and records nothing about the backup.
            self.check_key(&resolved).await?;
        }
        let started = Instant::now();
        let vctx = VerifyContext {
            name: resolved.name.clone(),
            storage: resolved.storage.clone(),
            data_key: resolved.data_key.clone(),
            manifest: resolved.manifest.clone(),
            pg: Some(self.config().database.clone()),
            wal: self
                .wal_targets()
                .ok()
                .and_then(|t| t.first())
                .map(|t| t.storage.clone()),
        };
        let opts = self.verify_options(quick, resolved.manifest.as_ref())?;
        let lease = self.lease(&resolved, "verify").await;
        let record = backup_verify::run(&vctx, &opts).await;
        self.release_lease(lease).await;
        let record = record?;
        if resolved.manifest.is_some()
            && let Err(e) = store_record(resolved.storage.as_ref(), &record).await
        {
            warn!("Could not record the verification result beside the backup: {e}");
        }
        let kind = if record.passed {
            EventKind::VerifySucceeded
        } else {
            EventKind::VerifyFailed
        };
        let database = match &resolved.manifest {
            Some(m) => m.database.clone(),
            None => self.database().to_string(),
        };
        let mut ev = Event::new(kind, database);
        ev.backup = Some(record.name.clone());
        ev.targets = vec![resolved.storage.url()];
        ev.duration_seconds = Some(started.elapsed().as_secs_f64());
        ev.error = failure_error(&record).map(|e| e.to_string());
        ev.details = serde_json::to_value(&record.checks).unwrap_or_default();
        self.reporter.send(&ev).await;
        Ok(record)
    }

    /// Prune every target for `database` (None: all databases). Each target's run lock
    /// is taken unless the caller holds it (`locked`) or nothing is deleted (`dry_run`);
    /// unfinished uploads of dead runs go too, unless the caller holds the lock (a
    /// backup cleans them itself when it starts).
    pub async fn prune(
        &self,
        database: Option<&str>,
        dry_run: bool,
        lock_timeout: Option<u64>,
        locked: bool,
    ) -> Result<Vec<PruneReport>> {
        let mut reports = Vec::new();
        let stale_after = self.lock_options(lock_timeout).stale_after;
        for (i, t) in self.targets()?.iter().enumerate() {
            let guard = if locked || dry_run {
                None
            } else {
                let name = database.unwrap_or(self.database());
                Some(
                    self.lock(t.storage.clone(), name, "prune", lock_timeout)
                        .await?,
                )
            };
            let opts = PruneOptions {
                dry_run,
                database: database.map(str::to_string),
                lease_stale_after: self.lock_options(None).stale_after,
                ..PruneOptions::default()
            };
            let mut res = prune::run(t.storage.as_ref(), self.retention(), &opts).await;
            if !locked && let Ok(report) = res.as_mut() {
                let own = guard.as_ref().map(|g| g.owner());
                let storage = t.storage.as_ref();
                let uploads = if dry_run {
                    backup_core::leftovers::dead_uploads(storage, own, stale_after).await
                } else {
                    backup_core::leftovers::clean_storage(storage, own, stale_after).await
                };
                match uploads {
                    Ok(u) => report.uploads_aborted = u.into_iter().map(|u| u.key).collect(),
                    Err(e) => report.errors.push(format!("unfinished uploads: {e}")),
                }
            }
            // WAL below the oldest physical backup that stays: this target's archive.
            if let Ok(report) = res.as_mut()
                && let Some(wal) = self.wal_targets()?.get(i)
            {
                match backup_core::walarchive::prune(
                    wal.storage.as_ref(),
                    &report.retained_physical,
                    dry_run,
                )
                .await
                {
                    Ok((removed, locked)) => {
                        report.wal_removed = removed;
                        report.wal_kept_by_lock = locked;
                    }
                    Err(e) => report.errors.push(format!("WAL archive: {e}")),
                }
                // A killed wal-push leaves its partial write here; no backup looks there.
                if !locked {
                    let storage = wal.storage.as_ref();
                    let uploads = if dry_run {
                        backup_core::leftovers::dead_uploads(storage, None, stale_after).await
                    } else {
                        backup_core::leftovers::clean_storage(storage, None, stale_after).await
                    };
                    match uploads {
                        Ok(u) => report
                            .uploads_aborted
                            .extend(u.into_iter().map(|u| format!("wal/{}", u.key))),
                        Err(e) => report
                            .errors
                            .push(format!("unfinished uploads in the WAL archive: {e}")),
                    }
                }
            }
            if let Some(g) = guard {
                self.release(g).await;
            }
            reports.push(res?);
        }
        Ok(reports)
    }
}

/// Log what a prune did (or would do).
pub fn log_prune_report(r: &PruneReport) {
    let verb = if r.dry_run { "Would delete" } else { "Deleted" };
    for b in &r.backups {
        if b.removed {
            info!(
                "{verb} {} ({}, {})",
                b.name,
                b.database,
                b.created_at.format("%Y-%m-%d %H:%M:%S")
            );
        } else if let Some(until) = b.locked_until {
            info!(
                "Keep {} ({}): kept by Object Lock until {}",
                b.name,
                b.database,
                until.format("%Y-%m-%d %H:%M:%S UTC")
            );
        } else {
            info!("Keep {} ({}): {}", b.name, b.database, reasons(&b.keep));
        }
    }
    for k in &r.incomplete_removed {
        info!("{verb} incomplete leftover {k}");
    }
    if let (Some(first), Some(last)) = (r.wal_removed.first(), r.wal_removed.last()) {
        info!(
            "{verb} WAL {first} to {last} ({} files): no retained physical backup needs them",
            r.wal_removed.len()
        );
    }
    if let (Some(first), Some(last)) = (r.wal_kept_by_lock.first(), r.wal_kept_by_lock.last()) {
        info!(
            "Keep WAL {first} to {last} ({} files): kept by Object Lock",
            r.wal_kept_by_lock.len()
        );
    }
    let verb = if r.dry_run { "Would abort" } else { "Aborted" };
    for k in &r.uploads_aborted {
        info!("{verb} the unfinished upload of {k} (its run is gone)");
    }
    for e in &r.errors {
        warn!("Prune error in {}: {e}", r.target);
    }
}

fn reasons(keep: &[KeepReason]) -> String {
    keep.iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
