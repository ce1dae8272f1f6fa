//! `s3://bucket/prefix` through object_store (AWS S3 and S3-compatible stores).
//!
//! Credentials come from the usual places (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/
//! `AWS_SESSION_TOKEN`, web identity for IRSA via `AWS_WEB_IDENTITY_TOKEN_FILE` +
//! `AWS_ROLE_ARN`, instance metadata), or from `[storage.s3]`. The endpoint comes from
//! `endpoint`, `AWS_ENDPOINT_URL` or `AWS_ENDPOINT`; `AWS_ALLOW_HTTP` allows plain HTTP.

use std::sync::Arc;

use backup_core::{Error, Result, Storage};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};

use crate::objstore::{ObjStore, apply_timeouts, retry_config};
use crate::options::{S3Options, TimeoutOptions, UploadOptions};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Open `s3://bucket/prefix`.
pub fn open(
    bucket: &str,
    prefix: &str,
    o: &S3Options,
    upload: UploadOptions,
    timeouts: TimeoutOptions,
) -> Result<Arc<dyn Storage>> {
    let cfg = |key: &str, msg: String| Error::Config {
        key: format!("storage.s3.{key}"),
        message: msg,
    };
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    let region = o
        .region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"));
    let region = region.unwrap_or_else(|| "us-east-1".into());
    b = b.with_region(region.clone());
    let endpoint = o
        .endpoint
        .clone()
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .or_else(|| env("AWS_ENDPOINT"));
    if let Some(ep) = &endpoint {
        b = b.with_endpoint(ep.clone());
    }
    let endpoint = match endpoint {
        Some(ep) => crate::redact_endpoint(&ep),
        None => format!("https://s3.{region}.amazonaws.com"),
    };
    if let Some(a) = o.allow_http {
        b = b.with_allow_http(a);
    }
    b = b.with_virtual_hosted_style_request(o.virtual_hosted_style.unwrap_or(false));
    if let Some(k) = &o.access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(s) = &o.secret_access_key {
        b = b.with_secret_access_key(s.expose());
    }
    if let Some(t) = &o.session_token {
        b = b.with_token(t.expose());
    }
    match o.sse.as_deref() {
        None => {}
        Some("AES256") => {
            let key: AmazonS3ConfigKey = "aws_server_side_encryption"
                .parse()
                .map_err(|_| cfg("sse", "this object_store version has no SSE setting".into()))?;
            b = b.with_config(key, "AES256");
        }
        Some("aws:kms") => {
            let Some(k) = &o.kms_key_id else {
                return Err(cfg(
                    "kms_key_id",
                    "sse = \"aws:kms\" needs kms_key_id".into(),
                ));
            };
            b = b.with_sse_kms_encryption(k);
        }
        Some(other) => {
            return Err(cfg(
                "sse",
                format!("unknown value {other:?} (AES256 or aws:kms)"),
            ));
        }
    }
    b = b.with_retry(retry_config(&timeouts));
    let mut downloads = b.clone();
    for (key, value) in apply_timeouts(&timeouts, false) {
        b = b.with_config(AmazonS3ConfigKey::Client(key), value);
    }
    for (key, value) in apply_timeouts(&timeouts, true) {
        downloads = downloads.with_config(AmazonS3ConfigKey::Client(key), value);
    }
    let store = b
        .build()
        .map_err(|e| Error::usage(format!("cannot set up s3://{bucket}: {e}")))?;
    let reader = downloads
        .build()
        .map_err(|e| Error::usage(format!("cannot set up s3://{bucket}: {e}")))?;
    let url = if prefix.is_empty() {
        format!("s3://{bucket}")
    } else {
        format!("s3://{bucket}/{prefix}")
    };
    Ok(Arc::new(
        ObjStore::new(
            Arc::new(store),
            url,
            endpoint,
            prefix,
            upload,
            o.storage_class.clone(),
        )
        .with_reader(Arc::new(reader)),
    ))
}
