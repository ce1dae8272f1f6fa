//! `kaizen-backup contents <BACKUP> [--json]`: what a backup holds, from the archive's own
//! table of contents and the manifest's row counts and sizes. An encrypted backup needs only its key.

use backup_core::contents::{Contents, TableInfo};
use backup_core::pg::display_ident as show;
use backup_core::util::human_size;
use backup_core::{Error, Result, toc};

use crate::ctx::Ctx;

pub async fn run(ctx: &Ctx, spec: &str, json: bool) -> Result<()> {
    let resolved = ctx.resolve(spec).await?;
    resolved.ensure_logical()?;
    let mut stream = resolved.storage.get(&resolved.data_key).await?;
    if let Some(decode) = ctx.decoder(resolved.manifest.as_ref())? {
        stream = decode(stream)?;
    }
    let toc = toc::read(stream, resolved.is_directory())
        .await?
        .map_err(|why| {
            Error::Corrupt(format!(
                "Invalid backup file format or corrupted file: {}: {why}",
                resolved.name
            ))
        })?;
    let contents = Contents::new(&toc, resolved.manifest.as_ref());
    if json {
        let mut v = serde_json::to_value(&contents).map_err(|e| Error::other(e.to_string()))?;
        v["name"] = serde_json::Value::String(resolved.name.clone());
        crate::output::emit(
            serde_json::to_string_pretty(&v).map_err(|e| Error::other(e.to_string()))?,
        );
        return Ok(());
    }
    crate::output::emit(text(&resolved.name, &contents));
    Ok(())
}

/// The listing a person reads: one schema after another, partitions indented under their
/// parent, names quoted only where they need it.
fn text(name: &str, c: &Contents) -> String {
    let mut out = format!(
        "Backup {name} of database {} (PostgreSQL {}, pg_dump {})\n",
        show(&c.database),
        c.server_version,
        c.pg_dump_version
    );
    for s in &c.schemas {
        out.push_str(&format!("\nschema {}\n", show(&s.name)));
        for t in &s.tables {
            table(&mut out, t, 1);
        }
        for (kind, list) in [
            ("sequence", &s.sequences),
            ("view", &s.views),
            ("materialized view", &s.materialized_views),
            ("function", &s.functions),
            ("type", &s.types),
        ] {
            for n in list {
                out.push_str(&format!("  {kind} {}\n", show(n)));
            }
        }
    }
    if !c.extensions.is_empty() {
        let names: Vec<String> = c.extensions.iter().map(|e| show(e)).collect();
        out.push_str(&format!("\nextensions: {}\n", names.join(", ")));
    }
    let t = &c.totals;
    out.push_str(&format!(
        "\n{} schema(s), {} table(s) with {} rows, {} sequence(s), {} view(s), {} function(s)",
        c.schemas.len(),
        t.tables,
        t.rows,
        t.sequences,
        t.views,
        t.functions
    ));
    out
}

fn table(out: &mut String, t: &TableInfo, depth: usize) {
    let kind = if depth == 1 { "table" } else { "partition" };
    let rows = t
        .rows
        .map(|r| format!("{r} rows"))
        .unwrap_or_else(|| "rows not recorded".into());
    let size = t
        .size_bytes
        .and_then(|b| u64::try_from(b).ok())
        .map(|b| format!(", {}", human_size(b)))
        .unwrap_or_default();
    out.push_str(&format!(
        "{}{kind} {}  {rows}{size}{}\n",
        "  ".repeat(depth),
        show(&t.name),
        if t.partitions.is_empty() {
            ""
        } else {
            "  (partitioned)"
        }
    ));
    for p in &t.partitions {
        table(out, p, depth + 1);
    }
}
