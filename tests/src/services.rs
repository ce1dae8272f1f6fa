//! The local servers `cargo xtask test` starts besides PostgreSQL. Each accessor fails
//! the test with "run the tests with `cargo xtask test`" when its variables are missing.
//!
//! Buckets are shared by the tests that run in parallel: use [`S3::prefix`] (and the same
//! on the others) to get a unique key prefix per test.

use crate::{env, unique};

/// moto, an S3-compatible server. Credentials are not checked; any value works.
#[derive(Debug, Clone)]
pub struct S3 {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    /// An existing bucket.
    pub bucket: String,
}

/// Azurite (Azure Blob Storage) with the well-known development account.
#[derive(Debug, Clone)]
pub struct Azure {
    /// `http://127.0.0.1:PORT/devstoreaccount1`
    pub endpoint: String,
    /// An existing container.
    pub container: String,
    /// `devstoreaccount1`
    pub account: String,
    /// The account's (public, well-known) key.
    pub key: String,
}

/// gcp-storage-emulator (Google Cloud Storage JSON API, no authentication).
#[derive(Debug, Clone)]
pub struct Gcs {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    /// An existing bucket.
    pub bucket: String,
}

/// maildev: an SMTP server that keeps what it receives, and its HTTP API.
#[derive(Debug, Clone)]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    /// `http://127.0.0.1:PORT`: `GET /email` lists the received messages (JSON array).
    pub api: String,
}

impl S3 {
    pub fn get() -> Self {
        Self {
            endpoint: env("KAIZEN_TEST_S3_ENDPOINT"),
            bucket: env("KAIZEN_TEST_S3_BUCKET"),
        }
    }
    /// A unique key prefix for one test.
    pub fn prefix(&self, test: &str) -> String {
        unique(test)
    }
    /// `s3://BUCKET/PREFIX`
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }
    /// A new bucket of its own with S3 Object Lock enabled (and so versioning).
    pub fn object_lock_bucket(&self) -> String {
        let bucket = unique("kaizen-lock").replace('_', "-");
        let (code, body) = crate::http::request(
            "PUT",
            &format!("{}/{bucket}", self.endpoint),
            &[("x-amz-bucket-object-lock-enabled", "true")],
            b"",
        );
        assert_eq!(code, 200, "creating bucket {bucket}: {body}");
        bucket
    }
    /// A CLI for database `db` with this emulator's endpoint and credentials. The secret
    /// key, `Aws-Secret-Never-Printed`, is what tests look for in the output.
    pub fn cli(&self, db: &str) -> crate::Cli {
        crate::Cli::for_db(db)
            .env("AWS_ACCESS_KEY_ID", "kaizen-test")
            .env("AWS_SECRET_ACCESS_KEY", "Aws-Secret-Never-Printed")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
    }
}

impl Azure {
    pub fn get() -> Self {
        Self {
            endpoint: env("KAIZEN_TEST_AZURE_ENDPOINT"),
            container: env("KAIZEN_TEST_AZURE_CONTAINER"),
            account: env("KAIZEN_TEST_AZURE_ACCOUNT"),
            key: env("KAIZEN_TEST_AZURE_KEY"),
        }
    }
    /// `az://CONTAINER/PREFIX`
    pub fn url(&self, prefix: &str) -> String {
        format!("az://{}/{prefix}", self.container)
    }
}

impl Gcs {
    pub fn get() -> Self {
        Self {
            endpoint: env("KAIZEN_TEST_GCS_ENDPOINT"),
            bucket: env("KAIZEN_TEST_GCS_BUCKET"),
        }
    }
    /// `gs://BUCKET/PREFIX`
    pub fn url(&self, prefix: &str) -> String {
        format!("gs://{}/{prefix}", self.bucket)
    }
}

impl Smtp {
    pub fn get() -> Self {
        Self {
            host: env("KAIZEN_TEST_SMTP_HOST"),
            port: env("KAIZEN_TEST_SMTP_PORT").parse().unwrap(),
            api: env("KAIZEN_TEST_MAILDEV_API"),
        }
    }
    /// Every message maildev received (all tests share it: filter by a unique subject
    /// or recipient).
    pub fn messages(&self) -> Vec<serde_json::Value> {
        let (status, body) = crate::http::get(&format!("{}/email", self.api));
        assert_eq!(status, 200, "maildev API: {body}");
        serde_json::from_str::<serde_json::Value>(&body)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
    /// Messages to `recipient`, waiting up to `timeout` for at least one.
    pub fn wait_for(
        &self,
        recipient: &str,
        timeout: std::time::Duration,
    ) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let found: Vec<_> = self
                .messages()
                .into_iter()
                .filter(|m| m["to"].to_string().contains(recipient))
                .collect();
            if !found.is_empty() || std::time::Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// WebDAV root URL (`http://127.0.0.1:PORT/`, anonymous read/write).
pub fn webdav_endpoint() -> String {
    env("KAIZEN_TEST_WEBDAV_ENDPOINT")
}

/// Prometheus Pushgateway URL (`http://127.0.0.1:PORT`).
pub fn pushgateway_url() -> String {
    env("KAIZEN_TEST_PUSHGATEWAY_URL")
}

/// What the Pushgateway currently exposes (`GET /metrics`, Prometheus text format).
pub fn pushgateway_metrics() -> String {
    let (status, body) = crate::http::get(&format!("{}/metrics", pushgateway_url()));
    assert_eq!(status, 200, "pushgateway: {body}");
    body
}

/// The venv's bin directory (kubernetes-validate, moto_server, ...).
pub fn venv_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env("KAIZEN_TEST_VENV_BIN"))
}
