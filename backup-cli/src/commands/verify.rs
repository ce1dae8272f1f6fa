//! `kaizen-backup verify <BACKUP> [--quick] [--json]`.

use std::time::Instant;

use backup_core::{Error, Event, EventKind, Result, VerifyContext};
use backup_verify::{VerifyOptions, failure_error, store_record};
use tracing::warn;

use crate::app::Ctx;
use crate::commands::restore::{resolve, take_lease};

pub async fn run(ctx: &Ctx, spec: &str, quick: bool, json: bool) -> Result<()> {
    let c = ctx.config();
    let resolved = resolve(ctx, spec).await?;
    if !quick {
        // A key that does not match is said as such, and records nothing about the backup.
        crate::codecs::check_key(c, &resolved).await?;
    }
    let started = Instant::now();
    // Decoding (zstd, age) is needed only by the test restore: --quick needs no key.
    let decoder: Option<backup_verify::DecoderFactory> = match &resolved.manifest {
        Some(m) if m.compression == "zstd" || m.encryption == "age" => {
            let cfg = c.clone();
            let m = m.clone();
            Some(Box::new(move || {
                crate::codecs::decoder(&cfg, Some(&m))?
                    .ok_or_else(|| Error::other("no decoder for this backup"))
            }))
        }
        _ => None,
    };
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
        decoder,
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
