//! `kaizen-backup wal-push PATH` and `kaizen-backup wal-fetch NAME DEST`: PostgreSQL's
//! `archive_command` and `restore_command`.

use std::path::Path;

use backup_core::Result;
use backup_core::walarchive::{self, Pushed};
use tracing::{debug, info, warn};

use crate::ctx::Ctx;

/// Archive one WAL file on every target: required ones first (an error there is an
/// error, and PostgreSQL calls again), then the optional ones (a failure is a warning).
pub async fn push(ctx: &Ctx, path: &Path) -> Result<()> {
    let opts = ctx.wal_push_options()?;
    let targets = ctx.wal_targets()?;
    let (required, optional): (Vec<_>, Vec<_>) = targets.iter().partition(|t| !t.optional);
    let stores = |ts: &[&backup_core::backup::Target]| {
        ts.iter().map(|t| t.storage.clone()).collect::<Vec<_>>()
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let name = name.unwrap_or_default();
    if !required.is_empty() {
        let done = walarchive::push(&stores(&required), path, &opts).await?;
        if done.contains(&Pushed::AlreadyStored) {
            info!("WAL file {name} was already archived with the same content");
        }
    }
    for t in optional {
        if let Err(e) = walarchive::push(std::slice::from_ref(&t.storage), path, &opts).await {
            warn!(
                "Optional target {} did not archive {name}: {e}",
                t.storage.url()
            );
        }
    }
    debug!("Archived WAL file {name}");
    Ok(())
}

/// Fetch one WAL file: exit 0 with the exact file at `dest`, 1 when it is not archived
/// (PostgreSQL asks for files that do not exist, e.g. the next timeline's history).
pub async fn fetch(ctx: &Ctx, name: &str, dest: &Path) -> Result<()> {
    let c = ctx.config();
    let keys = crate::codecs::keys(c)?;
    let stores: Vec<_> = ctx
        .wal_targets()?
        .iter()
        .map(|t| t.storage.clone())
        .collect();
    let f = walarchive::fetch(&stores, name, dest, &keys).await?;
    debug!("Fetched WAL file {name} ({} bytes) from {}", f.size, f.from);
    Ok(())
}
