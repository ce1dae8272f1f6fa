//! Selective restore: some tables of a logical backup into a new database, proven
//! against the manifest's row counts.
//!
//! ```text
//! SIDE_DB must not exist ─▶ archive read whole to local disk, checksum proven (nothing created yet)
//!   ─▶ TOC parsed (format/toc.rs) ─▶ plan (selective/plan.rs): names matched, entries picked
//!   ─▶ kaizen_restore_* created (claimed) ─▶ pg_restore --use-list [--jobs] from the local copy
//!   ─▶ count(*) of every restored table = the manifest's, or drop it and fail
//!   ─▶ renamed to SIDE_DB
//! ```
//! SIDE_DB appears only once its tables are proven whole; a run killed before that leaves a
//! claimed temporary database that the next run drops. This mode never replaces a database.

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::catalog::Resolved;
use crate::claim::{self, Temporary};
use crate::error::{Error, Result};
use crate::pg::{PgConfig, db_error, quote_ident};
use crate::restore::{
    LocalArchive, RestoreOptions, check_target, create_database, create_missing_roles,
    database_exists, drop_database, fetch_local, pg_restore_command, pg_restore_tool,
    run_pg_restore,
};
use crate::toc::Toc;

mod plan;

pub use plan::{LeftOutKey, Plan, Selection, parse_table_spec, qualified};

/// One restored table and its proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredTable {
    /// `(schema, name)`.
    pub table: (String, String),
    /// Rows counted in SIDE_DB.
    pub rows: i64,
    /// Rows the manifest recorded (None: a backup without manifest, or a table it lacks).
    pub expected: Option<i64>,
}

/// What a selective restore did.
#[derive(Debug, Clone)]
pub struct SelectiveOutcome {
    /// The new database.
    pub target_db: String,
    /// Every restored table, sorted.
    pub tables: Vec<RestoredTable>,
    /// Foreign keys left out because one of their tables was not restored.
    pub left_out: Vec<LeftOutKey>,
    /// Whether the checksum was verified (false for bare files without manifest).
    pub checksum_verified: bool,
    /// Stored bytes read.
    pub size_bytes: u64,
    /// Wall time.
    pub duration: Duration,
}

/// Restore the tables `selection` names from `resolved` into the new database
/// `opts.target_db`.
pub async fn run(
    pg: &PgConfig,
    resolved: &Resolved,
    selection: &Selection,
    mut opts: RestoreOptions,
    cancel: CancellationToken,
) -> Result<SelectiveOutcome> {
    resolved.ensure_logical()?;
    let started = Instant::now();
    let target = opts.target_db.clone();
    let mut admin = pg.connect_to(&pg.maintenance_db).await?;
    check_target(&admin, pg, &target).await?;
    refuse_existing(&admin, &target).await?;
    if let Err(e) = claim::drop_leftovers(&admin).await {
        warn!("Could not look for databases left by interrupted runs: {e}");
    }
    let tool = pg_restore_tool(pg, &admin).await?;
    if resolved.manifest.is_none() {
        warn!(
            "{} has no manifest: neither its checksum nor its row counts can be checked",
            resolved.data_key
        );
    }

    // Everything is read and proven before anything is created.
    let (local, hash) = fetch_local(resolved, &mut opts, &cancel).await?;
    let toc = local_toc(&local, resolved).await?;
    let plan = plan::build(&toc, selection)?;
    let names: Vec<String> = plan.tables.iter().map(qualified).collect();
    info!(
        "Restoring {} table(s) of {} into new database {target}: {}",
        plan.tables.len(),
        resolved.name,
        names.join(", ")
    );

    let created = create_missing_roles(&mut admin, &opts).await?;
    let temp = match claim::claim_new_name(&admin, Temporary::Restore, &target).await {
        Ok(t) => t,
        Err(e) => {
            crate::pg::roles::drop_created(&admin, &created).await;
            return Err(e);
        }
    };
    let result = restore_into(
        pg, &admin, &tool, resolved, &local, &hash, &plan, &temp, &opts, &cancel,
    )
    .await;
    let result = match result {
        Ok(tables) => rename_new(&admin, &temp, &target).await.map(|()| tables),
        Err(e) => Err(e),
    };
    if result.is_err()
        && let Err(de) = drop_database(&admin, &temp).await
    {
        warn!("Could not drop temporary database {temp}: {de}; the next run drops it");
    }
    claim::release(&admin, &temp).await;
    drop(local);
    let tables = match result {
        Ok(t) => t,
        Err(e) => {
            crate::pg::roles::drop_created(&admin, &created).await;
            return Err(e);
        }
    };
    let (_, size_bytes) = crate::util::digest(&hash);
    Ok(SelectiveOutcome {
        target_db: target,
        tables,
        left_out: plan.left_out,
        checksum_verified: resolved.manifest.is_some(),
        size_bytes,
        duration: started.elapsed(),
    })
}

/// A first look, for a custom-format backup: read only the start of the archive (its table
/// of contents) and check that `selection` names tables it holds, so that a mistyped name
/// fails at once instead of after the whole archive was read. `decoder` decodes the stored
/// stream as [`RestoreOptions::decoder`] does. An unreadable TOC is not reported here: the
/// full read that follows proves the checksum first and says what is wrong.
pub async fn check_names(
    resolved: &Resolved,
    selection: &Selection,
    decoder: Option<crate::codec::Decoder>,
) -> Result<()> {
    if resolved.is_directory() {
        return Ok(());
    }
    let stored = resolved.storage.get(&resolved.data_key).await?;
    let plain = match decoder {
        Some(d) => d(stored)?,
        None => stored,
    };
    match crate::toc::read(plain, false).await {
        Ok(Ok(toc)) => plan::build(&toc, selection).map(|_| ()),
        Ok(Err(_)) | Err(_) => Ok(()),
    }
}

async fn refuse_existing(admin: &Client, target: &str) -> Result<()> {
    if database_exists(admin, target).await? {
        return Err(Error::Refused(format!(
            "database {target} exists: a selective restore only creates a new database and never replaces one; choose another name (nothing was changed)"
        )));
    }
    Ok(())
}

/// The TOC of the local copy: the start of the custom-format file, or `toc.dat`.
async fn local_toc(local: &LocalArchive, resolved: &Resolved) -> Result<Toc> {
    let corrupt = |why: String| Error::Corrupt(format!("{}: {why}", resolved.name));
    let parsed = match local {
        LocalArchive::Custom(f) => {
            let file = tokio::fs::File::open(f.path())
                .await
                .map_err(|e| Error::io("opening the downloaded archive", e))?;
            let stream = tokio_util::io::ReaderStream::new(file);
            let stream: crate::storage::ByteStream =
                Box::pin(futures::StreamExt::map(stream, |r| {
                    r.map_err(|e| Error::io("reading the downloaded archive", e))
                }));
            crate::toc::read(stream, false).await?
        }
        LocalArchive::Directory { dir, .. } => {
            let bytes = tokio::fs::read(dir.join("toc.dat"))
                .await
                .map_err(|e| Error::io("reading the unpacked toc.dat", e))?;
            crate::toc::parse(&bytes).map_err(|e| e.to_string())
        }
    };
    parsed.map_err(corrupt)
}

/// Create `temp`, pg_restore the plan's entries into it and prove the row counts.
#[allow(clippy::too_many_arguments)]
async fn restore_into(
    pg: &PgConfig,
    admin: &Client,
    tool: &crate::pg::Tool,
    resolved: &Resolved,
    local: &LocalArchive,
    hash: &crate::util::HashState,
    plan: &Plan,
    temp: &str,
    opts: &RestoreOptions,
    cancel: &CancellationToken,
) -> Result<Vec<RestoredTable>> {
    let dir = opts
        .settings
        .temp_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    let list = tempfile::Builder::new()
        .prefix(&crate::util::owned_prefix(crate::leftovers::RESTORE_PREFIX))
        .suffix(".list")
        .tempfile_in(&dir)
        .map_err(|e| Error::io(format!("creating a temporary file in {}", dir.display()), e))?;
    std::fs::write(list.path(), plan.list_file())
        .map_err(|e| Error::io(format!("writing {}", list.path().display()), e))?;

    create_database(admin, temp, resolved.manifest.as_ref()).await?;
    let mut cmd = pg_restore_command(pg, tool, temp, &opts.settings);
    cmd.arg(match local {
        LocalArchive::Custom(_) => "--format=custom",
        LocalArchive::Directory { .. } => "--format=directory",
    })
    .arg(format!("--use-list={}", list.path().display()));
    if opts.settings.jobs > 1 {
        cmd.arg(format!("--jobs={}", opts.settings.jobs));
    }
    cmd.arg(local.path()).stdin(std::process::Stdio::null());
    run_pg_restore(cmd, None, resolved, hash, cancel, None).await?;
    if cancel.is_cancelled() {
        return Err(Error::Interrupted("a signal".into()));
    }
    let client = pg.connect_to(temp).await?;
    prove_rows(&client, resolved, plan).await
}

/// Count every restored table; each must equal the manifest's count.
async fn prove_rows(
    client: &Client,
    resolved: &Resolved,
    plan: &Plan,
) -> Result<Vec<RestoredTable>> {
    let mut out = Vec::new();
    let mut wrong = Vec::new();
    for t in &plan.tables {
        let name = format!("{}.{}", quote_ident(&t.0), quote_ident(&t.1));
        // Counted as the backup counted (pg/stats.rs): an ordinary table its own rows
        // (ONLY: inheritance children are not counted twice), a partitioned one all of them.
        let kind: String = client
            .query_one(
                "SELECT relkind::text FROM pg_class WHERE oid = $1::text::regclass",
                &[&name],
            )
            .await
            .map_err(|e| db_error(format!("looking up {}", qualified(t)), &e))?
            .get(0);
        let only = if kind == "r" { "ONLY " } else { "" };
        let sql = format!("SELECT count(*) FROM {only}{name}");
        let rows: i64 = client
            .query_one(&sql, &[])
            .await
            .map_err(|e| db_error(format!("counting the rows of {}", qualified(t)), &e))?
            .get(0);
        let expected = resolved.manifest.as_ref().and_then(|m| {
            m.tables
                .iter()
                .find(|c| c.schema == t.0 && c.name == t.1)
                .map(|c| c.rows)
        });
        match expected {
            Some(e) if e != rows => wrong.push(format!(
                "{}: {rows} rows, the manifest recorded {e}",
                qualified(t)
            )),
            None if resolved.manifest.is_some() => {
                warn!("The manifest records no row count for {}", qualified(t));
            }
            _ => {}
        }
        out.push(RestoredTable {
            table: t.clone(),
            rows,
            expected,
        });
    }
    if !wrong.is_empty() {
        return Err(Error::VerifyFailed {
            check: "row counts".into(),
            reason: format!(
                "{}; the restored tables are not what was backed up, so the database was dropped",
                wrong.join("; ")
            ),
        });
    }
    Ok(out)
}

/// Give the proven copy its name. The session that counted rows may still be closing, so
/// the rename is retried for a few seconds (only our own sessions use the copy).
async fn rename_new(admin: &Client, temp: &str, target: &str) -> Result<()> {
    let sql = format!(
        "ALTER DATABASE {} RENAME TO {}",
        quote_ident(temp),
        quote_ident(target)
    );
    let mut last = None;
    for attempt in 0..25 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        match admin.batch_execute(&sql).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                let in_use = e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE);
                let err = db_error(format!("renaming {temp} to {target}"), &e);
                if !in_use {
                    return Err(err);
                }
                last = Some(err);
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::other(format!("renaming {temp} to {target}"))))
}
