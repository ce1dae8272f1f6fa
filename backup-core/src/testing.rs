//! Test helpers for this crate and for library users (feature `test-util`): an in-memory
//! [`Storage`] that keeps the whole [`Storage`]/[`ObjectWriter`] contract, can be told to
//! fail, and records the order in which objects became visible.
//!
//! ```
//! # async fn demo() -> backup_core::Result<()> {
//! use backup_core::storage::{Storage, put_bytes};
//! use backup_core::testing::{Change, MemoryStorage, Op};
//!
//! let store = MemoryStorage::new("demo");
//! put_bytes(&store, "a.dump", "data".into()).await?;
//! store.fail(Op::Finish, ".manifest.json");
//! assert!(put_bytes(&store, "a.manifest.json", "{}".into()).await.is_err());
//! assert_eq!(store.history(), [Change::Created("a.dump".into())]);
//! # Ok(()) }
//! ```
//!
//! It passes the storage behaviour suite (`backup-storage/tests/behaviour.rs`) like the
//! real backends, so what a test proves with it holds for them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::storage::{
    ByteStream, IncompleteUpload, ObjectMeta, ObjectWriter, Storage, storage_error,
};

/// Size of the chunks `get` streams (several per object, like a real backend).
const READ_CHUNK: usize = 64 * 1024;
/// Prefix of the ids of unfinished writes.
const UPLOAD_ID: &str = "memory-upload-";

/// A storage operation that [`MemoryStorage::fail`] can make fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// [`Storage::put`] (starting a write).
    Put,
    /// [`ObjectWriter::write`].
    Write,
    /// [`ObjectWriter::finish`] (the write is discarded, as a failed commit is).
    Finish,
    /// [`Storage::get`].
    Get,
    /// [`Storage::head`].
    Head,
    /// [`Storage::list`] (matched against the prefix).
    List,
    /// [`Storage::delete`].
    Delete,
    /// [`Storage::put_replace`].
    Replace,
    /// [`Storage::put_if_absent`].
    PutIfAbsent,
    /// [`Storage::check`] (matched against the empty key).
    Check,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Write => "write",
            Op::Finish => "finish",
            Op::Get => "get",
            Op::Head => "head",
            Op::List => "list",
            Op::Delete => "delete",
            Op::Replace => "replace",
            Op::PutIfAbsent => "put if absent",
            Op::Check => "check",
        }
    }
}

/// A change of what the storage shows, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An object became visible.
    Created(String),
    /// A visible object got new content ([`Storage::put_replace`]).
    Replaced(String),
    /// A visible object was deleted.
    Deleted(String),
}

#[derive(Debug)]
struct Object {
    data: Bytes,
    modified: DateTime<Utc>,
}

/// A write that was started and is neither finished nor aborted.
#[derive(Debug)]
struct Open {
    key: String,
    data: Vec<u8>,
    started: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, Object>,
    open: BTreeMap<u64, Open>,
    next_id: u64,
    faults: Vec<(Op, String)>,
    history: Vec<Change>,
    available: Option<u64>,
}

impl State {
    fn create(&mut self, key: &str, data: Bytes) {
        let change = if self.objects.contains_key(key) {
            Change::Replaced(key.to_string())
        } else {
            Change::Created(key.to_string())
        };
        let modified = Utc::now();
        self.objects
            .insert(key.to_string(), Object { data, modified });
        self.history.push(change);
    }
}

/// Objects kept in memory. Clones share the same objects, so a test can keep one to
/// look inside while the code under test uses another.
#[derive(Debug, Clone)]
pub struct MemoryStorage {
    name: String,
    state: Arc<Mutex<State>>,
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new("test")
    }
}

impl MemoryStorage {
    /// An empty storage whose URL is `memory://<name>`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            state: Arc::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock left consistent data behind: every
        // change below is made in one step.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on, `op` on every key ending in `key_suffix` fails with a non-retryable
    /// storage error (`""` matches every key). Stays until [`heal`](Self::heal).
    pub fn fail(&self, op: Op, key_suffix: &str) {
        self.state().faults.push((op, key_suffix.to_string()));
    }

    /// Remove every failure set with [`fail`](Self::fail).
    pub fn heal(&self) {
        self.state().faults.clear();
    }

    /// What [`Storage::available_space`] reports (default: `None`, like object stores).
    pub fn set_available_space(&self, bytes: Option<u64>) {
        self.state().available = bytes;
    }

    /// Pretend `key` was last written at `at` (for staleness and grace periods).
    pub fn set_last_modified(&self, key: &str, at: DateTime<Utc>) {
        if let Some(o) = self.state().objects.get_mut(key) {
            o.modified = at;
        }
    }

    /// Every change of the visible objects so far, oldest first.
    pub fn history(&self) -> Vec<Change> {
        self.state().history.clone()
    }

    /// The keys of the visible objects, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.state().objects.keys().cloned().collect()
    }

    /// The content of a visible object.
    pub fn object(&self, key: &str) -> Option<Bytes> {
        self.state().objects.get(key).map(|o| o.data.clone())
    }

    fn check_fault(&self, op: Op, key: &str) -> Result<()> {
        let failing = self
            .state()
            .faults
            .iter()
            .any(|(o, suffix)| *o == op && key.ends_with(suffix.as_str()));
        if failing {
            return Err(storage_error(
                &self.url(),
                op.name(),
                key,
                "injected failure",
                false,
            ));
        }
        Ok(())
    }

    fn check_key(&self, op: Op, key: &str) -> Result<()> {
        if key.is_empty() {
            return Err(storage_error(
                &self.url(),
                op.name(),
                key,
                "invalid object key",
                false,
            ));
        }
        self.check_fault(op, key)
    }

    fn exists_error(&self, key: &str) -> Error {
        Error::AlreadyExists(format!("{}/{key}", self.url()))
    }
}

fn meta(key: &str, o: &Object) -> ObjectMeta {
    ObjectMeta {
        key: key.to_string(),
        size: o.data.len() as u64,
        last_modified: Some(o.modified),
    }
}

/// One write in progress; its bytes live in the storage's list of unfinished writes, so
/// a writer that is forgotten (its run killed) stays listed by `list_incomplete`.
struct MemoryWriter {
    storage: MemoryStorage,
    id: u64,
    key: String,
    closed: bool,
}

impl MemoryWriter {
    fn gone(&self, op: Op) -> Error {
        storage_error(
            &self.storage.url(),
            op.name(),
            &self.key,
            "the write was aborted",
            false,
        )
    }
}

#[async_trait]
impl ObjectWriter for MemoryWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.storage.check_fault(Op::Write, &self.key)?;
        let mut state = self.storage.state();
        let open = state
            .open
            .get_mut(&self.id)
            .ok_or_else(|| self.gone(Op::Write))?;
        open.data.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectMeta> {
        self.closed = true;
        let fault = self.storage.check_fault(Op::Finish, &self.key);
        let mut state = self.storage.state();
        let open = state
            .open
            .remove(&self.id)
            .ok_or_else(|| self.gone(Op::Finish))?;
        fault?;
        // Never replace an object that appeared while this one was written.
        if state.objects.contains_key(&self.key) {
            return Err(self.storage.exists_error(&self.key));
        }
        state.create(&self.key, Bytes::from(open.data));
        let o = state
            .objects
            .get(&self.key)
            .ok_or_else(|| self.gone(Op::Finish))?;
        Ok(meta(&self.key, o))
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.closed = true;
        self.storage.state().open.remove(&self.id);
        Ok(())
    }
}

impl Drop for MemoryWriter {
    fn drop(&mut self) {
        if !self.closed {
            self.storage.state().open.remove(&self.id);
        }
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    fn url(&self) -> String {
        format!("memory://{}", self.name)
    }

    async fn put(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        self.check_key(Op::Put, key)?;
        let mut state = self.state();
        if state.objects.contains_key(key) {
            return Err(self.exists_error(key));
        }
        let id = state.next_id;
        state.next_id += 1;
        state.open.insert(
            id,
            Open {
                key: key.to_string(),
                data: Vec::new(),
                started: Utc::now(),
            },
        );
        Ok(Box::new(MemoryWriter {
            storage: self.clone(),
            id,
            key: key.to_string(),
            closed: false,
        }))
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        self.check_key(Op::Get, key)?;
        let data = match self.state().objects.get(key) {
            Some(o) => o.data.clone(),
            None => return Err(Error::NotFound(format!("{}/{key}", self.url()))),
        };
        let chunks: Vec<Result<Bytes>> = (0..data.len())
            .step_by(READ_CHUNK)
            .map(|start| Ok(data.slice(start..data.len().min(start + READ_CHUNK))))
            .collect();
        Ok(futures::stream::iter(chunks).boxed())
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.check_key(Op::Head, key)?;
        Ok(self.state().objects.get(key).map(|o| meta(key, o)))
    }

    async fn list(&self, prefix: &str) -> Result<BoxStream<'static, Result<ObjectMeta>>> {
        self.check_fault(Op::List, prefix)?;
        let found: Vec<Result<ObjectMeta>> = self
            .state()
            .objects
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| Ok(meta(k, o)))
            .collect();
        Ok(futures::stream::iter(found).boxed())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.check_key(Op::Delete, key)?;
        let mut state = self.state();
        if state.objects.remove(key).is_some() {
            state.history.push(Change::Deleted(key.to_string()));
        }
        Ok(())
    }

    async fn check(&self) -> Result<()> {
        self.check_fault(Op::Check, "")
    }

    async fn available_space(&self) -> Result<Option<u64>> {
        Ok(self.state().available)
    }

    async fn put_replace(&self, key: &str, data: Bytes) -> Result<()> {
        self.check_key(Op::Replace, key)?;
        self.state().create(key, data);
        Ok(())
    }

    async fn list_incomplete(&self) -> Result<Vec<IncompleteUpload>> {
        let writer = Some((crate::util::host_tag(), std::process::id()));
        Ok(self
            .state()
            .open
            .iter()
            .map(|(id, o)| IncompleteUpload {
                key: o.key.clone(),
                id: format!("{UPLOAD_ID}{id}"),
                started: Some(o.started),
                size: Some(o.data.len() as u64),
                writer: writer.clone(),
            })
            .collect())
    }

    async fn abort_incomplete(&self, upload: &IncompleteUpload) -> Result<()> {
        let id = upload
            .id
            .strip_prefix(UPLOAD_ID)
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| {
                storage_error(&self.url(), "abort", &upload.id, "not an upload id", false)
            })?;
        self.state().open.remove(&id);
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool> {
        self.check_key(Op::PutIfAbsent, key)?;
        let mut state = self.state();
        if state.objects.contains_key(key) {
            return Ok(false);
        }
        state.create(key, data);
        Ok(true)
    }
}

/// A manifest of a finished backup `name` of `database` (data object `<name>.dump`),
/// built from its JSON form so tests do not depend on how the fields are typed.
pub fn manifest(name: &str, database: &str, finished_at: DateTime<Utc>) -> Manifest {
    let json = serde_json::json!({
        "format_version": crate::manifest::FORMAT_VERSION,
        "name": name,
        "object": format!("{name}.dump"),
        "database": database,
        "server_version": "17.0",
        "pg_dump_version": "pg_dump (PostgreSQL) 17.0",
        "format": "custom",
        "compression": "gzip",
        "compression_level": 6,
        "encryption": "none",
        "started_at": finished_at,
        "finished_at": finished_at,
        "size_bytes": 4,
        "sha256": "0".repeat(64),
        "tool_version": crate::TOOL_VERSION,
        "database_size_bytes": 8192,
        "tables": [],
        "counts": {"tables": 0, "sequences": 0, "indexes": 0, "constraints": 0},
        "kind": "backup",
    });
    match serde_json::from_value(json) {
        Ok(m) => m,
        // The JSON above is the manifest contract; only a broken build gets here.
        Err(e) => panic!("the sample manifest no longer parses: {e}"),
    }
}

/// Store a complete backup the way the backup pipeline leaves it: the data object
/// (4 bytes), then the manifest.
pub async fn put_backup(storage: &dyn Storage, m: &Manifest) -> Result<()> {
    crate::storage::put_bytes(storage, &m.object, Bytes::from_static(b"data")).await?;
    crate::storage::put_bytes(
        storage,
        &Manifest::key_for(&m.name),
        Bytes::from(m.to_json()?),
    )
    .await?;
    Ok(())
}
