//! `wal-push` and the partial segments of `wal-receive`: hash, refuse a different content
//! under an archived name, encode once, write to every target, commit everywhere.

use super::*;

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

/// Archive the WAL file at `path` on every store, with its signature when a signing key
/// is configured. Returns what happened on each, in order; an error on any store is an
/// error (PostgreSQL will call again, and a retry of a stored file adds a missing
/// signature).
pub async fn push(
    stores: &[Arc<dyn Storage>],
    path: &Path,
    opts: &PushOptions,
) -> Result<Vec<Pushed>> {
    let name = file_name(path)?;
    parse_name(&name)?;
    let (sha, _size) = hash_file(path).await?;
    let outcome = push_data(stores, path, &name, &sha, opts).await?;
    sign_everywhere(stores, &name, &sha, opts).await?;
    Ok(outcome)
}

/// The signature object of an archived file on every store (after the file itself: a
/// file without it is refused where signatures are required, never served unchecked).
async fn sign_everywhere(
    stores: &[Arc<dyn Storage>],
    name: &str,
    sha: &str,
    opts: &PushOptions,
) -> Result<()> {
    let Some(key) = &opts.signing_key else {
        return Ok(());
    };
    let object = Bytes::from(key.sign_wal(name, sha));
    let sig_key = crate::signing::wal_signature_key(name, sha);
    for store in stores {
        match crate::storage::put_bytes(store.as_ref(), &sig_key, object.clone()).await {
            // Signed before (a retry): never overwritten.
            Ok(_) | Err(Error::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn push_data(
    stores: &[Arc<dyn Storage>],
    path: &Path,
    name: &str,
    sha: &str,
    opts: &PushOptions,
) -> Result<Vec<Pushed>> {
    let (name, sha) = (name.to_string(), sha.to_string());

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
        sign_everywhere(std::slice::from_ref(store), &name, &sha, opts).await?;
        for old in copies.iter().filter(|c| c.sha256 != sha) {
            if let Err(e) = super::delete_signature(store.as_ref(), old).await {
                tracing::warn!(
                    "{}: could not delete the signature of a replaced partial segment {}: {e}",
                    store.url(),
                    old.object.key
                );
            }
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
        super::delete_signature(store, c).await?;
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
