//! Verifiers for kaizen-backup: prove that a backup restores, exactly.
//!
//! | check | what it proves |
//! |---|---|
//! | `file` | readable, non-empty, custom-format (or tar) header, size and SHA-256 equal the manifest's |
//! | `archive` | pg_restore can read the table of contents and it lists every table the manifest recorded |
//! | `roles` | the roles object beside the backup is whole (and, with the key, reads back) |
//! | `test_restore` | the archive restores into a temporary database (always dropped afterwards) |
//! | `tables`, `sequences`, `indexes`, `constraints` | object counts equal the manifest's |
//! | `row_counts` | every table's exact row count equals the count taken in the dump's snapshot |
//! | `foreign_keys` | no orphan rows for any foreign key in the restored copy |
//! | `size` | restored database size compared with the source size |
//! | `locale` | the copy has the source's encoding, collation, ctype and ICU locale |
//! | `sequence_values` | every sequence is there; those pg_dump skips (extension members) have their recorded value |
//! | `database_properties` | the database's owner, privileges, comment, limit and settings apply and read back as recorded |
//!
//! A physical backup has its own list: `file`, then `backup_manifest` (pg_verifybackup on
//! the unpacked files), `recovery` (a temporary server recovers it to its end from the
//! archive's WAL and promotes) and `tables` (every table of every database read); see
//! [`PhysicalCheck`].
//!
//! Each check implements [`backup_core::Verifier`], so other services can run them
//! one by one. [`standard_checks`] lists them for a backup, [`run_checks`] runs a list
//! in order (yours may add checks to it) and builds the [`VerifyRecord`]; [`run`] does
//! both. Given the keys, a compressed or encrypted backup is decoded here, from its
//! manifest, with nothing else to set up.

mod archive;
mod file;
mod physical;
mod restore;
mod roles;

use std::time::Instant;

use backup_core::codec::DecryptKeys;
use backup_core::manifest::Manifest;
use backup_core::{
    CheckResult, Error, Result, Storage, Verifier, VerifyContext, VerifyRecord, success,
};
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

pub use archive::ArchiveCheck;
pub use file::{FileCheck, Header};
pub use physical::PhysicalCheck;
pub use restore::{TestRestore, VERIFY_DB_PREFIX, drop_stale_databases};
pub use roles::RolesCheck;

/// How to verify.
pub struct VerifyOptions {
    /// Only `file` and `archive` (no database needed).
    pub quick: bool,
    /// Stops the test restore (the temporary database is still dropped).
    pub cancel: CancellationToken,
    /// Keys for an encrypted backup's test restore (the decoder comes from the manifest,
    /// see [`backup_core::codec::decoder_for`]).
    pub keys: DecryptKeys,
    /// pg_restore jobs of the test restore.
    pub jobs: u32,
    /// Where a downloaded or unpacked archive is staged for the test restore.
    pub temp_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for VerifyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyOptions")
            .field("quick", &self.quick)
            .finish_non_exhaustive()
    }
}

/// Name of the first failed check and its reason, from a record.
pub fn first_failure(record: &VerifyRecord) -> Option<&CheckResult> {
    record.checks.iter().find(|c| !c.passed)
}

/// The checks of a backup, in order. A logical backup: `file`, `archive`, then (unless
/// `opts.quick`) the test restore and its comparisons. A physical backup: `file`, then
/// [`PhysicalCheck`] (`backup_manifest`, and unless `opts.quick` `recovery` and
/// `tables`). Add your own [`Verifier`]s to the list and run it with [`run_checks`].
pub fn standard_checks(
    ctx: &VerifyContext,
    opts: &VerifyOptions,
) -> Result<Vec<Box<dyn Verifier>>> {
    if let Some(m) = ctx.manifest.as_ref().filter(|m| m.is_physical()) {
        if m.physical.is_none() {
            return Err(Error::Corrupt(format!(
                "the manifest of {:?} says physical but records no WAL positions",
                m.name
            )));
        }
        let header = if m.is_encoded() {
            Header::Opaque
        } else {
            Header::Tar
        };
        return Ok(vec![
            Box::new(FileCheck { header }),
            Box::new(PhysicalCheck {
                quick: opts.quick,
                cancel: opts.cancel.clone(),
                keys: opts.keys.clone(),
                temp_dir: opts.temp_dir.clone(),
            }),
        ]);
    }
    let encoded = ctx.manifest.as_ref().is_some_and(Manifest::is_encoded);
    let directory = backup_core::catalog::is_directory(ctx.manifest.as_ref(), &ctx.data_key);
    let header = match (encoded, directory) {
        (true, _) => Header::Opaque,
        (false, true) => Header::Tar,
        (false, false) => Header::Custom,
    };
    let mut checks: Vec<Box<dyn Verifier>> = vec![
        Box::new(FileCheck { header }),
        Box::new(ArchiveCheck { directory }),
        Box::new(RolesCheck {
            read: !opts.quick,
            keys: opts.keys.clone(),
        }),
    ];
    if !opts.quick {
        checks.push(Box::new(TestRestore {
            cancel: opts.cancel.clone(),
            keys: opts.keys.clone(),
            jobs: opts.jobs,
            temp_dir: opts.temp_dir.clone(),
        }));
    }
    Ok(checks)
}

/// Run the standard checks (see [`standard_checks`]) and build the record.
pub async fn run(ctx: &VerifyContext, opts: &VerifyOptions) -> Result<VerifyRecord> {
    let checks = standard_checks(ctx, opts)?;
    run_checks(ctx, &checks, opts.quick).await
}

/// Run `checks` in order: each runs only if every check before it passed (a later
/// check depends on the earlier ones). Returns the record, `quick` recorded as given;
/// `record.passed` says whether every check passed.
pub async fn run_checks(
    ctx: &VerifyContext,
    checks: &[Box<dyn Verifier>],
    quick: bool,
) -> Result<VerifyRecord> {
    let started_at = Utc::now();
    info!("Starting verification of {}...", ctx.name);
    let mut results: Vec<CheckResult> = Vec::new();
    for check in checks {
        if !results.iter().all(|c| c.passed) {
            break;
        }
        results.extend(check.verify(ctx).await?);
    }
    for c in &results {
        if c.passed {
            info!("check {}: passed ({})", c.name, c.detail);
        } else {
            error!("check {} failed: {}", c.name, c.detail);
        }
    }
    let passed = results.iter().all(|c| c.passed);
    if passed {
        success!("All integrity checks passed");
        info!("Backup is valid and can be used for restore");
    }
    Ok(VerifyRecord {
        format_version: 1,
        name: ctx.name.clone(),
        started_at,
        finished_at: Utc::now(),
        passed,
        quick,
        checks: results,
        tool_version: backup_core::TOOL_VERSION.into(),
    })
}

/// Store the record beside the backup as `NAME.verify.json`, replacing the previous one
/// (atomically where the backend can; otherwise a crash in between leaves the backup
/// "unverified", never wrongly "verified").
pub async fn store_record(storage: &dyn Storage, record: &VerifyRecord) -> Result<()> {
    let key = Manifest::verify_key_for(&record.name);
    let json = serde_json::to_vec_pretty(record)
        .map_err(|e| Error::other(format!("cannot serialize the verify record: {e}")))?;
    storage.put_replace(&key, json.into()).await
}

/// A check result with its duration measured from `started`.
pub(crate) fn result(
    name: &str,
    passed: bool,
    detail: impl Into<String>,
    started: Instant,
) -> CheckResult {
    CheckResult {
        name: name.into(),
        passed,
        detail: detail.into(),
        duration_seconds: started.elapsed().as_secs_f64(),
    }
}

/// The error a failed record maps to (exit status 1, first failing check named).
pub fn failure_error(record: &VerifyRecord) -> Option<Error> {
    first_failure(record).map(|c| Error::VerifyFailed {
        check: c.name.clone(),
        reason: c.detail.clone(),
    })
}
