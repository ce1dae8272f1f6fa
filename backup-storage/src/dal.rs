//! What the opendal backends (GCS, WebDAV, SFTP) share: a [`Backend`] over an opendal
//! operator rooted at the prefix, its layers and its error mapping.
//!
//! Every operator gets opendal's retry and timeout layers, set from `[storage.timeouts]`:
//! `request_secs` bounds each call (connecting included), `idle_secs` each read or write of
//! a stream, `retries` the retries of temporary failures. Writes are create-only where the
//! service can (`if_not_exists`); services without multi-part writes get the object in one
//! PUT, held in memory up to [`ONE_SHOT_LIMIT`].

use std::time::Duration;

use async_trait::async_trait;
use backup_core::storage::{ByteStream, ObjectMeta, ObjectWriter, Storage, storage_error};
use backup_core::{Error, Result};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::{ErrorKind, Operator};

use crate::guard::{Backend, Caps};
use crate::options::{TimeoutOptions, UploadOptions};
use crate::{StorageOptions, retry};

/// Build the operator of service builder `b` with its layers and wrap it; `name` is what
/// a setup error calls it, `url` the redacted display URL.
pub fn open<B: opendal::Builder>(
    b: B,
    name: &str,
    url: String,
    opts: &StorageOptions,
) -> Result<Box<dyn Backend>> {
    ensure_transport();
    let op = Operator::new(b).map_err(|e| {
        Error::usage(format!(
            "cannot set up {name}: {}",
            first_line(&e.to_string())
        ))
    })?;
    Ok(Box::new(DalStorage {
        op: layered(op, &opts.timeouts),
        url,
        upload: opts.upload,
    }))
}

/// A storage over an opendal operator (rooted at the prefix).
#[derive(Debug, Clone)]
struct DalStorage {
    op: Operator,
    url: String,
    upload: UploadOptions,
}

/// Install opendal's HTTP transport once (without its auto-registration feature nothing
/// does it before `main`). Called before any operator is built.
fn ensure_transport() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(opendal::install_default);
}

/// Add the retry and timeout layers.
fn layered(op: Operator, t: &TimeoutOptions) -> Operator {
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
    fn err(&self, op: &'static str, key: &str, e: opendal::Error) -> Error {
        map_error(&self.url, op, key, e)
    }
}

/// Map an opendal error, keeping it as the source (its text names the operation, never
/// credentials); retryable as [`retry::opendal`] says.
fn map_error(url: &str, op: &'static str, key: &str, e: opendal::Error) -> Error {
    match e.kind() {
        // Writing creates the key: only a missing bucket (or base directory) answers 404.
        ErrorKind::NotFound
            if matches!(
                op,
                "put" | "start upload" | "write" | "upload" | "complete upload" | "check (write)"
            ) =>
        {
            let message = format!(
                "the bucket or base directory of {url} does not exist; create it, or correct the storage URL"
            );
            storage_error(url, op, key, message, false).caused_by(e)
        }
        ErrorKind::NotFound => Error::NotFound(format!("{url}/{key}")),
        ErrorKind::AlreadyExists | ErrorKind::ConditionNotMatch => {
            Error::AlreadyExists(format!("{url}/{key}"))
        }
        _ => {
            let message = format!("{} ({})", e.kind(), first_line(&e.to_string()));
            storage_error(url, op, key, message, retry::opendal(&e)).caused_by(e)
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
    inner: opendal::Writer,
    written: u64,
    /// Services that cannot take a write in several parts (WebDAV) get the object in
    /// one PUT: it is buffered here, up to [`ONE_SHOT_LIMIT`] bytes, and refused beyond.
    one_shot: Option<Vec<Bytes>>,
}

#[async_trait]
impl ObjectWriter for DalWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.written += data.len() as u64;
        if let Some(buf) = self.one_shot.as_mut() {
            if self.written > ONE_SHOT_LIMIT {
                return Err(storage_error(
                    &self.url,
                    "write",
                    &self.key,
                    format!(
                        "this service cannot stream an upload in parts; objects above {} MiB are refused (raise storage.upload.part_size x concurrency, or use s3/gs/az)",
                        ONE_SHOT_LIMIT / (1024 * 1024)
                    ),
                    false,
                ));
            }
            buf.push(data);
            return Ok(());
        }
        self.inner
            .write(data)
            .await
            .map_err(|e| map_error(&self.url, "write", &self.key, e))
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectMeta> {
        let w = &mut self.inner;
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
        self.inner
            .abort()
            .await
            .map_err(|e| map_error(&self.url, "abort upload", &self.key, e))
    }
}

impl Backend for DalStorage {
    fn caps(&self) -> Caps {
        Caps {
            // WebDAV and SFTP cannot refuse by themselves; GCS can (`ifGenerationMatch=0`)
            // and real GCS honours it, but its emulator ignores it: ask first everywhere.
            check_first: true,
            conditional_create: self.op.info().capability().write_with_if_not_exists,
            drop_cleans_up: false,
        }
    }
}

#[async_trait]
impl Storage for DalStorage {
    fn url(&self) -> String {
        self.url.clone()
    }

    async fn put(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
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
            inner: w,
            written: 0,
            one_shot: (!multi).then(Vec::new),
        }))
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
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
        Ok(s.map(move |r| {
            r.map_err(|e| {
                let retryable = retry::opendal_io(&e);
                storage_error(&url, "read", &key, &e, retryable).caused_by(e)
            })
        })
        .boxed())
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
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
        self.op
            .write_with(key, data)
            .content_type(CONTENT_TYPE)
            .await
            .map_err(|e| self.err("put", key, e))?;
        Ok(())
    }

    /// Only called when the service has conditional writes (see [`Caps`]).
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool> {
        match self.op.write_with(key, data).if_not_exists(true).await {
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
        }
    }
}
