//! `kaizen-backup restore <BACKUP> [TARGET_DB]`.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use backup_core::backup::{self, Target};
use backup_core::catalog::{self, Resolved};
use backup_core::restore::{self, RestoreOptions};
use backup_core::util::human_size;
use backup_core::{Error, Result, Storage, success};
use tracing::{info, warn};

use crate::app::{Ctx, interactive};
use crate::cli::RestoreArgs;
use crate::config;

/// Resolve `<BACKUP>` in the first configured target (or as a file path).
pub async fn resolve(ctx: &Ctx, spec: &str) -> Result<Resolved> {
    let c = ctx.config();
    let targets = config::open_targets(c)?;
    let primary = targets
        .first()
        .map(|t| t.storage.clone())
        .ok_or_else(|| Error::usage("no storage target configured"))?;
    let opts = c.storage.options.clone();
    catalog::resolve(
        &primary,
        spec,
        &c.database.name,
        move |dir: &Path| -> Result<Arc<dyn Storage>> {
            backup_storage::open(&dir.display().to_string(), &opts)
        },
    )
    .await
}

pub async fn run(ctx: &Ctx, args: RestoreArgs) -> Result<()> {
    let c = ctx.config();
    let target_db = args
        .target_db
        .clone()
        .unwrap_or_else(|| c.database.name.clone());
    let resolved = resolve(ctx, &args.backup).await?;
    info!("Starting restore: {} -> {target_db}", resolved.name);
    // Two restores into the same database never interleave.
    let lock_storage = config::open_targets(c)?
        .into_iter()
        .next()
        .map(|t| t.storage)
        .ok_or_else(|| Error::usage("no storage target configured"))?;
    let guard = backup_core::lock::acquire(
        lock_storage,
        &target_db,
        "restore",
        c.lock.options(args.lock_timeout),
    )
    .await?;
    let result = locked_restore(ctx, &args, &target_db, resolved).await;
    crate::commands::release_lock(ctx, guard).await;
    result
}

async fn locked_restore(
    ctx: &Ctx,
    args: &RestoreArgs,
    target_db: &str,
    resolved: Resolved,
) -> Result<()> {
    let c = ctx.config();
    // Keys are checked before anything is touched (a missing key refuses at once).
    let decoder = crate::codecs::decoder(c, resolved.manifest.as_ref())?;
    let pg = c.database.clone();
    let target_db = target_db.to_string();

    let admin = pg.connect_to(&pg.maintenance_db).await?;
    let exists = restore::database_exists(&admin, &target_db).await?;
    if exists && config::is_production(c) {
        confirm_production(&target_db, args.confirm_production.as_deref())?;
    }
    if exists && c.restore.safety_backup && !args.no_safety_backup {
        safety_backup(ctx, &target_db).await?;
    }
    drop(admin);

    let mut opts = RestoreOptions::new(&target_db);
    opts.jobs = args.jobs.unwrap_or(c.restore.jobs);
    opts.no_owner = c.restore.no_owner;
    opts.role = c.restore.role.clone();
    opts.temp_dir = c.restore.temp_dir.clone();
    opts.allow_replace = true;
    opts.decoder = decoder;
    let bar = crate::progress::Bar::start("restore", ctx.progress);
    opts.progress = bar.callback();
    let result = restore::run(&pg, &resolved, opts, ctx.cancel.clone()).await;
    bar.finish();
    let outcome = result?;
    success!("Restore completed successfully");
    info!(
        "Database {} {} from {} ({}, checksum {}) in {:.1}s",
        outcome.target_db,
        if outcome.replaced {
            "replaced"
        } else {
            "created"
        },
        resolved.name,
        human_size(outcome.size_bytes),
        if outcome.checksum_verified {
            "verified"
        } else {
            "not available"
        },
        outcome.duration.as_secs_f64()
    );
    Ok(())
}

/// The old script's production prompt, or `--confirm-production DB` without a terminal.
fn confirm_production(target_db: &str, confirmed: Option<&str>) -> Result<()> {
    warn!("PRODUCTION ENVIRONMENT DETECTED");
    warn!("You are about to restore database: {target_db}");
    warn!("This will OVERWRITE existing data!");
    if let Some(c) = confirmed {
        if c == target_db {
            info!("Confirmed by --confirm-production {c}");
            return Ok(());
        }
        return Err(Error::Refused(format!(
            "--confirm-production names {c:?}, but the target is {target_db:?}; nothing was changed"
        )));
    }
    if !interactive() {
        return Err(Error::Refused(format!(
            "refusing to replace production database {target_db} without confirmation: run on a terminal, or pass --confirm-production {target_db}; nothing was changed"
        )));
    }
    eprint!("Type 'RESTORE' to continue or Ctrl+C to abort: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Error::io("reading the confirmation", e))?;
    if line.trim() == "RESTORE" {
        Ok(())
    } else {
        Err(Error::Refused(
            "restore not confirmed; nothing was changed".into(),
        ))
    }
}

/// Back up the current contents of `db` before it is replaced.
async fn safety_backup(ctx: &Ctx, db: &str) -> Result<()> {
    let c = ctx.config();
    let targets = config::open_targets(c)?;
    let Some(first) = targets.into_iter().next() else {
        return Err(Error::usage("no storage target configured"));
    };
    let clean: String = db
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '_' {
                ch
            } else {
                '_'
            }
        })
        .collect();
    let name = format!(
        "safety_{clean}_{}",
        chrono::Utc::now().format("%Y%m%d_%H%M%S")
    );
    info!("Taking a safety backup of {db} first: {name}");
    let mut opts = crate::commands::backup::options(ctx, name)?;
    opts.kind = "safety".into();
    let pg = c.database.clone().with_dbname(db);
    let target = Target {
        storage: first.storage,
        optional: false,
    };
    let outcome = backup::run(&pg, &[target], opts, ctx.cancel.clone()).await.map_err(|e| {
        Error::other(format!(
            "the safety backup of {db} failed, so nothing was restored: {e} (use --no-safety-backup to skip it)"
        ))
    })?;
    success!(
        "Safety backup {} saved ({})",
        outcome.manifest.name,
        human_size(outcome.manifest.size_bytes)
    );
    Ok(())
}
