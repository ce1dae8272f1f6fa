//! Backend options (`[storage.s3]`, `[storage.azure]`, `[storage.gcs]`, `[storage.upload]`).
//! Always compiled, so a configuration stays valid for binaries built without a backend.

use backup_core::Secret;
use serde::{Deserialize, Serialize};

/// Multipart upload tuning, shared by every cloud backend (`[storage.upload]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadOptions {
    /// Bytes per part (minimum 5 MiB, as S3 requires). Default 8 MiB.
    pub part_size: usize,
    /// Parts in flight at once. Default 4 (so at most 32 MiB buffered per target).
    pub concurrency: usize,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            part_size: 8 * 1024 * 1024,
            concurrency: 4,
        }
    }
}

/// `[storage.s3]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Options {
    /// Region (default: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// Endpoint of an S3-compatible store (MinIO, Ceph, R2), e.g. `http://minio:9000`.
    pub endpoint: Option<String>,
    /// Allow plain HTTP (test servers, in-cluster MinIO).
    pub allow_http: Option<bool>,
    /// Virtual-hosted-style requests (`bucket.host`); default: path style.
    pub virtual_hosted_style: Option<bool>,
    /// Access key id (default from the environment).
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<Secret>,
    /// Session token.
    pub session_token: Option<Secret>,
    /// Server-side encryption: `AES256` (SSE-S3) or `aws:kms` (SSE-KMS, with `kms_key_id`).
    pub sse: Option<String>,
    /// KMS key for `sse = "aws:kms"`.
    pub kms_key_id: Option<String>,
    /// Storage class, e.g. `STANDARD_IA`, `GLACIER_IR`.
    pub storage_class: Option<String>,
}

/// `[storage.azure]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AzureOptions {
    /// Storage account (default `AZURE_STORAGE_ACCOUNT_NAME`).
    pub account: Option<String>,
    /// Account key (default `AZURE_STORAGE_ACCOUNT_KEY`).
    pub access_key: Option<Secret>,
    /// SAS token (`sv=...&sig=...`).
    pub sas_token: Option<Secret>,
    /// Account URL, e.g. `http://127.0.0.1:10000/devstoreaccount1` for Azurite.
    pub endpoint: Option<String>,
    /// Allow plain HTTP.
    pub allow_http: Option<bool>,
}

/// `[storage.gcs]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcsOptions {
    /// API endpoint (default Google's; e.g. `http://127.0.0.1:9023` for an emulator).
    pub endpoint: Option<String>,
    /// Service account key file (default `GOOGLE_APPLICATION_CREDENTIALS`, then workload identity).
    pub credential_path: Option<String>,
    /// Service account key JSON, base64 (a secret).
    pub credential: Option<Secret>,
    /// Send no credentials (emulators, public buckets).
    pub anonymous: bool,
}
