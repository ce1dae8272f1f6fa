//! Run locks kept in the storage itself, so two runs on different pods or hosts never
//! back up, prune or restore the same database into the same storage at once.
//!
//! The lock is an object `<database>.lock` created with [`Storage::put_if_absent`]. It
//! records who holds it and is refreshed while the run lasts; a lock not refreshed for
//! `stale_after` is abandoned (its process was killed) and is taken over. On the same
//! host, a lock whose process is gone is taken over at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::storage::{Storage, get_bytes};

/// What a lock object says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Random id of the holder.
    pub owner: String,
    /// `backup`, `prune`, `restore`, ...
    pub operation: String,
    /// Process id on `host`.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// OS user.
    pub user: String,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// Last refresh.
    pub refreshed_at: DateTime<Utc>,
}

impl LockInfo {
    /// `backup by user@host (pid N) since TIME`
    pub fn describe(&self) -> String {
        format!(
            "{} by {}@{} (pid {}) since {}",
            self.operation,
            self.user,
            self.host,
            self.pid,
            self.started_at.format("%Y-%m-%d %H:%M:%S UTC")
        )
    }
}

/// How to wait for and keep a lock.
#[derive(Debug, Clone, Copy)]
pub struct LockOptions {
    /// A lock not refreshed for this long is abandoned.
    pub stale_after: Duration,
    /// How long to wait for another run's lock (zero: fail at once).
    pub timeout: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            stale_after: Duration::from_secs(600),
            timeout: Duration::ZERO,
        }
    }
}

/// A held lock; released by [`LockGuard::release`] (or, as a last resort, when dropped).
#[derive(Debug)]
pub struct LockGuard {
    storage: Arc<dyn Storage>,
    key: String,
    owner: String,
    refresher: Option<JoinHandle<()>>,
    released: bool,
}

/// The key of the lock for `name` (a database name).
pub fn lock_key(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.lock")
}

pub(crate) fn pid_alive(pid: u32) -> bool {
    // Signal 0 checks existence; EPERM means it exists but is not ours.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

async fn read_lock(storage: &dyn Storage, key: &str) -> Result<Option<LockInfo>> {
    match get_bytes(storage, key).await {
        Ok(b) => Ok(serde_json::from_slice(&b).ok()),
        Err(Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

fn to_bytes(info: &LockInfo) -> Result<Bytes> {
    serde_json::to_vec(info)
        .map(Bytes::from)
        .map_err(|e| Error::other(format!("cannot serialize lock: {e}")))
}

/// Take the lock on `name` in `storage` for `operation`, waiting up to `opts.timeout`.
pub async fn acquire(
    storage: Arc<dyn Storage>,
    name: &str,
    operation: &str,
    opts: LockOptions,
) -> Result<LockGuard> {
    let key = lock_key(name);
    let now = Utc::now();
    let me = LockInfo {
        owner: crate::util::random_suffix(16),
        operation: operation.to_string(),
        pid: std::process::id(),
        host: crate::util::hostname(),
        user: crate::util::os_user(),
        started_at: now,
        refreshed_at: now,
    };
    let started = Instant::now();
    let mut announced = false;
    loop {
        if storage.put_if_absent(&key, to_bytes(&me)?).await? {
            break;
        }
        let holder = read_lock(storage.as_ref(), &key).await?;
        let abandoned = match &holder {
            // Unreadable or vanished between the two calls: try again at once.
            None => true,
            Some(h) => {
                let age = Utc::now() - h.refreshed_at;
                let stale = age.to_std().map(|a| a > opts.stale_after).unwrap_or(false);
                let dead_here = h.host == me.host && !pid_alive(h.pid);
                if stale || dead_here {
                    warn!(
                        "Taking over an abandoned lock on {name}: {} ({})",
                        h.describe(),
                        if dead_here {
                            "its process is gone"
                        } else {
                            "not refreshed in time"
                        }
                    );
                }
                stale || dead_here
            }
        };
        if abandoned {
            storage.put_replace(&key, to_bytes(&me)?).await?;
            // Another run may have taken it over at the same moment: the last writer wins,
            // and each checks it is that writer before going on.
            tokio::time::sleep(Duration::from_millis(200)).await;
            match read_lock(storage.as_ref(), &key).await? {
                Some(h) if h.owner == me.owner => break,
                _ => continue,
            }
        }
        let holder = holder.map(|h| h.describe()).unwrap_or_default();
        if started.elapsed() >= opts.timeout {
            return Err(Error::Refused(format!(
                "another kaizen-backup run holds the lock on {name} in {}: {holder}; wait for it to finish \
                 (or use --lock-timeout SECS to wait); a lock not refreshed for {}s is considered abandoned",
                storage.url(),
                opts.stale_after.as_secs()
            )));
        }
        if !announced {
            info!("Waiting for the lock on {name}: {holder}");
            announced = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    debug!("Lock {key} taken in {}", storage.url());
    let refresher = spawn_refresher(
        storage.clone(),
        key.clone(),
        me.clone(),
        opts.stale_after / 4,
    );
    Ok(LockGuard {
        storage,
        key,
        owner: me.owner,
        refresher: Some(refresher),
        released: false,
    })
}

fn spawn_refresher(
    storage: Arc<dyn Storage>,
    key: String,
    mut me: LockInfo,
    every: Duration,
) -> JoinHandle<()> {
    let every = every.max(Duration::from_secs(1));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match read_lock(storage.as_ref(), &key).await {
                Ok(Some(h)) if h.owner == me.owner => {
                    me.refreshed_at = Utc::now();
                    if let Ok(b) = to_bytes(&me)
                        && let Err(e) = storage.put_replace(&key, b).await
                    {
                        warn!("Could not refresh lock {key}: {e}");
                    }
                }
                Ok(_) => {
                    warn!("Lock {key} was taken over by another run");
                    return;
                }
                Err(e) => warn!("Could not read lock {key}: {e}"),
            }
        }
    })
}

impl LockGuard {
    /// Release the lock (only if we still hold it).
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        if let Some(r) = self.refresher.take() {
            r.abort();
        }
        match read_lock(self.storage.as_ref(), &self.key).await? {
            Some(h) if h.owner == self.owner => self.storage.delete(&self.key).await,
            _ => Ok(()),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(r) = self.refresher.take() {
            r.abort();
        }
        if !self.released {
            // Best effort when an error path skipped release(); a leftover expires anyway.
            let storage = self.storage.clone();
            let key = self.key.clone();
            let owner = self.owner.clone();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Ok(Some(h)) = read_lock(storage.as_ref(), &key).await
                        && h.owner == owner
                    {
                        let _ = storage.delete(&key).await;
                    }
                });
            }
        }
    }
}
