//! `kaizen-backup backup [NAME]`.

use backup_core::backup::{self, BackupOptions, BackupOutcome};
use backup_core::lock;
use backup_core::util::human_size;
use backup_core::{Result, success};
use tracing::{info, warn};

use crate::app::Ctx;
use crate::cli::BackupArgs;
use crate::config;

/// Build the options of a backup from the configuration.
pub fn options(ctx: &Ctx, name: String) -> Result<BackupOptions> {
    let c = ctx.config();
    let mut opts = BackupOptions::new(name);
    opts.compression = c.backup.compression()?;
    opts.space_check = c.backup.space_check;
    opts.space_ratio = c.backup.space_ratio;
    opts.row_counts = c.backup.row_counts;
    opts.extra_args = c.backup.pg_dump_args.clone();
    opts.jobs = c.backup.jobs;
    opts.staging_dir = c.backup.staging_dir.clone();
    opts.cleanup_timeout = c.storage.options.timeouts.cleanup();
    opts.encryption = c.encryption.clone();
    Ok(opts)
}

/// Log the old scripts' success lines.
pub fn report(outcome: &BackupOutcome, targets: &[backup::Target]) {
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

fn name_of(args: &BackupArgs) -> String {
    args.name.clone().unwrap_or_default()
}

pub async fn run(ctx: &Ctx, mut args: BackupArgs) -> Result<()> {
    let c = ctx.config();
    let name = args
        .name
        .clone()
        .unwrap_or_else(backup_core::name::default_name);
    args.name = Some(name.clone());
    backup_core::name::validate(&name)?;
    let targets = config::open_targets(c)?;
    let pg = c.database.clone();
    let mut opts = options(ctx, name.clone())?;
    opts.pinned = args.pin;
    if let Some(j) = args.jobs {
        if j == 0 {
            return Err(backup_core::Error::usage("--jobs must be at least 1"));
        }
        opts.jobs = j;
    }
    // One run per database and storage at a time (across pods and hosts).
    let mut guards = Vec::new();
    let mut usable = Vec::with_capacity(targets.len());
    for t in targets {
        match lock::acquire(
            t.storage.clone(),
            &pg.name,
            "backup",
            c.lock.options(args.lock_timeout),
        )
        .await
        {
            Ok(g) => {
                guards.push(g);
                usable.push(t);
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
    let stale_after = c.lock.options(args.lock_timeout).stale_after;
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
    let result = locked_backup(ctx, &args, &pg, &usable, opts).await;
    release_all(ctx, guards).await;
    result
}

async fn release_all(ctx: &Ctx, guards: Vec<lock::LockGuard>) {
    futures::future::join_all(
        guards
            .into_iter()
            .map(|g| crate::commands::release_lock(ctx, g)),
    )
    .await;
}

async fn locked_backup(
    ctx: &Ctx,
    args: &BackupArgs,
    pg: &backup_core::PgConfig,
    targets: &[backup::Target],
    mut opts: BackupOptions,
) -> Result<()> {
    let c = ctx.config();
    let bar = crate::progress::Bar::start("backup", ctx.progress);
    opts.progress = bar.callback();
    let result = backup::run(pg, targets, opts, ctx.cancel.clone()).await;
    bar.finish();
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            crate::events::backup_failed(ctx, &name_of(args), targets, &e).await;
            return Err(e);
        }
    };
    report(&outcome, targets);
    crate::events::backup_succeeded(ctx, &outcome).await;
    // The server answered: drop what killed restores and verifications left on it.
    backup_core::claim::clean_server(pg).await;
    if args.verify || c.backup.verify {
        crate::commands::verify::run(ctx, &outcome.manifest.name, false, false).await?;
    }
    // Retention runs only after a good backup, and only for this database.
    if c.backup.prune && !args.no_prune && c.retention.is_active() {
        let reports =
            crate::commands::prune::prune_targets(ctx, Some(&pg.name), false, None, true).await?;
        for r in &reports {
            crate::commands::prune::log_report(r);
        }
    }
    Ok(())
}
