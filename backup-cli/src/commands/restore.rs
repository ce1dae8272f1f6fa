//! `kaizen-backup restore <BACKUP> [TARGET_DB]`.

use std::io::Write;
use std::time::Instant;

use backup_core::backup::{self, Target};
use backup_core::catalog::Resolved;
use backup_core::manifest::Kind;
use backup_core::restore::{self, RestoreOutcome};
use backup_core::util::human_size;
use backup_core::{Error, Result, success};
use tracing::{info, warn};

use crate::cli::RestoreArgs;
use crate::config;
use crate::ctx::Ctx;
use crate::events::RestoreSubject;
use crate::output::interactive;

mod selective;

pub async fn run(ctx: &Ctx, args: RestoreArgs) -> Result<()> {
    if args.globals_only {
        return globals_only(ctx, &args).await;
    }
    let c = ctx.config();
    if args.with_dependencies && !args.is_selective() {
        return Err(Error::usage(
            "--with-dependencies goes with --table or --schema",
        ));
    }
    if args.is_selective() && args.target_db.is_none() {
        return Err(Error::usage(
            "--table/--schema restore into a new database: name it (restore BACKUP SIDE_DB --table SCHEMA.TABLE)",
        ));
    }
    let target_db = args
        .target_db
        .clone()
        .unwrap_or_else(|| c.database.name.clone());
    backup_core::pg::check_database_name(&target_db)?;
    let mut subject = RestoreSubject {
        backup: args.backup.clone().unwrap_or_default(),
        target_db: target_db.clone(),
        storage: None,
        started: Instant::now(),
    };
    let result = reported_restore(ctx, &args, &mut subject).await;
    ctx.reporter.restore_finished(&subject, &result).await;
    result.map(|_| ())
}

/// The restore, with `restore.started` sent once its backup is found.
async fn reported_restore(
    ctx: &Ctx,
    args: &RestoreArgs,
    subject: &mut RestoreSubject,
) -> Result<RestoreOutcome> {
    let c = ctx.config();
    let target_db = subject.target_db.clone();
    let resolved = ctx
        .resolve(args.backup.as_deref().unwrap_or("latest"))
        .await?;
    resolved.ensure_logical()?;
    subject.backup = resolved.name.clone();
    subject.storage = Some(resolved.storage.url());
    ctx.reporter.restore_started(subject).await;
    info!("Starting restore: {} -> {target_db}", resolved.name);
    // A target that must not be restored into is refused before anything is written.
    restore::inspect_target(&c.database, &target_db).await?;
    // Prune keeps the backup while it is read.
    let lease = ctx.lease(&resolved, "restore").await;
    let result = leased_restore(ctx, args, &target_db, resolved).await;
    ctx.release_lease(lease).await;
    result
}

async fn leased_restore(
    ctx: &Ctx,
    args: &RestoreArgs,
    target_db: &str,
    resolved: Resolved,
) -> Result<RestoreOutcome> {
    // Two restores into the same database never interleave.
    let _lock = ctx
        .lock_restore_target(target_db, args.lock_timeout)
        .await?;
    // Looked at again under the lock: another restore may have created it meanwhile.
    let exists = restore::inspect_target(&ctx.config().database, target_db).await?;
    locked_restore(ctx, args, exists, target_db, resolved).await
}

async fn locked_restore(
    ctx: &Ctx,
    args: &RestoreArgs,
    exists: bool,
    target_db: &str,
    resolved: Resolved,
) -> Result<RestoreOutcome> {
    let c = ctx.config();
    if args.is_selective() {
        return selective::run(ctx, args, exists, target_db, resolved).await;
    }
    // Keys are checked before anything is touched (a missing key refuses at once).
    let mut opts = options(ctx, args, &resolved, target_db).await?;
    let pg = &c.database;

    if exists && config::is_production(c) {
        confirm_production(target_db, args.confirm_production.as_deref())?;
    }
    if exists && c.restore.safety.safety_backup && !args.no_safety_backup {
        safety_backup(ctx, target_db).await?;
    }

    opts.allow_replace = true;
    let bar = crate::progress::Bar::start("restore", ctx.progress);
    opts.progress = bar.callback();
    let result = restore::run(pg, &resolved, opts, ctx.cancel.clone()).await;
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
    Ok(outcome)
}

/// `restore --globals-only BACKUP`: create the roles the backup needs that the server
/// lacks, and nothing else.
/// The options of a restore of `resolved` into `target_db`: its decoder (the key is
/// checked here, before anything is read or touched), its roles object, `--jobs`.
async fn options(
    ctx: &Ctx,
    args: &RestoreArgs,
    resolved: &Resolved,
    target_db: &str,
) -> Result<restore::RestoreOptions> {
    let decoder = ctx.decoder(resolved.manifest.as_ref())?;
    ctx.check_key(resolved).await?;
    let keys = crate::codecs::keys_for(ctx.config(), resolved.manifest.as_ref())?;
    let roles = restore::load_roles(resolved, &keys).await?;
    let mut opts = ctx.restore_options(target_db);
    if let Some(jobs) = args.jobs {
        opts.settings.jobs = jobs;
    }
    opts.decoder = decoder;
    opts.roles = roles;
    Ok(opts)
}

async fn globals_only(ctx: &Ctx, args: &RestoreArgs) -> Result<()> {
    let c = ctx.config();
    let resolved = ctx
        .resolve(args.backup.as_deref().unwrap_or("latest"))
        .await?;
    resolved.ensure_logical()?;
    let keys = crate::codecs::keys_for(c, resolved.manifest.as_ref())?;
    let Some(set) = restore::load_roles(&resolved, &keys).await? else {
        return Err(Error::NotFound(format!(
            "backup {} records no roles (taken by an older kaizen-backup)",
            resolved.name
        )));
    };
    let mut admin = c.database.connect_to(&c.database.maintenance_db).await?;
    let missing = backup_core::pg::roles::missing(&admin, &set).await?;
    backup_core::pg::roles::check_can_create(&admin, &missing).await?;
    let created = backup_core::pg::roles::create_missing(&mut admin, &set, &missing).await?;
    success!(
        "Roles of {}: {} recorded, {} created{}, the others exist already{}",
        resolved.name,
        set.roles.len(),
        created.len(),
        if created.is_empty() {
            String::new()
        } else {
            format!(" ({})", created.join(", "))
        },
        if set.passwords {
            ""
        } else {
            "; the backup holds no password hashes, so created roles have no password"
        }
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
    let first = ctx.primary()?;
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
    let mut opts = ctx.backup_options(name)?;
    opts.kind = Kind::Safety;
    let pg = ctx.config().database.clone().with_dbname(db);
    let target = Target {
        storage: first.storage.clone(),
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
