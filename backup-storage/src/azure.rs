//! `az://container/prefix` through object_store (Azure Blob Storage, Azurite).
//!
//! Account and credentials from `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`,
//! SAS, managed/workload identity (object_store's defaults), or `[storage.azure]`.

use std::sync::Arc;

use backup_core::{Error, Result, Storage};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};

use crate::objstore::{ObjStore, apply_timeouts, retry_config};
use crate::options::{AzureOptions, TimeoutOptions, UploadOptions};

/// Open `az://container/prefix`.
pub fn open(
    container: &str,
    prefix: &str,
    o: &AzureOptions,
    upload: UploadOptions,
    timeouts: TimeoutOptions,
) -> Result<Arc<dyn Storage>> {
    let mut b = MicrosoftAzureBuilder::from_env().with_container_name(container);
    if let Some(a) = &o.account {
        b = b.with_account(a);
    }
    if let Some(k) = &o.access_key {
        b = b.with_access_key(k.expose());
    }
    if let Some(sas) = &o.sas_token {
        let pairs: Vec<(String, String)> =
            url::form_urlencoded::parse(sas.expose().trim_start_matches('?').as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        b = b.with_sas_authorization(pairs);
    }
    if let Some(e) = &o.endpoint {
        b = b.with_endpoint(e.clone());
    }
    let endpoint = match &o.endpoint {
        Some(e) => crate::redact_endpoint(e),
        None => format!(
            "https://{}.blob.core.windows.net",
            o.account
                .clone()
                .or_else(|| std::env::var("AZURE_STORAGE_ACCOUNT_NAME").ok())
                .unwrap_or_else(|| "<account>".into())
        ),
    };
    if let Some(a) = o.allow_http {
        b = b.with_allow_http(a);
    }
    b = b.with_retry(retry_config(&timeouts));
    let mut downloads = b.clone();
    for (key, value) in apply_timeouts(&timeouts, false) {
        b = b.with_config(AzureConfigKey::Client(key), value);
    }
    for (key, value) in apply_timeouts(&timeouts, true) {
        downloads = downloads.with_config(AzureConfigKey::Client(key), value);
    }
    let store = b
        .build()
        .map_err(|e| Error::usage(format!("cannot set up az://{container}: {e}")))?;
    let reader = downloads
        .build()
        .map_err(|e| Error::usage(format!("cannot set up az://{container}: {e}")))?;
    let url = if prefix.is_empty() {
        format!("az://{container}")
    } else {
        format!("az://{container}/{prefix}")
    };
    Ok(Arc::new(
        ObjStore::new(Arc::new(store), url, endpoint, prefix, upload, None)
            .with_reader(Arc::new(reader)),
    ))
}
