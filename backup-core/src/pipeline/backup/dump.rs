//! The pg_dump child of one backup: the snapshot it dumps (shared with the counts in
//! the manifest), its command line (custom format to a pipe, or directory format with
//! N jobs into the staging directory), its output streamed into the upload's sink
//! while the counts are read, and its exit status.

use super::*;
use crate::manifest::RowCountSource;

/// A running pg_dump.
pub(super) struct Dump {
    child: Child,
    /// The last lines of its error output (or, for a parallel dump, what follows them).
    stderr: JoinHandle<String>,
    /// Parallel dumps: the directory pg_dump writes and the ids of the items it finished.
    directory: Option<(std::path::PathBuf, mpsc::UnboundedReceiver<u32>)>,
    /// Removed, with anything left in it, when the dump is dropped.
    _staging: Option<tempfile::TempDir>,
}

impl Dump {
    /// Start pg_dump on `snapshot` (exported by our own transaction). With a staging
    /// directory it dumps there in directory format with `opts.settings.jobs` workers.
    pub(super) fn spawn(
        pg: &PgConfig,
        pg_dump: &Tool,
        opts: &BackupOptions,
        snapshot: &str,
        staging: Option<tempfile::TempDir>,
    ) -> Result<Self> {
        let mut cmd = pg.command(&pg_dump.path, &pg.name);
        cmd.arg(format!("--compress={}", opts.compression.pg_dump_level()))
            .arg(format!("--snapshot={snapshot}"))
            .arg("--no-password")
            .args(&opts.settings.pg_dump_args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let dump_dir = staging.as_ref().map(|t| t.path().join("dump"));
        if let Some(dir) = &dump_dir {
            // English messages: the "finished item" lines tell which files are complete.
            cmd.arg("--format=directory")
                .arg(format!("--jobs={}", opts.settings.jobs))
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
            .map_err(|e| Error::Tool(format!("cannot start {}: {e}", pg_dump.path.display())))?;
        let (stderr, directory) = match dump_dir {
            Some(dir) => {
                let (task, items) = follow_verbose_stderr(&mut child);
                (task, Some((dir, items)))
            }
            None => (collect_stderr(&mut child), None),
        };
        Ok(Self {
            child,
            stderr,
            directory,
            _staging: staging,
        })
    }

    /// Send everything pg_dump writes into `sink`. Returns (sha256 hex, stored size).
    pub(super) async fn stream(&mut self, sink: Sink<'_>) -> Result<(String, u64)> {
        match self.directory.take() {
            Some((dir, items)) => {
                pump_directory(&mut self.child, &dir, items, &mut self.stderr, sink).await
            }
            None => pump(&mut self.child, sink).await,
        }
    }

    /// Stop pg_dump (after a failure elsewhere).
    pub(super) async fn terminate(&mut self) {
        terminate(&mut self.child).await;
    }

    /// Wait for pg_dump to exit; a failure carries the last lines of its error output.
    pub(super) async fn wait(mut self) -> Result<()> {
        let status = self
            .child
            .wait()
            .await
            .map_err(|e| Error::Tool(format!("waiting for pg_dump: {e}")))?;
        let stderr = (&mut self.stderr).await.unwrap_or_default();
        if !status.success() {
            return Err(Error::ChildFailed {
                tool: "pg_dump".into(),
                status: status.to_string(),
                stderr,
            });
        }
        Ok(())
    }
}

/// Phase: a REPEATABLE READ snapshot shared with pg_dump, so the counts describe exactly
/// what is dumped. The counts run beside pg_dump: one backend, no parallel workers, so
/// they take a core at most from the dump they describe (they finish long before it does).
pub(super) async fn export_snapshot(client: &tokio_postgres::Client) -> Result<String> {
    client
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; \
             SET LOCAL max_parallel_workers_per_gather = 0",
        )
        .await
        .map_err(|e| db_error("starting the snapshot transaction", &e))?;
    Ok(client
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(|e| db_error("exporting the snapshot", &e))?
        .get(0))
}

/// Phase: the snapshot is no longer needed once pg_dump has read everything.
pub(super) async fn end_snapshot(client: &tokio_postgres::Client) {
    let _ = client.batch_execute("COMMIT").await;
}

/// What the dump produced and what the snapshot held.
#[derive(Debug)]
pub(super) struct Dumped {
    pub(super) sha256: String,
    pub(super) size: u64,
    pub(super) counts: crate::manifest::ObjectCounts,
    pub(super) tables: Vec<crate::manifest::TableCount>,
    /// How `tables` were counted (`None`: they were not).
    pub(super) row_count_source: Option<RowCountSource>,
    pub(super) sequences: Vec<crate::manifest::SequenceValue>,
}

/// Whether the rows can be counted in the archive as it streams: one custom-format
/// archive whose data blocks pg_dump leaves uncompressed (zstd and none modes). Else they
/// are counted in the snapshot, beside the dump.
fn rows_from_dump(opts: &BackupOptions) -> bool {
    opts.settings.row_counts
        && opts.settings.jobs == 1
        && matches!(opts.compression, Compression::Zstd(_) | Compression::None)
}

/// Phase: pg_dump's bytes go through the transforms to every upload while the object
/// counts are read in the same snapshot, and the row counts either beside them (a second
/// scan of every table) or, when pg_dump writes its data uncompressed, from the archive
/// itself ([`rows_from_dump`]). A signal stops both.
pub(super) async fn stream_and_count(
    dump: &mut Dump,
    upload: &mut Upload,
    client: &tokio_postgres::Client,
    opts: &BackupOptions,
    transforms: &mut [Box<dyn Transform>],
    cancel: &CancellationToken,
) -> Result<Dumped> {
    let from_dump = rows_from_dump(opts);
    let scan = opts.settings.row_counts && !from_dump;
    let mut counter = from_dump.then(crate::rows::CopyRowCounter::new);
    let counts = async {
        let counts = crate::stats::object_counts(client).await?;
        let tables = if scan {
            crate::stats::table_counts(client).await?
        } else {
            Vec::new()
        };
        let sequences = crate::stats::sequence_values(client).await?;
        Ok::<_, Error>((counts, tables, sequences))
    };
    let mut sink = upload.sink(transforms, opts.progress.clone());
    sink.rows = counter.as_mut();
    let ((sha256, size), (counts, tables, sequences)) = tokio::select! {
        r = async { tokio::try_join!(dump.stream(sink), counts) } => r?,
        _ = cancel.cancelled() => return Err(Error::Interrupted("a signal".into())),
    };
    // The snapshot is still open: a fallback scan counts what pg_dump dumped.
    let (tables, row_count_source) = match counter.map(|c| c.finish()) {
        None if scan => (tables, Some(RowCountSource::Snapshot)),
        None => (tables, None),
        Some(Ok(dumped)) => (
            crate::stats::table_counts_from(client, &dumped).await?,
            Some(RowCountSource::Dump),
        ),
        Some(Err(why)) => {
            warn!("Could not count the rows in the archive ({why}); counting them in the snapshot");
            let tables = tokio::select! {
                r = crate::stats::table_counts(client) => r?,
                _ = cancel.cancelled() => return Err(Error::Interrupted("a signal".into())),
            };
            (tables, Some(RowCountSource::Snapshot))
        }
    };
    Ok(Dumped {
        sha256,
        size,
        counts,
        tables,
        row_count_source,
        sequences,
    })
}

/// Phase: pg_dump must have exited cleanly and produced something.
pub(super) async fn finish_dump(dump: Dump, dumped: &Dumped) -> Result<()> {
    dump.wait().await?;
    if dumped.size == 0 {
        return Err(Error::other(
            "pg_dump produced no output; nothing was stored",
        ));
    }
    Ok(())
}
