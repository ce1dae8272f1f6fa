//! Run locks kept in the storage itself, so two runs on different pods or hosts never
//! back up, prune or restore the same database into the same storage at once.
//!
//! The lock is an object `<database>.lock` created with [`Storage::put_if_absent`], which
//! every backend makes atomic where it can (local: a complete temporary file hard-linked
//! into place; object stores: a conditional create): the lock is never visible before
//! its content. It records who holds it and is refreshed while the run lasts.
//!
//! ```text
//!   put_if_absent(db.lock) ──ok──▶ held
//!        │ exists
//!        ▼
//!   read holder ── alive & fresh ──▶ wait (or refuse)
//!        │ stale (not refreshed for stale_after) or its process is gone on this host
//!        ▼
//!   put_if_absent(db.lock.<holder>.<n>.lock)   ◀─ the claim: only one run wins it
//!        │ won                                   (a dead claimer's claim is
//!        ▼                                        followed by claim n+1)
//!   still that holder? ─ yes ─▶ delete db.lock ─▶ back to put_if_absent
//! ```
//!
//! Deleting a lock (take-over or release) needs the claim on that lock's generation
//! (its holder's random id), so a lock is deleted at most once and never a newer lock
//! that replaced it in between: two runs that both find a lock stale cannot both win.
//! The holder claims its own lock to release it the same way. A holder that is alive
//! but was stopped for longer than `stale_after` (3/4 of it without a refresh) can still
//! lose its lock to another run; its refresher then says so.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::storage::{Storage, get_bytes, list_all};

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
    me: LockInfo,
    stale_after: Duration,
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

/// What the lock object currently is.
#[derive(Debug, Clone)]
enum Holder {
    /// No lock object.
    Missing,
    /// A lock written by a run.
    Held(LockInfo),
    /// An object that does not parse (written by something else, or damaged): judged by
    /// its age, identified by a hash of its bytes.
    Unreadable {
        generation: String,
        modified: Option<DateTime<Utc>>,
    },
}

impl Holder {
    /// The id of this lock's generation: who created it (unique per run).
    fn generation(&self) -> Option<&str> {
        match self {
            Holder::Missing => None,
            Holder::Held(h) => Some(&h.owner),
            Holder::Unreadable { generation, .. } => Some(generation),
        }
    }
}

async fn read_holder(storage: &dyn Storage, key: &str) -> Result<Holder> {
    let bytes = match get_bytes(storage, key).await {
        Ok(b) => b,
        Err(Error::NotFound(_)) => return Ok(Holder::Missing),
        Err(e) => return Err(e),
    };
    if let Ok(info) = serde_json::from_slice::<LockInfo>(&bytes) {
        return Ok(Holder::Held(info));
    }
    let modified = match storage.head(key).await? {
        Some(m) => m.last_modified,
        None => return Ok(Holder::Missing),
    };
    let digest = Sha256::digest(&bytes);
    Ok(Holder::Unreadable {
        generation: format!("x{}", hex::encode(&digest[..8])),
        modified,
    })
}

async fn read_lock(storage: &dyn Storage, key: &str) -> Result<Option<LockInfo>> {
    match read_holder(storage, key).await? {
        Holder::Held(h) => Ok(Some(h)),
        _ => Ok(None),
    }
}

fn to_bytes(info: &LockInfo) -> Result<Bytes> {
    serde_json::to_vec(info)
        .map(Bytes::from)
        .map_err(|e| Error::other(format!("cannot serialize lock: {e}")))
}

/// Why a holder counts as gone, if it does.
fn abandoned(
    info: &LockInfo,
    here: &str,
    stale_after: Duration,
    now: DateTime<Utc>,
) -> Option<&'static str> {
    if info.host == here && !crate::util::pid_alive(info.pid) {
        return Some("its process is gone");
    }
    let age = (now - info.refreshed_at).to_std().unwrap_or(Duration::ZERO);
    (age > stale_after).then_some("not refreshed in time")
}

/// The claim objects on generation `generation` of `key` are `<key>.<generation>.<n>.lock`
/// (ending in `.lock`, so listings treat them as lock metadata, never as backups).
fn claim_prefix(key: &str, generation: &str) -> String {
    format!("{key}.{generation}.")
}

/// Win the right to delete generation `generation` of the lock at `key`, and delete it.
/// Returns whether this call deleted it. Only one run can hold a claim (conditional
/// create); a claim whose run is gone is followed by the next number.
async fn claim_and_delete(
    storage: &dyn Storage,
    key: &str,
    generation: &str,
    me: &LockInfo,
    stale_after: Duration,
) -> Result<bool> {
    let prefix = claim_prefix(key, generation);
    let mut claims: Vec<(u32, String)> = list_all(storage, &prefix)
        .await?
        .into_iter()
        .filter_map(|o| {
            let n = o
                .key
                .strip_prefix(&prefix)?
                .strip_suffix(".lock")?
                .parse()
                .ok()?;
            Some((n, o.key))
        })
        .collect();
    claims.sort();
    let mut ours = false;
    let next = match claims.last() {
        None => 0,
        Some((n, last)) => match read_holder(storage, last).await? {
            // Our own claim, from a create that was retried.
            Holder::Held(c) if c.owner == me.owner => {
                ours = true;
                *n
            }
            // Someone else is deleting it right now, unless that run is gone.
            Holder::Held(c) if abandoned(&c, &me.host, stale_after, Utc::now()).is_none() => {
                return Ok(false);
            }
            _ => n.saturating_add(1),
        },
    };
    let mine = format!("{prefix}{next}.lock");
    // The claim carries the time it was made, so it is judged fresh while it is used.
    let claim = LockInfo {
        refreshed_at: Utc::now(),
        ..me.clone()
    };
    if !ours && !storage.put_if_absent(&mine, to_bytes(&claim)?).await? {
        return Ok(false);
    }
    // The claim is ours: nobody else deletes this generation, so if it is still there
    // it is still there when we delete it.
    let deleted = match read_holder(storage, key).await? {
        h if h.generation() == Some(generation) => {
            storage.delete(key).await?;
            true
        }
        _ => false,
    };
    for (_, k) in &claims {
        let _ = storage.delete(k).await;
    }
    storage.delete(&mine).await?;
    Ok(deleted)
}

/// Every run that holds a live lock in `storage` (any database), but `except` (an owner
/// id): described, for messages. A lock not refreshed for `stale_after`, or whose process
/// is gone on this host, is not live.
pub async fn live_holders(
    storage: &dyn Storage,
    except: Option<&str>,
    stale_after: Duration,
) -> Result<Vec<String>> {
    let here = crate::util::hostname();
    let mut out = Vec::new();
    for o in list_all(storage, "").await? {
        if !o.key.ends_with(".lock") {
            continue;
        }
        let now = Utc::now();
        match read_holder(storage, &o.key).await? {
            Holder::Missing => {}
            Holder::Held(h) => {
                if Some(h.owner.as_str()) != except
                    && abandoned(&h, &here, stale_after, now).is_none()
                {
                    out.push(h.describe());
                }
            }
            Holder::Unreadable { modified, .. } => {
                let stale = modified
                    .and_then(|m| (now - m).to_std().ok())
                    .is_some_and(|age| age > stale_after);
                if !stale {
                    out.push(format!("an unreadable lock object {}", o.key));
                }
            }
        }
    }
    Ok(out)
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
        let holder = read_holder(storage.as_ref(), &key).await?;
        let reason = match &holder {
            // Released between the two calls: try again at once.
            Holder::Missing => continue,
            // A retried create whose first attempt went through.
            Holder::Held(h) if h.owner == me.owner => break,
            Holder::Held(h) => abandoned(h, &me.host, opts.stale_after, Utc::now()),
            Holder::Unreadable { modified, .. } => modified
                .and_then(|m| (Utc::now() - m).to_std().ok())
                .is_some_and(|age| age > opts.stale_after)
                .then_some("unreadable and not refreshed in time"),
        };
        if let (Some(reason), Some(generation)) = (reason, holder.generation()) {
            let who = match &holder {
                Holder::Held(h) => h.describe(),
                _ => "an unreadable lock object".to_string(),
            };
            if claim_and_delete(storage.as_ref(), &key, generation, &me, opts.stale_after).await? {
                warn!("Took over an abandoned lock on {name}: {who} ({reason})");
            }
            // Whoever deleted it, the lock is now free for the first create that comes.
            continue;
        }
        let holder = match &holder {
            Holder::Held(h) => h.describe(),
            _ => "an unreadable lock object".to_string(),
        };
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
        me,
        stale_after: opts.stale_after,
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
    /// The random id of this run's lock (what [`live_holders`] leaves out).
    pub fn owner(&self) -> &str {
        &self.me.owner
    }

    /// Release the lock (only if we still hold it).
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        if let Some(r) = self.refresher.take() {
            r.abort();
        }
        claim_and_delete(
            self.storage.as_ref(),
            &self.key,
            &self.me.owner,
            &self.me,
            self.stale_after,
        )
        .await
        .map(|_| ())
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
            let me = self.me.clone();
            let stale_after = self.stale_after;
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ =
                        claim_and_delete(storage.as_ref(), &key, &me.owner, &me, stale_after).await;
                });
            }
        }
    }
}
