//! What the receiver reports: streaming or not, lag, last stored segment and upload,
//! errors and gaps; `/healthz` and `/metrics` read it.

use super::*;

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
