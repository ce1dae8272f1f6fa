//! The receiver's private local directory: `stream/`, where `pg_receivewal` writes, and
//! `upload/`, where a partial segment is copied before it is stored (pg_receivewal goes on
//! writing the original). A lock file keeps two receivers out of one spool.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::wal::WalFile;
use crate::walarchive::PARTIAL_SUFFIX;

/// An open spool (its lock is held while this lives).
#[derive(Debug)]
pub(crate) struct Spool {
    pub root: PathBuf,
    _lock: std::fs::File,
}

/// What the stream directory holds, in the order to store it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Listing {
    /// Timeline history files.
    pub history: Vec<String>,
    /// Complete segments, by segment number then timeline.
    pub segments: Vec<(WalFile, String)>,
    /// Partial segments, by segment number then timeline: the last one is the segment
    /// pg_receivewal is writing; earlier ones are old timelines' last segments, final.
    pub partials: Vec<(WalFile, String)>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("cannot {what} {}", path.display()), e)
}

fn private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| io("create", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io("restrict", path, e))
}

impl Spool {
    /// Create (0700) and lock the spool at `root`.
    pub fn open(root: &Path) -> Result<Self> {
        private_dir(root)?;
        private_dir(&root.join("stream"))?;
        private_dir(&root.join("upload"))?;
        let lock_path = root.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io("open", &lock_path, e))?;
        match fs4::fs_std::FileExt::try_lock_exclusive(&lock) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::Refused(format!(
                    "another wal-receive is using the spool directory {}; each receiver needs its own (wal.spool_dir)",
                    root.display()
                )));
            }
            Err(e) => return Err(io("lock", &lock_path, e)),
        }
        Ok(Self {
            root: root.to_path_buf(),
            _lock: lock,
        })
    }

    /// Where pg_receivewal writes.
    pub fn stream(&self) -> PathBuf {
        self.root.join("stream")
    }

    /// Where partial segments are copied before they are stored.
    pub fn upload(&self) -> PathBuf {
        self.root.join("upload")
    }

    /// What the stream directory holds (temporary files and anything else are left alone).
    pub fn list(&self, segment_size: u64) -> Result<Listing> {
        let dir = self.stream();
        let mut out = Listing::default();
        for entry in std::fs::read_dir(&dir).map_err(|e| io("read", &dir, e))? {
            let entry = entry.map_err(|e| io("read", &dir, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            match WalFile::parse(&name, segment_size) {
                Ok(WalFile::History { .. }) => out.history.push(name),
                Ok(f @ WalFile::Segment { .. }) => out.segments.push((f, name)),
                Ok(f @ WalFile::Partial { .. }) => out.partials.push((f, name)),
                _ => {}
            }
        }
        out.history.sort();
        let order = |f: &WalFile| match *f {
            WalFile::Segment { timeline, segno } | WalFile::Partial { timeline, segno } => {
                (segno, timeline)
            }
            _ => (0, 0),
        };
        out.segments.sort_by_key(|(f, _)| order(f));
        out.partials.sort_by_key(|(f, _)| order(f));
        Ok(out)
    }

    /// Remove a file of the stream directory once it is stored.
    pub fn remove(&self, name: &str) -> Result<()> {
        let p = self.stream().join(name);
        std::fs::remove_file(&p).map_err(|e| io("remove", &p, e))
    }

    /// Copy the partial segment `name` into the upload directory (one read: pg_receivewal
    /// only ever adds to it, so the copy is a prefix of the segment followed by zeros).
    /// Returns the copy's path, how many bytes of it are written WAL, and its SHA-256.
    pub async fn snapshot(&self, name: &str) -> Result<(PathBuf, u64, String)> {
        use sha2::Digest;
        let src = self.stream().join(name);
        let dst = self.upload().join(name);
        let mut from = tokio::fs::File::open(&src)
            .await
            .map_err(|e| io("open", &src, e))?;
        let mut to = tokio::fs::File::create(&dst)
            .await
            .map_err(|e| io("create", &dst, e))?;
        let mut buf = vec![0u8; 1 << 20];
        let (mut offset, mut written) = (0u64, 0u64);
        let mut hasher = sha2::Sha256::new();
        loop {
            let n = from.read(&mut buf).await.map_err(|e| io("read", &src, e))?;
            if n == 0 {
                break;
            }
            if let Some(last) = buf[..n].iter().rposition(|b| *b != 0) {
                written = offset + last as u64 + 1;
            }
            hasher.update(&buf[..n]);
            to.write_all(&buf[..n])
                .await
                .map_err(|e| io("write", &dst, e))?;
            offset += n as u64;
        }
        to.flush().await.map_err(|e| io("write", &dst, e))?;
        Ok((dst, written, hex::encode(hasher.finalize())))
    }
}

/// How many bytes of a partial segment file are written WAL (the rest is zeros).
pub(crate) async fn written_len(path: &Path) -> Result<u64> {
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| io("open", path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut offset, mut written) = (0u64, 0u64);
    loop {
        let n = f.read(&mut buf).await.map_err(|e| io("read", path, e))?;
        if n == 0 {
            return Ok(written);
        }
        if let Some(last) = buf[..n].iter().rposition(|b| *b != 0) {
            written = offset + last as u64 + 1;
        }
        offset += n as u64;
    }
}

/// The segment name of a partial segment's name.
pub(crate) fn segment_of(partial: &str) -> &str {
    partial.strip_suffix(PARTIAL_SUFFIX).unwrap_or(partial)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn listing_orders_what_to_store_and_snapshots_measure_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).unwrap();
        assert!(
            Spool::open(&dir.path().join("spool")).is_err(),
            "a second receiver is refused"
        );
        for name in [
            "000000020000000000000005.partial",
            "000000010000000000000005.partial",
            "000000010000000000000004",
            "000000010000000000000003",
            "00000002.history",
            "000000010000000000000006.partial.tmp",
            "notes",
        ] {
            std::fs::write(spool.stream().join(name), b"").unwrap();
        }
        let l = spool.list(crate::wal::DEFAULT_SEGMENT_SIZE).unwrap();
        assert_eq!(l.history, ["00000002.history"]);
        let names = |v: &[(WalFile, String)]| v.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&l.segments),
            ["000000010000000000000003", "000000010000000000000004"]
        );
        assert_eq!(
            names(&l.partials),
            [
                "000000010000000000000005.partial",
                "000000020000000000000005.partial"
            ]
        );

        let mut content = vec![0u8; 64 * 1024];
        content[..1000].fill(7);
        content[2999] = 1;
        std::fs::write(
            spool.stream().join("000000020000000000000005.partial"),
            &content,
        )
        .unwrap();
        let (copy, written, sha) = spool
            .snapshot("000000020000000000000005.partial")
            .await
            .unwrap();
        use sha2::Digest;
        assert_eq!(sha, hex::encode(sha2::Sha256::digest(&content)));
        assert_eq!(written, 3000);
        assert_eq!(std::fs::read(&copy).unwrap(), content);
        assert_eq!(written_len(&copy).await.unwrap(), 3000);
        assert_eq!(
            segment_of("000000020000000000000005.partial"),
            "000000020000000000000005"
        );
    }
}
