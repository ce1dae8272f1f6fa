//! The checks of a physical backup after `file`: `backup_manifest`, `recovery`, `tables`.
//!
//! ```text
//! stored object ─▶ age ─▶ zstd ─▶ untar into a private scratch directory
//!   backup_manifest   pg_verifybackup: every file and the backup's WAL as the server listed them
//!   (--quick stops here)
//!   recovery          the backup's WAL fetched from the archive (checksums checked) replaces
//!                     its own copy; a temporary server recovers to the end of the backup,
//!                     promotes, and reports the backup's system identifier
//!   tables            every table of every database is read (row counts recorded)
//! ```
//!
//! The server runs only on a socket in the scratch directory and is stopped, and the
//! directory deleted, whatever happens; a verify killed with SIGKILL takes its server
//! with it, and the next run removes the directory (see [`backup_core::leftovers`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backup_core::codec::{DecryptKeys, decoder_for};
use backup_core::manifest::{Manifest, PhysicalInfo};
use backup_core::pg::server::{self, ServerSpec, TempServer};
use backup_core::recovery::{self, RecoveryTarget};
use backup_core::wal::{Lsn, segment_name};
use backup_core::{CheckResult, Error, Result, Storage, Verifier, VerifyContext, walarchive};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::result;

/// How long the temporary server may take to recover to the end of the backup.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// Unpacks a physical backup, checks it with `pg_verifybackup` and (unless `quick`)
/// recovers it in a temporary server and reads every table.
pub struct PhysicalCheck {
    /// Stop after `backup_manifest`.
    pub quick: bool,
    /// Stops the drill (the server is still stopped and the directory deleted).
    pub cancel: CancellationToken,
    /// Keys for an encrypted backup and its WAL.
    pub keys: DecryptKeys,
    /// Where the scratch directory goes (the system's temporary directory if `None`).
    pub temp_dir: Option<PathBuf>,
}

impl std::fmt::Debug for PhysicalCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhysicalCheck")
            .field("quick", &self.quick)
            .finish_non_exhaustive()
    }
}

/// The scratch directory: `pgdata/`, the fetched WAL in `archive/`, the socket in `s/`.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new(base: Option<&Path>) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let base = base.map_or_else(std::env::temp_dir, Path::to_path_buf);
        std::fs::create_dir_all(&base)
            .map_err(|e| Error::io(format!("cannot create {}", base.display()), e))?;
        let dir = tempfile::Builder::new()
            .prefix(&backup_core::util::owned_prefix(
                backup_core::leftovers::RESTORE_PREFIX,
            ))
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(&base)
            .map_err(|e| {
                Error::io(
                    format!("cannot create a scratch directory in {}", base.display()),
                    e,
                )
            })?;
        mkdir(&dir.path().join("archive"))?;
        Ok(Self { dir })
    }

    fn pgdata(&self) -> PathBuf {
        self.dir.path().join("pgdata")
    }

    fn archive(&self) -> PathBuf {
        self.dir.path().join("archive")
    }
}

fn mkdir(p: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(p)
        .map_err(|e| Error::io(format!("cannot create {}", p.display()), e))
}

#[async_trait]
impl Verifier for PhysicalCheck {
    fn name(&self) -> &'static str {
        "physical"
    }

    async fn verify(&self, ctx: &VerifyContext) -> Result<Vec<CheckResult>> {
        let Some(m) = &ctx.manifest else {
            return Err(Error::usage(
                "a physical backup is verified from its manifest",
            ));
        };
        let Some(info) = &m.physical else {
            return Err(Error::Corrupt(format!(
                "the manifest of {:?} says physical but records no WAL positions",
                m.name
            )));
        };
        let scratch = Scratch::new(self.temp_dir.as_deref())?;
        let pgdata = scratch.pgdata();
        let started = Instant::now();
        let mut out = Vec::new();

        // backup_manifest: unpack, then pg_verifybackup.
        recovery::create_target_dir(&pgdata)?;
        if let Err(e) = unpack(ctx.storage.as_ref(), m, &self.keys, &pgdata).await {
            out.push(result("backup_manifest", false, e.to_string(), started));
            return Ok(out);
        }
        let major = server::data_dir_major(&pgdata)?;
        let bin_dir = ctx.pg.as_ref().and_then(|p| p.bin_dir.clone());
        let (passed, detail) = pg_verifybackup(&pgdata, bin_dir.as_deref(), major).await?;
        out.push(result("backup_manifest", passed, detail, started));
        if !passed || self.quick {
            return Ok(out);
        }

        // recovery: the archive's WAL, a temporary server, promoted at the backup's end.
        let started = Instant::now();
        let source = match stage_wal(ctx.wal.as_ref(), info, &self.keys, &scratch).await {
            Ok(s) => s,
            Err(e @ (Error::Corrupt(_) | Error::NotFound(_) | Error::Storage { .. })) => {
                out.push(result("recovery", false, e.to_string(), started));
                return Ok(out);
            }
            Err(e) => return Err(e),
        };
        let spec = prepare_drill(&scratch, bin_dir.as_deref()).await?;
        let users = connect_users(ctx);
        let mut server = TempServer::start(&spec)?;
        let recovered = recover(&mut server, &users, info, &self.cancel).await;
        let (user, detail) = match recovered {
            Ok((user, detail)) => (user, detail),
            Err(e @ Error::Interrupted(_)) => {
                server.stop().await;
                return Err(e);
            }
            Err(e) => {
                server.stop().await;
                out.push(result("recovery", false, e.to_string(), started));
                return Ok(out);
            }
        };
        out.push(result(
            "recovery",
            true,
            format!(
                "{detail}, in {:.1} s; {source}",
                started.elapsed().as_secs_f64()
            ),
            started,
        ));

        backup_core::util::pause_point("verify.drill").await;
        // tables: read every one.
        let started = Instant::now();
        let read = server.read_every_table(&user, &self.cancel).await;
        server.stop().await;
        match read {
            Ok(dbs) => out.push(result(
                "tables",
                true,
                server::describe_reads(&dbs),
                started,
            )),
            Err(e @ Error::Interrupted(_)) => return Err(e),
            Err(e) => out.push(result("tables", false, e.to_string(), started)),
        }
        Ok(out)
    }
}

/// Decode and untar the stored object into `pgdata` (the `file` check has already
/// compared its checksum).
async fn unpack(
    storage: &dyn Storage,
    m: &Manifest,
    keys: &DecryptKeys,
    pgdata: &Path,
) -> Result<u64> {
    let stored = storage.get(&m.object).await?;
    let plain = match decoder_for(m, keys)? {
        Some(decode) => decode(stored)?,
        None => stored,
    };
    recovery::unpack_tar(plain, pgdata).await
}

/// Run `pg_verifybackup` on the unpacked directory: `(passed, detail)`.
async fn pg_verifybackup(
    pgdata: &Path,
    bin_dir: Option<&Path>,
    major: u32,
) -> Result<(bool, String)> {
    if !pgdata.join("backup_manifest").is_file() {
        return Ok((
            false,
            "the base backup holds no backup_manifest (taken with --no-manifest?)".into(),
        ));
    }
    let tool = server::find_server_tool("pg_verifybackup", bin_dir, major).await?;
    let out = tokio::process::Command::new(&tool.path)
        .arg(pgdata)
        .env("LC_ALL", "C")
        .output()
        .await
        .map_err(|e| Error::Tool(format!("cannot run {}: {e}", tool.path.display())))?;
    if out.status.success() {
        return Ok((
            true,
            "pg_verifybackup: every file and the backup's WAL match backup_manifest".into(),
        ));
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let shown = lines.iter().take(5).copied().collect::<Vec<_>>().join("; ");
    let more = lines.len().saturating_sub(5);
    Ok((
        false,
        format!(
            "pg_verifybackup failed: {shown}{}",
            if more > 0 {
                format!(" (and {more} more)")
            } else {
                String::new()
            }
        ),
    ))
}

/// Fetch the backup's WAL from the archive into `scratch/archive` (each file's checksum
/// checked). When the archive holds every segment, the backup's own copy is removed so
/// that recovery replays the archive's; otherwise the backup's own WAL is used. Returns
/// where the WAL came from, for the check's detail.
async fn stage_wal(
    wal: Option<&Arc<dyn Storage>>,
    info: &PhysicalInfo,
    keys: &DecryptKeys,
    scratch: &Scratch,
) -> Result<String> {
    let size = info.wal_segment_size;
    let first = info.start_lsn.segment(size);
    let last = Lsn(info.end_lsn.0.saturating_sub(1))
        .segment(size)
        .max(first);
    let names: Vec<String> = (first..=last)
        .map(|s| segment_name(info.timeline, s, size))
        .collect();
    let Some(wal) = wal else {
        return Ok("WAL from the backup itself (no archive configured)".into());
    };
    let stores = std::slice::from_ref(wal);
    if info.timeline > 1 {
        let history = format!("{:08X}.history", info.timeline);
        match walarchive::fetch(stores, &history, &scratch.archive().join(&history), keys).await {
            Ok(_) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let mut missing = Vec::new();
    for name in &names {
        match walarchive::fetch(stores, name, &scratch.archive().join(name), keys).await {
            Ok(_) => {}
            Err(Error::NotFound(_)) => missing.push(name.clone()),
            Err(e) => return Err(e),
        }
    }
    if !missing.is_empty() {
        return Ok(format!(
            "WAL from the backup itself: the archive lacks {} of its {} segments (first {})",
            missing.len(),
            names.len(),
            missing[0]
        ));
    }
    let pg_wal = scratch.pgdata().join("pg_wal");
    for name in &names {
        match std::fs::remove_file(pg_wal.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("cannot remove {name} from pg_wal"), e)),
        }
    }
    Ok(format!(
        "WAL {} to {} replayed from the archive",
        names[0],
        names[names.len() - 1]
    ))
}

/// Write the recovery settings (the staged archive, the end of the backup) and make
/// the directory startable here.
async fn prepare_drill(scratch: &Scratch, bin_dir: Option<&Path>) -> Result<ServerSpec> {
    let archive = scratch.archive().display().to_string();
    let restore_command = format!("cp {} %p", shell_quote(&format!("{archive}/%f")));
    recovery::write_recovery(
        &scratch.pgdata(),
        &restore_command,
        &RecoveryTarget::BackupEnd,
    )?;
    server::prepare(scratch.dir.path(), &scratch.pgdata(), bin_dir).await
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Roles to try first: the configured one (it took the backup), then `postgres`.
fn connect_users(ctx: &VerifyContext) -> Vec<String> {
    let mut users: Vec<String> = ctx.pg.iter().map(|p| p.user.clone()).collect();
    if !users.iter().any(|u| u == "postgres") {
        users.push("postgres".into());
    }
    users
}

/// Wait for the promoted server and check it is the backed-up cluster. Returns the
/// superuser to read as and the detail.
async fn recover(
    server: &mut TempServer,
    users: &[String],
    info: &PhysicalInfo,
    cancel: &CancellationToken,
) -> Result<(String, String)> {
    info!("Recovering the base backup in a temporary server...");
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let user = server.wait_ready(&refs, RECOVERY_DEADLINE, cancel).await?;
    let client = server.connect(&user, "template1").await?;
    let row = client
        .query_one(
            "SELECT (SELECT system_identifier::text FROM pg_control_system()), \
                    (SELECT rolname::text FROM pg_roles WHERE oid = 10), \
                    (SELECT redo_lsn::text FROM pg_control_checkpoint())",
            &[],
        )
        .await
        .map_err(|e| Error::other(format!("cannot read the recovered server: {e}")))?;
    let system_identifier: String = row.get(0);
    let superuser: String = row.get(1);
    let checkpoint: String = row.get(2);
    if system_identifier != info.system_identifier {
        return Err(Error::Corrupt(format!(
            "the recovered cluster's system identifier is {system_identifier}, the manifest says {}",
            info.system_identifier
        )));
    }
    debug!("recovered; end-of-recovery checkpoint redo at {checkpoint}");
    Ok((
        superuser,
        format!(
            "recovered to the end of the backup (LSN {}) and promoted; system identifier {system_identifier}",
            info.end_lsn
        ),
    ))
}
