//! `kaizen-backup status [--json] [--max-age 24h] [--max-wal-age 5m]`.

use backup_core::util::human_size;
use backup_core::{Error, Result};
use chrono::Utc;
use tracing::{info, warn};

use crate::ctx::Ctx;

mod archiver;
mod pitr;

/// Parse `24h`, `90m`, `2d`, `1w`, `3600s` (humantime syntax) given to `flag`.
fn parse_duration(flag: &str, s: &str) -> Result<chrono::Duration> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        Error::usage(format!(
            "invalid {flag} {s:?}: {e} (examples: 24h, 90m, 2d)"
        ))
    })?;
    chrono::Duration::from_std(d).map_err(|_| Error::usage(format!("{flag} {s:?} is too large")))
}

/// Parse `24h`, `90m`, `2d`, `1w`, `3600s` (humantime syntax).
pub fn parse_age(s: &str) -> Result<chrono::Duration> {
    parse_duration("--max-age", s)
}

pub async fn run(
    ctx: &Ctx,
    json: bool,
    max_age: Option<String>,
    max_wal_age: Option<String>,
) -> Result<()> {
    let c = ctx.config();
    let max_age = max_age.as_deref().map(parse_age).transpose()?;
    let max_wal_age = max_wal_age
        .as_deref()
        .map(|s| parse_duration("--max-wal-age", s))
        .transpose()?;
    let authenticated = !ctx.verify_keys()?.is_empty();
    if !authenticated && !json {
        warn!("{}", super::list::NOT_AUTHENTICATED);
    }
    let overviews = ctx.overviews().await?;
    let now = overviews.first().map_or_else(Utc::now, |o| o.now);
    let promised = backup_core::retention::promised_window(&c.retention);
    let mut pitr_in_use = false;
    let mut rows = Vec::new();
    let mut stale = Vec::new();
    let mut wal_stale = Vec::new();
    let mut recovery = Vec::new();
    for o in overviews {
        let url = o.target.clone();
        let wal = o.last_wal().map(|w| w.cloned());
        pitr_in_use |= matches!(wal, Ok(Some(_)));
        if let Some(reason) = max_wal_age.and_then(|max| pitr::stale_reason(&url, &wal, max, now)) {
            wal_stale.push(reason);
        }
        let cat = match &o.catalog {
            Ok(cat) => cat,
            Err(e) => {
                stale.push(format!("{url}: cannot read: {e}"));
                let wal_json = pitr::wal_json(&wal, now);
                recovery.push(serde_json::json!({ "target": url, "wal": wal_json }));
                rows.push(serde_json::json!({
                    "target": url,
                    "error": e.to_string(),
                    "wal": wal_json,
                }));
                if !json {
                    pitr::log_text(&url, &wal, None, promised, now);
                }
                continue;
            }
        };
        let window = o.recovery_window();
        pitr_in_use |= window.is_some();
        let (wal_json, window_json) = (
            pitr::wal_json(&wal, now),
            pitr::window_json(window.as_ref(), promised),
        );
        let newest = o.newest(&c.database.name);
        let drill = match o.drill(&c.database.name).map(|d| &d.record) {
            Some(Ok(d)) => d.as_ref(),
            Some(Err(e)) => {
                warn!("{url}: cannot read the last drill record: {e}");
                None
            }
            None => None,
        };
        let drill_json = drill.map(|d| {
            serde_json::json!({
                "passed": d.passed,
                "kind": d.kind,
                "finished_at": d.finished_at,
                "age_seconds": (now - d.finished_at).num_seconds(),
                "backup": d.backup,
                "target": d.target,
                "rto_seconds": d.rto_seconds,
                "rpo_seconds": d.rpo_seconds,
                "error": d.error,
            })
        });
        let age = newest.map(|b| now - b.manifest.finished_at);
        let is_stale = match (age, max_age) {
            (None, _) => true,
            (Some(a), Some(max)) => a > max,
            (Some(_), None) => false,
        };
        if is_stale && (max_age.is_some() || newest.is_none()) {
            stale.push(match (newest, age) {
                (Some(b), Some(a)) => format!(
                    "{url}: newest backup {} is {} old",
                    b.manifest.name,
                    humantime::format_duration(std::time::Duration::from_secs(
                        a.num_seconds().max(0) as u64
                    ))
                ),
                _ => format!("{url}: no backup of {}", c.database.name),
            });
        }
        rows.push(serde_json::json!({
            "target": url,
            "database": c.database.name,
            "backups": cat.backups.len(),
            "incomplete": cat.incomplete.len(),
            "newest": newest.map(|b| serde_json::json!({
                "name": b.manifest.name,
                "created_at": b.manifest.finished_at,
                "age_seconds": age.map(|a| a.num_seconds()),
                "size_bytes": b.manifest.size_bytes,
                "verified": b.verify.as_ref().map(|v| v.passed),
                "verify_status": b.verify_state(),
            })),
            "stale": is_stale,
            // false: no [integrity] verify_keys, backups are read unauthenticated.
            "authenticated": authenticated,
            "wal": wal_json,
            "recovery_window": window_json,
            "drill": drill_json,
        }));
        recovery.push(serde_json::json!({
            "target": url,
            "wal": wal_json,
            "recovery_window": window_json,
        }));
        if !json {
            match newest {
                Some(b) => info!(
                    "{url}: newest backup {} ({}, {} old, {}), {} backup(s), {} incomplete",
                    b.manifest.name,
                    human_size(b.manifest.size_bytes),
                    humantime::format_duration(std::time::Duration::from_secs(
                        age.map(|a| a.num_seconds().max(0) as u64).unwrap_or(0)
                    )),
                    b.verify_state(),
                    cat.backups.len(),
                    cat.incomplete.len()
                ),
                None => warn!("{url}: no backup of {}", c.database.name),
            }
            pitr::log_text(&url, &wal, window.as_ref(), promised, now);
            log_drill(&url, drill, now);
        }
    }
    if pitr_in_use {
        let a = archiver::read(&c.database).await;
        let value = archiver::json(&a);
        for row in rows.iter_mut().chain(recovery.iter_mut()) {
            if let Some(o) = row.as_object_mut() {
                o.insert("archiver".into(), value.clone());
            }
        }
        if !json {
            archiver::log_text(&c.database.target(), &a);
        }
    }
    ctx.reporter.status_checked(ctx.database(), recovery).await;
    if json {
        crate::output::emit(
            serde_json::to_string_pretty(&rows)
                .map_err(|e| Error::other(e.to_string()))?
                .to_string(),
        );
    }
    let mut failed = Vec::new();
    if !stale.is_empty() {
        let msg = format!("backup is stale: {}", stale.join("; "));
        ctx.reporter.stale(ctx.database(), &msg).await;
        failed.push(msg);
    }
    if !wal_stale.is_empty() {
        let msg = format!("WAL archiving is stale: {}", wal_stale.join("; "));
        ctx.reporter.wal_stale(ctx.database(), &msg).await;
        failed.push(msg);
    }
    if failed.is_empty() {
        return Ok(());
    }
    Err(Error::other(failed.join("; ")))
}

fn log_drill(
    url: &str,
    drill: Option<&backup_core::drill::DrillRecord>,
    now: chrono::DateTime<Utc>,
) {
    let Some(d) = drill else {
        info!("{url}: no restore drill recorded (kaizen-backup drill)");
        return;
    };
    let ago = humantime::format_duration(std::time::Duration::from_secs(
        (now - d.finished_at).num_seconds().max(0) as u64,
    ));
    match &d.error {
        None => info!(
            "{url}: last restore drill passed {ago} ago ({} backup {}, RTO {:.1} s)",
            d.kind,
            d.backup.as_deref().unwrap_or("?"),
            d.rto_seconds.unwrap_or_default()
        ),
        Some(e) => warn!("{url}: last restore drill FAILED {ago} ago: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(parse_age("26h").ok(), Some(chrono::Duration::hours(26)));
        assert_eq!(parse_age("x").map_err(|e| e.exit_code()).err(), Some(2));
    }

    proptest::proptest! {
        /// No text panics, however large its numbers; an accepted age can be compared with now.
        #[test]
        fn any_age_parses_or_is_a_usage_error(s in "\\PC{0,24}|[0-9]{1,30} ?(s|m|h|d|w|y|ms|ns|months)") {
            match parse_age(&s) {
                Ok(d) => {
                    let _ = Utc::now().checked_sub_signed(d);
                }
                Err(e) => proptest::prop_assert_eq!(e.exit_code(), 2),
            }
        }
    }
}
