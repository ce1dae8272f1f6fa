//! The backup pipeline: one pass from `pg_dump` to every storage target.
//!
//! ```text
//! pg_dump -Fc ──pipe──▶ transforms (zstd, age) ──▶ SHA-256 ──┬──▶ target 1 writer
//!                                                            └──▶ target 2 writer
//! ```
//! Each target gets a bounded channel, so a slow target slows pg_dump down instead of
//! filling memory.
//!
//! With `jobs > 1`, pg_dump writes a directory-format dump with N worker processes into
//! a private staging directory, and the pipeline streams that directory as one tar
//! archive: each table's data file is sent (and deleted) as soon as pg_dump reports the
//! item finished, and the table of contents, written last, ends the archive. Local disk
//! is needed for the files not yet sent, at worst the whole dump, so free space is
//! checked first. The data object is committed first; the manifest is written only
//! after every required target committed. Any failure aborts every write.
//!
//! Cleanup after a failure or a signal (aborting uploads, deleting what was committed)
//! has a total deadline, [`BackupOptions::cleanup_timeout`] (at most
//! [`SIGNAL_CLEANUP`] after a signal): a store that stopped answering cannot hold the
//! process, and what is left behind is invisible (no manifest) and removed by `prune`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chrono::Utc;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::codec::EncryptionConfig;
use crate::error::{Error, Result};
use crate::manifest::{self, FORMAT_VERSION, Format, Kind, Manifest};
use crate::pg::{PgConfig, Tool, check_tool_version, db_error, find_tool};
use crate::storage::{ObjectMeta, ObjectWriter, Storage, put_bytes};
use crate::transform::Transform;
use crate::util::human_size;

mod directory;
mod fanout;
mod process;

use directory::*;
use fanout::*;
pub use process::{collect_stderr, terminate};

/// Size of each read from pg_dump's pipe.
const CHUNK: usize = 256 * 1024;
/// Chunks buffered per target before pg_dump is slowed down.
const QUEUE_DEPTH: usize = 8;
/// Most that cleanup may take once a signal arrived: the process has to exit well within
/// Kubernetes' default 30 s grace period (and within 10 s by our own promise).
pub const SIGNAL_CLEANUP: Duration = Duration::from_millis(2500);

/// How the stored stream is compressed: the setting, with its level. The manifest records
/// the [`algorithm`](Compression::algorithm) and the [`level`](Compression::level).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// pg_dump's own gzip at this level (the old scripts used 6).
    Gzip(i32),
    /// pg_dump uncompressed, compressed in-process with zstd at this level.
    Zstd(i32),
    /// No compression.
    None,
}

impl Compression {
    /// The compression recorded in the manifest.
    pub fn algorithm(self) -> manifest::Compression {
        match self {
            Self::Gzip(_) => manifest::Compression::Gzip,
            Self::Zstd(_) => manifest::Compression::Zstd,
            Self::None => manifest::Compression::None,
        }
    }

    /// Level recorded in the manifest.
    pub fn level(self) -> Option<i32> {
        match self {
            Self::Gzip(l) | Self::Zstd(l) => Some(l),
            Self::None => None,
        }
    }

    /// `--compress` argument for pg_dump.
    fn pg_dump_level(self) -> i32 {
        match self {
            Self::Gzip(l) => l,
            _ => 0,
        }
    }
}

/// Key of the data object of backup `name`.
pub fn data_key(name: &str, compression: Compression, directory: bool, encrypted: bool) -> String {
    let base = if directory { ".tar" } else { ".dump" };
    let zst = if matches!(compression, Compression::Zstd(_)) {
        ".zst"
    } else {
        ""
    };
    let age = if encrypted { ".age" } else { "" };
    format!("{name}{base}{zst}{age}")
}

/// A storage target of a backup.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where.
    pub storage: Arc<dyn Storage>,
    /// When true, a failure of this target is reported but does not fail the backup.
    pub optional: bool,
}

/// What to back up and how.
pub struct BackupOptions {
    /// Backup name (validated).
    pub name: String,
    /// Compression (zstd runs in-process, see [`crate::codec::encoders`]).
    pub compression: Compression,
    /// Encryption; the manifest records its kind and public recipients.
    pub encryption: EncryptionConfig,
    /// Check free space on local targets first.
    pub space_check: bool,
    /// Estimated stored size as a fraction of `pg_database_size` (for the space check).
    pub space_ratio: f64,
    /// Count rows of every table in the dump's snapshot.
    pub row_counts: bool,
    /// Mark the backup pinned.
    pub pinned: bool,
    /// Extra `pg_dump` arguments that are not secrets (e.g. `--exclude-table`).
    pub extra_args: Vec<String>,
    /// [`Kind::Logical`], or [`Kind::Safety`] for the copy restore takes first. This
    /// pipeline runs pg_dump, so it refuses [`Kind::Physical`].
    pub kind: Kind,
    /// Told the stored bytes written so far.
    pub progress: Option<crate::util::Progress>,
    /// Parallel pg_dump jobs; more than 1 dumps in directory format (see the module docs).
    pub jobs: u32,
    /// Where a parallel dump is staged (default: the system's temporary directory).
    pub staging_dir: Option<std::path::PathBuf>,
    /// Total deadline of the cleanup after a failure (aborting uploads, deleting objects
    /// already committed); what is not done by then is left for `prune`.
    pub cleanup_timeout: Duration,
}

impl std::fmt::Debug for BackupOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupOptions")
            .field("name", &self.name)
            .field("compression", &self.compression)
            .field("encryption", &self.encryption.kind)
            .field("kind", &self.kind)
            .field("jobs", &self.jobs)
            .finish_non_exhaustive()
    }
}

impl BackupOptions {
    /// Defaults matching the old scripts: custom format, gzip level 6.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            compression: Compression::Gzip(6),
            encryption: EncryptionConfig::default(),
            space_check: true,
            space_ratio: 0.5,
            row_counts: true,
            pinned: false,
            extra_args: Vec::new(),
            kind: Kind::Logical,
            progress: None,
            jobs: 1,
            staging_dir: None,
            cleanup_timeout: Duration::from_secs(15),
        }
    }
}

/// Time left for cleanup: the configured deadline, shortened after a signal.
pub fn cleanup_budget(configured: Duration, cancel: &CancellationToken) -> Duration {
    if cancel.is_cancelled() {
        configured.min(SIGNAL_CLEANUP)
    } else {
        configured
    }
}

/// Run a cleanup step within `budget`; past it, give up with a warning that says what
/// `what` (e.g. "aborting the upload of …") leaves and who removes it (`then`).
pub async fn within<F: std::future::Future>(
    what: &str,
    then: &str,
    budget: Duration,
    fut: F,
) -> Option<F::Output> {
    match tokio::time::timeout(budget, fut).await {
        Ok(v) => Some(v),
        Err(_) => {
            warn!("Gave up {what} after {:.1}s: {then}", budget.as_secs_f64());
            None
        }
    }
}

/// What an upload that could not be aborted leaves.
const UPLOAD_LEFT: &str = "the incomplete upload is invisible, and `prune` removes it";

/// What a backup produced.
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    /// The manifest written to every committed target.
    pub manifest: Manifest,
    /// Targets that hold the backup (redacted URLs).
    pub committed: Vec<String>,
    /// Optional targets that failed, with the reason.
    pub failed_optional: Vec<(String, String)>,
    /// Wall time.
    pub duration: std::time::Duration,
}

/// Checks done before anything is written: tools, connection, versions.
#[derive(Debug)]
pub struct Preflight {
    /// pg_dump.
    pub pg_dump: Tool,
    /// Server facts.
    pub server: crate::stats::ServerInfo,
}

/// Find pg_dump, connect, compare versions.
pub async fn preflight(pg: &PgConfig) -> Result<(Preflight, tokio_postgres::Client)> {
    let pg_dump = find_tool("pg_dump", pg.bin_dir.as_deref()).await?;
    let client = pg.connect().await?;
    let server = crate::stats::server_info(&client).await?;
    check_tool_version(&pg_dump, server.major, "pg_dump")?;
    Ok((Preflight { pg_dump, server }, client))
}

/// Run one backup of `pg` (its configured database) to `targets`.
pub async fn run(
    pg: &PgConfig,
    targets: &[Target],
    opts: BackupOptions,
    cancel: CancellationToken,
) -> Result<BackupOutcome> {
    crate::name::validate(&opts.name)?;
    if targets.is_empty() {
        return Err(Error::usage("no storage target configured"));
    }
    let started = Instant::now();
    let started_at = Utc::now();
    info!("Starting backup: {}", opts.name);

    if opts.jobs == 0 {
        return Err(Error::usage("jobs must be at least 1"));
    }
    opts.kind
        .ensure_logical(&format!("backup {:?}", opts.name))?;
    let mut transforms = crate::codec::encoders(opts.compression, &opts.encryption)?;
    let directory = opts.jobs > 1;
    let (pre, client) = preflight(pg).await?;
    let data_key = data_key(
        &opts.name,
        opts.compression,
        directory,
        opts.encryption.enabled(),
    );
    let manifest_key = Manifest::key_for(&opts.name);

    // Never overwrite: refuse a name that exists (manifest or data) on any target. An
    // optional target that cannot be reached, or lacks space, is left out (and reported).
    let required_space = ((pre.server.database_size as f64) * opts.space_ratio) as u64;
    let mut active: Vec<Target> = Vec::with_capacity(targets.len());
    let mut skipped: Vec<(String, String)> = Vec::new();
    let names = [&manifest_key, &data_key];
    for t in targets {
        let checked = tokio::select! {
            r = precheck(
                t,
                &names,
                &opts.name,
                opts.space_check.then_some(required_space),
            ) => r,
            _ = cancel.cancelled() => return Err(Error::Interrupted("a signal".into())),
        };
        match checked {
            Ok(()) => active.push(t.clone()),
            Err(e) if t.optional && !matches!(e, Error::AlreadyExists(_)) => {
                warn!("Optional target {} left out: {e}", t.storage.url());
                skipped.push((t.storage.url(), e.to_string()));
            }
            Err(e) => return Err(e),
        }
    }
    if active.is_empty() {
        return Err(Error::other("no storage target is usable for this backup"));
    }
    let targets = &active[..];

    // A parallel dump is staged on local disk: check there is room for all of it.
    let staging = if directory {
        let base = opts.staging_dir.clone().unwrap_or_else(std::env::temp_dir);
        Some(crate::util::staging_dir(
            &base,
            opts.space_check.then_some(required_space),
            "staging of the parallel dump",
        )?)
    } else {
        None
    };

    // A REPEATABLE READ snapshot shared with pg_dump: the counts describe exactly what is dumped.
    // The counts run beside pg_dump: one backend, no parallel workers, so they take
    // a core at most from the dump they describe (they finish long before it does).
    client
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; \
             SET LOCAL max_parallel_workers_per_gather = 0",
        )
        .await
        .map_err(|e| db_error("starting the snapshot transaction", &e))?;
    let snapshot: String = client
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(|e| db_error("exporting the snapshot", &e))?
        .get(0);

    let mut cmd = pg.command(&pre.pg_dump.path, &pg.name);
    cmd.arg(format!("--compress={}", opts.compression.pg_dump_level()))
        .arg(format!("--snapshot={snapshot}"))
        .arg("--no-password")
        .args(&opts.extra_args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let dump_dir = staging.as_ref().map(|t| t.path().join("dump"));
    if let Some(dir) = &dump_dir {
        // English messages: the "finished item" lines tell which files are complete.
        cmd.arg("--format=directory")
            .arg(format!("--jobs={}", opts.jobs))
            .arg("--verbose")
            .arg("--file")
            .arg(dir)
            .env("LC_ALL", "C")
            .stdout(std::process::Stdio::null());
    } else {
        cmd.arg("--format=custom")
            .stdout(std::process::Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Tool(format!("cannot start {}: {e}", pre.pg_dump.path.display())))?;
    let (mut stderr_task, items) = if directory {
        let (task, rx) = follow_verbose_stderr(&mut child);
        (task, Some(rx))
    } else {
        (collect_stderr(&mut child), None)
    };

    let mut tasks: Vec<TargetTask> = targets
        .iter()
        .map(|t| {
            let cleanup = Cleanup {
                timeout: opts.cleanup_timeout,
                signal: cancel.clone(),
            };
            spawn_target(t.storage.clone(), data_key.clone(), t.optional, cleanup)
        })
        .collect();

    let counts_fut = async {
        let counts = crate::stats::object_counts(&client).await?;
        let tables = if opts.row_counts {
            crate::stats::table_counts(&client).await?
        } else {
            Vec::new()
        };
        Ok::<_, Error>((counts, tables))
    };

    let sink = Sink {
        transforms: &mut transforms,
        tasks: &mut tasks,
        hasher: Sha256::new(),
        size: 0,
        progress: opts.progress.clone(),
    };
    let pump = async {
        match (&dump_dir, items) {
            (Some(dir), Some(items)) => {
                pump_directory(&mut child, dir, items, &mut stderr_task, sink).await
            }
            _ => pump(&mut child, sink).await,
        }
    };
    let result = tokio::select! {
        r = async { tokio::try_join!(pump, counts_fut) } => r,
        _ = cancel.cancelled() => Err(Error::Interrupted("a signal".into())),
    };

    let (hash_size, (counts, tables)) = match result {
        Ok(v) => v,
        Err(e) => {
            tokio::join!(
                terminate(&mut child),
                abort_all(&mut tasks, cleanup_budget(opts.cleanup_timeout, &cancel))
            );
            return Err(e);
        }
    };
    let _ = client.batch_execute("COMMIT").await;

    let status = child
        .wait()
        .await
        .map_err(|e| Error::Tool(format!("waiting for pg_dump: {e}")))?;
    let stderr = stderr_task.await.unwrap_or_default();
    if !status.success() {
        abort_all(&mut tasks, cleanup_budget(opts.cleanup_timeout, &cancel)).await;
        return Err(Error::ChildFailed {
            tool: "pg_dump".into(),
            status: status.to_string(),
            stderr,
        });
    }
    let (sha256, size) = hash_size;
    if size == 0 {
        abort_all(&mut tasks, cleanup_budget(opts.cleanup_timeout, &cancel)).await;
        return Err(Error::other(
            "pg_dump produced no output; nothing was stored",
        ));
    }

    // Commit the data objects.
    let mut committed: Vec<(usize, ObjectMeta)> = Vec::new();
    let mut failed_optional = skipped;
    let mut failure: Option<Error> = None;
    for t in tasks.iter_mut() {
        if let Some(tx) = t.tx.take() {
            let _ = tx.send(Msg::Commit).await;
        }
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let res = t
            .handle
            .await
            .map_err(|e| Error::other(format!("upload task failed: {e}")));
        match res.and_then(|r| r) {
            Ok(Some(meta)) => committed.push((i, meta)),
            Ok(None) => {
                let msg = "upload stopped before the end of the stream".to_string();
                if t.optional {
                    failed_optional.push((t.url.clone(), msg));
                } else if failure.is_none() {
                    failure = Some(Error::other(format!("{}: {msg}", t.url)));
                }
            }
            Err(e) => {
                if t.optional {
                    warn!("Optional target {} failed: {e}", t.url);
                    failed_optional.push((t.url.clone(), e.to_string()));
                } else if failure.is_none() {
                    failure = Some(e);
                }
            }
        }
    }
    if failure.is_none() && cancel.is_cancelled() {
        failure = Some(Error::Interrupted("a signal".into()));
    }
    if let Some(e) = failure {
        let stores: Vec<_> = committed
            .iter()
            .map(|(i, _)| &targets[*i].storage)
            .collect();
        remove_all(&stores, &[&data_key], &opts, &cancel).await;
        return Err(e);
    }
    if committed.is_empty() {
        return Err(Error::other("no storage target committed the backup"));
    }

    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        name: opts.name.clone(),
        object: data_key.clone(),
        database: pg.name.clone(),
        server_version: pre.server.version.clone(),
        pg_dump_version: pre.pg_dump.version.clone(),
        format: if directory {
            Format::Directory
        } else {
            Format::Custom
        },
        compression: opts.compression.algorithm(),
        compression_level: opts.compression.level(),
        encryption: opts.encryption.kind,
        recipients: opts.encryption.public_recipients(),
        started_at,
        finished_at: Utc::now(),
        size_bytes: size,
        sha256,
        tool_version: crate::TOOL_VERSION.into(),
        pinned: opts.pinned,
        database_size_bytes: pre.server.database_size,
        encoding: Some(pre.server.encoding.clone()),
        lc_collate: Some(pre.server.lc_collate.clone()),
        lc_ctype: Some(pre.server.lc_ctype.clone()),
        tables,
        counts,
        host: Some(crate::util::hostname()),
        kind: Some(opts.kind),
    };
    let json = Bytes::from(manifest.to_json()?);
    let mut committed_urls = Vec::new();
    let mut manifest_failure = None;
    for (i, _) in &committed {
        let t = &targets[*i];
        let written = tokio::select! {
            r = put_bytes(t.storage.as_ref(), &manifest_key, json.clone()) => r,
            _ = cancel.cancelled() => Err(Error::Interrupted("a signal".into())),
        };
        match written {
            Ok(_) => committed_urls.push(t.storage.url()),
            Err(e @ Error::Interrupted(_)) => {
                manifest_failure = Some(e);
                break;
            }
            Err(e) if t.optional => {
                warn!(
                    "Optional target {} failed writing the manifest: {e}",
                    t.storage.url()
                );
                remove_all(&[&t.storage], &[&data_key], &opts, &cancel).await;
                failed_optional.push((t.storage.url(), e.to_string()));
            }
            Err(e) => {
                manifest_failure = Some(e);
                break;
            }
        }
    }
    if let Some(e) = manifest_failure {
        let stores: Vec<_> = committed
            .iter()
            .map(|(i, _)| &targets[*i].storage)
            .collect();
        // The manifest first: without it, nothing is visible as a backup.
        remove_all(&stores, &[&manifest_key, &data_key], &opts, &cancel).await;
        return Err(e);
    }
    Ok(BackupOutcome {
        manifest,
        committed: committed_urls,
        failed_optional,
        duration: started.elapsed(),
    })
}

/// Checks on one target before anything is written: the name is free, and there is room.
async fn precheck(
    t: &Target,
    keys: &[&String],
    name: &str,
    required_space: Option<u64>,
) -> Result<()> {
    for key in keys {
        if t.storage.head(key).await?.is_some() {
            return Err(Error::AlreadyExists(format!(
                "backup {name:?} already exists in {} ({key}); choose another name",
                t.storage.url()
            )));
        }
    }
    if let Some(required) = required_space
        && let Some(avail) = t.storage.available_space().await?
        && avail < required
    {
        return Err(Error::InsufficientSpace {
            available: human_size(avail),
            required: human_size(required),
            location: t.storage.url(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn data_keys_name_format_compression_and_encryption() {
        let g = Compression::Gzip(6);
        let z = Compression::Zstd(3);
        assert_eq!(data_key("b", g, false, false), "b.dump");
        assert_eq!(data_key("b", z, false, true), "b.dump.zst.age");
        assert_eq!(data_key("b", g, true, false), "b.tar");
        assert_eq!(data_key("b", z, true, true), "b.tar.zst.age");
        assert_eq!(data_key("b", Compression::None, true, false), "b.tar");
    }
}
