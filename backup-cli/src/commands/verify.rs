//! `kaizen-backup verify <BACKUP> [--quick] [--json]`.

use backup_core::{Error, Result};
use backup_verify::failure_error;

use crate::ctx::Ctx;

pub async fn run(ctx: &Ctx, spec: &str, quick: bool, json: bool) -> Result<()> {
    let record = ctx.verify(spec, quick).await?;
    if json {
        crate::output::emit(
            serde_json::to_string_pretty(&record).map_err(|e| Error::other(e.to_string()))?,
        );
    }
    match failure_error(&record) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
