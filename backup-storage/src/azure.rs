//! `az://container/prefix` through object_store (Azure Blob Storage, Azurite).
//!
//! Account and credentials from `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`,
//! SAS, managed/workload identity (object_store's defaults), or `[storage.azure]`.

use std::sync::Arc;

use backup_core::{Error, Result};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};

use crate::StorageOptions;
use crate::guard::Backend;
use crate::location::{Location, display_url, redact_endpoint};
use crate::objstore::{ObjStore, clients, retry_config};

/// Open `az://container/prefix`.
pub fn open(location: &Location, opts: &StorageOptions) -> Result<Box<dyn Backend>> {
    let (container, prefix) = location.bucket_and_prefix()?;
    let o = &opts.azure;
    let mut b = MicrosoftAzureBuilder::from_env().with_container_name(&container);
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
        Some(e) => redact_endpoint(e),
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
    let (b, downloads) = clients(
        b.with_retry(retry_config(&opts.timeouts)),
        &opts.timeouts,
        |b, k, v| b.with_config(AzureConfigKey::Client(k), v),
    );
    let setup =
        |e: object_store::Error| Error::usage(format!("cannot set up az://{container}: {e}"));
    let store = b.build().map_err(setup)?;
    let reader = downloads.build().map_err(setup)?;
    let url = display_url("az", &container, &prefix);
    Ok(Box::new(
        ObjStore::new(Arc::new(store), url, endpoint, &prefix, opts.upload, None)
            .with_reader(Arc::new(reader)),
    ))
}
