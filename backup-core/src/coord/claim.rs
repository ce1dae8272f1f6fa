//! Claims held on the database server as advisory locks, so they end with the session
//! that holds them: a killed run can never leave one behind.
//!
//! ```text
//! claim name ──> CREATE DATABASE kaizen_restore_x ──> ... ──> DROP/RENAME ──> release
//!   (pg_try_advisory_lock on the maintenance database, held by the run's session)
//!
//! next run: kaizen_{verify,restore,old}_* with no session and a free claim
//!   = left by a run that died ──> dropped, with a log line saying what it was
//! ```
//!
//! A leftover is recognised through `pg_locks`, which shows the claims taken from any
//! database; two cleaners meet on the claim itself when they share a maintenance database,
//! and `DROP DATABASE IF EXISTS` makes the other case harmless.

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::pg::{PgConfig, db_error};

/// First key of a claim on a temporary database name (`"KZVB"`); the second is
/// `hashtext(name)`. Kept from the verify-only version so that a verification of an
/// older release and one of this release still see each other's claims.
pub const NAME_CLASS: i32 = 0x4b5a_5642;

/// First key of the lock a restore holds on its target name (`"KZRT"`).
pub const TARGET_CLASS: i32 = 0x4b5a_5254;

/// What kind of temporary database a prefix marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporary {
    /// A verification's test restore (`kaizen_verify_*`).
    Verify,
    /// A restore's copy before it is swapped in (`kaizen_restore_*`).
    Restore,
    /// A replaced database, kept until the swap committed (`kaizen_old_*`).
    Old,
}

impl Temporary {
    /// Every kind.
    pub const ALL: [Self; 3] = [Self::Verify, Self::Restore, Self::Old];

    /// Prefix of the database names (without the final `_`).
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Verify => "kaizen_verify",
            Self::Restore => "kaizen_restore",
            Self::Old => "kaizen_old",
        }
    }

    fn of(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| name.starts_with(&format!("{}_", t.prefix())))
    }

    fn leftover_of(self) -> &'static str {
        match self {
            Self::Verify => "left behind by an interrupted verification",
            Self::Restore => {
                "the copy of a restore interrupted before its swap (its target was not changed)"
            }
            Self::Old => {
                "the previous database replaced by a restore interrupted after its swap (the restored database is in place)"
            }
        }
    }
}

/// Take the claim on database name `db` without waiting; false when someone holds it.
pub async fn try_claim(admin: &Client, db: &str) -> Result<bool> {
    Ok(admin
        .query_one(
            "SELECT pg_try_advisory_lock($1, hashtext($2))",
            &[&NAME_CLASS, &db],
        )
        .await
        .map_err(|e| db_error(format!("locking the name {db}"), &e))?
        .get(0))
}

/// Release the claim on `db` (best effort: it ends with the session anyway).
pub async fn release(admin: &Client, db: &str) {
    if let Err(e) = admin
        .query_one(
            "SELECT pg_advisory_unlock($1, hashtext($2))",
            &[&NAME_CLASS, &db],
        )
        .await
    {
        debug!("releasing the lock on {db}: {e}");
    }
}

/// A fresh temporary database name of `kind` for `base`, claimed. A held claim means a
/// hash collision: another name is tried rather than waiting for someone else's run.
pub async fn claim_new_name(admin: &Client, kind: Temporary, base: &str) -> Result<String> {
    for _ in 0..5 {
        let name = crate::restore::temp_db_name(kind.prefix(), base);
        if try_claim(admin, &name).await? {
            return Ok(name);
        }
    }
    Err(Error::other(
        "could not claim a name for a temporary database (5 names were in use)",
    ))
}

/// Drop the temporary databases that runs which died left behind: owned by the current
/// role (a run's temporary databases are its own, see [`crate::restore`]), no session
/// connected to them and no claim on their name in any database of the server. Returns
/// the names dropped; each is logged with what it was.
pub async fn drop_leftovers(admin: &Client) -> Result<Vec<String>> {
    let rows = admin
        .query(
            "SELECT d.datname::text FROM pg_database d \
             WHERE (starts_with(d.datname, 'kaizen_verify_') OR starts_with(d.datname, 'kaizen_restore_') \
                    OR starts_with(d.datname, 'kaizen_old_')) \
               AND d.datdba = (SELECT oid FROM pg_roles WHERE rolname = current_user) \
               AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname) \
               AND NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' \
                    AND l.classid = $1::int4::oid AND l.objid = hashtext(d.datname)::oid AND l.objsubid = 2)",
            &[&NAME_CLASS],
        )
        .await
        .map_err(|e| db_error("looking for databases left by interrupted runs", &e))?;
    let mut dropped = Vec::new();
    for r in rows {
        let name: String = r.get(0);
        let Some(kind) = Temporary::of(&name) else {
            continue;
        };
        if !try_claim(admin, &name).await? {
            debug!("{name} belongs to a run still going on");
            continue;
        }
        match crate::restore::drop_database(admin, &name).await {
            Ok(()) => {
                warn!("Dropped {name}, {}", kind.leftover_of());
                dropped.push(name.clone());
            }
            Err(e) => warn!("Could not drop {name}, {}: {e}", kind.leftover_of()),
        }
        release(admin, &name).await;
    }
    Ok(dropped)
}

/// [`drop_leftovers`] on its own maintenance connection, for commands that have none
/// (backup). Never fails the command: a role without access is told at debug level.
pub async fn clean_server(pg: &PgConfig) {
    let admin = match pg.connect_to(&pg.maintenance_db).await {
        Ok(c) => c,
        Err(e) => {
            debug!("Not looking for leftovers of interrupted runs: {e}");
            return;
        }
    };
    if let Err(e) = drop_leftovers(&admin).await {
        debug!("Not looking for leftovers of interrupted runs: {e}");
    }
}

/// The lock a restore holds on its target name for its whole run, on the server
/// itself (so restoring needs no write to the storage). It ends with its session:
/// released when dropped, or when the process dies.
pub struct TargetLock {
    _session: Client,
}

impl std::fmt::Debug for TargetLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetLock").finish_non_exhaustive()
    }
}

/// Take the lock on restoring into `target` on `pg`'s server, waiting up to `timeout`
/// for another restore into the same name to finish.
pub async fn lock_target(pg: &PgConfig, target: &str, timeout: Duration) -> Result<TargetLock> {
    let session = pg.connect_to(&pg.maintenance_db).await?;
    let started = Instant::now();
    let mut announced = false;
    loop {
        let got: bool = session
            .query_one(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                &[&TARGET_CLASS, &target],
            )
            .await
            .map_err(|e| db_error(format!("locking restores into {target}"), &e))?
            .get(0);
        if got {
            return Ok(TargetLock { _session: session });
        }
        if started.elapsed() >= timeout {
            return Err(Error::Refused(format!(
                "another kaizen-backup restore into {target} is running on {}:{}; wait for it to finish \
                 (or use --lock-timeout SECS to wait); nothing was changed",
                pg.host, pg.port
            )));
        }
        if !announced {
            info!("Waiting for another restore into {target} to finish");
            announced = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
