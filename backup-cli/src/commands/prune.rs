//! `kaizen-backup prune [--dry-run] [--json]`, `pin NAME`, `unpin NAME`.

use backup_core::lock;
use backup_core::prune::{self, PruneOptions, PruneReport};
use backup_core::retention::KeepReason;
use backup_core::{Error, Event, EventKind, Result, success};
use tracing::{info, warn};

use crate::app::Ctx;
use crate::config;

/// Prune every configured target for `database` (None: all databases), taking the lock.
pub async fn prune_targets(
    ctx: &Ctx,
    database: Option<&str>,
    dry_run: bool,
    lock_timeout: Option<u64>,
    locked: bool,
) -> Result<Vec<PruneReport>> {
    let c = ctx.config();
    let targets = config::open_targets(c)?;
    let mut reports = Vec::new();
    for t in &targets {
        let guard = if locked || dry_run {
            None
        } else {
            let name = database.unwrap_or(&c.database.name);
            Some(
                lock::acquire(
                    t.storage.clone(),
                    name,
                    "prune",
                    c.lock.options(lock_timeout),
                )
                .await?,
            )
        };
        let opts = PruneOptions {
            dry_run,
            database: database.map(str::to_string),
            lease_stale_after: c.lock.options(None).stale_after,
            ..PruneOptions::default()
        };
        let mut res = prune::run(t.storage.as_ref(), &c.retention, &opts).await;
        // Unfinished uploads of dead runs (a backup run cleans them itself when it starts).
        if !locked && let Ok(report) = res.as_mut() {
            let stale_after = c.lock.options(lock_timeout).stale_after;
            let own = guard.as_ref().map(|g| g.owner());
            let uploads = if dry_run {
                backup_core::leftovers::dead_uploads(t.storage.as_ref(), own, stale_after).await
            } else {
                backup_core::leftovers::clean_storage(t.storage.as_ref(), own, stale_after).await
            };
            match uploads {
                Ok(u) => report.uploads_aborted = u.into_iter().map(|u| u.key).collect(),
                Err(e) => report.errors.push(format!("unfinished uploads: {e}")),
            }
        }
        if let Some(g) = guard {
            crate::commands::release_lock(ctx, g).await;
        }
        reports.push(res?);
    }
    Ok(reports)
}

fn reasons(keep: &[KeepReason]) -> String {
    keep.iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Log what a prune did (or would do).
pub fn log_report(r: &PruneReport) {
    let verb = if r.dry_run { "Would delete" } else { "Deleted" };
    for b in &r.backups {
        if b.removed {
            info!(
                "{verb} {} ({}, {})",
                b.name,
                b.database,
                b.created_at.format("%Y-%m-%d %H:%M:%S")
            );
        } else {
            info!("Keep {} ({}): {}", b.name, b.database, reasons(&b.keep));
        }
    }
    for k in &r.incomplete_removed {
        info!("{verb} incomplete leftover {k}");
    }
    let verb = if r.dry_run { "Would abort" } else { "Aborted" };
    for k in &r.uploads_aborted {
        info!("{verb} the unfinished upload of {k} (its run is gone)");
    }
    for e in &r.errors {
        warn!("Prune error in {}: {e}", r.target);
    }
}

pub async fn run(ctx: &Ctx, dry_run: bool, json: bool, lock_timeout: Option<u64>) -> Result<()> {
    let c = ctx.config();
    if !c.retention.is_active() {
        info!(
            "No retention rule is configured (retention.keep_last, max_age_days, keep_daily, ...): every backup is kept"
        );
    }
    let reports = prune_targets(ctx, None, dry_run, lock_timeout, false).await?;
    for r in &reports {
        log_report(r);
        let removed = r.removed().count();
        if dry_run {
            info!(
                "{}: {removed} backup(s) would be deleted, {} kept (dry run: nothing deleted)",
                r.target,
                r.backups.len() - removed
            );
        } else {
            success!(
                "{}: {removed} backup(s) deleted, {} kept",
                r.target,
                r.backups.len() - removed
            );
        }
    }
    if json {
        crate::app::emit(
            serde_json::to_string_pretty(&reports).map_err(|e| Error::other(e.to_string()))?,
        );
    }
    if !dry_run {
        let mut ev = Event::new(EventKind::PruneCompleted, &c.database.name);
        ev.targets = reports.iter().map(|r| r.target.clone()).collect();
        ev.details = serde_json::json!({
            "deleted": reports.iter().flat_map(|r| r.removed().map(|b| b.name.clone())).collect::<Vec<_>>(),
            "errors": reports.iter().flat_map(|r| r.errors.clone()).collect::<Vec<_>>(),
        });
        ctx.reporter.send(&ev).await;
    }
    let errors: Vec<String> = reports.iter().flat_map(|r| r.errors.clone()).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::other(format!(
            "prune could not delete everything: {}",
            errors.join("; ")
        )))
    }
}

pub async fn pin(ctx: &Ctx, name: &str, pinned: bool) -> Result<()> {
    let targets = config::open_targets(ctx.config())?;
    let mut found = false;
    for t in &targets {
        match prune::set_pinned(t.storage.as_ref(), name, pinned).await {
            Ok(_) => {
                found = true;
                success!(
                    "{} {name} in {}",
                    if pinned { "Pinned" } else { "Unpinned" },
                    t.storage.url()
                );
            }
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    if found {
        Ok(())
    } else {
        Err(Error::NotFound(format!(
            "backup {name:?} (see `kaizen-backup list`)"
        )))
    }
}
