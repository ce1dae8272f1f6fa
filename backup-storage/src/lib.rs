//! Storage backends for kaizen-backup, chosen by URL scheme.
//!
//! | scheme | backend | feature |
//! |---|---|---|
//! | `file://` or a plain path | [`local::LocalStorage`] | `local` |
//!
//! Asking for a scheme that was not compiled in fails with a message naming the feature.

use std::sync::Arc;

use backup_core::{Error, Result, Storage};

#[cfg(feature = "local")]
pub mod local;

/// Options shared by every backend (per-cloud settings live in their sections).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct StorageOptions {}

/// Open the storage a URL names.
pub fn open(url: &str, _opts: &StorageOptions) -> Result<Arc<dyn Storage>> {
    let scheme = match url.split_once("://") {
        Some((s, _)) => s.to_ascii_lowercase(),
        None => "file".to_string(),
    };
    match scheme.as_str() {
        "file" => open_local(url),
        other => Err(Error::usage(format!(
            "unknown storage scheme `{other}://` in {url:?} (known: file://, s3://, gs://, az://)"
        ))),
    }
}

#[cfg(feature = "local")]
fn open_local(url: &str) -> Result<Arc<dyn Storage>> {
    let path = url.strip_prefix("file://").unwrap_or(url);
    if path.is_empty() {
        return Err(Error::usage("empty storage path"));
    }
    // Absolute, so logs and `list` say exactly where backups are.
    let abs = std::path::absolute(path)
        .map_err(|e| Error::usage(format!("invalid storage path {path:?}: {e}")))?;
    Ok(Arc::new(local::LocalStorage::new(abs)))
}

#[cfg(not(feature = "local"))]
fn open_local(_url: &str) -> Result<Arc<dyn Storage>> {
    Err(Error::NotCompiled {
        what: "local storage".into(),
        feature: "local".into(),
    })
}
