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
//! [`run`] reads as its phases: check the options, preflight (tools, connection,
//! versions), choose the targets (the name is free, there is room), stage (parallel
//! dumps), export the snapshot, start pg_dump, stream it while counting, finish the
//! dump, then the commit protocol of `backup/commit.rs` (data on every target, the
//! manifest last, or a rollback), which does not care what produced the bytes.
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

mod commit;
mod directory;
mod dump;
mod fanout;
mod physical;
mod pipe;
mod process;
mod settings;
mod targets;

use commit::*;
use directory::*;
use dump::*;
use fanout::*;
pub use physical::run_physical;
use pipe::PipeChunks;
pub use process::{collect_stderr, terminate};
pub use settings::BackupSettings;
use targets::*;

/// Size of each read of a parallel dump's files (pipes: `pipe::PIPE_CHUNK`).
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

/// Builds the transform chain of one backup (compression, then encryption).
pub type TransformFactory = Box<dyn Fn() -> Result<Vec<Box<dyn Transform>>> + Send + Sync>;

/// What to back up and how: the configured [`BackupSettings`] and the parts only a
/// run knows (name, transforms, progress).
pub struct BackupOptions {
    /// Backup name (validated).
    pub name: String,
    /// What `[backup]` configures.
    pub settings: BackupSettings,
    /// Compression (from the settings, see [`BackupOptions::with_settings`]).
    pub compression: Compression,
    /// Encryption; the manifest records its kind and public recipients.
    pub encryption: EncryptionConfig,
    /// Mark the backup pinned.
    pub pinned: bool,
    /// [`Kind::Logical`], or [`Kind::Safety`] for the copy restore takes first; physical
    /// backups run [`run_physical`].
    pub kind: Kind,
    /// Told the stored bytes written so far.
    pub progress: Option<crate::util::Progress>,
    /// Total deadline of the cleanup after a failure (aborting uploads, deleting objects
    /// already committed); what is not done by then is left for `prune`.
    pub cleanup_timeout: Duration,
    /// Sign the manifest with this key (`[integrity] signing_key`).
    pub signing_key: Option<crate::signing::SigningKey>,
}

impl std::fmt::Debug for BackupOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupOptions")
            .field("name", &self.name)
            .field("compression", &self.compression)
            .field("encryption", &self.encryption.kind)
            .field("kind", &self.kind)
            .field("settings", &self.settings)
            .field("signed", &self.signing_key.is_some())
            .finish_non_exhaustive()
    }
}

impl BackupOptions {
    /// Defaults matching the old scripts: custom format, gzip level 6.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            settings: BackupSettings::default(),
            compression: Compression::Gzip(6),
            encryption: EncryptionConfig::default(),
            pinned: false,
            kind: Kind::Logical,
            progress: None,
            cleanup_timeout: Duration::from_secs(15),
            signing_key: None,
        }
    }

    /// Options for backup `name` with configured `settings` (a compression level out of
    /// range is a configuration error).
    pub fn with_settings(name: impl Into<String>, settings: BackupSettings) -> Result<Self> {
        Ok(Self {
            compression: settings.compression()?,
            settings,
            ..Self::new(name)
        })
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

/// Run one backup of `pg` (its configured database) to `targets`. Each step is one
/// phase below; a failure after the uploads started aborts them, and a failure after
/// the data was committed removes it again (the commit protocol, `backup/commit.rs`).
pub async fn run(
    pg: &PgConfig,
    targets: &[Target],
    opts: BackupOptions,
    cancel: CancellationToken,
) -> Result<BackupOutcome> {
    check_options(&opts, targets)?;
    let started = Instant::now();
    let started_at = Utc::now();
    info!("Starting backup: {}", opts.name);
    let (pre, client) = preflight(pg).await?;
    let plan = Plan::new(&opts, &pre);
    let mut transforms = crate::codec::encoders(opts.compression, &opts.encryption)?;
    let (targets, skipped) = choose_targets(targets, &plan, &opts.name, &cancel).await?;
    let staging = plan.staging(&opts)?;
    let snapshot = export_snapshot(&client).await?;
    let mut dump = Dump::spawn(pg, &pre.pg_dump, &opts, &snapshot, staging)?;
    let mut upload = Upload::start(
        &targets,
        &plan.data_key,
        skipped,
        opts.cleanup_timeout,
        &cancel,
    );
    let dumped = match stream_and_count(
        &mut dump,
        &mut upload,
        &client,
        &opts,
        &mut transforms,
        &cancel,
    )
    .await
    {
        Ok(d) => d,
        Err(e) => {
            tokio::join!(dump.terminate(), upload.abort());
            return Err(e);
        }
    };
    end_snapshot(&client).await;
    if let Err(e) = finish_dump(dump, &dumped).await {
        upload.abort().await;
        return Err(e);
    }
    let roles = match roles_object(&client, &opts).await {
        Ok(r) => r,
        Err(e) => {
            upload.abort().await;
            return Err(e);
        }
    };
    let mut committed = upload.commit_data().await?;
    committed.write_side(&roles.0.object, roles.1).await?;
    let mut manifest = manifest(pg, &pre, &opts, &plan, started_at, dumped);
    manifest.roles = Some(roles.0);
    let stored = committed
        .write_manifest(&mut manifest, opts.signing_key.as_ref())
        .await?;
    Ok(BackupOutcome {
        manifest,
        committed: stored.committed,
        failed_optional: stored.failed_optional,
        duration: started.elapsed(),
    })
}

/// Phase: refuse options that cannot work, before anything is touched.
fn check_options(opts: &BackupOptions, targets: &[Target]) -> Result<()> {
    crate::name::validate(&opts.name)?;
    if targets.is_empty() {
        return Err(Error::usage("no storage target configured"));
    }
    if opts.settings.jobs == 0 {
        return Err(Error::usage("jobs must be at least 1"));
    }
    opts.kind.ensure_logical(&format!("backup {:?}", opts.name))
}

/// What one run writes, decided before anything is written.
#[derive(Debug)]
struct Plan {
    /// A parallel dump in directory format, carried as a tar archive.
    directory: bool,
    /// Key of the data object.
    data_key: String,
    /// Key of the manifest.
    manifest_key: String,
    /// Free space to ask of local targets and of the staging directory, if checked.
    required_space: Option<u64>,
}

impl Plan {
    fn new(opts: &BackupOptions, pre: &Preflight) -> Self {
        let directory = opts.settings.jobs > 1;
        let required = ((pre.server.database_size as f64) * opts.settings.space_ratio) as u64;
        Self {
            directory,
            data_key: data_key(
                &opts.name,
                opts.compression,
                directory,
                opts.encryption.enabled(),
            ),
            manifest_key: Manifest::key_for(&opts.name),
            required_space: opts.settings.space_check.then_some(required),
        }
    }

    /// Phase: a parallel dump is staged on local disk; check there is room for all of it.
    fn staging(&self, opts: &BackupOptions) -> Result<Option<tempfile::TempDir>> {
        if !self.directory {
            return Ok(None);
        }
        let base = opts
            .settings
            .staging_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        crate::util::staging_dir(&base, self.required_space, "staging of the parallel dump")
            .map(Some)
    }
}

/// Phase: the roles the database needs (see [`crate::pg::roles`]), encrypted like the
/// data when encryption is on (they may hold password verifiers).
async fn roles_object(
    client: &tokio_postgres::Client,
    opts: &BackupOptions,
) -> Result<(manifest::RolesInfo, Bytes)> {
    let set = crate::pg::roles::capture(client).await?;
    if !set.passwords {
        info!(
            "Roles: {} recorded without password hashes (the backup role may not read pg_authid)",
            set.roles.len()
        );
    }
    let json = set.to_json()?;
    let mut chain = crate::codec::encoders(Compression::None, &opts.encryption)?;
    let stored = crate::transform::encode_all(&mut chain, &json)?;
    let object = roles_key(&opts.name, opts.encryption.enabled());
    Ok((
        manifest::RolesInfo {
            object,
            sha256: hex::encode(Sha256::digest(&stored)),
            size_bytes: stored.len() as u64,
            count: set.roles.len(),
            passwords: set.passwords,
        },
        Bytes::from(stored),
    ))
}

/// Key of the roles object of backup `name`.
pub fn roles_key(name: &str, encrypted: bool) -> String {
    format!("{name}.roles.json{}", if encrypted { ".age" } else { "" })
}

/// Phase: the manifest of the backup that was just committed.
fn manifest(
    pg: &PgConfig,
    pre: &Preflight,
    opts: &BackupOptions,
    plan: &Plan,
    started_at: chrono::DateTime<Utc>,
    dumped: Dumped,
) -> Manifest {
    let directory = plan.directory;
    Manifest {
        format_version: FORMAT_VERSION,
        name: opts.name.clone(),
        object: plan.data_key.clone(),
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
        size_bytes: dumped.size,
        sha256: dumped.sha256,
        tool_version: crate::TOOL_VERSION.into(),
        pinned: opts.pinned,
        database_size_bytes: pre.server.database_size,
        encoding: Some(pre.server.encoding.clone()),
        lc_collate: Some(pre.server.lc_collate.clone()),
        lc_ctype: Some(pre.server.lc_ctype.clone()),
        locale_provider: pre.server.locale_provider.clone(),
        locale: pre.server.locale.clone(),
        tables: dumped.tables,
        counts: dumped.counts,
        row_count_source: dumped.row_count_source,
        sequences: dumped.sequences,
        host: Some(crate::util::hostname()),
        kind: Some(opts.kind),
        physical: None,
        roles: None,
        signature: None,
    }
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

    #[test]
    fn options_that_cannot_work_are_usage_errors() {
        let one = [Target {
            storage: Arc::new(crate::testing::MemoryStorage::new("a")),
            optional: false,
        }];
        let mut opts = BackupOptions::new("b1");
        assert!(check_options(&opts, &one).is_ok());
        assert_eq!(check_options(&opts, &[]).unwrap_err().exit_code(), 2);
        opts.settings.jobs = 0;
        let err = check_options(&opts, &one).unwrap_err();
        assert_eq!(err.to_string(), "jobs must be at least 1");
        let opts = BackupOptions::new("../b1");
        assert_eq!(check_options(&opts, &one).unwrap_err().exit_code(), 2);
    }
}
