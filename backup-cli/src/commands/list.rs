//! `kaizen-backup list [--json]`.

use backup_core::catalog;
use backup_core::manifest::Kind;
use backup_core::signing::{self, Authenticity, VerifyKey};
use backup_core::storage::IncompleteUpload;
use backup_core::util::human_size;
use backup_core::{Result, Storage};
use tracing::warn;

use crate::ctx::Ctx;

pub async fn run(ctx: &Ctx, json: bool) -> Result<()> {
    let targets = ctx.targets()?;
    let keys = ctx.verify_keys()?;
    if keys.is_empty() && !json {
        warn!("{NOT_AUTHENTICATED}");
    }
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
                rows.push(entry_json(t.storage.as_ref(), b, &keys));
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
        print_table(&cat, &uploads, &keys);
    }
    if json {
        let out = serde_json::to_string_pretty(&rows)
            .map_err(|e| backup_core::Error::other(e.to_string()))?;
        crate::output::emit(out.to_string());
    }
    Ok(())
}

/// What `list` and `status` say when no verify keys are configured.
pub const NOT_AUTHENTICATED: &str = "Backups are not authenticated: no [integrity] verify_keys are configured, so anyone who can write to the storage can replace a backup undetected";

/// A backup's authenticity: whether its manifest names its own objects and, with verify
/// keys, whether its signature is valid. `None` without keys (nothing is checked).
fn authenticity(b: &catalog::BackupEntry, keys: &[VerifyKey]) -> Option<(&'static str, String)> {
    let m = &b.manifest;
    if m.check_names(&m.name).is_err() {
        return Some((
            "foreign_objects",
            "FORGED (names objects of another backup)".into(),
        ));
    }
    if keys.is_empty() {
        return None;
    }
    Some(match signing::authenticity(m, keys) {
        Authenticity::Valid { .. } => ("signed", "signed".into()),
        Authenticity::Unsigned => ("unsigned", "UNSIGNED".into()),
        Authenticity::UnknownKey { .. } => ("unknown_key", "signed by an UNKNOWN KEY".into()),
        Authenticity::Mismatch { .. } => ("forged", "FORGED (does not match its signature)".into()),
    })
}

fn entry_json(
    storage: &dyn Storage,
    b: &catalog::BackupEntry,
    keys: &[VerifyKey],
) -> serde_json::Value {
    let m = &b.manifest;
    let auth = authenticity(b, keys);
    serde_json::json!({
        // `signed`, `unsigned`, `unknown_key`, `forged`, `foreign_objects`; null: not
        // authenticated (no verify keys configured).
        "authenticity": auth.as_ref().map(|a| a.0),
        "signed_by": m.signature.as_ref().map(|s| &s.key),
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

fn print_table(cat: &catalog::Catalog, uploads: &[IncompleteUpload], keys: &[VerifyKey]) {
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
        if let Some((_, word)) = authenticity(b, keys) {
            status.push_str(", ");
            status.push_str(&word);
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
