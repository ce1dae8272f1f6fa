//! Backends through opendal: `gs://bucket/prefix` (feature `gcs`, using the JSON API's
//! resumable upload, which streams) and other schemes (feature `opendal`), e.g.
//! `webdav://host/path` / `webdavs://` and `sftp://`. Every operator gets opendal's retry
//! and timeout layers, set from `[storage.timeouts]`: `request_secs` bounds each call
//! (connecting included), `idle_secs` each read or write of a stream, `retries` the
//! retries of temporary failures.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backup_core::storage::{ByteStream, ObjectMeta, ObjectWriter, Storage, storage_error};
use backup_core::{Error, Result};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::{ErrorKind, Operator};

use crate::options::{TimeoutOptions, UploadOptions};

/// A storage over an opendal operator (rooted at the prefix).
#[derive(Debug, Clone)]
pub struct DalStorage {
    op: Operator,
    url: String,
    upload: UploadOptions,
}

/// Install opendal's HTTP transport once (without its auto-registration feature nothing
/// does it before `main`). Called before any operator is built.
pub fn ensure_transport() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(opendal::install_default);
}

/// Add the retry and timeout layers.
pub fn layered(op: Operator, t: &TimeoutOptions) -> Operator {
    op.layer(
        TimeoutLayer::new()
            .with_timeout(t.request())
            .with_io_timeout(t.idle()),
    )
    .layer(
        RetryLayer::new()
            .with_max_times(t.retries as usize)
            .with_max_delay(Duration::from_secs(10)),
    )
}

impl DalStorage {
    /// Wrap an operator; `url` is the redacted display URL.
    pub fn new(op: Operator, url: String, upload: UploadOptions, t: &TimeoutOptions) -> Self {
        Self {
            op: layered(op, t),
            url,
            upload,
        }
    }

    fn check_key(&self, key: &str) -> Result<()> {
        if key.is_empty() || key.contains('/') {
            return Err(storage_error(
                &self.url,
                "resolve",
                key,
                "invalid object key",
                false,
            ));
        }
        Ok(())
    }

    fn err(&self, op: &'static str, key: &str, e: opendal::Error) -> Error {
        map_error(&self.url, op, key, e)
    }
}

/// Map an opendal error (its text names the operation, never credentials).
pub fn map_error(url: &str, op: &'static str, key: &str, e: opendal::Error) -> Error {
    match e.kind() {
        // Writing creates the key: only a missing bucket (or base directory) answers 404.
        ErrorKind::NotFound
            if matches!(
                op,
                "put" | "start upload" | "write" | "upload" | "complete upload" | "check (write)"
            ) =>
        {
            storage_error(
                url,
                op,
                key,
                format!(
                    "the bucket or base directory of {url} does not exist; create it, or correct the storage URL"
                ),
                false,
            )
        }
        ErrorKind::NotFound => Error::NotFound(format!("{url}/{key}")),
        ErrorKind::AlreadyExists | ErrorKind::ConditionNotMatch => {
            Error::AlreadyExists(format!("{url}/{key}"))
        }
        _ => {
            let retryable = e.is_temporary();
            storage_error(
                url,
                op,
                key,
                format!("{} ({})", e.kind(), first_line(&e.to_string())),
                retryable,
            )
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

/// Every object is binary; naming it also keeps some servers' metadata complete.
const CONTENT_TYPE: &str = "application/octet-stream";

/// Largest object a service without multi-part writes accepts (it is held in memory).
pub const ONE_SHOT_LIMIT: u64 = 256 * 1024 * 1024;

struct DalWriter {
    url: String,
    key: String,
    inner: Option<opendal::Writer>,
    written: u64,
    /// Services that cannot take a write in several parts (WebDAV) get the object in
    /// one PUT: it is buffered here, up to `one_shot_limit` bytes, and refused beyond.
    one_shot: Option<Vec<Bytes>>,
    one_shot_limit: u64,
}

#[async_trait]
impl ObjectWriter for DalWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        let Some(w) = self.inner.as_mut() else {
            return Err(storage_error(
                &self.url,
                "write",
                &self.key,
                "writer already closed",
                false,
            ));
        };
        self.written += data.len() as u64;
        if let Some(buf) = self.one_shot.as_mut() {
            if self.written > self.one_shot_limit {
                return Err(storage_error(
                    &self.url,
                    "write",
                    &self.key,
                    format!(
                        "this service cannot stream an upload in parts; objects above {} MiB are refused (raise storage.upload.part_size x concurrency, or use s3/gs/az)",
                        self.one_shot_limit / (1024 * 1024)
                    ),
                    false,
                ));
            }
            buf.push(data);
            return Ok(());
        }
        w.write(data)
            .await
            .map_err(|e| map_error(&self.url, "write", &self.key, e))
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectMeta> {
        let Some(mut w) = self.inner.take() else {
            return Err(storage_error(
                &self.url,
                "finish",
                &self.key,
                "writer already closed",
                false,
            ));
        };
        if let Some(parts) = self.one_shot.take()
            && let Err(e) = w.write(opendal::Buffer::from(parts)).await
        {
            let _ = w.abort().await;
            return Err(map_error(&self.url, "upload", &self.key, e));
        }
        if let Err(e) = w.close().await {
            let _ = w.abort().await;
            return Err(map_error(&self.url, "complete upload", &self.key, e));
        }
        Ok(ObjectMeta {
            key: self.key.clone(),
            size: self.written,
            last_modified: Some(chrono::Utc::now()),
        })
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        match self.inner.take() {
            Some(mut w) => w
                .abort()
                .await
                .map_err(|e| map_error(&self.url, "abort upload", &self.key, e)),
            None => Ok(()),
        }
    }
}

impl Drop for DalWriter {
    fn drop(&mut self) {
        if let Some(mut w) = self.inner.take()
            && let Ok(h) = tokio::runtime::Handle::try_current()
        {
            h.spawn(async move {
                let _ = w.abort().await;
            });
        }
    }
}

#[async_trait]
impl Storage for DalStorage {
    fn url(&self) -> String {
        self.url.clone()
    }

    async fn put(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        self.check_key(key)?;
        if self.head(key).await?.is_some() {
            return Err(Error::AlreadyExists(format!("{}/{key}", self.url)));
        }
        let cap = self.op.info().capability();
        let multi = cap.write_can_multi;
        let w = if multi && cap.write_with_if_not_exists {
            // Create-only, which is what a backup wants anyway; on GCS this is the JSON
            // API's resumable upload, streamed chunk by chunk.
            self.op
                .writer_with(key)
                .content_type(CONTENT_TYPE)
                .if_not_exists(true)
                .chunk(self.upload.part_size.max(5 * 1024 * 1024))
                .await
        } else if multi {
            self.op
                .writer_with(key)
                .content_type(CONTENT_TYPE)
                .chunk(self.upload.part_size.max(5 * 1024 * 1024))
                .concurrent(self.upload.concurrency.max(1))
                .await
        } else {
            self.op.writer_with(key).content_type(CONTENT_TYPE).await
        }
        .map_err(|e| self.err("start upload", key, e))?;
        Ok(Box::new(DalWriter {
            url: self.url.clone(),
            key: key.to_string(),
            inner: Some(w),
            written: 0,
            one_shot: (!multi).then(Vec::new),
            one_shot_limit: ONE_SHOT_LIMIT,
        }))
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        self.check_key(key)?;
        // Readers are lazy: ask first, so a missing object is NotFound, not a read error.
        if self.head(key).await?.is_none() {
            return Err(Error::NotFound(format!("{}/{key}", self.url)));
        }
        let r = self
            .op
            .reader(key)
            .await
            .map_err(|e| self.err("get", key, e))?;
        let s = r
            .into_bytes_stream(..)
            .await
            .map_err(|e| self.err("get", key, e))?;
        let url = self.url.clone();
        let key = key.to_string();
        Ok(
            s.map(move |r| r.map_err(|e| storage_error(&url, "read", &key, e, true)))
                .boxed(),
        )
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.check_key(key)?;
        match self.op.stat(key).await {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: m.content_length(),
                last_modified: m
                    .last_modified()
                    .and_then(|t| chrono::DateTime::from_timestamp(t.into_inner().as_second(), 0)),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err("head", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<BoxStream<'static, Result<ObjectMeta>>> {
        let entries = match self.op.list("/").await {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(self.err("list", prefix, e)),
        };
        let mut out = Vec::new();
        for e in entries {
            let name = e.name().trim_end_matches('/').to_string();
            if e.metadata().is_dir() || !name.starts_with(prefix) || name.is_empty() {
                continue;
            }
            // Listings do not always carry sizes and times: ask when missing.
            let meta = match self.head(&name).await? {
                Some(m) => m,
                None => continue,
            };
            out.push(Ok(meta));
        }
        Ok(futures::stream::iter(out).boxed())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.check_key(key)?;
        match self.op.delete(key).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err("delete", key, e)),
        }
    }

    async fn check(&self) -> Result<()> {
        let key = format!(".kaizen-check.{}", backup_core::util::random_suffix(8));
        self.op
            .write_with(&key, Bytes::from_static(b"ok"))
            .content_type(CONTENT_TYPE)
            .await
            .map_err(|e| self.err("check (write)", &key, e))?;
        self.op
            .delete(&key)
            .await
            .map_err(|e| self.err("check (delete)", &key, e))
    }

    async fn put_replace(&self, key: &str, data: Bytes) -> Result<()> {
        self.check_key(key)?;
        self.op
            .write_with(key, data)
            .content_type(CONTENT_TYPE)
            .await
            .map_err(|e| self.err("put", key, e))?;
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool> {
        self.check_key(key)?;
        // Checked first as well: some servers (emulators) ignore the precondition; real
        // GCS honours it, which closes the race between two writers.
        if self.head(key).await?.is_some() {
            return Ok(false);
        }
        if self.op.info().capability().write_with_if_not_exists {
            return match self.op.write_with(key, data).if_not_exists(true).await {
                Ok(_) => Ok(true),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConditionNotMatch | ErrorKind::AlreadyExists
                    ) =>
                {
                    Ok(false)
                }
                Err(e) => Err(self.err("put", key, e)),
            };
        }
        // No conditional write on this service: check, then write (a small race, documented).
        if self.head(key).await?.is_some() {
            return Ok(false);
        }
        self.put_replace(key, data).await?;
        Ok(true)
    }
}

/// `gs://bucket/prefix`.
#[cfg(feature = "gcs")]
pub mod gcs {
    use super::*;
    use crate::options::GcsOptions;

    /// Open `gs://bucket/prefix`.
    pub fn open(
        bucket: &str,
        prefix: &str,
        o: &GcsOptions,
        upload: UploadOptions,
        timeouts: TimeoutOptions,
    ) -> Result<Arc<dyn Storage>> {
        ensure_transport();
        let mut b = opendal::services::Gcs::default()
            .bucket(bucket)
            .root(&format!("/{}", prefix.trim_matches('/')));
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
        let op = Operator::new(b).map_err(|e| {
            Error::usage(format!(
                "cannot set up gs://{bucket}: {}",
                first_line(&e.to_string())
            ))
        })?;
        let url = if prefix.is_empty() {
            format!("gs://{bucket}")
        } else {
            format!("gs://{bucket}/{prefix}")
        };
        Ok(Arc::new(DalStorage::new(op, url, upload, &timeouts)))
    }
}

/// Other schemes through opendal.
#[cfg(feature = "opendal")]
pub mod other {
    use super::*;

    /// Open `webdav://host[:port]/path` (`webdavs://` for HTTPS) or `sftp://[user@]host[:port]/path`.
    /// WebDAV credentials come from `KAIZEN_BACKUP_WEBDAV_USER` / `KAIZEN_BACKUP_WEBDAV_PASSWORD`;
    /// SFTP uses the SSH agent and `~/.ssh/config`.
    pub fn open(
        url: &url::Url,
        upload: UploadOptions,
        timeouts: TimeoutOptions,
    ) -> Result<Arc<dyn Storage>> {
        ensure_transport();
        let host = url
            .host_str()
            .ok_or_else(|| Error::usage(format!("no host in {url}")))?;
        let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
        let path = url.path().trim_end_matches('/');
        let display = format!("{}://{host}{port}{path}", url.scheme());
        let op = match url.scheme() {
            "webdav" | "webdavs" => {
                let scheme = if url.scheme() == "webdavs" {
                    "https"
                } else {
                    "http"
                };
                let mut b = opendal::services::Webdav::default()
                    .endpoint(&format!("{scheme}://{host}{port}"))
                    .root(&format!("{path}/"));
                if let Ok(u) = std::env::var("KAIZEN_BACKUP_WEBDAV_USER") {
                    b = b.username(&u);
                }
                if let Ok(p) = std::env::var("KAIZEN_BACKUP_WEBDAV_PASSWORD") {
                    b = b.password(&p);
                }
                Operator::new(b)
            }
            "sftp" => {
                let user = if url.username().is_empty() {
                    String::new()
                } else {
                    format!("{}@", url.username())
                };
                let b = opendal::services::Sftp::default()
                    .endpoint(&format!("ssh://{user}{host}{port}"))
                    .root(&format!("{path}/"));
                Operator::new(b)
            }
            other => {
                return Err(Error::usage(format!(
                    "unsupported storage scheme {other}://"
                )));
            }
        }
        .map_err(|e| {
            Error::usage(format!(
                "cannot set up {display}: {}",
                first_line(&e.to_string())
            ))
        })?;
        Ok(Arc::new(DalStorage::new(op, display, upload, &timeouts)))
    }
}
