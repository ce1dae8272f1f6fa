//! `kaizen-backup verify <BACKUP> [--quick] [--json]`.

use std::time::Instant;

use backup_core::codec::{self, DecryptKeys};
use backup_core::{Error, Event, EventKind, Result, VerifyContext};
use backup_verify::{VerifyOptions, failure_error, store_record};
use tracing::warn;

use crate::app::Ctx;
use crate::commands::restore::{resolve, take_lease};

pub async fn run(ctx: &Ctx, spec: &str, quick: bool, json: bool) -> Result<()> {
    let c = ctx.config();
    let resolved = resolve(ctx, spec).await?;
    // Decoding (zstd, age) is needed only by the test restore: --quick needs no key.
    let keys = if quick {
        DecryptKeys::default()
    } else {
        crate::codecs::keys_for(c, resolved.manifest.as_ref())?
    };
    if !quick {
        // A key that does not match is said as such, and records nothing about the backup.
        codec::check_key(&resolved, &keys).await?;
    }
    let started = Instant::now();
    let vctx = VerifyContext {
        name: resolved.name.clone(),
        storage: resolved.storage.clone(),
        data_key: resolved.data_key.clone(),
        manifest: resolved.manifest.clone(),
        pg: Some(c.database.clone()),
    };
    let opts = VerifyOptions {
        quick,
        cancel: ctx.cancel.clone(),
        keys,
        jobs: c.restore.jobs,
        temp_dir: c.restore.temp_dir.clone(),
    };
    let lease = take_lease(ctx, &resolved, "verify").await;
    let record = backup_verify::run(&vctx, &opts).await;
    crate::commands::release_lease(ctx, lease).await;
    let record = record?;
    if resolved.manifest.is_some()
        && let Err(e) = store_record(resolved.storage.as_ref(), &record).await
    {
        warn!("Could not record the verification result beside the backup: {e}");
    }
    if json {
        crate::app::emit(
            serde_json::to_string_pretty(&record).map_err(|e| Error::other(e.to_string()))?,
        );
    }
    let kind = if record.passed {
        EventKind::VerifySucceeded
    } else {
        EventKind::VerifyFailed
    };
    let database = resolved
        .manifest
        .as_ref()
        .map(|m| m.database.clone())
        .unwrap_or_else(|| c.database.name.clone());
    let mut ev = Event::new(kind, database);
    ev.backup = Some(record.name.clone());
    ev.targets = vec![resolved.storage.url()];
    ev.duration_seconds = Some(started.elapsed().as_secs_f64());
    ev.error = failure_error(&record).map(|e| e.to_string());
    ev.details = serde_json::to_value(&record.checks).unwrap_or_default();
    ctx.reporter.send(&ev).await;
    match failure_error(&record) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
