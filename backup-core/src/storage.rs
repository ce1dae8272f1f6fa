//! The `Storage` trait: where backups live.
//!
//! A write is a stream (`put` returns an [`ObjectWriter`]), reads are streams of
//! [`Bytes`], listing is a stream of [`ObjectMeta`]. An aborted or failed write
//! leaves no object visible under its final key.

use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use crate::error::{Error, Result};

/// A stream of object bytes.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// What storage knows about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the storage root (no leading slash).
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time, when the backend reports one.
    pub last_modified: Option<DateTime<Utc>>,
}

/// A write that was started and never finished or aborted (its run was killed): a local
/// `.partial.*` file, an open S3 multipart upload. Not an object: `list` and `get` do not
/// see it, yet it takes space (and is billed). Found by [`Storage::list_incomplete`],
/// removed by [`Storage::abort_incomplete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncompleteUpload {
    /// The key the object would have had.
    pub key: String,
    /// The backend's handle on the write (local: the file name; S3: the upload id).
    pub id: String,
    /// When the write started (local: when it was last written), when the backend says.
    pub started: Option<DateTime<Utc>>,
    /// Bytes stored so far, when the backend says.
    pub size: Option<u64>,
    /// Who wrote it, when the backend records it: `(host tag, process id)`, see
    /// [`crate::util::host_tag`].
    pub writer: Option<(String, u32)>,
}

/// A streaming write of one object. Call [`finish`](Self::finish) to commit or
/// [`abort`](Self::abort) to discard; dropping without either must not leave a
/// visible object (backends clean up as best they can).
#[async_trait]
pub trait ObjectWriter: Send {
    /// Append a chunk. May wait (backpressure) while earlier chunks are uploaded.
    async fn write(&mut self, data: Bytes) -> Result<()>;
    /// Commit: after this returns `Ok`, the object is durable and visible under its key.
    async fn finish(self: Box<Self>) -> Result<ObjectMeta>;
    /// Discard everything written; no object becomes visible.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// A place where backups are stored (a directory, a bucket prefix, ...).
#[async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// The storage URL with any credentials removed, for logs and messages.
    fn url(&self) -> String;

    /// Start writing `key`. Never replaces an object: fails with [`Error::AlreadyExists`]
    /// here if the backend can tell cheaply that the key exists, or else at
    /// [`finish`](ObjectWriter::finish), whose commit is then a conditional create.
    /// Callers check [`head`](Self::head) first as well.
    async fn put(&self, key: &str) -> Result<Box<dyn ObjectWriter>>;

    /// Stream the object's bytes. [`Error::NotFound`] if it does not exist.
    async fn get(&self, key: &str) -> Result<ByteStream>;

    /// Metadata of one object, `None` if it does not exist.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;

    /// Every object whose key starts with `prefix`. Keys are flat names, so there are no
    /// "directories" to recurse into.
    async fn list(&self, prefix: &str) -> Result<BoxStream<'static, Result<ObjectMeta>>>;

    /// Delete an object. Deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Cheap health check: the location exists and is reachable with the credentials.
    async fn check(&self) -> Result<()>;

    /// Free bytes at the location, when that means something (local disks).
    async fn available_space(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// A local filesystem path for `key`, when the backend is a local directory.
    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }

    /// Write a small metadata object (manifest, verify record), replacing any previous
    /// version. Backends make this atomic where they can (local: temp file + rename;
    /// object stores: a single PUT). The default deletes, then writes.
    async fn put_replace(&self, key: &str, data: Bytes) -> Result<()> {
        self.delete(key).await?;
        put_bytes(self, key, data).await.map(|_| ())
    }

    /// Writes that were started and never finished or aborted. Backends whose unfinished
    /// writes cannot be listed (they expire by themselves, or stay invisible and free)
    /// report none.
    async fn list_incomplete(&self) -> Result<Vec<IncompleteUpload>> {
        Ok(Vec::new())
    }

    /// Discard an unfinished write found by [`list_incomplete`](Self::list_incomplete).
    /// Discarding one that is already gone is not an error.
    async fn abort_incomplete(&self, _upload: &IncompleteUpload) -> Result<()> {
        Ok(())
    }

    /// Until when `key` cannot be deleted (S3 Object Lock retention), `None` when it is not
    /// locked or the backend has no such thing. Backends ask only when object locking is
    /// configured for them.
    async fn locked_until(&self, _key: &str) -> Result<Option<DateTime<Utc>>> {
        Ok(None)
    }

    /// Create `key` with `data` only if it does not exist yet (used for lock objects).
    /// Returns `false` when the key already existed. The default is check-then-put,
    /// which backends with conditional writes override.
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool> {
        if self.head(key).await?.is_some() {
            return Ok(false);
        }
        put_bytes(self, key, data).await?;
        Ok(true)
    }
}

/// Write a small object in one go (manifests, verify records, locks).
pub async fn put_bytes<S: Storage + ?Sized>(
    storage: &S,
    key: &str,
    data: Bytes,
) -> Result<ObjectMeta> {
    let mut writer = storage.put(key).await?;
    if let Err(e) = writer.write(data).await {
        let _ = writer.abort().await;
        return Err(e);
    }
    writer.finish().await
}

/// Read a whole (small) object into memory.
pub async fn get_bytes<S: Storage + ?Sized>(storage: &S, key: &str) -> Result<Bytes> {
    let chunks: Vec<Bytes> = storage.get(key).await?.try_collect().await?;
    if chunks.len() == 1 {
        return Ok(chunks.into_iter().next().unwrap_or_default());
    }
    let mut out = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
    for c in chunks {
        out.extend_from_slice(&c);
    }
    Ok(Bytes::from(out))
}

/// Collect a listing into a vector sorted by key.
pub async fn list_all<S: Storage + ?Sized>(storage: &S, prefix: &str) -> Result<Vec<ObjectMeta>> {
    let mut v: Vec<ObjectMeta> = storage.list(prefix).await?.try_collect().await?;
    v.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(v)
}

/// Turn any stream of chunks into a [`ByteStream`].
pub fn boxed_stream<S>(s: S) -> ByteStream
where
    S: futures::Stream<Item = Result<Bytes>> + Send + 'static,
{
    s.boxed()
}

/// Build a storage error.
pub fn storage_error(
    target: &str,
    op: &'static str,
    key: &str,
    message: impl std::fmt::Display,
    retryable: bool,
) -> Error {
    Error::Storage {
        target: target.to_string(),
        op,
        key: key.to_string(),
        message: message.to_string(),
        retryable,
        source: None,
    }
}
