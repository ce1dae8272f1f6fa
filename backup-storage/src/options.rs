//! Backend options (`[storage.s3]`, `[storage.azure]`, `[storage.gcs]`, `[storage.webdav]`,
//! `[storage.upload]`, `[storage.timeouts]`).
//! Always compiled, so a configuration stays valid for binaries built without a backend.

use std::time::Duration;

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

/// Network timeouts of every storage call (`[storage.timeouts]`), so a store that stops
/// answering (a frozen endpoint with the connection still open) fails the operation in
/// bounded time instead of hanging it. Local storage ignores them.
///
/// The longest one call can take is about `retry_secs + request_secs`; cleanup after a
/// failure (aborting uploads, releasing locks) is cut off after `cleanup_secs` in total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutOptions {
    /// Seconds to establish a connection (TCP and TLS). Default 5.
    pub connect_secs: u64,
    /// Seconds for one request, from connecting to the end of its answer: a multipart
    /// part (raise it with `upload.part_size` on slow links), a manifest, a listing page.
    /// Downloads of whole backups grow with the backup and are bounded by `idle_secs`
    /// instead (s3, az). Default 60.
    pub request_secs: u64,
    /// Seconds without a byte read before a request is given up (stalled downloads,
    /// servers that accept and never answer); a stalled download resumes where it
    /// stopped, within the retry budget. Default 30.
    pub idle_secs: u64,
    /// Retries of a failed request (timeouts, connection errors, 5xx). Default 3.
    pub retries: u32,
    /// No retry starts once a call has been running this long. Default 120.
    pub retry_secs: u64,
    /// Total seconds for cleanup after a failure or a signal (aborting uploads, deleting
    /// partial objects, releasing locks); what is not done by then is left for `prune`.
    /// Default 15.
    pub cleanup_secs: u64,
}

impl Default for TimeoutOptions {
    fn default() -> Self {
        Self {
            connect_secs: 5,
            request_secs: 60,
            idle_secs: 30,
            retries: 3,
            retry_secs: 120,
            cleanup_secs: 15,
        }
    }
}

impl TimeoutOptions {
    fn secs(s: u64) -> Duration {
        Duration::from_secs(s.max(1))
    }
    /// Connect timeout.
    pub fn connect(&self) -> Duration {
        Self::secs(self.connect_secs)
    }
    /// Per-request timeout.
    pub fn request(&self) -> Duration {
        Self::secs(self.request_secs)
    }
    /// Idle (read) timeout.
    pub fn idle(&self) -> Duration {
        Self::secs(self.idle_secs)
    }
    /// Window in which retries may start.
    pub fn retry_window(&self) -> Duration {
        Self::secs(self.retry_secs)
    }
    /// Total deadline of the cleanup after a failure.
    pub fn cleanup(&self) -> Duration {
        Self::secs(self.cleanup_secs)
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
    /// S3 Object Lock: the retention every object written gets (the bucket must have
    /// Object Lock enabled).
    pub object_lock: Option<ObjectLockOptions>,
}

/// `storage.s3.object_lock = { mode = "GOVERNANCE", days = 30 }`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLockOptions {
    /// `GOVERNANCE` (users with `s3:BypassGovernanceRetention` can shorten or delete) or
    /// `COMPLIANCE` (nobody can, not even the root account).
    pub mode: String,
    /// Days from the write until the object can be deleted (1 to 36500).
    pub days: u32,
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

/// `[storage.webdav]`: credentials for `webdav://` and `webdavs://` targets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebdavOptions {
    /// User name (the command line also reads `KAIZEN_BACKUP_WEBDAV_USER`).
    pub user: Option<String>,
    /// Password (a secret; the command line also reads `KAIZEN_BACKUP_WEBDAV_PASSWORD`).
    pub password: Option<Secret>,
}
