//! The receiver: pg_receivewal run, watched and restarted with backoff, the slot made
//! when asked, the archive's end followed to find gaps.

mod sweep;

use super::*;

/// A running pg_receivewal.
struct Running {
    child: Child,
    started: Instant,
    stderr: tokio::task::JoinHandle<Vec<String>>,
}

/// The receiver.
struct Receiver<'a> {
    pg: &'a PgConfig,
    stores: &'a Stores,
    opts: &'a ReceiveOptions,
    status: SharedStatus,
    gaps: tokio::sync::mpsc::UnboundedSender<Gap>,
    spool: Spool,
    tool: Tool,
    client: Option<tokio_postgres::Client>,
    segment_size: u64,
    /// The segment number that must come next (None: nothing archived yet).
    expected: Option<u64>,
    /// `expected` was read from the archive.
    read_archive: bool,
    /// The partial stored last: its name and how much WAL it holds.
    stored_partial: Option<(String, u64)>,
}

/// Stream WAL into the archive until `cancel`; then stop pg_receivewal, store what it
/// received, and return `Ok`. Gaps go to `gaps`; `status` is kept current.
pub async fn run(
    pg: &PgConfig,
    stores: &Stores,
    opts: &ReceiveOptions,
    status: SharedStatus,
    gaps: tokio::sync::mpsc::UnboundedSender<Gap>,
    cancel: CancellationToken,
) -> Result<()> {
    opts.settings.validate()?;
    if stores.required.is_empty() {
        return Err(Error::usage(
            "wal-receive needs a required storage target (all are optional)",
        ));
    }
    let interval = opts.settings.flush_interval()?;
    let tool = find_tool("pg_receivewal", pg.bin_dir.as_deref()).await?;
    let spool = Spool::open(&opts.settings.spool_dir())?;
    info!(
        "Receiving WAL through replication slot {} into {} (partial segment stored every {})",
        opts.settings.slot,
        spool.root.display(),
        humantime::format_duration(interval)
    );
    if let Ok(mut s) = status.lock() {
        s.down_since = Some(Utc::now());
    }
    let mut r = Receiver {
        pg,
        stores,
        opts,
        status,
        gaps,
        spool,
        tool,
        client: None,
        segment_size: wal::DEFAULT_SEGMENT_SIZE,
        expected: None,
        read_archive: false,
        stored_partial: None,
    };
    r.run_loop(interval, &cancel).await
}

/// How long pg_receivewal must have run for its next failure to restart it at once.
const STABLE_RUN: Duration = Duration::from_secs(30);
/// The longest wait before restarting pg_receivewal.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Receiver<'_> {
    async fn run_loop(&mut self, interval: Duration, cancel: &CancellationToken) -> Result<()> {
        let mut running: Option<Running> = None;
        let mut prepared = false;
        let mut backoff = Duration::from_secs(1);
        let mut restart_at = Instant::now();
        let mut next_partial = Instant::now() + interval;
        loop {
            if running
                .as_ref()
                .is_some_and(|r| r.started.elapsed() >= Duration::from_secs(2))
            {
                self.set(|s| s.down_since = None);
            }
            if running.is_none() && Instant::now() >= restart_at && !cancel.is_cancelled() {
                match self.prepare(&mut prepared).await {
                    Ok(()) => match self.spawn() {
                        Ok(r) => {
                            running = Some(r);
                            self.set(|s| s.streaming = true);
                        }
                        Err(e) => self.failed(&e),
                    },
                    // A missing or unusable slot needs the operator; the rest may pass.
                    Err(e @ (Error::Refused(_) | Error::Config { .. } | Error::Usage(_))) => {
                        return Err(e);
                    }
                    Err(e) => self.failed(&e),
                }
                if running.is_none() {
                    restart_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            let now = Instant::now();
            let wake = (now + Duration::from_secs(1)).min(next_partial.max(now));
            tokio::select! {
                ended = wait_child(&mut running) => {
                    if let Some(r) = running.take() {
                        let ran = r.started.elapsed();
                        let lines = r.stderr.await.unwrap_or_default();
                        let tail = lines.iter().rev().take(3).rev().cloned().collect::<Vec<_>>().join(" / ");
                        if ran >= STABLE_RUN {
                            backoff = Duration::from_secs(1);
                        }
                        let e = Error::Tool(format!("pg_receivewal stopped ({ended}): {tail}"));
                        self.failed(&e);
                        self.set(|s| {
                            s.streaming = false;
                            s.down_since.get_or_insert_with(Utc::now);
                        });
                        warn!("{e}; starting it again in {}s", backoff.as_secs());
                        restart_at = Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        // The slot may be gone or invalidated: check before the next start.
                        prepared = false;
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = cancel.cancelled() => break,
            }
            let partial_due = Instant::now() >= next_partial;
            if partial_due {
                next_partial = (next_partial + interval).max(Instant::now());
            }
            self.sweep(partial_due).await;
        }
        // SIGTERM: stop pg_receivewal (it flushes what it has), then store everything.
        if let Some(r) = running.take() {
            stop(r).await;
        }
        self.set(|s| s.streaming = false);
        self.sweep(true).await;
        let partial = self
            .stored_partial
            .as_ref()
            .map(|(n, len)| format!("; partial segment {n} holds {len} bytes of WAL"))
            .unwrap_or_default();
        info!("WAL receiver stopped: everything received is stored{partial}");
        Ok(())
    }

    fn set(&self, f: impl FnOnce(&mut ReceiverStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    fn failed(&self, e: &Error) {
        warn!("{e}");
        self.set(|s| {
            s.errors_total += 1;
            s.last_error = Some(e.to_string());
        });
    }

    async fn client(&mut self) -> Result<&tokio_postgres::Client> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            self.client = Some(self.pg.connect().await?);
        }
        self.client
            .as_ref()
            .ok_or_else(|| Error::other("no database connection"))
    }

    /// Before starting pg_receivewal: the slot exists and is usable (created or recreated
    /// with `--create-slot`), and, once, where the archive ends.
    async fn prepare(&mut self, prepared: &mut bool) -> Result<()> {
        if *prepared {
            return Ok(());
        }
        let slot = self.opts.settings.slot.clone();
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'",
                &[],
            )
            .await
            .map_err(|e| db_error("reading wal_segment_size", &e))?;
        let size = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        let rows = client
            .query(
                "SELECT slot_type, coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| db_error("reading the replication slots", &e))?;
        if wal::valid_segment_size(size) {
            self.segment_size = size;
        }
        if !self.read_archive {
            self.expected = self.archive_end().await?;
            self.read_archive = true;
        }
        let state = rows
            .first()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)));
        let target = format!("{}:{}", self.pg.host, self.pg.port);
        match state {
            Some((kind, _)) if kind != "physical" => {
                return Err(Error::Refused(format!(
                    "replication slot {slot} on {target} is a {kind} slot; wal-receive needs a physical one (choose another name with --slot)"
                )));
            }
            Some((_, wal_status)) if wal_status == "lost" => {
                let gap = Gap {
                    first_missing: self
                        .expected
                        .map(|s| segment_name(self.timeline_hint(), s, self.segment_size)),
                    last_missing: None,
                    reason: format!(
                        "replication slot {slot} was invalidated: the server removed WAL the receiver had not received (max_slot_wal_keep_size)"
                    ),
                };
                self.report_gap(gap);
                // The spool's segment can no longer be continued: start where the server is.
                self.sweep(true).await;
                self.clear_stream()?;
                // The gap is reported: what comes next starts the archive afresh.
                self.expected = None;
                self.stored_partial = None;
                if !self.opts.create_slot {
                    return Err(Error::Refused(format!(
                        "replication slot {slot} on {target} was invalidated; drop it (SELECT pg_drop_replication_slot('{slot}')) and run wal-receive --create-slot"
                    )));
                }
                let client = self.client().await?;
                client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                    .await
                    .map_err(|e| db_error(format!("dropping the invalidated slot {slot}"), &e))?;
                warn!("Dropped the invalidated replication slot {slot}; creating it again");
                self.create_slot().await?;
            }
            Some(_) => {}
            None if self.opts.create_slot => self.create_slot().await?,
            None => {
                return Err(Error::Refused(format!(
                    "replication slot {slot} does not exist on {target}: run wal-receive --create-slot once, or create it (SELECT pg_create_physical_replication_slot('{slot}', true))"
                )));
            }
        }
        *prepared = true;
        Ok(())
    }

    /// The timeline to name a missing segment with (the newest the spool shows).
    fn timeline_hint(&self) -> u32 {
        self.spool
            .list(self.segment_size)
            .ok()
            .and_then(|l| {
                l.segments
                    .iter()
                    .chain(&l.partials)
                    .map(|(f, _)| f.timeline())
                    .max()
            })
            .unwrap_or(1)
    }

    async fn create_slot(&self) -> Result<()> {
        let slot = &self.opts.settings.slot;
        let out = self
            .pg
            .command(&self.tool.path, &self.pg.name)
            .args([
                "--create-slot",
                "--if-not-exists",
                "--no-password",
                "--slot",
            ])
            .arg(slot)
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| Error::Tool(format!("cannot run {}: {e}", self.tool.path.display())))?;
        if !out.status.success() {
            return Err(Error::ChildFailed {
                tool: "pg_receivewal --create-slot".into(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        info!("Created replication slot {slot}");
        Ok(())
    }

    /// The segment number the archive needs next: after its newest complete segment, or
    /// its newest partial one (None when it holds no segment).
    async fn archive_end(&self) -> Result<Option<u64>> {
        let files = walarchive::list(self.stores.required[0].as_ref()).await?;
        Ok(files
            .iter()
            .filter_map(|f| match WalFile::parse(&f.name, self.segment_size) {
                Ok(WalFile::Segment { segno, .. }) => Some(segno + 1),
                Ok(WalFile::Partial { segno, .. }) => Some(segno),
                _ => None,
            })
            .max())
    }

    fn spawn(&self) -> Result<Running> {
        let mut cmd = self.pg.command(&self.tool.path, &self.pg.name);
        cmd.arg("--directory")
            .arg(self.spool.stream())
            .args(["--slot", &self.opts.settings.slot])
            .args(["--synchronous", "--no-loop", "--no-password", "--verbose"])
            .env("PGAPPNAME", super::APPLICATION_NAME)
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        // A receiver killed with SIGKILL must not leave pg_receivewal holding the slot.
        crate::pg::server::die_with_parent(&mut cmd, nix::sys::signal::Signal::SIGTERM);
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::Tool(format!("cannot start {}: {e}", self.tool.path.display())))?;
        let stderr = child.stderr.take();
        let stderr = tokio::spawn(async move {
            let mut kept: Vec<String> = Vec::new();
            let Some(err) = stderr else { return kept };
            let mut lines = tokio::io::BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                debug!("{line}");
                kept.push(line);
                if kept.len() > 20 {
                    kept.remove(0);
                }
            }
            kept
        });
        debug!("Started {}", self.tool.path.display());
        Ok(Running {
            child,
            started: Instant::now(),
            stderr,
        })
    }

    /// Remove everything pg_receivewal wrote (after the slot was lost).
    fn clear_stream(&self) -> Result<()> {
        let dir = self.spool.stream();
        for e in std::fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?
            .flatten()
        {
            let _ = std::fs::remove_file(e.path());
        }
        Ok(())
    }

    fn report_gap(&self, gap: Gap) {
        error!("{gap}");
        self.set(|s| {
            s.gaps_total += 1;
            s.last_error = Some(gap.to_string());
        });
        let _ = self.gaps.send(gap);
    }

    /// Check that `file` continues the archive; report a gap if it does not.
    fn follow(&mut self, file: WalFile) {
        let (WalFile::Segment { segno, timeline } | WalFile::Partial { segno, timeline }) = file
        else {
            return;
        };
        if let Some(next) = self.expected
            && segno > next
        {
            self.report_gap(Gap {
                first_missing: Some(segment_name(timeline, next, self.segment_size)),
                last_missing: Some(segment_name(timeline, segno - 1, self.segment_size)),
                reason: "the receiver started after WAL the archive does not have (a lost slot or spool, or a new slot)".into(),
            });
        }
        let after = match file {
            WalFile::Segment { .. } => segno + 1,
            _ => segno,
        };
        self.expected = Some(self.expected.map_or(after, |e| e.max(after)));
    }
}

/// Wait for the running pg_receivewal to exit (forever when none runs).
async fn wait_child(running: &mut Option<Running>) -> String {
    match running {
        Some(r) => match r.child.wait().await {
            Ok(st) => st.to_string(),
            Err(e) => e.to_string(),
        },
        None => std::future::pending().await,
    }
}

/// Stop pg_receivewal as its documentation says (SIGINT: it flushes and exits), killing
/// it if it does not within a few seconds.
async fn stop(mut r: Running) {
    if let Some(pid) = r.child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGINT,
        );
    }
    if tokio::time::timeout(Duration::from_secs(1), r.child.wait())
        .await
        .is_err()
    {
        let _ = r.child.kill().await;
    }
}
