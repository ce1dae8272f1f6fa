//! WAL streaming (`kaizen-backup wal-receive`): a long-running receiver that fills the
//! same archive as `wal-push`, through a physical replication slot.
//!
//! ```text
//! PostgreSQL ─slot─▶ pg_receivewal --slot S --synchronous -D SPOOL/stream
//!                      │ complete segments, .history          │ NNN.partial (being written)
//!                      ▼ every second                          ▼ every wal.flush_interval
//!          gap check ─▶ walarchive::push ─▶ remove        copy ─▶ walarchive::push_partial
//!                       (drop the segment's partial)              (replaces the older version)
//! ```
//!
//! - pg_receivewal resumes from the spool's newest file, or (spool empty) from the slot,
//!   which the server keeps WAL for; a completed segment stays in the spool until it is
//!   stored, so a killed receiver loses nothing while its spool survives.
//! - The archive's end (its newest segment, or partial) says which segment must come next;
//!   a later one means WAL is missing (a lost slot, a lost spool): a [`Gap`] is reported
//!   and the recovery window ends there (`window::coverage`).
//! - A partial version never replaces one holding more WAL (a receiver that restarts a
//!   segment from its start catches up first).
//! - Cancelled (SIGTERM), pg_receivewal is stopped, everything received is stored, and
//!   `run` returns `Ok`.

mod spool;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::process::Child;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::error::{Error, Result};
use crate::pg::{PgConfig, Tool, db_error, find_tool};
use crate::storage::Storage;
use crate::wal::{self, Lsn, WalFile, segment_name};
use crate::walarchive::{self, PushOptions};
use spool::{Spool, segment_of, written_len};

/// The `[wal]` settings of the receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReceiveSettings {
    /// The physical replication slot to stream through (`--slot` overrides it).
    pub slot: String,
    /// How often the segment being received is stored as a partial segment (the most
    /// committed work a lost server can take with it), e.g. `10s`, `500ms`.
    pub flush_interval: String,
    /// The receiver's private spool (default: `kaizen-backup-wal-SLOT` in the system's
    /// temporary directory). Put it on a persistent volume: WAL received but not yet
    /// stored survives a restart only there.
    pub spool_dir: Option<PathBuf>,
}

impl Default for ReceiveSettings {
    fn default() -> Self {
        Self {
            slot: "kaizen_backup".into(),
            flush_interval: "10s".into(),
            spool_dir: None,
        }
    }
}

impl ReceiveSettings {
    /// The flush interval (100 ms to 1 h).
    pub fn flush_interval(&self) -> Result<Duration> {
        let bad = |why: String| Error::Config {
            key: "wal.flush_interval".into(),
            message: why,
        };
        let d = humantime::parse_duration(self.flush_interval.trim()).map_err(|e| {
            bad(format!(
                "{:?} is not a duration ({e}); e.g. 10s, 500ms",
                self.flush_interval
            ))
        })?;
        if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
            return Err(bad(format!(
                "{:?} is outside 100ms to 1h",
                self.flush_interval
            )));
        }
        Ok(d)
    }

    /// The spool directory.
    pub fn spool_dir(&self) -> PathBuf {
        self.spool_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("kaizen-backup-wal-{}", self.slot))
        })
    }

    /// Check the settings.
    pub fn validate(&self) -> Result<()> {
        check_slot_name(&self.slot).map_err(|message| Error::Config {
            key: "wal.slot".into(),
            message,
        })?;
        self.flush_interval().map(|_| ())
    }
}

/// A replication slot name as PostgreSQL accepts it: lower-case letters, digits and `_`,
/// at most 63 characters.
pub fn check_slot_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty()
        || name.len() > crate::pg::MAX_IDENT_BYTES
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "{name:?} is not a replication slot name (1 to 63 lower-case letters, digits and _)"
        ));
    }
    Ok(())
}

/// What one receiver run does.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// The `[wal]` settings (with `--slot` applied).
    pub settings: ReceiveSettings,
    /// Create the slot when it is missing (and again when the server invalidated it).
    pub create_slot: bool,
    /// How files are stored (as `wal-push` stores them).
    pub push: PushOptions,
}

/// Where received WAL goes: required stores (a failure is retried, the file stays in the
/// spool) and optional ones (a failure is a warning).
#[derive(Debug, Clone, Default)]
pub struct Stores {
    /// Required WAL archives.
    pub required: Vec<Arc<dyn Storage>>,
    /// Optional WAL archives.
    pub optional: Vec<Arc<dyn Storage>>,
}

/// WAL the archive will never hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    /// The first missing segment (None when unknown: the archive was empty).
    pub first_missing: Option<String>,
    /// The last missing segment (None when unknown).
    pub last_missing: Option<String>,
    /// Why.
    pub reason: String,
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.first_missing, &self.last_missing) {
            (Some(a), Some(b)) if a == b => write!(f, "WAL segment {a} is missing")?,
            (Some(a), Some(b)) => write!(f, "WAL segments {a} to {b} are missing")?,
            (Some(a), None) => write!(f, "WAL from segment {a} on is missing")?,
            _ => write!(f, "WAL is missing")?,
        }
        write!(
            f,
            " from the archive ({}); point-in-time recovery cannot cross it: take a new base backup (backup --physical)",
            self.reason
        )
    }
}

/// The receiver's state, for metrics and health checks.
#[derive(Debug, Clone, Default)]
pub struct ReceiverStatus {
    /// pg_receivewal is running.
    pub streaming: bool,
    /// Since when it has not been (None while streaming).
    pub down_since: Option<DateTime<Utc>>,
    /// The archive holds WAL up to here (complete segments and the partial).
    pub archived_lsn: Option<Lsn>,
    /// The server's flushed WAL position, when last read.
    pub server_lsn: Option<Lsn>,
    /// The last complete segment stored, and when.
    pub last_segment: Option<(String, DateTime<Utc>)>,
    /// The last time anything was stored (segment, partial or history file).
    pub last_upload: Option<DateTime<Utc>>,
    /// When the archive last held everything received (the start of the last sweep that
    /// left nothing behind).
    pub synced_at: Option<DateTime<Utc>>,
    /// When the last sweep ended, successful or not.
    pub last_sweep: Option<DateTime<Utc>>,
    /// Errors so far: failed stores, pg_receivewal exits, server queries.
    pub errors_total: u64,
    /// Gaps found so far.
    pub gaps_total: u64,
    /// The last error.
    pub last_error: Option<String>,
}

impl ReceiverStatus {
    /// Bytes of WAL the server has that the archive does not.
    pub fn lag_bytes(&self) -> Option<u64> {
        Some(self.server_lsn?.0.saturating_sub(self.archived_lsn?.0))
    }

    /// Seconds since the archive last held everything received.
    pub fn lag_seconds(&self, now: DateTime<Utc>) -> Option<f64> {
        self.synced_at
            .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
    }

    /// `Ok` while the receiver streams and stores; why not, otherwise. Not streaming or
    /// not storing for longer than `allowed` is unhealthy.
    pub fn health(&self, now: DateTime<Utc>, allowed: Duration) -> std::result::Result<(), String> {
        let allowed = chrono::Duration::from_std(allowed).unwrap_or(chrono::Duration::MAX);
        if let Some(since) = self.down_since
            && now - since > allowed
        {
            return Err(format!(
                "not streaming since {}{}",
                since.format("%Y-%m-%d %H:%M:%S UTC"),
                self.last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
        match self.synced_at {
            Some(t) if now - t <= allowed => Ok(()),
            Some(t) => Err(format!(
                "received WAL not stored since {}{}",
                t.format("%Y-%m-%d %H:%M:%S UTC"),
                self.last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )),
            None => Err("starting".into()),
        }
    }
}

/// The receiver's status, shared with whoever reports it.
pub type SharedStatus = Arc<Mutex<ReceiverStatus>>;

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

    /// Store what the spool holds: history files and complete segments always, the
    /// partial segment when `partial_due`. Failures are counted and retried next time.
    async fn sweep(&mut self, partial_due: bool) {
        let started = Utc::now();
        let result = self.sweep_once(partial_due).await;
        let server = self.server_lsn().await;
        self.set(|s| {
            s.last_sweep = Some(Utc::now());
            if let Some(l) = server {
                s.server_lsn = Some(l);
            }
        });
        match result {
            Ok(all) => {
                if all {
                    self.set(|s| s.synced_at = Some(started));
                }
            }
            Err(e) => self.failed(&e),
        }
    }

    /// One sweep; returns whether the archive now holds everything received.
    async fn sweep_once(&mut self, partial_due: bool) -> Result<bool> {
        let listing = self.spool.list(self.segment_size)?;
        for name in &listing.history {
            self.store(&self.spool.stream().join(name), None).await?;
            self.spool.remove(name)?;
            info!("Stored timeline history file {name}");
        }
        for (file, name) in &listing.segments {
            self.follow(*file);
            self.store(&self.spool.stream().join(name), None).await?;
            for store in self.stores.required.iter().chain(&self.stores.optional) {
                if let Err(e) = walarchive::drop_partials(store.as_ref(), name).await {
                    warn!(
                        "{}: could not remove the partial copy of {name}: {e}",
                        store.url()
                    );
                }
            }
            self.spool.remove(name)?;
            if self
                .stored_partial
                .as_ref()
                .is_some_and(|(p, _)| segment_of(p) == name)
            {
                self.stored_partial = None;
            }
            let now = Utc::now();
            let end = self.end_of(*file, self.segment_size);
            self.set(|s| {
                s.last_segment = Some((name.clone(), now));
                s.last_upload = Some(now);
                s.archived_lsn = Some(s.archived_lsn.map_or(end, |a| a.max(end)));
            });
            info!("Stored WAL segment {name}");
        }
        let Some(((current_file, current), older)) = listing.partials.split_last() else {
            return Ok(true);
        };
        // Old timelines' last segments: final, stored as partial segments for good.
        for (file, name) in older {
            self.follow(*file);
            let (copy, len, sha) = self.spool.snapshot(name).await?;
            self.store(&copy, Some(&sha)).await?;
            let _ = std::fs::remove_file(&copy);
            self.spool.remove(name)?;
            info!(
                "Stored the last, partial segment of an old timeline: {name} ({len} bytes of WAL)"
            );
        }
        self.follow(*current_file);
        if !partial_due {
            return Ok(false);
        }
        let (copy, len, sha) = self.spool.snapshot(current).await?;
        let stored = self.stored_len(current).await?;
        if len > stored {
            self.store(&copy, Some(&sha)).await?;
            self.stored_partial = Some((current.clone(), len));
            let now = Utc::now();
            let end = Lsn(self.start_of(*current_file) + len);
            self.set(|s| {
                s.last_upload = Some(now);
                s.archived_lsn = Some(s.archived_lsn.map_or(end, |a| a.max(end)));
            });
            debug!("Stored partial segment {current} ({len} bytes of WAL)");
        }
        let _ = std::fs::remove_file(&copy);
        Ok(len >= stored)
    }

    fn start_of(&self, file: WalFile) -> u64 {
        match file {
            WalFile::Segment { segno, .. } | WalFile::Partial { segno, .. } => {
                segno * self.segment_size
            }
            _ => 0,
        }
    }

    fn end_of(&self, file: WalFile, size: u64) -> Lsn {
        Lsn(self.start_of(file) + size)
    }

    /// How much WAL the archive's version of partial `name` holds (0 without one). Read
    /// once per segment: this run's own pushes are remembered.
    async fn stored_len(&mut self, name: &str) -> Result<u64> {
        if let Some((n, len)) = &self.stored_partial
            && n == name
        {
            return Ok(*len);
        }
        let store = &self.stores.required[0];
        let len = if walarchive::find(store.as_ref(), name).await?.is_empty() {
            0
        } else {
            let dest = self.spool.upload().join(format!("{name}.stored"));
            let keys = crate::codec::DecryptKeys::default();
            match walarchive::fetch(std::slice::from_ref(store), name, &dest, &keys).await {
                Ok(_) => {
                    let len = written_len(&dest).await?;
                    let _ = std::fs::remove_file(&dest);
                    len
                }
                // Encrypted without the identity here: the receiver cannot compare, so
                // it stores its own version (which holds what the spool received).
                Err(e) => {
                    debug!("cannot read the stored {name} ({e}); storing this receiver's");
                    0
                }
            }
        };
        self.stored_partial = Some((name.to_string(), len));
        Ok(len)
    }

    /// Store one file on every required store (an error is returned) and every optional
    /// one (a failure is a warning). `partial_sha`: a partial segment's copy, hashed.
    async fn store(&self, path: &Path, partial_sha: Option<&str>) -> Result<()> {
        let push = |stores: Vec<Arc<dyn Storage>>| async move {
            match partial_sha {
                Some(sha) => {
                    walarchive::push_partial_hashed(&stores, path, sha, &self.opts.push).await
                }
                None => walarchive::push(&stores, path, &self.opts.push).await,
            }
        };
        push(self.stores.required.clone()).await?;
        for store in &self.stores.optional {
            if let Err(e) = push(vec![store.clone()]).await {
                warn!(
                    "Optional target {} did not store {}: {e}",
                    store.url(),
                    path.display()
                );
            }
        }
        self.set(|s| s.last_upload = Some(Utc::now()));
        Ok(())
    }

    /// The server's flushed WAL position (None when it cannot be read now).
    async fn server_lsn(&mut self) -> Option<Lsn> {
        let client = self.client().await.ok()?;
        let row = client
            .query_one(
                "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
                 ELSE pg_current_wal_flush_lsn() END)::text",
                &[],
            )
            .await;
        match row {
            Ok(r) => r.get::<_, Option<String>>(0)?.parse().ok(),
            Err(_) => {
                self.client = None;
                None
            }
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn settings_are_checked() {
        let s = ReceiveSettings::default();
        assert!(s.validate().is_ok());
        assert_eq!(s.flush_interval().unwrap(), Duration::from_secs(10));
        for bad in ["", "Slot", "a-b", &"x".repeat(64)] {
            assert!(check_slot_name(bad).is_err(), "{bad:?}");
        }
        for (bad, key) in [
            ("soon", "wal.flush_interval"),
            ("10ms", "wal.flush_interval"),
        ] {
            let s = ReceiveSettings {
                flush_interval: bad.into(),
                ..Default::default()
            };
            match s.validate() {
                Err(Error::Config { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn health_follows_streaming_and_storing() {
        let now = Utc::now();
        let allowed = Duration::from_secs(30);
        let mut s = ReceiverStatus::default();
        assert!(s.health(now, allowed).is_err(), "starting");
        s.synced_at = Some(now);
        assert!(s.health(now, allowed).is_ok());
        s.down_since = Some(now - chrono::Duration::seconds(10));
        assert!(s.health(now, allowed).is_ok(), "a short restart");
        s.down_since = Some(now - chrono::Duration::seconds(60));
        s.last_error = Some("connection refused".into());
        let why = s.health(now, allowed).unwrap_err();
        assert!(why.contains("connection refused"), "{why}");
        s.down_since = None;
        s.synced_at = Some(now - chrono::Duration::seconds(60));
        assert!(s.health(now, allowed).is_err());
        s.server_lsn = Some(Lsn(0x300_0100));
        s.archived_lsn = Some(Lsn(0x300_0000));
        assert_eq!(s.lag_bytes(), Some(0x100));
    }

    #[test]
    fn gaps_say_what_is_missing() {
        let g = Gap {
            first_missing: Some("000000010000000000000003".into()),
            last_missing: Some("000000010000000000000005".into()),
            reason: "a lost slot".into(),
        };
        let text = g.to_string();
        assert!(
            text.contains("000000010000000000000003 to 000000010000000000000005"),
            "{text}"
        );
    }
}
