//! Storage backends for kaizen-backup, chosen by URL scheme in one registry ([`open`]).
//!
//! | scheme | backend | feature |
//! |---|---|---|
//! | `file://` or a plain path | a directory (Kubernetes PVC) | `local` |
//! | `s3://bucket/prefix` | object_store, multipart upload | `s3` |
//! | `gs://bucket/prefix` | opendal, JSON API resumable upload | `gcs` |
//! | `az://container/prefix` | object_store, block upload | `azure` |
//! | `webdav://`, `webdavs://`, `sftp://` | opendal | `opendal` |
//!
//! Asking for a scheme that was not compiled in fails with a message naming the feature.
//!
//! ```text
//! open(url) ──> registry: scheme ──> backend's builder ──> guard ──> Arc<dyn Storage>
//! ```
//!
//! A backend is one file with its service-specific code only, one line in the registry
//! below and one feature in Cargo.toml. [`open`] wraps what its builder returns in the
//! guard layer (`guard.rs`: key checks, no overwrite, abort of dropped writers). Errors keep
//! their cause and say whether a retry may succeed, decided from the cause's kind or
//! status (`retry.rs`).

use std::sync::Arc;

use backup_core::{Error, Result, Storage};
use serde::{Deserialize, Serialize};

mod guard;
mod location;
pub mod options;
mod retry;

#[cfg(feature = "dal")]
mod dal;
#[cfg(feature = "objstore")]
mod objstore;

use guard::{Backend, Guarded};
use location::Location;
pub use options::{
    AzureOptions, GcsOptions, S3Options, TimeoutOptions, UploadOptions, WebdavOptions,
};

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
    /// `[storage.webdav]`
    pub webdav: WebdavOptions,
    /// `[storage.timeouts]`
    pub timeouts: TimeoutOptions,
}

/// A backend's builder: the location and the options in, the service's store out (without
/// the guards, which [`open`] adds).
type Builder = fn(&Location, &StorageOptions) -> Result<Box<dyn Backend>>;

/// One line of the registry.
#[derive(Debug)]
struct Registered {
    /// The Cargo feature that compiles the backend in.
    feature: &'static str,
    /// The URL schemes it serves; the first is the one messages list.
    schemes: &'static [&'static str],
    /// Its builder, `None` when the feature is off.
    open: Option<Builder>,
}

/// Declares each backend's module (compiled with its feature) and its line in [`REGISTRY`].
macro_rules! registry {
    ($($feature:literal => $module:ident [$($scheme:literal),+],)+) => {
        $(
            #[cfg(feature = $feature)]
            mod $module;
        )+

        /// Every backend this crate knows, compiled in or not, in the order `--version` lists
        /// their features.
        static REGISTRY: &[Registered] = &[$(Registered {
            feature: $feature,
            schemes: &[$($scheme),+],
            open: {
                #[cfg(feature = $feature)]
                let open: Option<Builder> = Some($module::open);
                #[cfg(not(feature = $feature))]
                let open: Option<Builder> = None;
                open
            },
        }),+];
    };
}

// The registry: one line per backend, `"feature" => module [schemes]`. The module is a file
// in `src/` with `fn open(&Location, &StorageOptions) -> Result<Box<dyn Backend>>`; its
// Cargo feature is one line in Cargo.toml. A backend whose feature is off keeps its line,
// so asking for its scheme names the feature to enable.
registry! {
    "local" => local ["file"],
    "s3" => s3 ["s3"],
    "gcs" => gcs ["gs", "gcs"],
    "azure" => azure ["az", "azure"],
    "opendal" => webdav ["webdav", "webdavs"],
    "opendal" => sftp ["sftp"],
}

/// The storage features compiled into this build, e.g. `["local", "s3"]` (for `--version`).
pub fn features() -> &'static [&'static str] {
    static FEATURES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    FEATURES.get_or_init(|| {
        let mut out: Vec<&'static str> = Vec::new();
        for r in REGISTRY {
            if r.open.is_some() && !out.contains(&r.feature) {
                out.push(r.feature);
            }
        }
        out
    })
}

/// Open the storage a URL names (a plain path is a local directory), with the guard layer
/// (key checks, no overwrite, abort of dropped writers) around the backend.
pub fn open(url: &str, opts: &StorageOptions) -> Result<Arc<dyn Storage>> {
    let location = Location::new(url);
    let scheme = location.scheme();
    let Some(registered) = REGISTRY
        .iter()
        .find(|r| r.schemes.contains(&scheme.as_str()))
    else {
        let known: Vec<String> = REGISTRY
            .iter()
            .map(|r| format!("{}://", r.schemes[0]))
            .collect();
        return Err(Error::usage(format!(
            "unknown storage scheme `{scheme}://` (known: {})",
            known.join(", ")
        )));
    };
    let Some(build) = registered.open else {
        // A feature that brings several backends is named by the scheme asked for.
        let shared = REGISTRY
            .iter()
            .filter(|r| r.feature == registered.feature)
            .count()
            > 1;
        let what = if shared { &scheme } else { registered.feature };
        return Err(Error::NotCompiled {
            what: format!("{what} storage"),
            feature: registered.feature.into(),
        });
    };
    Ok(Arc::new(Guarded::new(build(&location, opts)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_is_registered_once_and_features_follow_the_registry() {
        let mut schemes: Vec<&str> = REGISTRY.iter().flat_map(|r| r.schemes).copied().collect();
        let n = schemes.len();
        schemes.sort_unstable();
        schemes.dedup();
        assert_eq!(schemes.len(), n, "a scheme is registered twice");
        for f in features() {
            assert!(REGISTRY.iter().any(|r| r.feature == *f && r.open.is_some()));
        }
        #[cfg(feature = "local")]
        assert_eq!(features().first(), Some(&"local"));
    }

    #[test]
    fn unknown_and_missing_schemes_are_usage_errors_that_say_why() {
        let err = open("ftp://x/y", &StorageOptions::default())
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown storage scheme `ftp://` (known: file://, s3://, gs://, az://, webdav://, sftp://)"
        );
        assert_eq!(err.exit_code(), 2);
        #[cfg(not(feature = "s3"))]
        {
            let err = open("s3://b/p", &StorageOptions::default())
                .map(|_| ())
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                "s3 storage support is not compiled in (feature `s3`)"
            );
        }
        #[cfg(not(feature = "azure"))]
        {
            let err = open("AZ://c/p", &StorageOptions::default())
                .map(|_| ())
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                "azure storage support is not compiled in (feature `azure`)"
            );
        }
        #[cfg(not(feature = "opendal"))]
        {
            let err = open("webdavs://h/p", &StorageOptions::default())
                .map(|_| ())
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                "webdavs storage support is not compiled in (feature `opendal`)"
            );
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
            if let Ok((bucket, _)) = Location::new(&url).bucket_and_prefix() {
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
