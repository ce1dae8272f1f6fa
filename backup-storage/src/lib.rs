//! Storage backends for kaizen-backup, chosen by URL scheme in one registry ([`open`]).
//!
//! | scheme | backend | feature |
//! |---|---|---|
//! | `file://` or a plain path | [`local::LocalStorage`] (directory, Kubernetes PVC) | `local` |
//! | `s3://bucket/prefix` | object_store, multipart upload | `s3` |
//! | `az://container/prefix` | object_store, block upload | `azure` |
//! | `gs://bucket/prefix` | opendal, JSON API resumable upload | `gcs` |
//! | `webdav://`, `webdavs://`, `sftp://` | opendal | `opendal` |
//!
//! Asking for a scheme that was not compiled in fails with a message naming the feature.

use std::sync::Arc;

use backup_core::{Error, Result, Storage};
use serde::{Deserialize, Serialize};

#[cfg(feature = "azure")]
pub mod azure;
#[cfg(any(feature = "gcs", feature = "opendal"))]
pub mod dal;
#[cfg(feature = "local")]
pub mod local;
#[cfg(any(feature = "s3", feature = "azure"))]
pub mod objstore;
pub mod options;
#[cfg(feature = "s3")]
pub mod s3;

pub use options::{AzureOptions, GcsOptions, S3Options, TimeoutOptions, UploadOptions};

/// The `[storage.*]` sections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageOptions {
    /// `[storage.upload]`
    pub upload: UploadOptions,
    /// `[storage.s3]`
    pub s3: S3Options,
    /// `[storage.azure]`
    pub azure: AzureOptions,
    /// `[storage.gcs]`
    pub gcs: GcsOptions,
    /// `[storage.timeouts]`
    pub timeouts: TimeoutOptions,
}

#[allow(dead_code)]
fn not_compiled(what: &str, feature: &str) -> Error {
    Error::NotCompiled {
        what: what.into(),
        feature: feature.into(),
    }
}

/// Split `scheme://bucket/prefix` into bucket and prefix.
#[allow(dead_code)]
fn bucket_and_prefix(url: &str) -> Result<(String, String)> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(Error::usage(format!("no bucket or container in {url:?}")));
    }
    // Names S3, GCS and Azure accept; anything else would only fail (or worse) later,
    // when the client builds a request URL from it.
    if let Some(c) = bucket
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(Error::usage(format!(
            "invalid bucket or container name {bucket:?} in {url:?}: {c:?} is not allowed (use letters, digits, `.`, `-`, `_`)"
        )));
    }
    if bucket.len() > 222 {
        return Err(Error::usage(format!(
            "invalid bucket or container name in {url:?}: longer than 222 characters"
        )));
    }
    if let Some(c) = prefix.chars().find(|c| c.is_control()) {
        return Err(Error::usage(format!(
            "invalid prefix in storage URL {url:?}: control character {c:?}"
        )));
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

/// An endpoint for messages: scheme, host and port only (no user information, no query).
#[allow(dead_code)]
fn redact_endpoint(endpoint: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{}://{h}:{p}", u.scheme()),
            (Some(h), None) => format!("{}://{h}", u.scheme()),
            _ => "<invalid endpoint>".into(),
        },
        Err(_) => "<invalid endpoint>".into(),
    }
}

/// Open the storage a URL names. The `#[cfg]` lines below are the only place that
/// knows which backends exist.
#[cfg_attr(
    not(any(
        feature = "s3",
        feature = "azure",
        feature = "gcs",
        feature = "opendal"
    )),
    allow(unused_variables)
)]
pub fn open(url: &str, opts: &StorageOptions) -> Result<Arc<dyn Storage>> {
    let scheme = match url.split_once("://") {
        Some((s, _)) => s.to_ascii_lowercase(),
        None => "file".to_string(),
    };
    match scheme.as_str() {
        #[cfg(feature = "local")]
        "file" => open_local(url),
        #[cfg(feature = "s3")]
        "s3" => {
            let (b, p) = bucket_and_prefix(url)?;
            s3::open(&b, &p, &opts.s3, opts.upload, opts.timeouts)
        }
        #[cfg(feature = "azure")]
        "az" | "azure" => {
            let (b, p) = bucket_and_prefix(url)?;
            azure::open(&b, &p, &opts.azure, opts.upload, opts.timeouts)
        }
        #[cfg(feature = "gcs")]
        "gs" | "gcs" => {
            let (b, p) = bucket_and_prefix(url)?;
            dal::gcs::open(&b, &p, &opts.gcs, opts.upload, opts.timeouts)
        }
        #[cfg(feature = "opendal")]
        "webdav" | "webdavs" | "sftp" => {
            let parsed = url::Url::parse(url)
                .map_err(|e| Error::usage(format!("invalid storage URL: {e}")))?;
            dal::other::open(&parsed, opts.upload, opts.timeouts)
        }
        #[allow(unreachable_patterns)]
        "file" => Err(not_compiled("local storage", "local")),
        #[allow(unreachable_patterns)]
        "s3" => Err(not_compiled("s3 storage", "s3")),
        #[allow(unreachable_patterns)]
        "az" | "azure" => Err(not_compiled("azure storage", "azure")),
        #[allow(unreachable_patterns)]
        "gs" | "gcs" => Err(not_compiled("gcs storage", "gcs")),
        #[allow(unreachable_patterns)]
        "webdav" | "webdavs" | "sftp" => Err(not_compiled(&format!("{scheme} storage"), "opendal")),
        other => Err(Error::usage(format!(
            "unknown storage scheme `{other}://` (known: file://, s3://, gs://, az://, webdav://, sftp://)"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        assert!(bucket_and_prefix("s3://my-bucket.v2/a/b").is_ok());
        for bad in [
            "s3://bucket with space/p",
            "s3:///p",
            "gs://b%20/p",
            "az://a\tb",
        ] {
            let err = bucket_and_prefix(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
    }

    proptest::proptest! {
        /// No storage URL panics: it opens, or is refused with a usage error (exit 2).
        #[test]
        fn any_storage_url_opens_or_is_a_usage_error(
            scheme in "(s3|gs|az|azure|gcs|file|webdav|sftp|S3|ftp|)",
            rest in "\\PC{0,40}|[a-z .%/_-]{0,30}",
        ) {
            let url = if scheme.is_empty() { rest } else { format!("{scheme}://{rest}") };
            if let Ok((bucket, _)) = bucket_and_prefix(&url) {
                // Request URLs are built from the bucket: only URI-unreserved characters.
                proptest::prop_assert!(bucket
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')));
            }
            match open(&url, &StorageOptions::default()) {
                Ok(s) => proptest::prop_assert!(!s.url().is_empty()),
                Err(e) => proptest::prop_assert_eq!(e.exit_code(), 2, "{}: {}", url, e),
            }
        }
    }
}
