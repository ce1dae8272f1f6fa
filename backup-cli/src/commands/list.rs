//! `kaizen-backup list [--json]`.

use backup_core::catalog;
use backup_core::manifest::Kind;
use backup_core::storage::IncompleteUpload;
use backup_core::util::human_size;
use backup_core::{Result, Storage};
use tracing::warn;

use crate::ctx::Ctx;

pub async fn run(ctx: &Ctx, json: bool) -> Result<()> {
    let targets = ctx.targets()?;
    let mut rows = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let cat = match catalog::scan(t.storage.as_ref()).await {
            Ok(cat) => cat,
            // An optional target that is down does not hide the others.
            Err(e) if t.optional => {
                warn!("Optional target {} cannot be listed: {e}", t.storage.url());
                continue;
            }
            Err(e) => return Err(e),
        };
        for (key, why) in &cat.unreadable {
            warn!("Unreadable manifest {key} in {}: {why}", t.storage.url());
        }
        // Unfinished writes take space (and are billed) though they are no object.
        let uploads = match t.storage.list_incomplete().await {
            Ok(u) => u,
            Err(e) => {
                warn!("Cannot list unfinished uploads in {}: {e}", t.storage.url());
                Vec::new()
            }
        };
        if json {
            for b in &cat.backups {
                rows.push(entry_json(t.storage.as_ref(), b));
            }
            for u in &uploads {
                rows.push(upload_json(t.storage.as_ref(), u));
            }
            for o in &cat.incomplete {
                warn!(
                    "Incomplete (no manifest, not a backup): {}/{} ({})",
                    t.storage.url(),
                    o.key,
                    human_size(o.size)
                );
            }
            continue;
        }
        if targets.len() > 1 || i > 0 {
            crate::output::emit(format!("== {}", t.storage.url()));
        }
        print_table(&cat, &uploads);
    }
    if json {
        let out = serde_json::to_string_pretty(&rows)
            .map_err(|e| backup_core::Error::other(e.to_string()))?;
        crate::output::emit(out.to_string());
    }
    Ok(())
}

fn entry_json(storage: &dyn Storage, b: &catalog::BackupEntry) -> serde_json::Value {
    let m = &b.manifest;
    serde_json::json!({
        "name": m.name,
        "created_at": m.finished_at,
        "started_at": m.started_at,
        "size_bytes": m.size_bytes,
        "sha256": m.sha256,
        "database": m.database,
        "object": m.object,
        "compression": m.compression,
        "encryption": m.encryption,
        "pinned": m.pinned,
        "kind": m.kind.unwrap_or_default(),
        "physical": m.physical,
        // The roles the database needs, stored beside it: how many, and whether their
        // password hashes are included (only when the backup role could read them).
        "roles": m.roles.as_ref().map(|r| serde_json::json!({"count": r.count, "passwords": r.passwords})),
        // true: a full verification passed; false: the last verification failed;
        // null: never verified by a test restore.
        "verified": b.verify.as_ref().and_then(|v| if !v.passed { Some(false) } else if v.quick { None } else { Some(true) }),
        "verify_status": b.verify_state(),
        "verified_at": b.verify.as_ref().map(|v| v.finished_at),
        "data_present": b.data.is_some(),
        "target": storage.url(),
    })
}

/// An unfinished upload as a `list --json` row: `kind` says it is not a backup.
fn upload_json(storage: &dyn Storage, u: &IncompleteUpload) -> serde_json::Value {
    serde_json::json!({
        "name": u.key,
        "kind": "unfinished_upload",
        "incomplete": true,
        "started_at": u.started,
        "size_bytes": u.size,
        "upload_id": u.id,
        "target": storage.url(),
    })
}

fn print_table(cat: &catalog::Catalog, uploads: &[IncompleteUpload]) {
    if cat.backups.is_empty() && cat.incomplete.is_empty() && uploads.is_empty() {
        crate::output::emit("No backups.".to_string());
        return;
    }
    crate::output::emit(format!(
        "{:<32} {:<20} {:>8} {:<12} {:<20} STATUS",
        "NAME", "CREATED (UTC)", "SIZE", "SHA256", "DATABASE"
    ));
    for b in &cat.backups {
        let m = &b.manifest;
        let mut status = b.verify_state().to_string();
        if m.pinned {
            status.push_str(", pinned");
        }
        match m.kind.unwrap_or_default() {
            Kind::Logical => {}
            Kind::Safety => status.push_str(", safety"),
            Kind::Physical => status.push_str(", physical"),
        }
        if b.data.is_none() {
            status.push_str(", DATA MISSING");
        }
        crate::output::emit(format!(
            "{:<32} {:<20} {:>8} {:<12} {:<20} {status}",
            m.name,
            m.finished_at.format("%Y-%m-%d %H:%M:%S"),
            human_size(m.size_bytes),
            &m.sha256[..m.sha256.len().min(12)],
            m.database,
        ));
    }
    for o in &cat.incomplete {
        let when = o
            .last_modified
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        crate::output::emit(format!(
            "{:<32} {:<20} {:>8} {:<12} {:<20} INCOMPLETE (no manifest)",
            o.key,
            when,
            human_size(o.size),
            "-",
            "-"
        ));
    }
    for u in uploads {
        let when = u
            .started
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        crate::output::emit(format!(
            "{:<32} {:<20} {:>8} {:<12} {:<20} UNFINISHED UPLOAD (a run in progress, or killed: the next backup or prune removes it)",
            u.key,
            when,
            u.size.map(human_size).unwrap_or_else(|| "-".into()),
            "-",
            "-"
        ));
    }
}
