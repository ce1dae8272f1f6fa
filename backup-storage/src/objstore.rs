//! What the object_store backends (S3, Azure) share: a [`Backend`] over any `ObjectStore`,
//! rooted at a key prefix, its client settings and its error mapping.
//!
//! A write holds its first `part_size` bytes. An object that ends before (a manifest, a
//! record, a small dump) is one PUT with `PutMode::Create`: the server refuses it if the key
//! exists (`If-None-Match: *`), with no request spent before. A larger one becomes a
//! multipart upload that streams: parts are uploaded while the next ones are produced, at
//! most `concurrency` at a time (memory stays below part_size × concurrency). object_store
//! cannot make a multipart completion conditional, so a `head` comes before the upload
//! starts. An aborted or failed write aborts the upload: nothing appears under the key.
//!
//! Every request has the connect, request and idle timeouts and the retry budget of
//! `[storage.timeouts]` ([`clients`]), so a frozen endpoint fails a call in bounded time.
//! A `NotFound` answer to a write or a listing means the bucket (container) itself is
//! missing: writing creates a key and listing a missing prefix is empty, so only a missing
//! bucket can answer 404 there.

// Unfinished-upload listing and disabled conditional writes are S3's only.
#![cfg_attr(not(feature = "s3"), allow(dead_code))]

use std::sync::Arc;

use async_trait::async_trait;
use backup_core::storage::{
    ByteStream, IncompleteUpload, ObjectMeta, ObjectWriter, Storage, storage_error,
};
use backup_core::{Error, Result};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::client::HttpErrorKind;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientConfigKey, ObjectStore, ObjectStoreExt, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, RetryConfig, WriteMultipart,
};

use crate::guard::{Backend, Caps};
use crate::options::{TimeoutOptions, UploadOptions};
use crate::retry;

/// The request limit of the download client: a day (the idle timeout is what bounds it).
const DOWNLOAD_REQUEST_LIMIT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A store's two clients from one builder `b`: one for requests, with the connect, request
/// and idle timeouts of `[storage.timeouts]`, and one for whole-object reads, whose length
/// grows with the backup, so no request timeout can fit them: they are bounded by the idle
/// timeout instead (a stalled download is resumed from where it stopped, within the retry
/// budget). `set` sets one client key (set one by one, so what the builder read from the
/// environment is kept). Both get the retry policy of [`retry_config`] from `b`.
pub fn clients<B: Clone>(
    b: B,
    t: &TimeoutOptions,
    set: impl Fn(B, ClientConfigKey, String) -> B,
) -> (B, B) {
    let keys = |request: std::time::Duration| {
        [
            (
                ClientConfigKey::ConnectTimeout,
                format!("{}s", t.connect().as_secs()),
            ),
            (ClientConfigKey::Timeout, format!("{}s", request.as_secs())),
            (
                ClientConfigKey::ReadTimeout,
                format!("{}s", t.idle().as_secs()),
            ),
        ]
    };
    let mut requests = b.clone();
    let mut downloads = b;
    for (key, value) in keys(t.request()) {
        requests = set(requests, key, value);
    }
    for (key, value) in keys(DOWNLOAD_REQUEST_LIMIT) {
        downloads = set(downloads, key, value);
    }
    (requests, downloads)
}

/// The retry policy of `[storage.timeouts]`.
pub fn retry_config(t: &TimeoutOptions) -> RetryConfig {
    RetryConfig {
        max_retries: t.retries as usize,
        retry_timeout: t.retry_window(),
        backoff: BackoffConfig::default(),
    }
}

/// Operations after which a `NotFound` can only mean the bucket does not exist.
fn creates_or_lists(op: &str) -> bool {
    matches!(
        op,
        "put"
            | "upload"
            | "start upload"
            | "upload part"
            | "complete upload"
            | "list"
            | "check (write)"
    )
}

/// One unfinished multipart upload, by its full object path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    /// Object path in the bucket.
    pub path: String,
    /// The backend's upload id.
    pub id: String,
    /// When it was started, if the backend says.
    pub initiated: Option<chrono::DateTime<chrono::Utc>>,
}

/// Object retention (S3 Object Lock) of a backend: see [`ObjStore::with_object_lock`].
#[async_trait]
pub trait ObjectLock: Send + Sync + std::fmt::Debug {
    /// Set the configured retention on the current version of the object at `path`.
    async fn retain(&self, path: &str) -> Result<()>;
    /// The retain-until date of the current version of `path`, if it has one in the future.
    async fn locked_until(&self, path: &str) -> Result<Option<DateTime<Utc>>>;
    /// Whether the bucket has object locking enabled (a clear error if not).
    async fn check(&self) -> Result<()>;
}

/// Listing and aborting unfinished multipart uploads, for backends that keep them
/// (S3): object_store can start and abort uploads but not list them.
#[async_trait]
pub trait MultipartAdmin: Send + Sync + std::fmt::Debug {
    /// Unfinished uploads whose object path starts with `prefix`.
    async fn list_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>>;
    /// Abort one; an upload that is already gone is not an error.
    async fn abort_upload(&self, path: &str, id: &str) -> Result<()>;
}

/// A bucket (or container) and a prefix inside it.
#[derive(Debug, Clone)]
pub struct ObjStore {
    store: Arc<dyn ObjectStore>,
    /// The same store with the download client (see [`clients`]), for `get`.
    reader: Arc<dyn ObjectStore>,
    url: String,
    /// Where requests go (for messages), e.g. `https://s3.us-east-1.amazonaws.com`.
    endpoint: String,
    prefix: String,
    upload: UploadOptions,
    attributes: Attributes,
    uploads: Option<Arc<dyn MultipartAdmin>>,
    /// Whether `PutMode::Create` works (S3 can have it disabled).
    conditional: bool,
    /// Object Lock retention set on every object written (S3 `object_lock`).
    lock: Option<Arc<dyn ObjectLock>>,
}

impl ObjStore {
    /// Wrap `store`; `url` is the redacted display URL (`s3://bucket/prefix`), `endpoint`
    /// where its requests go (named when the bucket does not exist).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        url: String,
        endpoint: String,
        prefix: &str,
        upload: UploadOptions,
        storage_class: Option<String>,
    ) -> Self {
        let mut attributes = Attributes::new();
        if let Some(c) = storage_class {
            attributes.insert(Attribute::StorageClass, c.into());
        }
        Self {
            reader: store.clone(),
            store,
            url,
            endpoint,
            prefix: prefix.trim_matches('/').to_string(),
            upload: UploadOptions {
                part_size: upload.part_size.max(5 * 1024 * 1024),
                concurrency: upload.concurrency.max(1),
            },
            attributes,
            uploads: None,
            conditional: true,
            lock: None,
        }
    }

    /// Read whole objects through `reader` (the download client of [`clients`]).
    pub fn with_reader(mut self, reader: Arc<dyn ObjectStore>) -> Self {
        self.reader = reader;
        self
    }

    /// Let `list_incomplete`/`abort_incomplete` see this backend's unfinished uploads.
    pub fn with_multipart_admin(mut self, admin: Arc<dyn MultipartAdmin>) -> Self {
        self.uploads = Some(admin);
        self
    }

    /// Set `lock`'s retention on every object written by `put` and `put_replace`.
    pub fn with_object_lock(mut self, lock: Arc<dyn ObjectLock>) -> Self {
        self.lock = Some(lock);
        self
    }

    /// After a write of `key` succeeded: its retention, when object locking is configured.
    /// Locks and leases are rewritten while a run lasts and deleted at its end: never locked.
    async fn retain(&self, key: &str) -> Result<()> {
        let coordination =
            key.ends_with(".lock") || key.ends_with(backup_core::lease::LEASE_SUFFIX);
        match &self.lock {
            Some(lock) if !coordination => lock.retain(self.path(key).as_ref()).await,
            _ => Ok(()),
        }
    }

    /// Whether the store takes conditional writes (`PutMode::Create`).
    pub fn with_conditional_put(mut self, conditional: bool) -> Self {
        self.conditional = conditional;
        self
    }

    fn path(&self, key: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }

    fn key_of(&self, p: &Path) -> Option<String> {
        let s = p.as_ref();
        let rest = if self.prefix.is_empty() {
            s
        } else {
            s.strip_prefix(&self.prefix)?.strip_prefix('/')?
        };
        (!rest.contains('/')).then(|| rest.to_string())
    }

    fn err(&self, op: &'static str, key: &str, e: object_store::Error) -> Error {
        map_error(&self.url, &self.endpoint, op, key, e)
    }

    /// Start the multipart upload of a large object.
    async fn start_multipart(&self, key: &str) -> Result<WriteMultipart> {
        // A multipart completion cannot be conditional through object_store: ask first.
        // (Without conditional writes the guard has asked already.)
        if self.conditional && self.head(key).await?.is_some() {
            return Err(Error::AlreadyExists(format!("{}/{key}", self.url)));
        }
        let opts = PutMultipartOptions {
            attributes: self.attributes.clone(),
            ..Default::default()
        };
        let upload = self
            .store
            .put_multipart_opts(&self.path(key), opts)
            .await
            .map_err(|e| self.err("start upload", key, e))?;
        Ok(WriteMultipart::new_with_chunk_size(
            upload,
            self.upload.part_size,
        ))
    }
}

/// The bucket (or container) of a display URL `scheme://bucket/prefix`.
fn bucket_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// The service's error code of an answered request (`<Code>NoSuchBucket</Code>` in S3's
/// and Azure's XML error bodies). object_store keeps the status of a failed listing
/// private and shows the body only as text, so the code, a fixed protocol field, is
/// read from there; nothing else is classified from text.
fn service_error_code(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(&text[start..start + len])
}

/// Whether an error says the bucket (container) does not exist.
fn bucket_missing(op: &str, e: &object_store::Error) -> bool {
    match e {
        object_store::Error::NotFound { .. } => creates_or_lists(op),
        object_store::Error::Generic { .. }
            if op == "list" && retry::transport_failure(e).is_none() =>
        {
            matches!(
                service_error_code(&e.to_string()),
                Some("NoSuchBucket" | "ContainerNotFound")
            )
        }
        _ => false,
    }
}

/// Map an object_store error to ours, keeping it as the source: the message names the
/// operation, the key and the store's endpoint, never credentials. Classified by the
/// error's variant and the HTTP failure's kind ([`retry::object_store`]), not by its text
/// (see [`service_error_code`] for the one exception).
pub fn map_error(
    url: &str,
    endpoint: &str,
    op: &'static str,
    key: &str,
    e: object_store::Error,
) -> Error {
    if bucket_missing(op, &e) {
        let message = format!(
            "the bucket {:?} does not exist at {endpoint}; create it, or correct the storage URL or endpoint",
            bucket_of(url)
        );
        return storage_error(url, op, key, message, false).caused_by(e);
    }
    match e {
        object_store::Error::NotFound { .. } => Error::NotFound(format!("{url}/{key}")),
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            Error::AlreadyExists(format!("{url}/{key}"))
        }
        other => {
            let text = scrub(&other.to_string());
            let message = match retry::transport_failure(&other) {
                Some(HttpErrorKind::Timeout) => {
                    format!("timed out: {endpoint} stopped answering (storage.timeouts) — {text}")
                }
                Some(HttpErrorKind::Connect) => format!("cannot connect to {endpoint} — {text}"),
                _ => text,
            };
            storage_error(url, op, key, message, retry::object_store(&other)).caused_by(other)
        }
    }
}

/// Remove anything that looks like a signature or credential from an error text.
fn scrub(text: &str) -> String {
    let mut out = text.to_string();
    for marker in [
        "X-Amz-Signature=",
        "X-Amz-Credential=",
        "sig=",
        "Signature=",
    ] {
        while let Some(i) = out.find(marker) {
            let start = i + marker.len();
            let end = out[start..]
                .find(['&', ' ', '"', ')'])
                .map(|e| start + e)
                .unwrap_or(out.len());
            out.replace_range(start..end, "***");
            if !out[start + 3..].contains(marker) {
                break;
            }
        }
    }
    out
}

/// Where a write is.
enum Stage {
    /// Nothing sent yet: the chunks so far and their size, less than a part.
    Held(Vec<Bytes>, usize),
    /// A multipart upload is under way.
    Parts(WriteMultipart),
}

struct Writer {
    store: ObjStore,
    key: String,
    stage: Stage,
    written: u64,
}

#[async_trait]
impl ObjectWriter for Writer {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.written += data.len() as u64;
        let held = match &mut self.stage {
            Stage::Held(chunks, size) => {
                *size += data.len();
                chunks.push(data);
                if *size < self.store.upload.part_size {
                    return Ok(());
                }
                std::mem::take(chunks)
            }
            Stage::Parts(_) => vec![data],
        };
        if let Stage::Held(..) = self.stage {
            // A part is full: a large object, written in parts.
            self.stage = Stage::Parts(self.store.start_multipart(&self.key).await?);
        }
        let Stage::Parts(upload) = &mut self.stage else {
            return Ok(());
        };
        for chunk in held {
            // Backpressure: wait while `concurrency` parts are in flight.
            upload
                .wait_for_capacity(self.store.upload.concurrency)
                .await
                .map_err(|e| self.store.err("upload part", &self.key, e))?;
            upload.put(chunk);
        }
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<ObjectMeta> {
        let Self {
            store,
            key,
            stage,
            written,
        } = *self;
        match stage {
            Stage::Held(chunks, _) => {
                let opts = PutOptions {
                    mode: if store.conditional {
                        PutMode::Create
                    } else {
                        PutMode::Overwrite
                    },
                    attributes: store.attributes.clone(),
                    ..Default::default()
                };
                store
                    .store
                    .put_opts(&store.path(&key), PutPayload::from_iter(chunks), opts)
                    .await
                    .map_err(|e| store.err("upload", &key, e))?;
            }
            Stage::Parts(upload) => {
                upload
                    .finish()
                    .await
                    .map_err(|e| store.err("complete upload", &key, e))?;
            }
        }
        store.retain(&key).await?;
        Ok(ObjectMeta {
            key,
            size: written,
            last_modified: Some(chrono::Utc::now()),
        })
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        match self.stage {
            Stage::Held(..) => Ok(()),
            Stage::Parts(upload) => upload
                .abort()
                .await
                .map_err(|e| self.store.err("abort upload", &self.key, e)),
        }
    }
}

impl Backend for ObjStore {
    fn caps(&self) -> Caps {
        Caps {
            check_first: !self.conditional,
            conditional_create: self.conditional,
            drop_cleans_up: false,
        }
    }
}

#[async_trait]
impl Storage for ObjStore {
    fn url(&self) -> String {
        self.url.clone()
    }

    async fn put(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(Writer {
            store: self.clone(),
            key: key.to_string(),
            stage: Stage::Held(Vec::new(), 0),
            written: 0,
        }))
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        let res = self
            .reader
            .get(&self.path(key))
            .await
            .map_err(|e| self.err("get", key, e))?;
        let (url, endpoint) = (self.url.clone(), self.endpoint.clone());
        let key = key.to_string();
        Ok(res
            .into_stream()
            .map(move |r| r.map_err(|e| map_error(&url, &endpoint, "read", &key, e)))
            .boxed())
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        match self.store.head(&self.path(key)).await {
            Ok(m) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: m.size,
                last_modified: Some(m.last_modified),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("head", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<BoxStream<'static, Result<ObjectMeta>>> {
        let root = (!self.prefix.is_empty()).then(|| Path::from(self.prefix.as_str()));
        let this = self.clone();
        let want = prefix.to_string();
        let stream = self.store.list(root.as_ref()).filter_map(move |r| {
            let out = match r {
                Ok(m) => this
                    .key_of(&m.location)
                    .filter(|k| k.starts_with(&want))
                    .map(|key| {
                        Ok(ObjectMeta {
                            key,
                            size: m.size,
                            last_modified: Some(m.last_modified),
                        })
                    }),
                Err(e) => Some(Err(this.err("list", "", e))),
            };
            futures::future::ready(out)
        });
        Ok(stream.boxed())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", key, e)),
        }
    }

    async fn check(&self) -> Result<()> {
        let key = format!(".kaizen-check.{}", backup_core::util::random_suffix(8));
        let path = self.path(&key);
        self.store
            .put(&path, PutPayload::from_static(b"ok"))
            .await
            .map_err(|e| self.err("check (write)", &key, e))?;
        self.store
            .delete(&path)
            .await
            .map_err(|e| self.err("check (delete)", &key, e))?;
        match &self.lock {
            Some(lock) => lock.check().await,
            None => Ok(()),
        }
    }

    async fn list_incomplete(&self) -> Result<Vec<IncompleteUpload>> {
        let Some(admin) = &self.uploads else {
            return Ok(Vec::new());
        };
        let prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut out: Vec<IncompleteUpload> = admin
            .list_uploads(&prefix)
            .await?
            .into_iter()
            .filter_map(|u| {
                let key = self.key_of(&Path::from(u.path.as_str()))?;
                Some(IncompleteUpload {
                    key,
                    id: u.id,
                    started: u.initiated,
                    size: None,
                    writer: None,
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn abort_incomplete(&self, upload: &IncompleteUpload) -> Result<()> {
        let Some(admin) = &self.uploads else {
            return Ok(());
        };
        admin
            .abort_upload(self.path(&upload.key).as_ref(), &upload.id)
            .await
    }

    async fn put_replace(&self, key: &str, data: Bytes) -> Result<()> {
        self.store
            .put(&self.path(key), PutPayload::from(data))
            .await
            .map_err(|e| self.err("put", key, e))?;
        self.retain(key).await
    }

    async fn locked_until(&self, key: &str) -> Result<Option<DateTime<Utc>>> {
        match &self.lock {
            Some(lock) => lock.locked_until(self.path(key).as_ref()).await,
            None => Ok(None),
        }
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.path(key), PutPayload::from(data), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.err("put", key, e)),
        }
    }
}

#[cfg(test)]
mod tests;
