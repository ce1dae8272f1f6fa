//! The databases a restore works with: the target's checks (refused targets), the
//! temporary copy's creation and removal, and the swap that puts the copy in the target's
//! place in one transaction.

use std::time::Duration;

use tokio_postgres::Client;
use tracing::{debug, warn};

use crate::claim::{self, Temporary};
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::pg::{PgConfig, db_error, quote_ident, quote_literal};

/// Whether a database exists.
pub async fn database_exists(admin: &Client, name: &str) -> Result<bool> {
    let row = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(|e| db_error(format!("looking up database {name}"), &e))?;
    Ok(row.is_some())
}

/// Create an empty database from `template0`, with the source's encoding and locale
/// when the manifest recorded them.
pub async fn create_database(
    admin: &Client,
    name: &str,
    manifest: Option<&Manifest>,
) -> Result<()> {
    let mut sql = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(name));
    if let Some(m) = manifest {
        if let Some(enc) = &m.encoding {
            sql.push_str(&format!(" ENCODING {}", quote_literal(enc)));
        }
        if let (Some(c), Some(t)) = (&m.lc_collate, &m.lc_ctype) {
            sql.push_str(&format!(
                " LC_COLLATE {} LC_CTYPE {}",
                quote_literal(c),
                quote_literal(t)
            ));
        }
        match (m.locale_provider.as_deref(), &m.locale) {
            (Some("icu"), Some(l)) => {
                sql.push_str(&format!(
                    " LOCALE_PROVIDER icu ICU_LOCALE {}",
                    quote_literal(l)
                ));
            }
            (Some("builtin"), Some(l)) => {
                sql.push_str(&format!(
                    " LOCALE_PROVIDER builtin BUILTIN_LOCALE {}",
                    quote_literal(l)
                ));
            }
            _ => {}
        }
    }
    match admin.batch_execute(&sql).await {
        Ok(()) => Ok(()),
        Err(e) if manifest.is_some() => {
            // The source's locale may not exist on this server: fall back to its defaults.
            warn!(
                "Creating {name} with the source's encoding/locale failed ({}); using the server defaults",
                db_error("", &e)
            );
            admin
                .batch_execute(&format!(
                    "CREATE DATABASE {} TEMPLATE template0",
                    quote_ident(name)
                ))
                .await
                .map_err(|e| db_error(format!("creating database {name}"), &e))
        }
        Err(e) => Err(db_error(format!("creating database {name}"), &e)),
    }
}

/// Drop a database, disconnecting its sessions.
pub async fn drop_database(admin: &Client, name: &str) -> Result<()> {
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(name)
        ))
        .await
        .map_err(|e| db_error(format!("dropping database {name}"), &e))
}

/// A name for a temporary database derived from `base` (fits in 63 bytes).
pub fn temp_db_name(prefix: &str, base: &str) -> String {
    let base: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(30)
        .collect();
    format!(
        "{prefix}_{}_{}",
        base.to_ascii_lowercase(),
        crate::util::random_suffix(8)
    )
}

/// Refuse a target that restoring into would break the server or lock us out: a
/// template database (copied into every database created later), one that accepts no
/// connections, or the maintenance database our own admin connections use. Usage errors
/// (exit 2); nothing is touched.
pub async fn check_target(admin: &Client, pg: &PgConfig, target: &str) -> Result<()> {
    let refuse = |why: &str| {
        Err(Error::usage(format!(
            "refusing to restore into {target}: {why}; choose another target database, nothing was changed"
        )))
    };
    if target.is_empty() {
        return Err(Error::usage("empty target database name"));
    }
    if target == pg.maintenance_db {
        return refuse(
            "it is the maintenance database kaizen-backup connects to for creating and dropping databases (database.maintenance_db)",
        );
    }
    let row = admin
        .query_opt(
            "SELECT datistemplate, datallowconn FROM pg_database WHERE datname = $1",
            &[&target],
        )
        .await
        .map_err(|e| db_error(format!("looking up database {target}"), &e))?;
    if let Some(row) = row {
        let (template, allow_conn): (bool, bool) = (row.get(0), row.get(1));
        if template {
            return refuse("it is a template database, copied into every database created later");
        }
        if !allow_conn {
            return refuse(&format!(
                "it does not accept connections (datallowconn = false; if an interrupted restore of an \
                 older kaizen-backup closed it, reopen it with ALTER DATABASE {} WITH ALLOW_CONNECTIONS true)",
                quote_ident(target)
            ));
        }
    }
    Ok(())
}

/// [`check_target`] on a connection of its own; whether `target` exists.
pub async fn inspect_target(pg: &PgConfig, target: &str) -> Result<bool> {
    let admin = pg.connect_to(&pg.maintenance_db).await?;
    check_target(&admin, pg, target).await?;
    database_exists(&admin, target).await
}

/// Put `temp` in place of `target`.
///
/// The whole switch is one transaction: `ALTER DATABASE ... RENAME` may run in a
/// transaction block, and the rename takes an exclusive lock on the database that new
/// connections wait for. A run killed before `COMMIT` is rolled back by the server (the
/// target untouched, under its name, accepting connections); after `COMMIT` only the
/// claimed `kaizen_old_*` copy is left, which the next run drops. Clients that connect
/// during the switch wait for it and are then told the database was renamed; their
/// next connection reaches the restored database.
pub(super) async fn swap_in(admin: &Client, temp: &str, target: &str, exists: bool) -> Result<()> {
    let qt = quote_ident(target);
    if !exists {
        return admin
            .batch_execute(&format!(
                "ALTER DATABASE {} RENAME TO {qt}",
                quote_ident(temp)
            ))
            .await
            .map_err(|e| db_error(format!("renaming {temp} to {target}"), &e));
    }
    let old = claim::claim_new_name(admin, Temporary::Old, target).await?;
    let owner: Option<String> = admin
        .query_opt(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1",
            &[&target],
        )
        .await
        .map_err(|e| db_error("reading the target's owner", &e))?
        .map(|r| r.get(0));
    let switched = switch(admin, temp, target, &old, owner.as_deref()).await;
    if let Err(e) = switched {
        if let Err(re) = admin.batch_execute("ROLLBACK").await {
            debug!("rolling back the swap: {re}");
        }
        claim::release(admin, &old).await;
        return Err(e);
    }
    crate::util::pause_point("swap-after-commit").await;
    if let Err(e) = drop_database(admin, &old).await {
        warn!("The previous {target} was kept as {old}: {e}; the next run drops it");
    }
    claim::release(admin, &old).await;
    Ok(())
}

/// The transaction of [`swap_in`], committed only when every step succeeded.
async fn switch(
    admin: &Client,
    temp: &str,
    target: &str,
    old: &str,
    owner: Option<&str>,
) -> Result<()> {
    let qt = quote_ident(target);
    admin
        .batch_execute("BEGIN")
        .await
        .map_err(|e| db_error("starting the swap", &e))?;
    // The rename fails while sessions are connected; one may connect between the
    // terminate and the rename, so both are retried (the savepoint keeps the transaction).
    let mut renamed = Err(Error::other("not tried"));
    for attempt in 0..10 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        admin
            .batch_execute("SAVEPOINT kaizen_rename")
            .await
            .map_err(|e| db_error("starting the swap", &e))?;
        if let Err(e) = admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&target],
            )
            .await
        {
            debug!("terminating the sessions on {target}: {e}");
        }
        renamed = admin
            .batch_execute(&format!(
                "ALTER DATABASE {qt} RENAME TO {}",
                quote_ident(old)
            ))
            .await
            .map_err(|e| db_error(format!("renaming {target} away"), &e));
        if renamed.is_ok() {
            break;
        }
        admin
            .batch_execute("ROLLBACK TO SAVEPOINT kaizen_rename")
            .await
            .map_err(|e| db_error("retrying the swap", &e))?;
    }
    renamed?;
    // The old copy becomes ours, like every temporary database of a run, so that the next
    // run of this role drops it if this one dies before it does.
    savepoint_or_warn(
        admin,
        &format!("ALTER DATABASE {} OWNER TO CURRENT_USER", quote_ident(old)),
        &format!("Could not take ownership of {old}"),
    )
    .await?;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} RENAME TO {qt}",
            quote_ident(temp)
        ))
        .await
        .map_err(|e| db_error(format!("renaming the restored database to {target}"), &e))?;
    if let Some(owner) = owner {
        savepoint_or_warn(
            admin,
            &format!("ALTER DATABASE {qt} OWNER TO {}", quote_ident(owner)),
            &format!("Could not give {target} back to its owner {owner}"),
        )
        .await?;
    }
    crate::util::pause_point("swap-before-commit").await;
    admin
        .batch_execute("COMMIT")
        .await
        .map_err(|e| db_error(format!("committing the swap of {target}"), &e))
}

/// Run `sql` inside the swap's transaction; when it fails, log `what` and go on without it.
async fn savepoint_or_warn(admin: &Client, sql: &str, what: &str) -> Result<()> {
    admin
        .batch_execute("SAVEPOINT kaizen_optional")
        .await
        .map_err(|e| db_error("swapping", &e))?;
    if let Err(e) = admin.batch_execute(sql).await {
        warn!("{what}: {}", db_error("", &e));
        admin
            .batch_execute("ROLLBACK TO SAVEPOINT kaizen_optional")
            .await
            .map_err(|e| db_error("swapping", &e))?;
    }
    Ok(())
}
