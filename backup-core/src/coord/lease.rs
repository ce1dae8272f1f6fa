//! Shared leases on a backup: a restore or a verification holds one while it reads the
//! backup, and prune keeps a backup with a live lease.
//!
//! ```text
//! restore/verify ──> put <backup>.<owner>.lease ──> refreshed every stale_after/4 ──> deleted
//! prune          ──> live lease on <backup>? keep it ("being read by restore ...")
//!                    a lease not refreshed for stale_after, or whose process on this
//!                    host is gone, belongs to a dead run: ignored, and deleted
//! ```
//!
//! Many runs may hold leases on one backup at once (one object each). On storage that
//! cannot be written (read-only credentials or mount) no lease is possible: the run
//! says so and goes on, since it only reads.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::lock::LockInfo;
use crate::storage::{Storage, get_bytes, list_all};

/// Suffix of lease objects.
pub const LEASE_SUFFIX: &str = ".lease";

/// The key of the lease `owner` holds on `backup`.
pub fn lease_key(backup: &str, owner: &str) -> String {
    format!("{backup}.{owner}{LEASE_SUFFIX}")
}

/// The backup a lease key is about.
pub fn backup_of(key: &str) -> Option<&str> {
    let rest = key.strip_suffix(LEASE_SUFFIX)?;
    rest.rsplit_once('.').map(|(backup, _owner)| backup)
}

/// A held lease; give it back with [`Lease::release`] (or, as a last resort, by dropping it).
#[derive(Debug)]
pub struct Lease {
    storage: Arc<dyn Storage>,
    key: String,
    refresher: Option<JoinHandle<()>>,
    released: bool,
}

fn to_bytes(info: &LockInfo) -> Result<Bytes> {
    serde_json::to_vec(info)
        .map(Bytes::from)
        .map_err(|e| Error::other(format!("cannot serialize lease: {e}")))
}

/// Take a lease on `backup` for `operation`, refreshed while it is held. `None`, with a
/// warning, when the storage cannot be written: the run goes on without one.
pub async fn take(
    storage: Arc<dyn Storage>,
    backup: &str,
    operation: &str,
    stale_after: Duration,
) -> Option<Lease> {
    let now = Utc::now();
    let mut me = LockInfo {
        owner: crate::util::random_suffix(16),
        operation: operation.to_string(),
        pid: std::process::id(),
        host: crate::util::hostname(),
        user: crate::util::os_user(),
        started_at: now,
        refreshed_at: now,
    };
    let key = lease_key(backup, &me.owner);
    let written = match to_bytes(&me) {
        Ok(b) => storage.put_replace(&key, b).await,
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        warn!(
            "Could not take a lease on {backup} in {} ({e}); going on without one \
             (read-only storage?): a prune running meanwhile could delete this backup",
            storage.url()
        );
        return None;
    }
    debug!("Lease {key} taken in {}", storage.url());
    let every = (stale_after / 4).max(Duration::from_secs(1));
    let refresher = {
        let storage = storage.clone();
        let key = key.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                me.refreshed_at = Utc::now();
                let res = match to_bytes(&me) {
                    Ok(b) => storage.put_replace(&key, b).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = res {
                    warn!("Could not refresh lease {key}: {e}");
                }
            }
        })
    };
    Some(Lease {
        storage,
        key,
        refresher: Some(refresher),
        released: false,
    })
}

impl Lease {
    /// Give the lease back.
    pub async fn release(mut self) {
        self.released = true;
        if let Some(r) = self.refresher.take() {
            r.abort();
        }
        if let Err(e) = self.storage.delete(&self.key).await {
            warn!(
                "Could not delete lease {}: {e}; it expires by itself",
                self.key
            );
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(r) = self.refresher.take() {
            r.abort();
        }
        if !self.released {
            let storage = self.storage.clone();
            let key = self.key.clone();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = storage.delete(&key).await;
                });
            }
        }
    }
}

/// The leases in a storage, by whether their holder is alive.
#[derive(Debug, Default)]
pub struct Leases {
    /// Live leases: (backup, holder).
    pub live: Vec<(String, LockInfo)>,
    /// Keys of leases left by dead runs.
    pub expired: Vec<String>,
}

impl Leases {
    /// The live lease holders of `backup`.
    pub fn holders<'a>(&'a self, backup: &'a str) -> impl Iterator<Item = &'a LockInfo> + 'a {
        self.live
            .iter()
            .filter(move |(b, _)| b == backup)
            .map(|(_, h)| h)
    }
}

/// Read every lease in `storage`; one not refreshed for `stale_after` at `now`, or held
/// by a process of this host that is gone, is expired.
pub async fn scan(
    storage: &dyn Storage,
    stale_after: Duration,
    now: DateTime<Utc>,
) -> Result<Leases> {
    let mut leases = Leases::default();
    let stale = chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::MAX);
    let host = crate::util::hostname();
    for o in list_all(storage, "").await? {
        let Some(backup) = backup_of(&o.key) else {
            continue;
        };
        let info = match get_bytes(storage, &o.key).await {
            Ok(b) => serde_json::from_slice::<LockInfo>(&b).ok(),
            Err(Error::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        match info {
            Some(h)
                if now - h.refreshed_at <= stale
                    && (h.host != host || crate::util::pid_alive(h.pid)) =>
            {
                leases.live.push((backup.to_string(), h));
            }
            _ => leases.expired.push(o.key),
        }
    }
    Ok(leases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_keys_name_their_backup() {
        let k = lease_key("backup_20240115.v2", "abc123");
        assert_eq!(k, "backup_20240115.v2.abc123.lease");
        assert_eq!(backup_of(&k), Some("backup_20240115.v2"));
        assert_eq!(backup_of("x.manifest.json"), None);
        assert_eq!(backup_of("nodot.lease"), None);
    }
}
