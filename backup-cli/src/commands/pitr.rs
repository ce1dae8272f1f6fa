//! `kaizen-backup restore [BACKUP] --pgdata DIR [--to-time TS | --to-lsn LSN |
//! --to-name NAME | --to-backup-end]`: point-in-time restore into a data directory.

use backup_core::pitr::{self, PitrOptions};
use backup_core::recovery::{RecoveryTarget, parse_time};
use backup_core::{Error, Result, success};
use tracing::info;

use crate::cli::RestoreArgs;
use crate::ctx::Ctx;

fn target(args: &RestoreArgs) -> Result<RecoveryTarget> {
    Ok(if let Some(t) = &args.to_time {
        RecoveryTarget::Time(parse_time(t)?)
    } else if let Some(l) = &args.to_lsn {
        RecoveryTarget::Lsn(l.parse()?)
    } else if let Some(n) = &args.to_name {
        if n.is_empty() || n.len() > 63 {
            return Err(Error::usage(
                "--to-name: a restore point name is 1 to 63 bytes",
            ));
        }
        RecoveryTarget::Name(n.clone())
    } else if args.to_backup_end {
        RecoveryTarget::BackupEnd
    } else {
        RecoveryTarget::Latest
    })
}

pub async fn run(ctx: &Ctx, args: RestoreArgs) -> Result<()> {
    let Some(pgdata) = args.pgdata.clone() else {
        return Err(Error::usage(
            "--pgdata is required for a point-in-time restore",
        ));
    };
    let target = target(&args)?;
    let c = ctx.config();
    let pgdata = std::path::absolute(&pgdata)
        .map_err(|e| Error::io(format!("cannot resolve {}", pgdata.display()), e))?;
    let opts = PitrOptions {
        pgdata: pgdata.clone(),
        target,
        backup: args.backup.clone().filter(|b| b != "latest"),
        restore_command: ctx.restore_command()?,
        no_archive: args.no_archive,
        keys: crate::codecs::keys(c)?,
        bin_dir: c.database.bin_dir.clone(),
        verify_keys: c.integrity.verify_keys()?,
    };
    let backups = ctx.primary()?.storage.clone();
    let wal = ctx.primary_wal()?;
    let outcome = pitr::restore(&backups, &wal, &opts).await?;
    success!(
        "Restored physical backup {} into {} ({} files); recovery will stop at {}",
        outcome.backup,
        pgdata.display(),
        outcome.files,
        opts.target
    );
    info!("{}", outcome.window);
    info!(
        "Start it: pg_ctl -D {} start   (as the server's OS user; it recovers, then promotes)",
        pgdata.display()
    );
    info!(
        "After promotion it is on a new timeline: take a new base backup (kaizen-backup backup --physical)"
    );
    Ok(())
}
