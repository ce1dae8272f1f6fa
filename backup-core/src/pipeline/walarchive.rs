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

mod fetch;
mod push;

pub use fetch::{Fetched, fetch};
pub(crate) use push::push_partial_hashed;
pub use push::{drop_partials, push, push_partial};

/// Any segment size: the name's shape is what matters here.
fn parse_name(name: &str) -> Result<WalFile> {
    WalFile::parse(name, crate::wal::DEFAULT_SEGMENT_SIZE)
        .or_else(|_| WalFile::parse(name, 1 << 30))
}

/// The suffix PostgreSQL and `pg_receivewal` give a segment that is not complete.
pub const PARTIAL_SUFFIX: &str = ".partial";

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
    /// Sign each archived file (`[integrity] signing_key`): `NAME-SHA256.sig` beside it.
    pub signing_key: Option<crate::signing::SigningKey>,
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
/// backup needs. Returns their names, oldest first: those deleted, and those kept because
/// S3 Object Lock still holds them.
pub async fn prune(
    store: &dyn Storage,
    retained: &[PhysicalInfo],
    dry_run: bool,
) -> Result<(Vec<String>, Vec<String>)> {
    let files = list(store).await?;
    let (mut removed, mut locked) = (Vec::new(), Vec::new());
    for f in unneeded(&files, retained) {
        if store.locked_until(&f.object.key).await?.is_some() {
            locked.push(f.name.clone());
            continue;
        }
        if !dry_run {
            store.delete(&f.object.key).await?;
            delete_signature(store, f).await?;
        }
        removed.push(f.name.clone());
    }
    Ok((removed, locked))
}

/// Remove the signature object of an archived file, if there is one.
async fn delete_signature(store: &dyn Storage, f: &ArchivedFile) -> Result<()> {
    match store
        .delete(&crate::signing::wal_signature_key(&f.name, &f.sha256))
        .await
    {
        Ok(()) | Err(Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
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

    #[tokio::test]
    async fn signed_wal_is_served_only_with_its_signature_and_pruned_with_it() {
        let mem = crate::testing::MemoryStorage::new("wal");
        let stores: Vec<Arc<dyn Storage>> = vec![Arc::new(mem.clone())];
        let dir = tempfile::tempdir().unwrap();
        let seg = "000000010000000000000003";
        let path = dir.path().join(seg);
        std::fs::write(&path, [7u8; 64]).unwrap();
        let key = crate::signing::SigningKey::generate();
        let opts = PushOptions {
            signing_key: Some(key.clone()),
            ..Default::default()
        };
        push(&stores, &path, &opts).await.unwrap();
        // A retry adds nothing and fails nothing.
        assert_eq!(
            push(&stores, &path, &opts).await.unwrap(),
            [Pushed::AlreadyStored]
        );
        let sha = hex::encode(Sha256::digest([7u8; 64]));
        let sig = crate::signing::wal_signature_key(seg, &sha);
        assert!(mem.object(&sig).is_some());
        let keys = DecryptKeys {
            verify_keys: vec![key.public()],
            ..Default::default()
        };
        let dest = dir.path().join("RECOVERYXLOG");
        fetch(&stores, seg, &dest, &keys).await.unwrap();
        mem.delete(&sig).await.unwrap();
        std::fs::remove_file(&dest).unwrap();
        let err = fetch(&stores, seg, &dest, &keys).await.unwrap_err();
        assert!(matches!(err, Error::Refused(_)), "{err:?}");
        assert!(!dest.exists());
        push(&stores, &path, &opts).await.unwrap();
        assert!(
            mem.object(&sig).is_some(),
            "a retry signs what was not signed"
        );
        let info = PhysicalInfo {
            timeline: 1,
            start_lsn: "0/5000028".parse().unwrap(),
            end_lsn: "0/5000028".parse().unwrap(),
            system_identifier: "1".into(),
            wal_segment_size: crate::wal::DEFAULT_SEGMENT_SIZE,
        };
        assert_eq!(prune(&mem, &[info], false).await.unwrap().0, [seg]);
        assert!(mem.object(&sig).is_none());
        assert!(list(&mem).await.unwrap().is_empty());
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
