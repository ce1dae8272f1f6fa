//! Check 2, `archive`: the archive's table of contents is readable and lists every table
//! the manifest recorded, compared as exact `(schema, name)` pairs.

use std::collections::BTreeSet;
use std::time::Instant;

use async_trait::async_trait;
use backup_core::toc::{self, Toc, TocError};
use backup_core::{CheckResult, Error, Result, Verifier, VerifyContext};
use futures::StreamExt;

use crate::result;

/// Reads the archive's table of contents with [`backup_core::toc`]: from the start of the
/// object (custom format), or from `toc.dat` unpacked from the tar archive (directory
/// format). Names come back exactly, whatever characters they contain.
#[derive(Debug, Clone, Copy, Default)]
pub struct ArchiveCheck {
    /// The object is a tar archive of a directory-format dump.
    pub directory: bool,
}

/// A TOC larger than this is refused rather than buffered.
const MAX_TOC: usize = 512 * 1024 * 1024;

#[async_trait]
impl Verifier for ArchiveCheck {
    fn name(&self) -> &'static str {
        "archive"
    }

    async fn verify(&self, ctx: &VerifyContext) -> Result<Vec<CheckResult>> {
        let started = Instant::now();
        let fail = |why: String| Ok(vec![result("archive", false, why, started)]);
        let toc = if self.directory {
            read_directory_toc(ctx).await?
        } else {
            read_custom_toc(ctx).await?
        };
        let toc = match toc {
            Ok(t) => t,
            Err(why) => return fail(format!("cannot read the table of contents: {why}")),
        };
        let tables = toc.tables();
        if let Some(m) = &ctx.manifest {
            let missing = missing_tables(&tables, m.tables.iter().map(|t| (&t.schema, &t.name)));
            if !missing.is_empty() {
                return fail(format!(
                    "the table of contents lacks {} table(s) the manifest recorded: {}",
                    missing.len(),
                    missing
                        .iter()
                        .take(10)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        Ok(vec![result(
            "archive",
            true,
            format!("{} entries, {} tables", toc.entries.len(), tables.len()),
            started,
        )])
    }
}

/// The recorded tables that `tables` lacks, as `"schema"."name"` (quoted: names may hold
/// dots and spaces).
fn missing_tables<'a>(
    tables: &BTreeSet<(String, String)>,
    recorded: impl Iterator<Item = (&'a String, &'a String)>,
) -> Vec<String> {
    recorded
        .filter(|(s, n)| !tables.contains(&((*s).clone(), (*n).clone())))
        .map(|(s, n)| {
            format!(
                "{}.{}",
                backup_core::pg::quote_ident(s),
                backup_core::pg::quote_ident(n)
            )
        })
        .collect()
}

/// Parse the start of the object as it arrives, stopping once the TOC is complete.
async fn read_custom_toc(ctx: &VerifyContext) -> Result<std::result::Result<Toc, String>> {
    let mut stream = ctx.storage.get(&ctx.data_key).await?;
    let mut buf: Vec<u8> = Vec::new();
    let mut next_try = 64 * 1024;
    loop {
        match stream.next().await {
            Some(chunk) => {
                buf.extend_from_slice(&chunk?);
                if buf.len() < next_try {
                    continue;
                }
                // Re-parse at doubling sizes: linear work overall.
                next_try = buf.len().saturating_mul(2);
            }
            None => next_try = usize::MAX,
        }
        match toc::parse(&buf) {
            Ok(t) => return Ok(Ok(t)),
            Err(TocError::Incomplete) if next_try != usize::MAX && buf.len() <= MAX_TOC => {}
            Err(TocError::Incomplete) if next_try == usize::MAX => {
                return Ok(Err(
                    "the archive ends inside its table of contents (truncated)".into(),
                ));
            }
            Err(TocError::Incomplete) => {
                return Ok(Err(format!(
                    "the table of contents is larger than {} MiB",
                    MAX_TOC / (1024 * 1024)
                )));
            }
            Err(e) => return Ok(Err(e.to_string())),
        }
    }
}

/// Unpack only `toc.dat` from the tar archive (the whole stream is read and checked), then
/// parse it.
async fn read_directory_toc(ctx: &VerifyContext) -> Result<std::result::Result<Toc, String>> {
    let tmp = tempfile::Builder::new()
        .prefix("kaizen-verify-toc-")
        .tempdir()
        .map_err(|e| Error::io("creating a temporary directory", e))?;
    let stream = ctx.storage.get(&ctx.data_key).await?;
    match backup_core::tar::unpack(stream, tmp.path(), |n| n == "toc.dat").await {
        Ok(names) if names.is_empty() => return Ok(Err("the archive has no toc.dat".into())),
        Ok(_) => {}
        Err(Error::Corrupt(why)) => return Ok(Err(why)),
        Err(e) => return Err(e),
    }
    let bytes = tokio::fs::read(tmp.path().join("toc.dat"))
        .await
        .map_err(|e| Error::io("reading the unpacked toc.dat", e))?;
    Ok(toc::parse(&bytes).map_err(|e| match e {
        TocError::Incomplete => "toc.dat ends inside the table of contents (truncated)".into(),
        e => e.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tables_are_exact_pairs_and_quoted() {
        let have: BTreeSet<(String, String)> = [
            ("Sales Data".to_string(), "Audit Log".to_string()),
            ("public".to_string(), "t".to_string()),
        ]
        .into();
        let recorded = [
            ("Sales Data".to_string(), "Audit Log".to_string()),
            ("Sales".to_string(), "Data Audit Log".to_string()),
            ("public".to_string(), "t".to_string()),
        ];
        let missing = missing_tables(&have, recorded.iter().map(|(s, n)| (s, n)));
        assert_eq!(missing, ["\"Sales\".\"Data Audit Log\""]);
    }
}
