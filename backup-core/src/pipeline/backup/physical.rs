//! A physical backup: the whole cluster as `pg_basebackup` streams it, through the same
//! commit protocol as a logical backup.
//!
//! ```text
//! pg_basebackup -D - -Ft -X fetch -c fast ──pipe──▶ zstd ─▶ age ─▶ SHA-256 ─┬─▶ target 1
//!        stderr: start/end LSN, timeline                                    └─▶ target 2
//! ```
//!
//! `-X fetch` puts the WAL from the backup's start to its end inside the archive (in
//! `pg_wal/`), so the base backup reaches consistency on its own; the continuous WAL
//! from `wal-push` or `wal-receive` carries it further. The server's `backup_manifest`
//! travels inside the tar stream, so `verify` can check the unpacked files with
//! `pg_verifybackup`.

use super::*;
use crate::manifest::PhysicalInfo;
use crate::wal::{Lsn, valid_segment_size};

/// Facts about the cluster, read before the backup starts.
#[derive(Debug)]
struct Cluster {
    pg_basebackup: Tool,
    server: crate::stats::ServerInfo,
    system_identifier: String,
    segment_size: u64,
}

/// Phase: tools, connection, versions, and what a physical backup needs of the server.
async fn preflight_physical(pg: &PgConfig) -> Result<Cluster> {
    let pg_basebackup = find_tool("pg_basebackup", pg.bin_dir.as_deref()).await?;
    let client = pg.connect().await?;
    let server = crate::stats::server_info(&client).await?;
    if pg_basebackup.major != server.major {
        return Err(Error::Tool(format!(
            "pg_basebackup {} cannot back up a PostgreSQL {} server: a physical backup needs the server's own major version (set database.bin_dir to its binaries)",
            pg_basebackup.version, server.major
        )));
    }
    let row = client
        .query_one(
            "SELECT (SELECT system_identifier::text FROM pg_control_system()), \
                    (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), \
                    (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user), \
                    ARRAY(SELECT spcname::text FROM pg_tablespace \
                          WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY 1), \
                    current_setting('archive_mode'), \
                    EXISTS (SELECT 1 FROM pg_stat_replication WHERE application_name = $1)",
            &[&crate::walreceive::APPLICATION_NAME],
        )
        .await
        .map_err(|e| db_error("reading the cluster's settings", &e))?;
    let system_identifier: String = row.get(0);
    let segment_size = u64::try_from(row.get::<_, i64>(1)).unwrap_or(0);
    let replication: Option<bool> = row.get(2);
    let tablespaces: Vec<String> = row.get(3);
    let archive_mode: String = row.get(4);
    let receiver_streams: bool = row.get(5);
    if !valid_segment_size(segment_size) {
        return Err(Error::other(format!(
            "the server reports wal_segment_size = {segment_size}, which is not a valid segment size"
        )));
    }
    if replication != Some(true) {
        return Err(Error::Refused(format!(
            "role {:?} may not take a physical backup: it needs the REPLICATION attribute (ALTER ROLE {} REPLICATION) and a replication entry in pg_hba.conf",
            pg.user,
            crate::pg::display_ident(&pg.user)
        )));
    }
    if !tablespaces.is_empty() {
        return Err(Error::Refused(format!(
            "the cluster has tablespaces outside the data directory ({}); physical backups of such clusters are not supported yet: use logical backups, or move them to pg_default",
            tablespaces.join(", ")
        )));
    }
    if archive_mode == "off" && !receiver_streams {
        warn!(
            "archive_mode is off and no kaizen-backup wal-receive streams from this server: this base backup restores only to its own end; set archive_command = 'kaizen-backup wal-push %p' or run kaizen-backup wal-receive for point-in-time recovery"
        );
    }
    Ok(Cluster {
        pg_basebackup,
        server,
        system_identifier,
        segment_size,
    })
}

/// The positions pg_basebackup reports with `--verbose`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Positions {
    start: Option<Lsn>,
    end: Option<Lsn>,
    timeline: Option<u32>,
}

/// Read `write-ahead log start point: 0/2000028 on timeline 1` and
/// `write-ahead log end point: 0/2000100` (pg_basebackup run with `LC_ALL=C`).
pub(crate) fn parse_positions(stderr: &str) -> Positions {
    let mut p = Positions::default();
    for line in stderr.lines() {
        if let Some(rest) = line.split("write-ahead log start point: ").nth(1) {
            let mut it = rest.split(" on timeline ");
            p.start = it.next().and_then(|l| l.trim().parse().ok());
            p.timeline = it.next().and_then(|t| t.trim().parse().ok());
        } else if let Some(rest) = line.split("write-ahead log end point: ").nth(1) {
            p.end = rest.trim().parse().ok();
        }
    }
    p
}

/// Run one physical backup of the cluster `pg` points at.
pub async fn run_physical(
    pg: &PgConfig,
    targets: &[Target],
    opts: BackupOptions,
    cancel: CancellationToken,
) -> Result<BackupOutcome> {
    crate::name::validate(&opts.name)?;
    if targets.is_empty() {
        return Err(Error::usage("no storage target configured"));
    }
    if opts.kind != Kind::Physical {
        return Err(Error::usage(format!(
            "backup {:?} is not a physical backup",
            opts.name
        )));
    }
    let mut transforms = crate::codec::encoders(opts.compression, &opts.encryption)?;
    let started = Instant::now();
    let started_at = Utc::now();
    info!("Starting physical backup: {}", opts.name);
    let cluster = preflight_physical(pg).await?;
    let data_key = physical_key(&opts);
    let plan = Plan {
        directory: false,
        data_key: data_key.clone(),
        manifest_key: Manifest::key_for(&opts.name),
        required_space: None,
    };
    let (targets, skipped) = choose_targets(targets, &plan, &opts.name, &cancel).await?;

    let mut cmd = pg.command(&cluster.pg_basebackup.path, &pg.name);
    cmd.args([
        "--pgdata=-",
        "--format=tar",
        "--wal-method=fetch",
        "--checkpoint=fast",
    ])
    .args(["--verbose", "--no-password"])
    .arg(format!("--label=kaizen-backup {}", opts.name))
    .env("LC_ALL", "C")
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        Error::Tool(format!(
            "cannot start {}: {e}",
            cluster.pg_basebackup.path.display()
        ))
    })?;
    let stderr = collect_stderr(&mut child);
    let mut upload = Upload::start(&targets, &data_key, skipped, opts.cleanup_timeout, &cancel);
    let progress = opts.progress.clone();
    let streamed = tokio::select! {
        r = pump_base(&mut child, upload.sink(&mut transforms, progress)) => r,
        _ = cancel.cancelled() => Err(Error::Interrupted("a signal".into())),
    };
    let (sha256, size) = match streamed {
        Ok(s) => s,
        Err(e) => {
            terminate(&mut child).await;
            upload.abort().await;
            return Err(e);
        }
    };
    let status = child
        .wait()
        .await
        .map_err(|e| Error::Tool(format!("waiting for pg_basebackup: {e}")));
    let stderr = stderr.await.unwrap_or_default();
    let positions = parse_positions(&stderr);
    let failed = match status {
        Ok(s) if s.success() => None,
        Ok(s) => Some(Error::ChildFailed {
            tool: "pg_basebackup".into(),
            status: s.to_string(),
            stderr: stderr.clone(),
        }),
        Err(e) => Some(e),
    };
    let positions = match (failed, positions) {
        (
            None,
            Positions {
                start: Some(start),
                end: Some(end),
                timeline: Some(timeline),
            },
        ) if size > 0 => (start, end, timeline),
        (Some(e), _) => {
            upload.abort().await;
            return Err(e);
        }
        (None, _) => {
            upload.abort().await;
            return Err(Error::Tool(format!(
                "pg_basebackup did not report where the backup starts and ends; nothing was stored: {}",
                stderr.trim()
            )));
        }
    };
    let committed = upload.commit_data().await?;
    let (start_lsn, end_lsn, timeline) = positions;
    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        name: opts.name.clone(),
        object: data_key,
        database: pg.name.clone(),
        server_version: cluster.server.version.clone(),
        pg_dump_version: cluster.pg_basebackup.version.clone(),
        format: Format::Tar,
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
        database_size_bytes: cluster.server.database_size,
        encoding: None,
        lc_collate: None,
        lc_ctype: None,
        locale_provider: None,
        locale: None,
        tables: Vec::new(),
        counts: Default::default(),
        row_count_source: None,
        host: Some(crate::util::hostname()),
        kind: Some(Kind::Physical),
        physical: Some(PhysicalInfo {
            timeline,
            start_lsn,
            end_lsn,
            system_identifier: cluster.system_identifier,
            wal_segment_size: cluster.segment_size,
        }),
        sequences: Vec::new(),
        roles: None,
        signature: None,
    };
    let stored = committed
        .write_manifest(&mut manifest, opts.signing_key.as_ref())
        .await?;
    info!(
        "Physical backup {} stored: WAL {start_lsn} to {end_lsn} on timeline {timeline}",
        manifest.name
    );
    Ok(BackupOutcome {
        manifest,
        committed: stored.committed,
        failed_optional: stored.failed_optional,
        duration: started.elapsed(),
    })
}

/// Read pg_basebackup's tar stream into the sink. Returns (sha256 hex, stored size).
async fn pump_base(child: &mut Child, mut sink: Sink<'_>) -> Result<(String, u64)> {
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Tool("pg_basebackup has no stdout pipe".into()))?;
    let mut pipe = PipeChunks::spawn(stdout, "pg_basebackup output")?;
    // The test pause point stops a backup mid-stream: the first bytes have gone to the
    // targets (the compressor holds back a few MiB), pg_basebackup is still sending.
    while sink.size == 0 {
        if !sink.push_from_pipe(&mut pipe).await? {
            return sink.finish().await;
        }
    }
    crate::util::pause_point("physical-streaming").await;
    sink.copy_from_pipe(&mut pipe).await?;
    sink.finish().await
}

/// Key of a physical backup's data object: `NAME.base.tar[.zst][.age]`.
fn physical_key(opts: &BackupOptions) -> String {
    let zst = if matches!(opts.compression, Compression::Zstd(_)) {
        ".zst"
    } else {
        ""
    };
    let age = if opts.encryption.enabled() {
        ".age"
    } else {
        ""
    };
    format!("{}.base.tar{zst}{age}", opts.name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn positions_are_read_from_verbose_output() {
        let err = "pg_basebackup: initiating base backup, waiting for checkpoint to complete\n\
                   pg_basebackup: checkpoint completed\n\
                   pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1\n\
                   pg_basebackup: write-ahead log end point: 0/2000100\n\
                   pg_basebackup: base backup completed\n";
        let p = parse_positions(err);
        assert_eq!(p.start, Some("0/2000028".parse().unwrap()));
        assert_eq!(p.end, Some("0/2000100".parse().unwrap()));
        assert_eq!(p.timeline, Some(1));
        assert_eq!(
            parse_positions("pg_basebackup: error: connection failed"),
            Positions::default()
        );
    }
}
