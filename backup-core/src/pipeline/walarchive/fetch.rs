//! `wal-fetch`: the exact file PostgreSQL asked for, checked against the SHA-256 in its
//! object name, written to a temporary name and renamed.

use super::*;

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

/// With verify keys, refuse a file whose signature object is missing, by an unknown key
/// or not for this name and content (the content is then proved by its SHA-256).
async fn authenticate(
    store: &dyn Storage,
    copy: &ArchivedFile,
    keys: &[crate::signing::VerifyKey],
) -> Result<()> {
    use crate::signing::{Authenticity, wal_authenticity, wal_signature_key};
    if keys.is_empty() {
        return Ok(());
    }
    let object = match crate::storage::get_bytes(
        store,
        &wal_signature_key(&copy.name, &copy.sha256),
    )
    .await
    {
        Ok(b) => Some(b),
        Err(Error::NotFound(_)) => None,
        Err(e) => return Err(e),
    };
    let why = match wal_authenticity(object.as_deref(), &copy.name, &copy.sha256, keys) {
        Authenticity::Valid { .. } => return Ok(()),
        Authenticity::Unsigned => "is not signed".to_string(),
        Authenticity::UnknownKey { key } => {
            format!("is signed by {key}, which is not in integrity.verify_keys")
        }
        Authenticity::Mismatch { .. } => "does not match its signature".to_string(),
    };
    Err(Error::Refused(format!(
        "WAL file {} on {} {why}, and integrity.verify_keys requires a valid signature: refusing to serve it",
        copy.name,
        store.url()
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
    authenticate(store, copy, &keys.verify_keys).await?;
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
