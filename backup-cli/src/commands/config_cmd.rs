//! `config show` and `config check`.

use backup_core::Result;

use crate::ctx::Ctx;

pub fn show(ctx: &Ctx, json: bool) -> Result<()> {
    let rows = crate::config::describe(ctx.loaded())?;
    if json {
        let obj: serde_json::Map<String, serde_json::Value> = rows
            .into_iter()
            .map(|(k, v, src)| (k, serde_json::json!({ "value": v, "source": src })))
            .collect();
        crate::output::emit(format!("{}", serde_json::Value::Object(obj)));
        return Ok(());
    }
    let width = rows.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
    for (k, v, src) in rows {
        let v = match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        crate::output::emit(format!("{k:width$} = {v}    # {src}"));
    }
    Ok(())
}

pub async fn check(ctx: &Ctx, connect: bool) -> Result<()> {
    // Loading already validated every value; opening the targets checks their URLs and features.
    let targets = ctx.targets()?;
    backup_core::success!("Configuration is valid");
    if !connect {
        return Ok(());
    }
    let mut failures = Vec::new();
    let pg = &ctx.config().database;
    match pg.connect().await {
        Ok(_) => backup_core::success!("Database {} answers", pg.target()),
        Err(e) => failures.push(e.to_string()),
    }
    for t in targets {
        match t.storage.check().await {
            Ok(()) => {
                backup_core::success!("Storage {} is reachable and writable", t.storage.url())
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    for f in ctx.reporter.check_all().await {
        failures.push(f);
    }
    for f in &failures {
        tracing::error!("{f}");
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(backup_core::Error::other(format!(
            "{} check(s) failed",
            failures.len()
        )))
    }
}
