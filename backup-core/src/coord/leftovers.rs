//! What killed runs leave behind, and when it is provably safe to remove.
//!
//! A run killed with SIGKILL leaves unfinished writes in the storage (local
//! `.partial.*` files, open S3 multipart uploads: invisible to `list`, yet taking space
//! and billed), and in the temporary directory `kaizen-dump-*` staging directories
//! (plaintext table data, even with encryption configured) and `kaizen-restore-*`
//! decoded archives and physical verify scratch directories (with a server that should
//! have died with its run: it is stopped first). Temporary directories and files are private (0700/0600) from the
//! start; what a dead run left is removed by the next run under two rules:
//!
//! 1. **Same host, process gone.** Names made by this tool carry `<host tag>-<pid>`
//!    ([`crate::util::owned_prefix`]); when the tag is this host's and no process has
//!    that id, the run is gone. Any run removes these, whatever else is running.
//! 2. **No other live run in the storage.** Every run that writes a backup into a
//!    storage holds a lock there for its whole run and refreshes it every
//!    `stale_after / 4` ([`crate::lock`]). Unfinished writes are listed *first*; if
//!    afterwards no lock but ours is alive (held and refreshed within `stale_after`),
//!    the writers of everything listed are gone. Writes idle for less than
//!    [`QUIET`] are still left alone: they may be the short-lived temporary file of a
//!    write that needs no lock (a verify record) or of a lock being created.
//!
//! ```text
//!   list_incomplete ─▶ for each: same host & pid gone? ─ yes ─▶ abort
//!                                 │ no / unknown
//!                                 ▼
//!                      no live lock but ours, idle ≥ QUIET? ─ yes ─▶ abort
//!                                 │ no
//!                                 ▼
//!                               keep (a live run may own it)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use tracing::{info, warn};

use crate::error::Result;
use crate::lock;
use crate::storage::{IncompleteUpload, Storage};
use crate::util::{host_tag, pid_alive};

/// Name prefix of parallel-dump staging directories.
pub const STAGING_PREFIX: &str = "kaizen-dump";
/// Name prefix of decoded archives downloaded for a parallel restore.
pub const RESTORE_PREFIX: &str = "kaizen-restore";

/// An unfinished write younger than this is never judged by the lock rule.
pub const QUIET: Duration = Duration::from_secs(60);

/// The `(host tag, pid)` in a name made with [`crate::util::owned_prefix`]`(prefix)`.
pub fn owner_of(name: &str, prefix: &str) -> Option<(String, u32)> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let mut parts = rest.splitn(3, '-');
    let tag = parts.next()?;
    let pid = parts.next()?.parse().ok()?;
    parts.next()?;
    (tag.len() == 8 && tag.bytes().all(|b| b.is_ascii_hexdigit())).then(|| (tag.to_string(), pid))
}

/// Whether the run that wrote `(tag, pid)` is provably gone (rule 1).
pub fn writer_gone(writer: &(String, u32)) -> bool {
    writer.0 == host_tag() && !pid_alive(writer.1)
}

/// Remove the staging directories and decoded archives that dead runs on this host left
/// in `dir` (rule 1). Returns what was removed; failures are logged, never fatal.
pub fn clean_temp_dir(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let owner = owner_of(&name, STAGING_PREFIX).or_else(|| owner_of(&name, RESTORE_PREFIX));
        if !owner.as_ref().is_some_and(writer_gone) {
            continue;
        }
        let path = entry.path();
        let res = match entry.file_type() {
            Ok(t) if t.is_dir() => {
                // A physical verify's scratch directory may hold a server that outlived
                // its run (it should have died with it): stop it before its files go.
                if crate::pg::server::stop_orphan(&path.join("pgdata")) {
                    warn!(
                        "Stopped a temporary server a killed run left in {}",
                        path.display()
                    );
                }
                std::fs::remove_dir_all(&path)
            }
            Ok(_) => std::fs::remove_file(&path),
            Err(e) => Err(e),
        };
        match res {
            Ok(()) => {
                info!("Removed {} left by a killed run", path.display());
                removed.push(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(
                "Could not remove {} left by a killed run: {e}",
                path.display()
            ),
        }
    }
    removed
}

/// [`clean_temp_dir`] on each configured directory and the system's temporary directory.
pub fn clean_temp_dirs(configured: &[Option<&Path>]) {
    let mut dirs: Vec<PathBuf> = configured
        .iter()
        .flatten()
        .map(|d| d.to_path_buf())
        .collect();
    dirs.push(std::env::temp_dir());
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        clean_temp_dir(&d);
    }
}

/// The unfinished writes in `storage` whose runs are provably gone (rules 1 and 2).
/// `own_lock` is the owner id of the lock this run holds in `storage`, if any.
pub async fn dead_uploads(
    storage: &dyn Storage,
    own_lock: Option<&str>,
    stale_after: Duration,
) -> Result<Vec<IncompleteUpload>> {
    // Listed before the locks are read: anything listed existed while its writer (if
    // alive) held a lock that the check below then sees.
    let uploads = storage.list_incomplete().await?;
    if uploads.is_empty() {
        return Ok(uploads);
    }
    let alone = lock::live_holders(storage, own_lock, stale_after)
        .await?
        .is_empty();
    let now = Utc::now();
    Ok(uploads
        .into_iter()
        .filter(|u| match &u.writer {
            Some(w) if w.0 == host_tag() => !pid_alive(w.1),
            _ => {
                alone
                    && u.started
                        .is_none_or(|t| (now - t).to_std().is_ok_and(|idle| idle >= QUIET))
            }
        })
        .collect())
}

/// Abort the unfinished writes of dead runs in `storage` (see [`dead_uploads`]).
/// Returns the keys of what was aborted; a failure to abort one is logged and skipped.
pub async fn clean_storage(
    storage: &dyn Storage,
    own_lock: Option<&str>,
    stale_after: Duration,
) -> Result<Vec<IncompleteUpload>> {
    let mut done = Vec::new();
    for u in dead_uploads(storage, own_lock, stale_after).await? {
        match storage.abort_incomplete(&u).await {
            Ok(()) => {
                info!(
                    "Aborted an unfinished upload of {} in {} left by a killed run",
                    u.key,
                    storage.url()
                );
                done.push(u);
            }
            Err(e) => warn!(
                "Could not abort the unfinished upload of {} in {}: {e}",
                u.key,
                storage.url()
            ),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn owners_are_read_from_names() {
        let mine = crate::util::owned_prefix(STAGING_PREFIX);
        let (tag, pid) = owner_of(&format!("{mine}abc123"), STAGING_PREFIX).unwrap();
        assert_eq!(tag, host_tag());
        assert_eq!(pid, std::process::id());
        assert!(!writer_gone(&(tag, pid)));
        // Names made by older versions, or by something else, have no owner.
        assert_eq!(owner_of("kaizen-dump-x1Yz9q", STAGING_PREFIX), None);
        assert_eq!(owner_of("kaizen-dump-12345678-x-y", STAGING_PREFIX), None);
        assert_eq!(owner_of("other-12345678-1-y", STAGING_PREFIX), None);
    }

    #[test]
    fn only_dead_runs_temp_dirs_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // pid_max is below 2^22 on Linux: this process cannot exist.
        let dead = format!("{STAGING_PREFIX}-{}-4194999-abc", host_tag());
        let dead_file = format!("{RESTORE_PREFIX}-{}-4194999-abc", host_tag());
        let live = format!("{}abc", crate::util::owned_prefix(STAGING_PREFIX));
        let other_host = format!("{STAGING_PREFIX}-00000000-4194999-abc");
        let legacy = format!("{STAGING_PREFIX}-x1Yz9q");
        for d in [&dead, &live, &other_host, &legacy] {
            std::fs::create_dir_all(dir.path().join(d).join("dump")).unwrap();
        }
        std::fs::write(dir.path().join(&dead_file), b"plain").unwrap();
        let removed = clean_temp_dir(dir.path());
        assert_eq!(removed.len(), 2, "{removed:?}");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = vec![live, other_host, legacy];
        want.sort();
        assert_eq!(left, want);
    }
}
