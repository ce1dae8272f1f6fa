//! A [`Storage`] over any `object_store` backend (S3, Azure), rooted at a key prefix.
//!
//! Writes are multipart uploads that stream: parts of `part_size` bytes are uploaded
//! while the next ones are produced, at most `concurrency` at a time (so memory stays
//! below part_size × concurrency). An aborted or failed write aborts the multipart
//! upload: no part stays behind and nothing appears under the final key.
//!
//! Every request has the connect, request and idle timeouts and the retry budget of
//! `[storage.timeouts]` ([`apply_timeouts`]), so a frozen endpoint fails a call in bounded
//! time. A `NotFound` answer to a write or a listing means the bucket (container) itself
//! is missing: writing creates a key and listing a missing prefix is empty, so only a
//! missing bucket can answer 404 there.

use std::sync::Arc;

use async_trait::async_trait;
use backup_core::storage::{
    ByteStream, IncompleteUpload, ObjectMeta, ObjectWriter, Storage, storage_error,
};
use backup_core::{Error, Result};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;

use crate::options::{TimeoutOptions, UploadOptions};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientConfigKey, ObjectStore, ObjectStoreExt, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, RetryConfig, WriteMultipart,
};

/// The client settings of `[storage.timeouts]`, as object_store configuration keys (set
/// one by one, so what the builder read from the environment is kept).
///
/// `for_downloads`: a client for whole-object reads, whose length grows with the backup,
/// so no request timeout can fit them: they are bounded by the idle timeout instead (a
/// stalled download is resumed from where it stopped, within the retry budget).
pub fn apply_timeouts(t: &TimeoutOptions, for_downloads: bool) -> [(ClientConfigKey, String); 3] {
    let request = if for_downloads {
        DOWNLOAD_REQUEST_LIMIT
    } else {
        t.request()
    };
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
}

/// The request limit of the download client: a day (the idle timeout is what bounds it).
const DOWNLOAD_REQUEST_LIMIT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

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
        "put" | "start upload" | "upload part" | "complete upload" | "list" | "check (write)"
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
    /// The same store with the download client (see [`apply_timeouts`]), for `get`.
    reader: Arc<dyn ObjectStore>,
    url: String,
    /// Where requests go (for messages), e.g. `https://s3.us-east-1.amazonaws.com`.
    endpoint: String,
    prefix: String,
    upload: UploadOptions,
    attributes: Attributes,
    uploads: Option<Arc<dyn MultipartAdmin>>,
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
        }
    }

    /// Read whole objects through `reader` (built with `apply_timeouts(.., true)`).
    pub fn with_reader(mut self, reader: Arc<dyn ObjectStore>) -> Self {
        self.reader = reader;
        self
    }

    /// Let `list_incomplete`/`abort_incomplete` see this backend's unfinished uploads.
    pub fn with_multipart_admin(mut self, admin: Arc<dyn MultipartAdmin>) -> Self {
        self.uploads = Some(admin);
        self
    }

    fn path(&self, key: &str) -> Result<Path> {
        if key.is_empty() || key.contains('/') {
            return Err(storage_error(
                &self.url,
                "resolve",
                key,
                "invalid object key",
                false,
            ));
        }
        Ok(if self.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        })
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

    fn where_(&self) -> Where {
        Where {
            url: self.url.clone(),
            endpoint: self.endpoint.clone(),
        }
    }
}

/// Where a writer's requests go, for its error messages.
#[derive(Debug, Clone)]
struct Where {
    url: String,
    endpoint: String,
}

/// The bucket (or container) of a display URL `scheme://bucket/prefix`.
fn bucket_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// The HTTP-level failure inside an object_store error, if the request itself failed
/// (timeout, connection refused or reset) rather than being answered.
fn http_failure(e: &object_store::Error) -> Option<HttpErrorKind> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<HttpError>() {
            return Some(h.kind());
        }
        cur = err.source();
    }
    None
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
        object_store::Error::Generic { .. } if op == "list" && http_failure(e).is_none() => {
            matches!(
                service_error_code(&e.to_string()),
                Some("NoSuchBucket" | "ContainerNotFound")
            )
        }
        _ => false,
    }
}

/// Map an object_store error to ours: the message names the operation, the key and the
/// store's endpoint, never credentials. Classified by the error's variant and the HTTP
/// failure's kind, not by its text (see [`service_error_code`] for the one exception).
pub fn map_error(
    url: &str,
    endpoint: &str,
    op: &'static str,
    key: &str,
    e: object_store::Error,
) -> Error {
    if bucket_missing(op, &e) {
        return storage_error(
            url,
            op,
            key,
            format!(
                "the bucket {:?} does not exist at {endpoint}; create it, or correct the storage URL or endpoint",
                bucket_of(url)
            ),
            false,
        );
    }
    match e {
        object_store::Error::NotFound { .. } => Error::NotFound(format!("{url}/{key}")),
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            Error::AlreadyExists(format!("{url}/{key}"))
        }
        other => {
            let kind = http_failure(&other);
            let text = scrub(&other.to_string());
            let (message, retryable) = match kind {
                Some(HttpErrorKind::Timeout) => (
                    format!("timed out: {endpoint} stopped answering (storage.timeouts) — {text}"),
                    true,
                ),
                Some(HttpErrorKind::Connect) => {
                    (format!("cannot connect to {endpoint} — {text}"), true)
                }
                Some(HttpErrorKind::Request | HttpErrorKind::Interrupted) => (text, true),
                _ => (text, false),
            };
            storage_error(url, op, key, message, retryable)
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

struct MultipartWriter {
    at: Where,
    key: String,
    inner: Option<WriteMultipart>,
    concurrency: usize,
    written: u64,
}

#[async_trait]
impl ObjectWriter for MultipartWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        let Some(w) = self.inner.as_mut() else {
            return Err(storage_error(
                &self.at.url,
                "write",
                &self.key,
                "writer already closed",
                false,
            ));
        };
        // Backpressure: wait while `concurrency` parts are in flight.
        w.wait_for_capacity(self.concurrency)
            .await
            .map_err(|e| map_error(&self.at.url, &self.at.endpoint, "upload part", &self.key, e))?;
        self.written += data.len() as u64;
        w.put(data);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectMeta> {
        let Some(w) = self.inner.take() else {
            return Err(storage_error(
                &self.at.url,
                "finish",
                &self.key,
                "writer already closed",
                false,
            ));
        };
        w.finish()
            .await
            .map_err(|e| self.err("complete upload", e))?;
        Ok(ObjectMeta {
            key: self.key.clone(),
            size: self.written,
            last_modified: Some(chrono::Utc::now()),
        })
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        match self.inner.take() {
            Some(w) => w.abort().await.map_err(|e| self.err("abort upload", e)),
            None => Ok(()),
        }
    }
}

impl MultipartWriter {
    fn err(&self, op: &'static str, e: object_store::Error) -> Error {
        map_error(&self.at.url, &self.at.endpoint, op, &self.key, e)
    }
}

impl Drop for MultipartWriter {
    fn drop(&mut self) {
        // Dropped without finish/abort (a panic or a cancelled task): abort in the background.
        if let Some(w) = self.inner.take()
            && let Ok(h) = tokio::runtime::Handle::try_current()
        {
            h.spawn(async move {
                let _ = w.abort().await;
            });
        }
    }
}

#[async_trait]
impl Storage for ObjStore {
    fn url(&self) -> String {
        self.url.clone()
    }

    async fn put(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        let path = self.path(key)?;
        if self.head(key).await?.is_some() {
            return Err(Error::AlreadyExists(format!("{}/{key}", self.url)));
        }
        let opts = PutMultipartOptions {
            attributes: self.attributes.clone(),
            ..Default::default()
        };
        let upload = self
            .store
            .put_multipart_opts(&path, opts)
            .await
            .map_err(|e| self.err("start upload", key, e))?;
        Ok(Box::new(MultipartWriter {
            at: self.where_(),
            key: key.to_string(),
            inner: Some(WriteMultipart::new_with_chunk_size(
                upload,
                self.upload.part_size,
            )),
            concurrency: self.upload.concurrency,
            written: 0,
        }))
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        let path = self.path(key)?;
        let res = self
            .reader
            .get(&path)
            .await
            .map_err(|e| self.err("get", key, e))?;
        let at = self.where_();
        let key = key.to_string();
        Ok(res
            .into_stream()
            .map(move |r| r.map_err(|e| map_error(&at.url, &at.endpoint, "read", &key, e)))
            .boxed())
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path(key)?;
        match self.store.head(&path).await {
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
        let path = self.path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", key, e)),
        }
    }

    async fn check(&self) -> Result<()> {
        let key = format!(".kaizen-check.{}", backup_core::util::random_suffix(8));
        let path = self.path(&key)?;
        self.store
            .put(&path, PutPayload::from_static(b"ok"))
            .await
            .map_err(|e| self.err("check (write)", &key, e))?;
        self.store
            .delete(&path)
            .await
            .map_err(|e| self.err("check (delete)", &key, e))
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
        let path = self.path(&upload.key)?;
        admin.abort_upload(path.as_ref(), &upload.id).await
    }

    async fn put_replace(&self, key: &str, data: Bytes) -> Result<()> {
        let path = self.path(key)?;
        self.store
            .put(&path, PutPayload::from(data))
            .await
            .map_err(|e| self.err("put", key, e))?;
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool> {
        let path = self.path(key)?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(data.clone()), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            // Stores without conditional writes: check, then write (a small race, documented).
            Err(object_store::Error::NotImplemented { .. })
            | Err(object_store::Error::NotSupported { .. }) => {
                if self.head(key).await?.is_some() {
                    return Ok(false);
                }
                self.put_replace(key, data).await?;
                Ok(true)
            }
            Err(e) => Err(self.err("put", key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_error_codes_and_buckets() {
        let body = "Server returned non-2xx status code: 404 Not Found: <?xml version=\"1.0\"?>\
                    <Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>";
        assert_eq!(service_error_code(body), Some("NoSuchBucket"));
        assert_eq!(service_error_code("connection reset"), None);
        assert_eq!(service_error_code("<Code>unterminated"), None);
        assert_eq!(bucket_of("s3://b/p/q"), "b");
        assert_eq!(bucket_of("az://c"), "c");
    }

    #[test]
    fn a_not_found_write_or_listing_means_the_bucket_is_missing() {
        let nf = || object_store::Error::NotFound {
            path: "p/k".into(),
            source: "404".into(),
        };
        let e = map_error("s3://nb/p", "http://h:9000", "put", "k.lock", nf());
        let text = e.to_string();
        assert!(
            text.contains("the bucket \"nb\" does not exist at http://h:9000"),
            "{text}"
        );
        assert_eq!(e.exit_code(), 1);
        // Reading a missing key is just that.
        let e = map_error("s3://nb/p", "http://h:9000", "get", "k", nf());
        assert!(matches!(e, Error::NotFound(_)), "{e}");
    }
}
