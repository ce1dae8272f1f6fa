//! Check 1, `file`: readable, non-empty, valid header, size and SHA-256 equal the manifest's.

use std::time::Instant;

use async_trait::async_trait;
use backup_core::{CheckResult, Error, Result, Verifier, VerifyContext, success};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::result;

/// Which header the stored object must start with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A custom-format archive (`PGDMP`).
    Custom,
    /// A tar archive carrying a directory-format dump.
    Tar,
    /// Not checkable here (compressed or encrypted by kaizen-backup).
    Opaque,
}

/// Reads the stored object once, hashing it.
#[derive(Debug, Clone, Copy)]
pub struct FileCheck {
    /// The header the object must start with.
    pub header: Header,
}

/// `PGDMP` followed by the archive version (major 1, minor 10..=16 for PostgreSQL 9.x–17+).
pub fn header_problem(head: &[u8]) -> Option<String> {
    if head.len() < 8 {
        return Some(format!(
            "only {} bytes: too short for a custom-format archive",
            head.len()
        ));
    }
    if &head[..5] != b"PGDMP" {
        return Some("no PGDMP header: not a PostgreSQL custom-format archive".into());
    }
    let (major, minor) = (head[5], head[6]);
    if major != 1 || !(7..=30).contains(&minor) {
        return Some(format!(
            "unsupported archive version {major}.{minor}.{}",
            head[7]
        ));
    }
    None
}

#[async_trait]
impl Verifier for FileCheck {
    fn name(&self) -> &'static str {
        "file"
    }

    async fn verify(&self, ctx: &VerifyContext) -> Result<Vec<CheckResult>> {
        let started = Instant::now();
        let fail = |why: String| Ok(vec![result("file", false, why, started)]);
        let mut stream = match ctx.storage.get(&ctx.data_key).await {
            Ok(s) => s,
            Err(Error::NotFound(what)) => return fail(format!("data object missing: {what}")),
            Err(e) => return fail(format!("cannot read {}: {e}", ctx.data_key)),
        };
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let want = match self.header {
            Header::Custom => 8,
            Header::Tar => backup_core::tar::BLOCK,
            Header::Opaque => 0,
        };
        let mut head: Vec<u8> = Vec::with_capacity(want);
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return fail(format!("read failed after {size} bytes: {e}")),
            };
            if head.len() < want {
                let take = (want - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
            }
            hasher.update(&chunk);
            size += chunk.len() as u64;
        }
        if size == 0 {
            return fail("the backup file is empty".into());
        }
        match self.header {
            Header::Custom => {
                if let Some(why) = header_problem(&head) {
                    return fail(why);
                }
            }
            Header::Tar => {
                if !backup_core::tar::is_header(&head) {
                    return fail(
                        "no tar header: not the archive of a directory-format dump".into(),
                    );
                }
            }
            Header::Opaque => {}
        }
        let sha = hex::encode(hasher.finalize());
        let Some(m) = &ctx.manifest else {
            success!("Backup file validation passed");
            return Ok(vec![result(
                "file",
                true,
                format!(
                    "{size} bytes, header valid; no manifest, so the checksum cannot be checked (sha256 {sha})"
                ),
                started,
            )]);
        };
        if size != m.size_bytes {
            return fail(format!(
                "size {size} bytes, manifest says {} (truncated or replaced)",
                m.size_bytes
            ));
        }
        if sha != m.sha256 {
            return fail(format!(
                "checksum mismatch: SHA-256 {sha}, manifest {}",
                m.sha256
            ));
        }
        success!("Backup file validation passed");
        Ok(vec![result(
            "file",
            true,
            format!("{size} bytes, sha256 {}", &sha[..16]),
            started,
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert!(header_problem(b"PGDMP\x01\x0e\x00rest").is_none());
        assert!(header_problem(b"PGDMP").is_some());
        assert!(header_problem(b"GARBAGE!!").is_some());
        assert!(header_problem(b"PGDMP\x02\x0e\x00x").is_some());
    }
}
