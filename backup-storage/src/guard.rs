//! The guard layer: what every backend needs, applied once by [`crate::open`] around the
//! store a backend's builder returns, the way opendal's layers wrap an accessor.
//!
//! - **Keys** are checked before any call reaches the backend: one flat name (not empty,
//!   no `/` or `\`, not `.` or `..`).
//! - **No overwrite.** `put` never replaces an object. A backend whose commit is a
//!   conditional create refuses at `finish` and costs no request before; for the others
//!   ([`Caps::check_first`]) the guard asks `head` before the write starts.
//! - **`put_if_absent`** is the backend's conditional create where it has one, else a
//!   check and a write (a small race, documented on [`Caps::conditional_create`]).
//! - **Dropped writers.** A writer dropped without `finish` or `abort` (a panic, a
//!   cancelled task) is aborted in the background, so no upload is left open.
//!
//! Retry classification and timeouts belong to the client libraries' layers and to
//! [`crate::retry`]; each backend sets them up in its shared module (`objstore`, `dal`).

use std::path::PathBuf;

use async_trait::async_trait;
use backup_core::storage::{
    ByteStream, IncompleteUpload, ObjectMeta, ObjectWriter, Storage, storage_error,
};
use backup_core::{Error, Result};
use bytes::Bytes;
use futures::stream::BoxStream;

/// What a backend does by itself, so the guard knows what it must add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Ask `head` before `put` and `put_if_absent` start, and refuse an existing key then:
    /// for backends that cannot refuse at commit, whose `head` is a local call anyway, or
    /// whose servers may ignore the precondition (emulators). Without it, the backend's
    /// writer must refuse at `finish` (a conditional create).
    pub check_first: bool,
    /// The backend's own `put_if_absent` is a conditional create on the server. Without
    /// it the guard checks `head`, then replaces: two writers may both think they created.
    pub conditional_create: bool,
    /// Its writers clean up by themselves, at once, when dropped (a local partial file is
    /// removed in `Drop`), so no background abort is spawned.
    pub drop_cleans_up: bool,
}

/// A store that [`crate::open`] wraps: the service-specific code and its [`Caps`]. It may
/// assume keys are valid and leaves the no-overwrite check of `put` and the cleanup of
/// dropped writers to the guard (unless its caps say otherwise).
pub trait Backend: Storage {
    /// What this backend does by itself.
    fn caps(&self) -> Caps;
}

/// A key is one flat object name.
pub fn valid_key(key: &str) -> bool {
    !(key.is_empty() || key.contains(['/', '\\']) || key == "." || key == "..")
}

/// The error for a key that is not one.
pub fn invalid_key(url: &str, key: &str) -> Error {
    storage_error(url, "resolve", key, "invalid object key", false)
}

/// A backend with the guards around it.
#[derive(Debug)]
pub struct Guarded {
    inner: Box<dyn Backend>,
    caps: Caps,
}

impl Guarded {
    /// Put the guards around `inner`.
    pub fn new(inner: Box<dyn Backend>) -> Self {
        let caps = inner.caps();
        Self { inner, caps }
    }

    fn check(&self, key: &str) -> Result<()> {
        if valid_key(key) {
            return Ok(());
        }
        Err(invalid_key(&self.inner.url(), key))
    }

    /// Whether `key` exists, when the backend wants it asked first.
    async fn exists_first(&self, key: &str) -> Result<bool> {
        Ok(self.caps.check_first && self.inner.head(key).await?.is_some())
    }
}

#[async_trait]
impl Storage for Guarded {
    fn url(&self) -> String {
        self.inner.url()
    }

    async fn put(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        self.check(key)?;
        if self.exists_first(key).await? {
            return Err(Error::AlreadyExists(format!("{}/{key}", self.url())));
        }
        let writer = self.inner.put(key).await?;
        Ok(Box::new(GuardedWriter {
            inner: Some(writer),
            abort_on_drop: !self.caps.drop_cleans_up,
            url: self.url(),
            key: key.to_string(),
        }))
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        self.check(key)?;
        self.inner.get(key).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.check(key)?;
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<BoxStream<'static, Result<ObjectMeta>>> {
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.check(key)?;
        self.inner.delete(key).await
    }

    async fn check(&self) -> Result<()> {
        self.inner.check().await
    }

    async fn available_space(&self) -> Result<Option<u64>> {
        self.inner.available_space().await
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        valid_key(key).then(|| self.inner.local_path(key)).flatten()
    }

    async fn put_replace(&self, key: &str, data: Bytes) -> Result<()> {
        self.check(key)?;
        self.inner.put_replace(key, data).await
    }

    async fn locked_until(&self, key: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        self.check(key)?;
        self.inner.locked_until(key).await
    }

    async fn list_incomplete(&self) -> Result<Vec<IncompleteUpload>> {
        self.inner.list_incomplete().await
    }

    async fn abort_incomplete(&self, upload: &IncompleteUpload) -> Result<()> {
        self.check(&upload.key)?;
        self.inner.abort_incomplete(upload).await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool> {
        self.check(key)?;
        if self.exists_first(key).await? {
            return Ok(false);
        }
        if self.caps.conditional_create {
            return self.inner.put_if_absent(key, data).await;
        }
        // No conditional write on this service: check, then write.
        if !self.caps.check_first && self.inner.head(key).await?.is_some() {
            return Ok(false);
        }
        self.inner.put_replace(key, data).await?;
        Ok(true)
    }
}

/// A backend's writer, aborted in the background if it is dropped unfinished.
struct GuardedWriter {
    /// `None` once finished or aborted.
    inner: Option<Box<dyn ObjectWriter>>,
    abort_on_drop: bool,
    url: String,
    key: String,
}

impl GuardedWriter {
    fn closed(&self, op: &'static str) -> Error {
        storage_error(&self.url, op, &self.key, "writer already closed", false)
    }
}

#[async_trait]
impl ObjectWriter for GuardedWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        match self.inner.as_mut() {
            Some(w) => w.write(data).await,
            None => Err(self.closed("write")),
        }
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectMeta> {
        match self.inner.take() {
            Some(w) => w.finish().await,
            None => Err(self.closed("finish")),
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        match self.inner.take() {
            Some(w) => w.abort().await,
            None => Ok(()),
        }
    }
}

impl Drop for GuardedWriter {
    fn drop(&mut self) {
        // Dropped without finish/abort (a panic or a cancelled task): abort in the
        // background, on the runtime that ran the write.
        if let Some(w) = self.inner.take()
            && self.abort_on_drop
            && let Ok(h) = tokio::runtime::Handle::try_current()
        {
            h.spawn(async move {
                let _ = w.abort().await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_flat_name() {
        for ok in ["a.dump", "b.manifest.json", ".kaizen-check.x", "x..y"] {
            assert!(valid_key(ok), "{ok}");
        }
        for bad in ["", "a/b", "/a", "a\\b", ".", ".."] {
            assert!(!valid_key(bad), "{bad}");
        }
    }
}
