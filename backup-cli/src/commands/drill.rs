//! `kaizen-backup drill [--to-time TS] [--json]`: a restore drill, recorded beside the
//! backups as `DATABASE.drill.json` (see [`backup_core::drill`]).

use std::time::Instant;

use backup_core::drill::{self, DrillOptions, DrillRecord};
use backup_core::pitr::PitrOptions;
use backup_core::recovery::{RecoveryTarget, format_time, parse_time};
use backup_core::{Error, Event, EventKind, Result, catalog, success};
use chrono::Utc;
use tracing::{error, info, warn};

use crate::ctx::Ctx;

pub async fn run(ctx: &Ctx, to_time: Option<String>, json: bool) -> Result<()> {
    let c = ctx.config();
    let target = to_time.as_deref().map(parse_time).transpose()?;
    let rto_target = c
        .drill
        .rto_target
        .as_deref()
        .map(|s| {
            humantime::parse_duration(s.trim()).map_err(|e| Error::Config {
                key: "drill.rto_target".into(),
                message: format!("{s:?}: {e} (examples: 15m, 1h)"),
            })
        })
        .transpose()?;
    let backups = ctx.primary()?.storage.clone();
    let cat = catalog::scan(backups.as_ref()).await?;
    let physical = cat.backups.iter().any(|b| b.manifest.is_physical());
    let started_at = Utc::now();
    let started = Instant::now();
    let mut record = DrillRecord {
        format_version: 1,
        database: ctx.database().to_string(),
        kind: if physical { "physical" } else { "logical" }.into(),
        backup: None,
        target: None,
        started_at,
        finished_at: started_at,
        passed: false,
        rto_seconds: None,
        rpo_seconds: None,
        reached: None,
        marker: None,
        databases: Vec::new(),
        error: None,
        tool_version: backup_core::TOOL_VERSION.into(),
    };
    let outcome = if physical {
        physical_drill(ctx, target, &mut record).await
    } else {
        if target.is_some() {
            return Err(Error::usage(
                "--to-time needs physical backups (there are none): a logical drill restores the newest backup",
            ));
        }
        logical_drill(ctx, &cat, &mut record).await
    };
    record.finished_at = Utc::now();
    match outcome {
        Ok(()) => {
            record.passed = true;
            if let (Some(limit), Some(rto)) = (rto_target, record.rto_seconds)
                && rto > limit.as_secs_f64()
            {
                record.passed = false;
                record.error = Some(format!(
                    "the restore took {rto:.1} s, more than drill.rto_target ({})",
                    humantime::format_duration(limit)
                ));
            }
        }
        Err(e @ Error::Interrupted(_)) => return Err(e),
        Err(e) => record.error = Some(e.to_string()),
    }
    if let Err(e) = record.store(backups.as_ref()).await {
        warn!("Could not record the drill beside the backups: {e}");
    }
    let mut ev = Event::new(
        if record.passed {
            EventKind::DrillSucceeded
        } else {
            EventKind::DrillFailed
        },
        record.database.clone(),
    );
    ev.backup = record.backup.clone();
    ev.targets = vec![backups.url()];
    ev.duration_seconds = Some(started.elapsed().as_secs_f64());
    ev.error = record.error.clone();
    let mut details = serde_json::to_value(&record).unwrap_or_default();
    if let (Some(limit), serde_json::Value::Object(m)) = (rto_target, &mut details) {
        m.insert("rto_target_seconds".into(), limit.as_secs_f64().into());
    }
    ev.details = details;
    ctx.reporter.send(&ev).await;
    if json {
        crate::output::emit(
            serde_json::to_string_pretty(&record).map_err(|e| Error::other(e.to_string()))?,
        );
    }
    match &record.error {
        None => {
            success!(
                "Restore drill passed: {} restored{} in {:.1} s",
                record.backup.as_deref().unwrap_or("the newest backup"),
                record
                    .target
                    .as_deref()
                    .map(|t| format!(" to {t}"))
                    .unwrap_or_default(),
                record.rto_seconds.unwrap_or_default()
            );
            Ok(())
        }
        Some(why) => {
            error!("Restore drill failed: {why}");
            Err(Error::Refused(format!("restore drill failed: {why}")))
        }
    }
}

async fn physical_drill(
    ctx: &Ctx,
    target: Option<chrono::DateTime<Utc>>,
    record: &mut DrillRecord,
) -> Result<()> {
    let c = ctx.config();
    let backups = ctx.primary()?.storage.clone();
    let wal = ctx.primary_wal()?;
    let opts = DrillOptions {
        pitr: PitrOptions {
            pgdata: std::path::PathBuf::new(),
            target: target.map_or(RecoveryTarget::Latest, RecoveryTarget::Time),
            backup: None,
            restore_command: ctx.restore_command()?,
            no_archive: true,
            keys: crate::codecs::keys(c)?,
            bin_dir: c.database.bin_dir.clone(),
            verify_keys: c.integrity.verify_keys()?,
        },
        temp_dir: c.restore.settings.temp_dir.clone(),
        users: vec![c.database.user.clone(), "postgres".into()],
        marker: c.drill.marker_query.clone().map(|q| {
            (
                c.drill
                    .marker_database
                    .clone()
                    .unwrap_or_else(|| c.database.name.clone()),
                q,
            )
        }),
        cancel: ctx.cancel.clone(),
    };
    let out = drill::run_physical(&backups, &wal, opts).await;
    let out = out?;
    record.backup = Some(out.backup.clone());
    record.target = Some(out.target.to_string());
    record.rto_seconds = Some(out.rto.as_secs_f64());
    record.rpo_seconds = out
        .window
        .to_time
        .map(|t| seconds_between(t, record.started_at));
    record.reached = out.reached;
    record.marker = out.marker;
    record.databases = out.databases;
    info!(
        "Drill: {} restored to {}; last replayed transaction {}; {}",
        out.backup,
        out.target,
        out.reached
            .map_or_else(|| "none".to_string(), |t| format_time(&t)),
        backup_core::pg::server::describe_reads(&record.databases)
    );
    Ok(())
}

async fn logical_drill(ctx: &Ctx, cat: &catalog::Catalog, record: &mut DrillRecord) -> Result<()> {
    let newest = cat
        .latest(Some(ctx.database()))
        .ok_or_else(|| {
            Error::NotFound(format!(
                "no backup of {} to drill: take one with `kaizen-backup backup`",
                ctx.database()
            ))
        })?
        .manifest
        .clone();
    record.backup = Some(newest.name.clone());
    record.rpo_seconds = Some(seconds_between(newest.finished_at, record.started_at));
    let started = Instant::now();
    let verified = ctx.verify(&newest.name, false).await?;
    record.rto_seconds = Some(started.elapsed().as_secs_f64());
    match backup_verify::failure_error(&verified) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn seconds_between(from: chrono::DateTime<Utc>, to: chrono::DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds().max(0) as f64 / 1000.0
}
