//! Check 2, `archive`: the archive's table of contents is readable and lists every table
//! the manifest recorded, compared as exact `(schema, name)` pairs. An object that
//! kaizen-backup compressed or encrypted is read by the test restore instead, so that
//! `--quick` needs no key.

use std::collections::BTreeSet;
use std::time::Instant;

use async_trait::async_trait;
use backup_core::manifest::Manifest;
use backup_core::toc;
use backup_core::{CheckResult, Result, Verifier, VerifyContext};

use crate::result;

/// Reads the archive's table of contents with [`backup_core::toc`]: from the start of the
/// object (custom format), or from `toc.dat` unpacked from the tar archive (directory
/// format). Names come back exactly, whatever characters they contain. Passes without
/// reading an object that kaizen-backup compressed or encrypted (the test restore reads
/// it); refuses a physical backup.
#[derive(Debug, Clone, Copy, Default)]
pub struct ArchiveCheck {
    /// The object is a tar archive of a directory-format dump.
    pub directory: bool,
}

#[async_trait]
impl Verifier for ArchiveCheck {
    fn name(&self) -> &'static str {
        "archive"
    }

    async fn verify(&self, ctx: &VerifyContext) -> Result<Vec<CheckResult>> {
        if let Some(m) = &ctx.manifest {
            m.ensure_logical()?;
        }
        if ctx.manifest.as_ref().is_some_and(Manifest::is_encoded) {
            return Ok(vec![CheckResult {
                name: "archive".into(),
                passed: true,
                detail: "checked during the test restore (the object is compressed or encrypted by kaizen-backup)".into(),
                duration_seconds: 0.0,
            }]);
        }
        let started = Instant::now();
        let fail = |why: String| Ok(vec![result("archive", false, why, started)]);
        let stream = ctx.storage.get(&ctx.data_key).await?;
        let toc = match toc::read(stream, self.directory).await? {
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

/// The recorded tables that `tables` lacks, as `schema.name`, parts quoted where needed
/// (`"Sales Data"."Audit Log"`: names may hold dots and spaces).
fn missing_tables<'a>(
    tables: &BTreeSet<(String, String)>,
    recorded: impl Iterator<Item = (&'a String, &'a String)>,
) -> Vec<String> {
    recorded
        .filter(|(s, n)| !tables.contains(&((*s).clone(), (*n).clone())))
        .map(|(s, n)| {
            format!(
                "{}.{}",
                backup_core::pg::display_ident(s),
                backup_core::pg::display_ident(n)
            )
        })
        .collect()
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
            ("public".to_string(), "gone".to_string()),
            ("Sales".to_string(), "Data Audit Log".to_string()),
            ("public".to_string(), "t".to_string()),
        ];
        let missing = missing_tables(&have, recorded.iter().map(|(s, n)| (s, n)));
        assert_eq!(missing, ["public.gone", "\"Sales\".\"Data Audit Log\""]);
    }
}
