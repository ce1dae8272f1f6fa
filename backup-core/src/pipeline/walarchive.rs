//! The WAL archive: `wal-push` and `wal-fetch` over any [`Storage`].
//!
//! ```text
//! wal-push %p:  read file ─► SHA-256 ─► is NAME-<sha> stored? ─ yes ─► done (PostgreSQL retried)
//!                                  │          other NAME-<sha'> ─► refuse: never overwrite
//!                                  └─ no ─► zstd ─► age ─► put on every target ─► exit 0
//! wal-fetch %f %p: find NAME-<sha> ─► get ─► decode ─► hash while writing %p.tmp
//!                  ─► sha matches ─► fsync, rename to %p    (else: next target, or error naming it)
//! ```
//!
//! Each archived file is one object named `NAME-SHA256[.zst][.age]`: the name PostgreSQL
//! gave it, the SHA-256 of its content as PostgreSQL wrote it, and the codecs applied.
//! An object is visible only once completely written (the [`Storage`] contract), so a
//! push killed at any instant leaves nothing that a fetch would serve; the checksum in
//! the name lets a repeated push recognise identical content without decrypting
//! anything, and lets a fetch prove that what it hands PostgreSQL is what was pushed.
//! The archive of a storage target lives in its `wal` sub-location (see
//! [`wal_location`]), apart from the backups.
//!
//! Partial segments (`NAME.partial`) are the one exception to "one content per name":
//! `wal-receive` stores the segment it is still receiving as `NAME.partial-SHA256…`
//! every flush interval ([`push_partial`] replaces the previous version once the new one
//! is stored), and removes it once the complete segment is stored. A partial never
//! shadows a segment: it has its own name, and [`fetch`] serves it under the segment's
//! name only when no target holds the complete segment. PostgreSQL asks for plain
//! segment names; a partial segment is full-sized (zeros after the last record), so
//! recovery reads it to its last record and ends there, as with Barman's partial WAL.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::codec::{self, AgeEncryptor, DecryptKeys, EncryptionConfig, ZstdEncoder};
use crate::error::{Error, Result};
use crate::manifest::PhysicalInfo;
use crate::storage::{ObjectMeta, ObjectWriter, Storage, list_all};
use crate::transform::{Transform, finish_chain};
use crate::wal::WalFile;

/// Size of the chunks read from a WAL file.
const CHUNK: usize = 1024 * 1024;

/// The location of a storage target's WAL archive: `URL/wal`.
pub fn wal_location(target_url: &str) -> String {
    format!("{}/wal", target_url.trim_end_matches('/'))
}

/// How archived files are encoded.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// zstd level, or `None` to store files as they are.
    pub zstd_level: Option<i32>,
    /// Encryption (age) when enabled.
    pub encryption: EncryptionConfig,
}

/// One file in the archive, as its object key tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedFile {
    /// The name PostgreSQL gave the file (`000000010000000000000002`, `00000002.history`).
    pub name: String,
    /// SHA-256 (hex) of the file's content.
    pub sha256: String,
    /// Compressed with zstd.
    pub zstd: bool,
    /// Encrypted with age.
    pub age: bool,
    /// The object.
    pub object: ObjectMeta,
}

impl ArchivedFile {
    /// Parse an object key of the archive; `None` for objects that are not archived files.
    pub fn from_object(object: ObjectMeta) -> Option<Self> {
        let mut rest = object.key.as_str();
        let age = match rest.strip_suffix(".age") {
            Some(r) => {
                rest = r;
                true
            }
            None => false,
        };
        let zstd = match rest.strip_suffix(".zst") {
            Some(r) => {
                rest = r;
                true
            }
            None => false,
        };
        let (name, sha) = rest.rsplit_once('-')?;
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) || name.is_empty() {
            return None;
        }
        Some(Self {
            name: name.to_string(),
            sha256: sha.to_ascii_lowercase(),
            zstd,
            age,
            object,
        })
    }
}

/// The object key for a file.
fn key_for(name: &str, sha256: &str, opts: &PushOptions) -> String {
    let mut key = format!("{name}-{sha256}");
    if opts.zstd_level.is_some() {
        key.push_str(".zst");
    }
    if opts.encryption.enabled() {
        key.push_str(".age");
    }
    key
}

/// What a push did on one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Stored now.
    Stored,
    /// The identical file was already stored (a retry after a crash or a timeout).
    AlreadyStored,
}

/// The copies of `name` that `store` holds.
pub async fn find(store: &dyn Storage, name: &str) -> Result<Vec<ArchivedFile>> {
    Ok(list_all(store, name)
        .await?
        .into_iter()
        .filter_map(ArchivedFile::from_object)
        .filter(|f| f.name == name)
        .collect())
}

/// Every archived file of `store`, sorted by name.
pub async fn list(store: &dyn Storage) -> Result<Vec<ArchivedFile>> {
    let mut v: Vec<ArchivedFile> = list_all(store, "")
        .await?
        .into_iter()
        .filter_map(ArchivedFile::from_object)
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

/// SHA-256 (hex) and size of a file.
/// A WAL file read in chunks, hashed as it is read.
struct WalReader<'a> {
    path: &'a Path,
    file: tokio::fs::File,
    buf: Vec<u8>,
    hasher: Sha256,
    size: u64,
}

impl<'a> WalReader<'a> {
    async fn open(path: &'a Path) -> Result<Self> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::io(format!("cannot open WAL file {}", path.display()), e))?;
        Ok(Self {
            path,
            file,
            buf: vec![0u8; CHUNK],
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// The next chunk, or `None` at the end.
    async fn next(&mut self) -> Result<Option<&[u8]>> {
        let n =
            self.file.read(&mut self.buf).await.map_err(|e| {
                Error::io(format!("cannot read WAL file {}", self.path.display()), e)
            })?;
        if n == 0 {
            return Ok(None);
        }
        self.hasher.update(&self.buf[..n]);
        self.size += n as u64;
        Ok(Some(&self.buf[..n]))
    }

    /// SHA-256 (hex) and size of what was read.
    fn finish(self) -> (String, u64) {
        (hex::encode(self.hasher.finalize()), self.size)
    }
}

async fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut r = WalReader::open(path).await?;
    while r.next().await?.is_some() {}
    Ok(r.finish())
}

/// A conflict: the archive holds other content under this name.
fn conflict(store: &dyn Storage, name: &str, have: &str, new: &str) -> Error {
    Error::Refused(format!(
        "WAL file {name} is already archived on {} with different content (stored sha256 {have}, \
         this file {new}); refusing to overwrite it. Two clusters may be archiving into the same \
         location, or the server's WAL was damaged: investigate before anything is deleted",
        store.url()
    ))
}

/// Archive the WAL file at `path` on every store. Returns what happened on each, in
/// order; an error on any store is an error (PostgreSQL will call again).
pub async fn push(
    stores: &[Arc<dyn Storage>],
    path: &Path,
    opts: &PushOptions,
) -> Result<Vec<Pushed>> {
    let name = file_name(path)?;
    parse_name(&name)?;
    let (sha, _size) = hash_file(path).await?;

    let mut outcome = vec![Pushed::Stored; stores.len()];
    let mut todo: Vec<usize> = Vec::new();
    for (i, store) in stores.iter().enumerate() {
        let copies = find(store.as_ref(), &name).await?;
        if let Some(other) = copies.iter().find(|c| c.sha256 != sha) {
            return Err(conflict(store.as_ref(), &name, &other.sha256, &sha));
        }
        if copies.is_empty() {
            todo.push(i);
        } else {
            outcome[i] = Pushed::AlreadyStored;
        }
    }
    if todo.is_empty() {
        return Ok(outcome);
    }
    let key = key_for(&name, &sha, opts);
    let mut writers: Vec<Box<dyn ObjectWriter>> = Vec::with_capacity(todo.len());
    let mut writing: Vec<usize> = Vec::with_capacity(todo.len());
    for &i in &todo {
        match stores[i].put(&key).await {
            Ok(w) => {
                writers.push(w);
                writing.push(i);
            }
            Err(Error::AlreadyExists(_)) => {
                // Stored by a concurrent push since we looked: same name, same checksum.
                outcome[i] = Pushed::AlreadyStored;
            }
            Err(e) => {
                abort_all(writers).await;
                return Err(e);
            }
        }
    }
    let todo = writing;
    if todo.is_empty() {
        return Ok(outcome);
    }
    match encode_into(path, opts, &mut writers, &sha).await {
        Ok(()) => {}
        Err(e) => {
            abort_all(writers).await;
            return Err(e);
        }
    }
    let mut first_err = None;
    for (w, &i) in writers.into_iter().zip(&todo) {
        match w.finish().await {
            Ok(_) => {}
            Err(Error::AlreadyExists(_)) => {
                // Another push of the same file won the race: fine if it is the same content.
                let copies = find(stores[i].as_ref(), &name).await?;
                if let Some(other) = copies.iter().find(|c| c.sha256 != sha) {
                    first_err.get_or_insert(conflict(
                        stores[i].as_ref(),
                        &name,
                        &other.sha256,
                        &sha,
                    ));
                } else {
                    outcome[i] = Pushed::AlreadyStored;
                }
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(outcome),
    }
}

/// The file name of a WAL file path.
fn file_name(path: &Path) -> Result<String> {
    Ok(path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::usage(format!("{} is not a WAL file path", path.display())))?
        .to_string())
}

/// Store the partial segment at `path` (named `NAME.partial`) as the current version of
/// that partial on every store, then delete the versions it replaces (a failed delete
/// is only logged: [`fetch`] serves the newest version, and the next push deletes it).
/// The caller must not push a version holding less WAL than the stored one.
pub async fn push_partial(
    stores: &[Arc<dyn Storage>],
    path: &Path,
    opts: &PushOptions,
) -> Result<Vec<Pushed>> {
    let (sha, _size) = hash_file(path).await?;
    push_partial_hashed(stores, path, &sha, opts).await
}

/// [`push_partial`] of a file whose SHA-256 is known (a private copy hashed as it was
/// made): one read less. The content is checked against `sha` as it is stored.
pub(crate) async fn push_partial_hashed(
    stores: &[Arc<dyn Storage>],
    path: &Path,
    sha: &str,
    opts: &PushOptions,
) -> Result<Vec<Pushed>> {
    let name = file_name(path)?;
    if !matches!(parse_name(&name)?, WalFile::Partial { .. }) {
        return Err(Error::usage(format!(
            "{name} is not a partial segment (NAME{PARTIAL_SUFFIX})"
        )));
    }
    let sha = sha.to_string();
    let key = key_for(&name, &sha, opts);
    let mut outcome = Vec::with_capacity(stores.len());
    for store in stores {
        let copies = find(store.as_ref(), &name).await?;
        let done = if copies.iter().any(|c| c.sha256 == sha) {
            Pushed::AlreadyStored
        } else {
            write_one(store.as_ref(), path, &key, &sha, opts).await?
        };
        for old in copies.iter().filter(|c| c.sha256 != sha) {
            if let Err(e) = store.delete(&old.object.key).await {
                tracing::warn!(
                    "{}: could not delete the replaced partial segment {}: {e}",
                    store.url(),
                    old.object.key
                );
            }
        }
        outcome.push(done);
    }
    Ok(outcome)
}

/// Write one object from the file at `path`.
async fn write_one(
    store: &dyn Storage,
    path: &Path,
    key: &str,
    sha: &str,
    opts: &PushOptions,
) -> Result<Pushed> {
    let mut writers = match store.put(key).await {
        Ok(w) => vec![w],
        Err(Error::AlreadyExists(_)) => return Ok(Pushed::AlreadyStored),
        Err(e) => return Err(e),
    };
    if let Err(e) = encode_into(path, opts, &mut writers, sha).await {
        abort_all(writers).await;
        return Err(e);
    }
    let Some(w) = writers.pop() else {
        return Ok(Pushed::Stored);
    };
    match w.finish().await {
        Ok(_) => Ok(Pushed::Stored),
        Err(Error::AlreadyExists(_)) => Ok(Pushed::AlreadyStored),
        Err(e) => Err(e),
    }
}

/// Delete every version of segment `segment`'s partial from `store`, once the complete
/// segment is stored there (it holds all the partial did). Returns how many went.
pub async fn drop_partials(store: &dyn Storage, segment: &str) -> Result<usize> {
    let copies = find(store, &format!("{segment}{PARTIAL_SUFFIX}")).await?;
    for c in &copies {
        store.delete(&c.object.key).await?;
    }
    Ok(copies.len())
}

async fn abort_all(writers: Vec<Box<dyn ObjectWriter>>) {
    for w in writers {
        let _ = w.abort().await;
    }
}

/// Read the file again, encode it and write every chunk to every writer. The content's
/// hash is checked again: a file that changed between the two reads is not archived.
async fn encode_into(
    path: &Path,
    opts: &PushOptions,
    writers: &mut [Box<dyn ObjectWriter>],
    expect_sha: &str,
) -> Result<()> {
    let mut chain: Vec<Box<dyn Transform>> = Vec::new();
    if let Some(level) = opts.zstd_level {
        chain.push(Box::new(ZstdEncoder::new(level)?));
    }
    if opts.encryption.enabled() {
        chain.push(Box::new(AgeEncryptor::new(&opts.encryption)?));
    }
    let mut reader = WalReader::open(path).await?;
    let mut first = true;
    while let Some(chunk) = reader.next().await? {
        let mut data = chunk.to_vec();
        for t in chain.iter_mut() {
            let mut out = Vec::new();
            t.push(&data, &mut out)?;
            data = out;
        }
        let wrote = !data.is_empty();
        write_all(writers, data).await?;
        if wrote && std::mem::take(&mut first) {
            // Part of the file is in the storage's hands, none of it under its final name.
            crate::util::pause_point("wal-push-streaming").await;
        }
    }
    let tail = finish_chain(&mut chain)?;
    write_all(writers, tail).await?;
    if reader.finish().0 != expect_sha {
        return Err(Error::Refused(format!(
            "WAL file {} changed while it was being archived",
            path.display()
        )));
    }
    Ok(())
}

async fn write_all(writers: &mut [Box<dyn ObjectWriter>], data: Vec<u8>) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let data = Bytes::from(data);
    for w in writers.iter_mut() {
        w.write(data.clone()).await?;
    }
    Ok(())
}

/// Where a fetch found the file.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The store's URL.
    pub from: String,
    /// Bytes written.
    pub size: u64,
    /// A segment served from its partial segment (the complete one is not archived).
    pub partial: bool,
}

/// Fetch `name` into `dest` (written to a temporary name beside it, checked, synced and
/// renamed: `dest` never holds a partial file). Stores are tried in order; a copy whose
/// checksum does not match is reported and the next store is tried. Returns
/// [`Error::NotFound`] when no store has the file.
///
/// A segment that no store holds is served from its partial segment (`NAME.partial`,
/// the newest version) when one is stored: the end of the archive as `wal-receive`
/// left it (`Fetched::partial` says so).
pub async fn fetch(
    stores: &[Arc<dyn Storage>],
    name: &str,
    dest: &Path,
    keys: &DecryptKeys,
) -> Result<Fetched> {
    let file = parse_name(name)?;
    match fetch_named(stores, name, dest, keys).await {
        Err(Error::NotFound(why)) if matches!(file, WalFile::Segment { .. }) => {
            let partial = format!("{name}{PARTIAL_SUFFIX}");
            match fetch_named(stores, &partial, dest, keys).await {
                Ok(f) => {
                    tracing::info!(
                        "WAL segment {name} is not archived complete: serving its partial segment \
                         (the end of the archive) from {}",
                        f.from
                    );
                    Ok(Fetched { partial: true, ..f })
                }
                Err(Error::NotFound(_)) => Err(Error::NotFound(why)),
                Err(e) => Err(e),
            }
        }
        other => other,
    }
}

/// Any segment size: the name's shape is what matters here.
fn parse_name(name: &str) -> Result<WalFile> {
    WalFile::parse(name, crate::wal::DEFAULT_SEGMENT_SIZE)
        .or_else(|_| WalFile::parse(name, 1 << 30))
}

/// The suffix PostgreSQL and `pg_receivewal` give a segment that is not complete.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// The copy of a partial segment to serve among several versions (a receiver killed
/// between storing a new version and deleting the old one leaves two): the newest, and
/// of equal times the larger (more WAL).
fn newest_version(copies: &[ArchivedFile]) -> Option<&ArchivedFile> {
    copies.iter().max_by(|a, b| {
        a.object
            .last_modified
            .cmp(&b.object.last_modified)
            .then(a.object.size.cmp(&b.object.size))
            .then(a.object.key.cmp(&b.object.key))
    })
}

async fn fetch_named(
    stores: &[Arc<dyn Storage>],
    name: &str,
    dest: &Path,
    keys: &DecryptKeys,
) -> Result<Fetched> {
    let is_partial = name.ends_with(PARTIAL_SUFFIX);
    let mut failures: Vec<String> = Vec::new();
    let mut found_any = false;
    for store in stores {
        let copies = find(store.as_ref(), name).await?;
        let copy = if is_partial {
            newest_version(&copies)
        } else {
            copies.first()
        };
        let Some(copy) = copy else { continue };
        found_any = true;
        if !is_partial && copies.iter().any(|c| c.sha256 != copy.sha256) {
            failures.push(format!(
                "{}: holds {} copies of {name} with different content",
                store.url(),
                copies.len()
            ));
            continue;
        }
        match fetch_one(store.as_ref(), copy, dest, keys).await {
            Ok(size) => {
                return Ok(Fetched {
                    from: store.url(),
                    size,
                    partial: false,
                });
            }
            Err(e @ (Error::Refused(_) | Error::Config { .. })) => return Err(e),
            Err(e) => {
                tracing::warn!(target = %store.url(), "WAL file {name}: {e}");
                failures.push(format!("{}: {e}", store.url()));
            }
        }
    }
    if !found_any {
        return Err(Error::NotFound(format!(
            "WAL file {name} is not in the archive"
        )));
    }
    Err(Error::Corrupt(format!(
        "WAL file {name}: no good copy in the archive ({})",
        failures.join("; ")
    )))
}

/// The temporary file a fetch writes before renaming it to `dest`.
fn temp_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".kaizen-fetch");
    dest.with_file_name(name)
}

async fn fetch_one(
    store: &dyn Storage,
    copy: &ArchivedFile,
    dest: &Path,
    keys: &DecryptKeys,
) -> Result<u64> {
    let mut stream = store.get(&copy.object.key).await?;
    if copy.age {
        stream = codec::age_decode(stream, keys, &[])?;
    }
    if copy.zstd {
        stream = codec::zstd_decode(stream);
    }
    let tmp = temp_path(dest);
    let io = |what: &str, e| Error::io(format!("cannot {what} {}", tmp.display()), e);
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| io("create", e))?;
    let written = async {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(|e| io("write", e))?;
        }
        let got = hex::encode(hasher.finalize());
        if got != copy.sha256 {
            return Err(Error::Corrupt(format!(
                "checksum mismatch for {} (object {}): expected sha256 {}, got {got}",
                copy.name, copy.object.key, copy.sha256
            )));
        }
        file.sync_all().await.map_err(|e| io("sync", e))?;
        Ok(size)
    }
    .await;
    drop(file);
    match written {
        Ok(size) => {
            tokio::fs::rename(&tmp, dest)
                .await
                .map_err(|e| Error::io(format!("cannot rename to {}", dest.display()), e))?;
            Ok(size)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

/// The WAL files no retained physical backup needs: segments, partial segments and
/// backup labels below the start of the oldest retained physical backup (whatever
/// their timeline); timeline history files are always kept. With no retained physical
/// backup nothing is unneeded (the WAL may be for a base backup still being taken).
pub fn unneeded<'a>(files: &'a [ArchivedFile], retained: &[PhysicalInfo]) -> Vec<&'a ArchivedFile> {
    let Some(oldest) = retained.iter().min_by_key(|p| p.start_lsn) else {
        return Vec::new();
    };
    let size = oldest.wal_segment_size;
    let keep_from = oldest.start_lsn.segment(size);
    files
        .iter()
        .filter(|f| match WalFile::parse(&f.name, size) {
            Ok(WalFile::Segment { segno, .. })
            | Ok(WalFile::Partial { segno, .. })
            | Ok(WalFile::BackupLabel { segno, .. }) => segno < keep_from,
            Ok(WalFile::History { .. }) | Err(_) => false,
        })
        .collect()
}

/// Delete (or, with `dry_run`, list) the WAL files of `store` that no retained physical
/// backup needs. Returns their names, oldest first.
pub async fn prune(
    store: &dyn Storage,
    retained: &[PhysicalInfo],
    dry_run: bool,
) -> Result<Vec<String>> {
    let files = list(store).await?;
    let mut removed = Vec::new();
    for f in unneeded(&files, retained) {
        if !dry_run {
            store.delete(&f.object.key).await?;
        }
        removed.push(f.name.clone());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size: 1,
            last_modified: None,
        }
    }

    #[test]
    fn only_wal_below_the_oldest_retained_backup_is_unneeded() {
        let sha = "a".repeat(64);
        let files: Vec<ArchivedFile> = [
            "000000010000000000000001",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005.partial",
            "00000002.history",
            "000000020000000000000005",
        ]
        .iter()
        .map(|n| ArchivedFile::from_object(meta(&format!("{n}-{sha}.zst"))).unwrap())
        .collect();
        let info = |start: &str| PhysicalInfo {
            timeline: 1,
            start_lsn: start.parse().unwrap(),
            end_lsn: start.parse().unwrap(),
            system_identifier: "1".into(),
            wal_segment_size: crate::wal::DEFAULT_SEGMENT_SIZE,
        };
        let names = |r: &[PhysicalInfo]| -> Vec<String> {
            unneeded(&files, r).iter().map(|f| f.name.clone()).collect()
        };
        assert!(names(&[]).is_empty(), "no retained backup: keep everything");
        assert_eq!(
            names(&[info("0/5000028"), info("0/4000028")]),
            [
                "000000010000000000000001",
                "000000010000000000000002.00000028.backup",
                "000000010000000000000003"
            ]
        );
        assert!(names(&[info("0/1000028")]).is_empty());
    }

    #[tokio::test]
    async fn a_partial_is_replaced_by_newer_versions_and_served_only_without_its_segment() {
        let mem = crate::testing::MemoryStorage::new("wal");
        let stores: Vec<Arc<dyn Storage>> = vec![Arc::new(mem.clone())];
        let dir = tempfile::tempdir().unwrap();
        let seg = "000000010000000000000003";
        let partial = dir.path().join(format!("{seg}{PARTIAL_SUFFIX}"));
        let opts = PushOptions {
            zstd_level: Some(3),
            ..Default::default()
        };
        let keys = DecryptKeys::default();
        let dest = dir.path().join("RECOVERYXLOG");

        std::fs::write(&partial, [1u8, 0, 0, 0]).unwrap();
        push_partial(&stores, &partial, &opts).await.unwrap();
        std::fs::write(&partial, [1u8, 2, 0, 0]).unwrap();
        push_partial(&stores, &partial, &opts).await.unwrap();
        let copies = find(&mem, &format!("{seg}{PARTIAL_SUFFIX}")).await.unwrap();
        assert_eq!(copies.len(), 1, "the older version is deleted");
        assert_eq!(
            push_partial(&stores, &partial, &opts).await.unwrap(),
            [Pushed::AlreadyStored]
        );
        // No complete segment: the segment's name is served from the partial.
        let f = fetch(&stores, seg, &dest, &keys).await.unwrap();
        assert!(f.partial);
        assert_eq!(std::fs::read(&dest).unwrap(), [1u8, 2, 0, 0]);

        // Two versions (a receiver killed between storing and deleting): the newest.
        let old_key = format!("{seg}{PARTIAL_SUFFIX}-{}.zst", "0".repeat(64));
        let mut w = mem.put(&old_key).await.unwrap();
        w.write(Bytes::from_static(b"stale")).await.unwrap();
        w.finish().await.unwrap();
        mem.set_last_modified(&old_key, chrono::Utc::now() - chrono::Duration::hours(1));
        let f = fetch(&stores, seg, &dest, &keys).await.unwrap();
        assert!(f.partial);
        assert_eq!(std::fs::read(&dest).unwrap(), [1u8, 2, 0, 0]);

        // The complete segment wins; its partial copies can go.
        let full = dir.path().join(seg);
        std::fs::write(&full, [1u8, 2, 3, 4]).unwrap();
        push(&stores, &full, &opts).await.unwrap();
        let f = fetch(&stores, seg, &dest, &keys).await.unwrap();
        assert!(!f.partial);
        assert_eq!(std::fs::read(&dest).unwrap(), [1u8, 2, 3, 4]);
        assert_eq!(drop_partials(&mem, seg).await.unwrap(), 2);
        assert!(matches!(
            fetch(&stores, "000000010000000000000004", &dest, &keys).await,
            Err(Error::NotFound(_))
        ));
        // Not a partial name: refused.
        assert!(push_partial(&stores, &full, &opts).await.is_err());
    }

    #[test]
    fn object_keys_parse() {
        let sha = "a".repeat(64);
        let f = ArchivedFile::from_object(meta(&format!("000000010000000000000002-{sha}.zst.age")))
            .unwrap();
        assert_eq!(f.name, "000000010000000000000002");
        assert!(f.zstd && f.age);
        let f = ArchivedFile::from_object(meta(&format!("00000002.history-{sha}"))).unwrap();
        assert_eq!(f.name, "00000002.history");
        assert!(!f.zstd && !f.age);
        for bad in [
            "000000010000000000000002".to_string(),
            format!("000000010000000000000002-{}", "a".repeat(63)),
            format!("-{sha}"),
            "000000010000000000000002-zz.zst".to_string(),
        ] {
            assert!(ArchivedFile::from_object(meta(&bad)).is_none(), "{bad}");
        }
        let opts = PushOptions {
            zstd_level: Some(3),
            ..Default::default()
        };
        assert_eq!(key_for("x", &sha, &opts), format!("x-{sha}.zst"));
    }
}
