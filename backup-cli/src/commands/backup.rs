//! `kaizen-backup backup [NAME]`.

use backup_core::backup::{self, BackupOptions, BackupOutcome};
use backup_core::lock::LockGuard;
use backup_core::manifest::Kind;
use backup_core::util::human_size;
use backup_core::{Result, success};
use backup_verify::failure_error;
use tracing::{info, warn};

use crate::cli::BackupArgs;
use crate::ctx::{Ctx, log_prune_report};

/// Log the old scripts' success lines.
fn report(outcome: &BackupOutcome, targets: &[backup::Target]) {
    let m = &outcome.manifest;
    success!("Backup completed successfully");
    for t in targets {
        let url = t.storage.url();
        if !outcome.committed.contains(&url) {
            continue;
        }
        match t.storage.local_path(&m.object) {
            Some(p) => info!("Backup file: {}", p.display()),
            None => info!("Backup file: {}/{}", url.trim_end_matches('/'), m.object),
        }
    }
    info!("Backup size: {}", human_size(m.size_bytes));
    info!(
        "Database: {}, tables: {}, duration: {:.1}s, sha256: {}",
        m.database,
        m.counts.tables,
        outcome.duration.as_secs_f64(),
        &m.sha256[..m.sha256.len().min(12)]
    );
    for (url, why) in &outcome.failed_optional {
        warn!("Optional target {url} failed: {why}");
    }
}

pub async fn run(ctx: &Ctx, mut args: BackupArgs) -> Result<()> {
    let name = args
        .name
        .clone()
        .unwrap_or_else(backup_core::name::default_name);
    args.name = Some(name.clone());
    backup_core::name::validate(&name)?;
    let targets = ctx.targets()?;
    let mut opts = ctx.backup_options(name)?;
    opts.pinned = args.pin;
    if args.physical {
        opts.kind = Kind::Physical;
        // pg_basebackup's stream is not compressed by the server: zstd here, unless
        // compression is off.
        if let backup::Compression::Gzip(_) = opts.compression {
            opts.compression = backup::Compression::Zstd(3);
        }
    }
    if let Some(j) = args.jobs {
        if j == 0 {
            return Err(backup_core::Error::usage("--jobs must be at least 1"));
        }
        opts.settings.jobs = j;
    }
    // One run per database and storage at a time (across pods and hosts).
    let mut guards = Vec::new();
    let mut usable = Vec::with_capacity(targets.len());
    for t in targets {
        match ctx
            .lock(
                t.storage.clone(),
                ctx.database(),
                "backup",
                args.lock_timeout,
            )
            .await
        {
            Ok(g) => {
                guards.push(g);
                usable.push(t.clone());
            }
            // An optional target that cannot be locked (unreachable, busy) is left out.
            Err(e) if t.optional => {
                warn!("Optional target {} left out: {e}", t.storage.url());
            }
            Err(e) => {
                release_all(ctx, guards).await;
                return Err(e);
            }
        }
    }
    // What killed runs left in these storages (their lock is gone, or their process).
    let stale_after = ctx.lock_options(args.lock_timeout).stale_after;
    for (g, t) in guards.iter().zip(&usable) {
        if let Err(e) =
            backup_core::leftovers::clean_storage(t.storage.as_ref(), Some(g.owner()), stale_after)
                .await
        {
            warn!(
                "Could not look for unfinished uploads in {}: {e}",
                t.storage.url()
            );
        }
    }
    let result = locked_backup(ctx, &args, &usable, opts).await;
    release_all(ctx, guards).await;
    result
}

async fn release_all(ctx: &Ctx, guards: Vec<LockGuard>) {
    futures::future::join_all(guards.into_iter().map(|g| ctx.release(g))).await;
}

async fn locked_backup(
    ctx: &Ctx,
    args: &BackupArgs,
    targets: &[backup::Target],
    mut opts: BackupOptions,
) -> Result<()> {
    let c = ctx.config();
    let pg = &c.database;
    let bar = crate::progress::Bar::start("backup", ctx.progress);
    opts.progress = bar.callback();
    let result = if args.physical {
        backup::run_physical(pg, targets, opts, ctx.cancel.clone()).await
    } else {
        backup::run(pg, targets, opts, ctx.cancel.clone()).await
    };
    bar.finish();
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            let name = args.name.as_deref().unwrap_or_default();
            ctx.reporter
                .backup_failed(ctx.database(), name, targets, &e)
                .await;
            return Err(e);
        }
    };
    report(&outcome, targets);
    ctx.reporter.backup_succeeded(&outcome).await;
    // The server answered: drop what killed restores and verifications left on it.
    backup_core::claim::clean_server(pg).await;
    if args.verify || c.backup.after.verify {
        let record = ctx.verify(&outcome.manifest.name, false).await?;
        if let Some(e) = failure_error(&record) {
            return Err(e);
        }
    }
    // Retention runs only after a good backup, and only for this database.
    if c.backup.after.prune && !args.no_prune && ctx.retention().is_active() {
        let reports = ctx.prune(Some(&pg.name), false, None, true).await?;
        for r in &reports {
            log_prune_report(r);
        }
    }
    Ok(())
}
