//! `config show` and `config check`.

use backup_core::Result;

use crate::app::Ctx;
use crate::config;

pub fn show(ctx: &Ctx, json: bool) -> Result<()> {
    let rows = config::describe(&ctx.loaded)?;
    if json {
        let obj: serde_json::Map<String, serde_json::Value> = rows
            .into_iter()
            .map(|(k, v, src)| (k, serde_json::json!({ "value": v, "source": src })))
            .collect();
        crate::app::emit(format!("{}", serde_json::Value::Object(obj)));
        return Ok(());
    }
    let width = rows.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
    for (k, v, src) in rows {
        let v = match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        crate::app::emit(format!("{k:width$} = {v}    # {src}"));
    }
    Ok(())
}

pub fn check(ctx: &Ctx) -> Result<()> {
    // Loading already validated every value; opening the targets checks their URLs and features.
    config::open_targets(ctx.config())?;
    backup_core::success!("Configuration is valid");
    Ok(())
}
