//! `kaizen-backup prune [--dry-run] [--json]`, `pin NAME`, `unpin NAME`.

use backup_core::prune;
use backup_core::{Error, Event, EventKind, Result, success};
use tracing::info;

use crate::ctx::{Ctx, log_prune_report};

pub async fn run(ctx: &Ctx, dry_run: bool, json: bool, lock_timeout: Option<u64>) -> Result<()> {
    if !ctx.retention().is_active() {
        info!(
            "No retention rule is configured (retention.keep_last, max_age_days, keep_daily, ...): every backup is kept"
        );
    }
    let reports = ctx.prune(None, dry_run, lock_timeout, false).await?;
    for r in &reports {
        log_prune_report(r);
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
        crate::output::emit(
            serde_json::to_string_pretty(&reports).map_err(|e| Error::other(e.to_string()))?,
        );
    }
    if !dry_run {
        let mut ev = Event::new(EventKind::PruneCompleted, ctx.database());
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
    let mut found = false;
    for t in ctx.targets()? {
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
