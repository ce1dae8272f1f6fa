//! `gs://bucket/prefix` through opendal, using the JSON API's resumable upload, which
//! streams.
//!
//! Credentials from `[storage.gcs]` (`credential_path`, `credential`),
//! `GOOGLE_APPLICATION_CREDENTIALS`, then workload identity; `anonymous` sends none
//! (emulators, public buckets).

use backup_core::Result;

use crate::StorageOptions;
use crate::dal;
use crate::guard::Backend;
use crate::location::{Location, display_url};

/// Open `gs://bucket/prefix`.
pub fn open(location: &Location, opts: &StorageOptions) -> Result<Box<dyn Backend>> {
    let (bucket, prefix) = location.bucket_and_prefix()?;
    let o = &opts.gcs;
    let mut b = opendal::services::Gcs::default()
        .bucket(&bucket)
        .root(&format!("/{prefix}"));
    if let Some(e) = &o.endpoint {
        b = b.endpoint(e);
    }
    let cred_path = o.credential_path.clone().or_else(|| {
        std::env::var("GOOGLE_APPLICATION_CREDENTIALS")
            .ok()
            .filter(|v| !v.is_empty())
    });
    if let Some(p) = &cred_path {
        b = b.credential_path(p);
    }
    if let Some(c) = &o.credential {
        b = b.credential(c.expose());
    }
    if o.anonymous {
        b = b
            .skip_signature()
            .disable_vm_metadata()
            .disable_config_load();
    }
    let url = display_url("gs", &bucket, &prefix);
    dal::open(b, &format!("gs://{bucket}"), url, opts)
}
