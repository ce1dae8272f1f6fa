//! The restore pipeline: never leaves the target half-restored.
//!
//! The archive is streamed from storage into a fresh temporary database while its
//! SHA-256 is computed. Only when `pg_restore` succeeded *and* the checksum equals the
//! manifest's is the temporary database swapped in for the target (connections
//! terminated, old one renamed away, new one renamed in, all in one transaction; then the
//! old one dropped). On any failure the temporary database is dropped and the target is
//! exactly as before; a run killed at any step leaves the target usable, and what it
//! left is dropped by the next run (see [`crate::claim`]).

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backup::{collect_stderr, terminate};
use crate::catalog::Resolved;
use crate::claim::{self, Temporary};
use crate::error::{Error, Result};
use crate::manifest::Compression;
use crate::pg::{PgConfig, Tool, check_tool_version, find_tool};
use crate::storage::ByteStream;
use crate::util::{HashState, digest};

mod database;
mod roles_object;
mod settings;

use database::swap_in;
pub use database::{
    check_target, create_database, database_exists, drop_database, inspect_target, temp_db_name,
};
pub use roles_object::{create_missing_roles, decode_roles, load_roles, read_roles_object};
pub use settings::{RestoreSettings, RolesMode};

pub use crate::codec::Decoder;

/// How to restore: the configured [`RestoreSettings`] and the parts only a run knows.
pub struct RestoreOptions {
    /// Database to create or replace.
    pub target_db: String,
    /// What `[restore]` configures (jobs, owner, role, temporary directory).
    pub settings: RestoreSettings,
    /// Decoding of the stored stream, if it is compressed or encrypted by us (see
    /// [`crate::codec::decoder_for`]).
    pub decoder: Option<Decoder>,
    /// Whether an existing target may be replaced.
    pub allow_replace: bool,
    /// Told the stored bytes read so far.
    pub progress: Option<crate::util::Progress>,
    /// The roles the backup needs (see [`load_roles`]); with `settings.roles = missing`
    /// the ones the server lacks are created first, and the database's role settings are
    /// applied to the target.
    pub roles: Option<crate::pg::roles::RoleSet>,
}

impl std::fmt::Debug for RestoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreOptions")
            .field("target_db", &self.target_db)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RestoreOptions {
    /// Defaults: one job, owners kept, no decoding.
    pub fn new(target_db: impl Into<String>) -> Self {
        Self {
            target_db: target_db.into(),
            settings: RestoreSettings::default(),
            decoder: None,
            allow_replace: false,
            progress: None,
            roles: None,
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreOutcome {
    /// The target database.
    pub target_db: String,
    /// Whether an existing database was replaced.
    pub replaced: bool,
    /// Whether the checksum was verified (false for bare files without manifest).
    pub checksum_verified: bool,
    /// Bytes read from storage.
    pub size_bytes: u64,
    /// Wall time.
    pub duration: Duration,
}

/// Result of loading an archive into a database.
#[derive(Debug, Clone)]
pub struct LoadStats {
    /// SHA-256 (hex) of the stored bytes read.
    pub sha256: String,
    /// Stored bytes read.
    pub size: u64,
}

/// Locate pg_restore and check it against the server.
pub async fn pg_restore_tool(pg: &PgConfig, admin: &Client) -> Result<Tool> {
    let tool = find_tool("pg_restore", pg.bin_dir.as_deref()).await?;
    let info = crate::stats::server_info(admin).await?;
    check_tool_version(&tool, info.major, "pg_restore")?;
    Ok(tool)
}

/// Stream `resolved` into the existing, empty database `dbname` with pg_restore,
/// checking the checksum against the manifest. Fails with [`Error::Corrupt`] on a
/// mismatch (the caller drops `dbname`).
pub async fn load(
    pg: &PgConfig,
    pg_restore: &Tool,
    resolved: &Resolved,
    dbname: &str,
    opts: &mut RestoreOptions,
    cancel: &CancellationToken,
) -> Result<LoadStats> {
    resolved.ensure_logical()?;
    let stored = resolved.storage.get(&resolved.data_key).await?;
    let (tap, hash) = crate::util::hash_tap(stored, opts.progress.clone());
    let plain = match opts.decoder.take() {
        Some(d) => d(tap)?,
        None => tap,
    };

    let mut cmd = pg_restore_command(pg, pg_restore, dbname, &opts.settings);
    if resolved.is_directory() {
        let (staging, dir) = unpack_directory(plain, resolved, &hash, opts, cancel).await?;
        cmd.arg("--format=directory")
            .arg(format!("--jobs={}", opts.settings.jobs.max(1)))
            .arg(&dir)
            .stdin(std::process::Stdio::null());
        let result = run_pg_restore(cmd, None, resolved, &hash, cancel, None).await;
        drop(staging);
        return result;
    }
    if opts.settings.jobs <= 1 {
        cmd.arg("--format=custom")
            .stdin(std::process::Stdio::piped());
        return run_pg_restore(cmd, Some(plain), resolved, &hash, cancel, None).await;
    }
    // Parallel restore needs a seekable file.
    let tmp = download_custom(plain, resolved, &hash, opts).await?;
    crate::util::pause_point("restore-downloaded").await;
    cmd.arg(format!("--jobs={}", opts.settings.jobs))
        .arg(tmp.path())
        .stdin(std::process::Stdio::null());
    run_pg_restore(cmd, None, resolved, &hash, cancel, Some(tmp)).await
}

/// pg_restore into `dbname` with the configured owner and role options; the caller adds
/// the input.
pub(crate) fn pg_restore_command(
    pg: &PgConfig,
    pg_restore: &Tool,
    dbname: &str,
    settings: &RestoreSettings,
) -> tokio::process::Command {
    let mut cmd = pg.command(&pg_restore.path, dbname);
    cmd.arg(format!("--dbname={dbname}"))
        .arg("--exit-on-error")
        .arg("--no-password");
    if settings.no_owner {
        cmd.arg("--no-owner");
    }
    if let Some(role) = &settings.role {
        cmd.arg(format!("--role={role}"));
    }
    cmd
}

/// An archive on local disk, read whole and its checksum proven: what pg_restore needs
/// to seek in (parallel jobs, a selection of entries).
pub(crate) enum LocalArchive {
    /// A custom-format archive, decoded (removed when dropped).
    Custom(tempfile::NamedTempFile),
    /// A directory-format dump unpacked into `dir` inside `staging` (removed when dropped).
    Directory {
        /// Kept for its removal on drop.
        _staging: tempfile::TempDir,
        /// The dump directory (holds `toc.dat`).
        dir: std::path::PathBuf,
    },
}

impl LocalArchive {
    /// What pg_restore is given.
    pub(crate) fn path(&self) -> &std::path::Path {
        match self {
            Self::Custom(f) => f.path(),
            Self::Directory { dir, .. } => dir,
        }
    }
}

/// Read `resolved` whole onto local disk (decoded), proving its checksum before returning.
pub(crate) async fn fetch_local(
    resolved: &Resolved,
    opts: &mut RestoreOptions,
    cancel: &CancellationToken,
) -> Result<(LocalArchive, HashState)> {
    resolved.ensure_logical()?;
    let stored = resolved.storage.get(&resolved.data_key).await?;
    let (tap, hash) = crate::util::hash_tap(stored, opts.progress.clone());
    let plain = match opts.decoder.take() {
        Some(d) => d(tap)?,
        None => tap,
    };
    let local = if resolved.is_directory() {
        let (staging, dir) = unpack_directory(plain, resolved, &hash, opts, cancel).await?;
        LocalArchive::Directory {
            _staging: staging,
            dir,
        }
    } else {
        let download = download_custom(plain, resolved, &hash, opts);
        let file = tokio::select! {
            r = download => r?,
            _ = cancel.cancelled() => return Err(Error::Interrupted("a signal".into())),
        };
        LocalArchive::Custom(file)
    };
    Ok((local, hash))
}

/// Write a custom-format archive to a temporary file (removed when dropped, whatever
/// happens) and check its checksum.
async fn download_custom(
    plain: ByteStream,
    resolved: &Resolved,
    hash: &HashState,
    opts: &RestoreOptions,
) -> Result<tempfile::NamedTempFile> {
    let dir = opts
        .settings
        .temp_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix(&crate::util::owned_prefix(crate::leftovers::RESTORE_PREFIX))
        .tempfile_in(&dir)
        .map_err(|e| Error::io(format!("creating a temporary file in {}", dir.display()), e))?;
    let path = tmp.path().to_path_buf();
    let file = tmp
        .reopen()
        .map_err(|e| Error::io("opening temporary file", e))?;
    let mut out = tokio::fs::File::from_std(file);
    let mut s = plain;
    let mut first = true;
    while let Some(chunk) = s.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                // A changed object explains a broken stream (a wrong key, a bad frame).
                check_checksum_if_whole(resolved, hash)?;
                return Err(e);
            }
        };
        if first {
            check_header(&chunk)?;
            first = false;
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    out.flush()
        .await
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    check_checksum(resolved, hash)?;
    if first {
        return Err(Error::Corrupt("the backup is empty".into()));
    }
    Ok(tmp)
}

/// Directory format: unpack the archive into a staging directory (checking free space
/// first) and check the checksum. Returns the staging directory and the dump in it.
async fn unpack_directory(
    plain: ByteStream,
    resolved: &Resolved,
    hash: &HashState,
    opts: &RestoreOptions,
    cancel: &CancellationToken,
) -> Result<(tempfile::TempDir, std::path::PathBuf)> {
    let base = opts
        .settings
        .temp_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    // Unpacked size: the stored size when pg_dump compressed the files itself; with
    // zstd/none on the stream, the dump is uncompressed, bounded by the database size.
    let required = resolved.manifest.as_ref().map(|m| match m.compression {
        Compression::Gzip => m.size_bytes,
        Compression::Zstd | Compression::None => m
            .size_bytes
            .max(u64::try_from(m.database_size_bytes).unwrap_or(0)),
    });
    let staging = crate::util::staging_dir(&base, required, "unpacking the parallel dump")?;
    let dir = staging.path().join("dump");
    tokio::fs::create_dir(&dir)
        .await
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let unpacked = tokio::select! {
        r = crate::tar::unpack(plain, &dir, |_| true) => r,
        _ = cancel.cancelled() => return Err(Error::Interrupted("a signal".into())),
    };
    match unpacked {
        Ok(names) => {
            check_checksum(resolved, hash)?;
            if !names.iter().any(|n| n == "toc.dat") {
                return Err(Error::Corrupt(format!(
                    "{} has no toc.dat: not a directory-format dump",
                    resolved.data_key
                )));
            }
        }
        Err(e) => {
            // A changed object explains a broken archive; a short read is the archive's error.
            check_checksum_if_whole(resolved, hash)?;
            return Err(e);
        }
    }
    Ok((staging, dir))
}

/// After a failed read: when every byte the manifest announced was read, a checksum
/// mismatch is the explanation to report.
fn check_checksum_if_whole(resolved: &Resolved, hash: &HashState) -> Result<()> {
    if let Some(m) = &resolved.manifest {
        let (sha, size) = digest(hash);
        if size == m.size_bytes && sha != m.sha256 {
            check_checksum(resolved, hash)?;
        }
    }
    Ok(())
}

pub(crate) async fn run_pg_restore(
    mut cmd: tokio::process::Command,
    input: Option<ByteStream>,
    resolved: &Resolved,
    hash: &HashState,
    cancel: &CancellationToken,
    _tmpfile: Option<tempfile::NamedTempFile>,
) -> Result<LoadStats> {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Tool(format!("cannot start pg_restore: {e}")))?;
    let stderr_task = collect_stderr(&mut child);
    let stdin = child.stdin.take();
    let feed = async {
        let (Some(mut stdin), Some(mut s)) = (stdin, input) else {
            return Ok::<(), Error>(());
        };
        crate::util::widen_pipe(&stdin);
        let mut first = true;
        let mut pipe_open = true;
        while let Some(chunk) = s.next().await {
            let chunk: Bytes = chunk?;
            if first {
                check_header(&chunk)?;
                first = false;
            }
            if pipe_open && stdin.write_all(&chunk).await.is_err() {
                // pg_restore stopped reading (finished or failed): keep hashing the rest.
                pipe_open = false;
            }
        }
        if first {
            return Err(Error::Corrupt("the backup is empty".into()));
        }
        drop(stdin);
        Ok(())
    };
    let res = tokio::select! {
        r = async {
            let fed = feed.await;
            let status = child.wait().await.map_err(|e| Error::Tool(format!("waiting for pg_restore: {e}")));
            (fed, status)
        } => Some(r),
        _ = cancel.cancelled() => None,
    };
    let Some((fed, status)) = res else {
        terminate(&mut child).await;
        return Err(Error::Interrupted("a signal".into()));
    };
    let stderr = stderr_task.await.unwrap_or_default();
    // A checksum mismatch explains everything else: report it first.
    if resolved.manifest.is_some() {
        check_checksum(resolved, hash)?;
    }
    fed?;
    let status = status?;
    if !status.success() {
        if resolved.manifest.is_none() && looks_corrupt(&stderr) {
            return Err(Error::Corrupt(stderr));
        }
        return Err(Error::ChildFailed {
            tool: "pg_restore".into(),
            status: status.to_string(),
            stderr,
        });
    }
    let (sha256, size) = digest(hash);
    Ok(LoadStats { sha256, size })
}

fn looks_corrupt(stderr: &str) -> bool {
    [
        "input file",
        "archive",
        "unexpected end",
        "could not read",
        "not a valid",
        "corrupt",
    ]
    .iter()
    .any(|p| stderr.contains(p))
}

fn check_checksum(resolved: &Resolved, hash: &HashState) -> Result<()> {
    let Some(m) = &resolved.manifest else {
        return Ok(());
    };
    let (sha, size) = digest(hash);
    if size != m.size_bytes {
        return Err(Error::Corrupt(format!(
            "{} is {size} bytes, the manifest says {} (truncated or replaced)",
            resolved.data_key, m.size_bytes
        )));
    }
    if sha != m.sha256 {
        return Err(Error::Corrupt(format!(
            "checksum mismatch for {}: SHA-256 {sha}, manifest {}",
            resolved.data_key, m.sha256
        )));
    }
    Ok(())
}

/// The custom-format archive starts with `PGDMP`.
pub fn check_header(first: &[u8]) -> Result<()> {
    if first.len() >= 5 && &first[..5] == b"PGDMP" {
        Ok(())
    } else {
        Err(Error::Corrupt(
            "not a PostgreSQL custom-format archive (no PGDMP header)".into(),
        ))
    }
}

/// Set the sequences pg_dump does not carry (extension members that are not extension
/// configuration, e.g. PostGIS's `topology.topology_id_seq`) to the values the manifest
/// recorded, in the database `client` is connected to. Returns their names.
pub async fn set_skipped_sequences(
    client: &Client,
    manifest: &crate::manifest::Manifest,
) -> Result<Vec<String>> {
    let mut set = Vec::new();
    for s in manifest.sequences.iter().filter(|s| !s.dumped) {
        let name = format!(
            "{}.{}",
            crate::pg::quote_ident(&s.schema),
            crate::pg::quote_ident(&s.name)
        );
        let exists = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .await
            .map_err(|e| crate::pg::db_error(format!("looking up sequence {name}"), &e))?
            .get::<_, bool>(0);
        if !exists {
            warn!(
                "Sequence {name} (of extension {}) is not in the restored database: its value {} is not set",
                s.extension.as_deref().unwrap_or("?"),
                s.last_value
            );
            continue;
        }
        client
            .query_one(
                "SELECT setval($1::text::regclass, $2, $3)",
                &[&name, &s.last_value, &s.is_called],
            )
            .await
            .map_err(|e| crate::pg::db_error(format!("setting sequence {name}"), &e))?;
        set.push(format!("{}.{}", s.schema, s.name));
    }
    if !set.is_empty() {
        info!(
            "Set {} extension-owned sequence(s) that pg_dump does not carry to their backed-up values: {}",
            set.len(),
            set.join(", ")
        );
    }
    Ok(set)
}

/// Restore `resolved` into `opts.target_db`, creating it or replacing it atomically.
pub async fn run(
    pg: &PgConfig,
    resolved: &Resolved,
    mut opts: RestoreOptions,
    cancel: CancellationToken,
) -> Result<RestoreOutcome> {
    resolved.ensure_logical()?;
    let started = Instant::now();
    let target = opts.target_db.clone();
    let mut admin = pg.connect_to(&pg.maintenance_db).await?;
    check_target(&admin, pg, &target).await?;
    if let Err(e) = claim::drop_leftovers(&admin).await {
        warn!("Could not look for databases left by interrupted runs: {e}");
    }
    let tool = pg_restore_tool(pg, &admin).await?;
    let exists = database_exists(&admin, &target).await?;
    if exists && !opts.allow_replace {
        return Err(Error::Refused(format!(
            "database {target} exists and replacing it was not allowed"
        )));
    }
    if resolved.manifest.is_none() {
        warn!(
            "{} has no manifest: its checksum cannot be checked",
            resolved.data_key
        );
    }

    // Roles first: a role that cannot be created stops the restore before the target
    // is touched; created ones are dropped again if the restore fails.
    let created = create_missing_roles(&mut admin, &opts).await?;

    // Claimed before it exists, released once it is gone or renamed: a copy whose
    // claim is free was left by a run that died, and the next run drops it.
    let temp = match claim::claim_new_name(&admin, Temporary::Restore, &target).await {
        Ok(t) => t,
        Err(e) => {
            crate::pg::roles::drop_created(&admin, &created).await;
            return Err(e);
        }
    };
    info!("Restoring {} into temporary database {temp}", resolved.name);
    let result = restore_via(
        pg, &admin, &tool, resolved, &temp, &mut opts, exists, &cancel,
    )
    .await;
    claim::release(&admin, &temp).await;
    let stats = match result {
        Ok(s) => s,
        Err(e) => {
            crate::pg::roles::drop_created(&admin, &created).await;
            return Err(e);
        }
    };

    Ok(RestoreOutcome {
        target_db: target,
        replaced: exists,
        checksum_verified: resolved.manifest.is_some(),
        size_bytes: stats.size,
        duration: started.elapsed(),
    })
}

/// Create `temp`, load it and swap it in; on failure `temp` is dropped.
#[allow(clippy::too_many_arguments)]
async fn restore_via(
    pg: &PgConfig,
    admin: &Client,
    tool: &Tool,
    resolved: &Resolved,
    temp: &str,
    opts: &mut RestoreOptions,
    exists: bool,
    cancel: &CancellationToken,
) -> Result<LoadStats> {
    create_database(admin, temp, resolved.manifest.as_ref()).await?;
    let loaded = match load(pg, tool, resolved, temp, opts, cancel).await {
        Ok(_) if cancel.is_cancelled() => Err(Error::Interrupted("a signal".into())),
        r => r,
    };
    let loaded = match (loaded, &resolved.manifest) {
        (Ok(stats), Some(m)) if m.sequences.iter().any(|s| !s.dumped) => {
            match pg.connect_to(temp).await {
                Ok(c) => set_skipped_sequences(&c, m).await.map(|_| stats),
                Err(e) => Err(e),
            }
        }
        (r, _) => r,
    };
    // The database's own settings (ALTER DATABASE / ALTER ROLE … IN DATABASE … SET) go
    // with it: set on the copy before the swap (a rename keeps them).
    if loaded.is_ok()
        && let Some(set) = &opts.roles
    {
        if let Err(e) = crate::pg::roles::apply_database_settings(admin, set, temp).await {
            warn!("Could not apply the database's settings: {e}");
        }
        if let Err(e) =
            crate::pg::roles::apply_database_properties(admin, set, temp, opts.settings.no_owner)
                .await
        {
            warn!("Could not apply the database's owner, privileges and comment: {e}");
        }
    }
    let swapped = match loaded {
        Ok(stats) => swap_in(admin, temp, &opts.target_db, exists)
            .await
            .map(|()| stats),
        Err(e) => Err(e),
    };
    if swapped.is_err()
        && let Err(de) = drop_database(admin, temp).await
    {
        warn!("Could not drop temporary database {temp}: {de}; the next run drops it");
    }
    swapped
}
