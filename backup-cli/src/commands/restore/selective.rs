//! `kaizen-backup restore <BACKUP> SIDE_DB --table S.T … [--schema S …] [--with-dependencies]`:
//! some tables into a new database. Nothing is replaced, so there is no production
//! confirmation and no safety backup; an existing SIDE_DB is refused before anything is read.

use backup_core::catalog::Resolved;
use backup_core::restore::RestoreOutcome;
use backup_core::selective::{self, Selection, qualified};
use backup_core::util::human_size;
use backup_core::{Error, Result, success};
use tracing::{info, warn};

use crate::cli::RestoreArgs;
use crate::ctx::Ctx;

pub(super) async fn run(
    ctx: &Ctx,
    args: &RestoreArgs,
    exists: bool,
    target_db: &str,
    resolved: Resolved,
) -> Result<RestoreOutcome> {
    if exists {
        return Err(Error::Refused(format!(
            "database {target_db} exists: a selective restore only creates a new database and never replaces one; choose another name (nothing was changed)"
        )));
    }
    let c = ctx.config();
    // Keys are checked before anything is read.
    let mut opts = super::options(ctx, args, &resolved, target_db).await?;
    let selection = Selection {
        tables: args.tables.clone(),
        schemas: args.schemas.clone(),
        with_dependencies: args.with_dependencies,
    };
    // A mistyped name fails before the whole archive is read.
    selective::check_names(
        &resolved,
        &selection,
        ctx.decoder(resolved.manifest.as_ref())?,
    )
    .await?;
    let bar = crate::progress::Bar::start("restore", ctx.progress);
    opts.progress = bar.callback();
    let result = selective::run(&c.database, &resolved, &selection, opts, ctx.cancel.clone()).await;
    bar.finish();
    let outcome = result?;
    for t in &outcome.tables {
        match t.expected {
            Some(_) => info!("  {}: {} rows, as recorded", qualified(&t.table), t.rows),
            None => info!(
                "  {}: {} rows (no recorded count)",
                qualified(&t.table),
                t.rows
            ),
        }
    }
    for k in &outcome.left_out {
        warn!("Not restored: {k}");
    }
    success!("Restore completed successfully");
    info!(
        "Database {} created with {} table(s) from {} ({} read, checksum {}, row counts {}) in {:.1}s{}",
        outcome.target_db,
        outcome.tables.len(),
        resolved.name,
        human_size(outcome.size_bytes),
        if outcome.checksum_verified {
            "verified"
        } else {
            "not available"
        },
        if outcome.tables.iter().all(|t| t.expected.is_some()) {
            "equal to the manifest"
        } else {
            "not all recorded"
        },
        outcome.duration.as_secs_f64(),
        if outcome.left_out.is_empty() {
            String::new()
        } else {
            format!(
                "; {} foreign key(s) left out (listed above)",
                outcome.left_out.len()
            )
        }
    );
    Ok(RestoreOutcome {
        target_db: outcome.target_db,
        replaced: false,
        checksum_verified: outcome.checksum_verified,
        size_bytes: outcome.size_bytes,
        duration: outcome.duration,
    })
}
