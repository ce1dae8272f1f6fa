//! Checks 3–10: test restore into a temporary database, then compare it with what the
//! manifest recorded at dump time. The temporary database is always dropped.

use std::time::Instant;

use async_trait::async_trait;
use backup_core::catalog::Resolved;
use backup_core::claim::{self, Temporary};
use backup_core::codec::{DecryptKeys, decoder_for};
use backup_core::manifest::{Manifest, RowCountSource};
use backup_core::pg::{PgConfig, db_error, quote_ident};
use backup_core::restore::{self, RestoreOptions, create_database, drop_database};
use backup_core::stats::{object_counts, table_counts};
use backup_core::{CheckResult, Error, Result, Verifier, VerifyContext};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::result;

/// Prefix of temporary verification databases.
pub const VERIFY_DB_PREFIX: &str = "kaizen_verify_";

/// Restores into a temporary database and compares it with the manifest (checks
/// `test_restore`, `tables`, `sequences`, `indexes`, `constraints`, `row_counts`,
/// `foreign_keys`, `size`). Needs [`VerifyContext::pg`]; refuses a physical backup.
pub struct TestRestore {
    /// Cancels the restore (the database is still dropped).
    pub cancel: CancellationToken,
    /// Keys for an encrypted backup (the decoder comes from its manifest).
    pub keys: DecryptKeys,
    /// pg_restore jobs.
    pub jobs: u32,
    /// Staging directory for archives that need a local copy.
    pub temp_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for TestRestore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRestore").finish_non_exhaustive()
    }
}

/// Drop the temporary databases runs that died left behind (`kaizen_verify_*`, and the
/// `kaizen_restore_*`/`kaizen_old_*` of interrupted restores): nobody connected to them
/// and no live run holding their claim (see [`backup_core::claim`]).
pub async fn drop_stale_databases(admin: &Client) -> Result<Vec<String>> {
    claim::drop_leftovers(admin).await
}

#[async_trait]
impl Verifier for TestRestore {
    fn name(&self) -> &'static str {
        "test_restore"
    }

    /// Run checks 3–10.
    async fn verify(&self, ctx: &VerifyContext) -> Result<Vec<CheckResult>> {
        info!("Restoring to temporary database...");
        let started = Instant::now();
        if let Some(m) = &ctx.manifest {
            m.ensure_logical()?;
        }
        let Some(pg) = &ctx.pg else {
            return Err(Error::usage(
                "a test restore needs database connection settings",
            ));
        };
        let admin = pg.connect_to(&pg.maintenance_db).await?;
        drop_stale_databases(&admin).await?;
        let tool = restore::pg_restore_tool(pg, &admin).await?;
        let superuser: bool = admin
            .query_one(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(|e| db_error("checking privileges", &e))?
            .get(0);
        let base: String = ctx.name.chars().take(24).collect();
        // The name is claimed before the database exists and released after it is gone
        // (or with the connection).
        let db = claim::claim_new_name(&admin, Temporary::Verify, &base).await?;
        if let Err(e) = create_database(&admin, &db, ctx.manifest.as_ref()).await {
            claim::release(&admin, &db).await;
            return Err(e);
        }
        info!("Temporary database: {db}");
        let outcome = self
            .restore_and_compare(ctx, pg, &tool, &db, superuser, started)
            .await;
        // Always dropped: success, failure or cancellation.
        if let Err(e) = drop_database(&admin, &db).await {
            warn!("Could not drop {db}: {e}; the next verify drops it");
        }
        claim::release(&admin, &db).await;
        if self.cancel.is_cancelled() {
            return Err(Error::Interrupted("a signal".into()));
        }
        outcome
    }
}

impl TestRestore {
    async fn restore_and_compare(
        &self,
        ctx: &VerifyContext,
        pg: &PgConfig,
        tool: &backup_core::pg::Tool,
        db: &str,
        superuser: bool,
        started: Instant,
    ) -> Result<Vec<CheckResult>> {
        let resolved = Resolved {
            name: ctx.name.clone(),
            storage: ctx.storage.clone(),
            data_key: ctx.data_key.clone(),
            manifest: ctx.manifest.clone(),
        };
        let mut opts = RestoreOptions::new(db);
        // A role that is not superuser cannot give objects to their original owners.
        opts.settings.no_owner = !superuser;
        opts.settings.jobs = self.jobs.max(1);
        opts.settings.temp_dir = self.temp_dir.clone();
        if let Some(m) = &ctx.manifest {
            opts.decoder = decoder_for(m, &self.keys)?;
        }
        let loaded = restore::load(pg, tool, &resolved, db, &mut opts, &self.cancel).await;
        let mut checks = Vec::new();
        match loaded {
            Ok(stats) => checks.push(result(
                "test_restore",
                true,
                format!("restored {} bytes into {db}", stats.size),
                started,
            )),
            Err(e @ Error::Interrupted(_)) => return Err(e),
            Err(e) => {
                checks.push(result("test_restore", false, e.to_string(), started));
                return Ok(checks);
            }
        }
        let client = pg.connect_to(db).await?;
        if let Some(m) = &ctx.manifest {
            restore::set_skipped_sequences(&client, m).await?;
        }
        let Some(m) = &ctx.manifest else {
            checks.push(result(
                "tables",
                true,
                "no manifest to compare with",
                Instant::now(),
            ));
            return Ok(checks);
        };
        checks.extend(compare_counts(&client, m).await?);
        checks.push(compare_rows(&client, m).await?);
        checks.push(check_foreign_keys(&client).await?);
        checks.push(compare_size(&client, m).await?);
        checks.push(compare_locale(&client, m).await?);
        checks.push(compare_sequences(&client, m).await?);
        if m.roles.is_some() {
            checks.push(
                self.compare_properties(pg, &resolved, db, superuser)
                    .await?,
            );
        }
        Ok(checks)
    }
}

/// Check 11: the copy has the source's encoding and locale (a server without that
/// locale would restore it with its defaults, sorting text differently).
async fn compare_locale(client: &Client, m: &Manifest) -> Result<CheckResult> {
    let t = Instant::now();
    let got = backup_core::stats::server_info(client).await?;
    let describe =
        |enc: &str, collate: &str, ctype: &str, provider: Option<&str>, locale: Option<&str>| {
            let mut s = format!("{enc}, collate {collate}, ctype {ctype}");
            if let (Some(p), Some(l)) = (provider, locale) {
                s.push_str(&format!(", {p} locale {l}"));
            }
            s
        };
    let have = describe(
        &got.encoding,
        &got.lc_collate,
        &got.lc_ctype,
        got.locale_provider.as_deref(),
        got.locale.as_deref(),
    );
    let (Some(enc), Some(collate), Some(ctype)) = (&m.encoding, &m.lc_collate, &m.lc_ctype) else {
        return Ok(result(
            "locale",
            true,
            format!("{have} (the manifest records no locale)"),
            t,
        ));
    };
    let want = describe(
        enc,
        collate,
        ctype,
        m.locale_provider.as_deref(),
        m.locale.as_deref(),
    );
    Ok(if have == want {
        result("locale", true, have, t)
    } else {
        result(
            "locale",
            false,
            format!("restored with {have}, the source had {want} (this server lacks that locale)"),
            t,
        )
    })
}

impl TestRestore {
    /// Check 13: the database's own properties recorded with the roles (owner, privileges,
    /// comment, connection limit, database and role-in-database settings) apply to the
    /// copy as a restore applies them, and read back as recorded.
    async fn compare_properties(
        &self,
        pg: &PgConfig,
        resolved: &Resolved,
        db: &str,
        superuser: bool,
    ) -> Result<CheckResult> {
        let t = Instant::now();
        let fail = |why: String| Ok(result("database_properties", false, why, t));
        let mut set = match restore::load_roles(resolved, &self.keys).await {
            Ok(Some(set)) => set,
            Ok(None) => return fail("the roles object could not be read".into()),
            Err(e @ Error::Refused(_)) => return Err(e),
            Err(e) => return fail(e.to_string()),
        };
        let Some(want) = &set.database else {
            return Ok(result(
                "database_properties",
                true,
                "the backup records no database properties",
                t,
            ));
        };
        // Settings of other roles need CREATEROLE or superuser: a verifying role without
        // them checks the database's own settings only.
        let skipped = if superuser {
            0
        } else {
            let before = set.database_settings.len();
            set.database_settings.retain(|s| s.role.is_none());
            before - set.database_settings.len()
        };
        let admin = pg.connect_to(&pg.maintenance_db).await?;
        if let Err(e) = backup_core::pg::roles::apply_database_settings(&admin, &set, db).await {
            return fail(format!("the database's settings do not apply: {e}"));
        }
        if let Err(e) =
            backup_core::pg::roles::apply_database_properties(&admin, &set, db, !superuser).await
        {
            return fail(format!("the database's properties do not apply: {e}"));
        }
        let row = admin
            .query_one(
                "SELECT pg_get_userbyid(datdba)::text, shobj_description(oid, 'pg_database'), datconnlimit, \
                        ARRAY(SELECT coalesce(pg_get_userbyid(nullif(a.grantee, 0))::text, 'PUBLIC') || ':' || \
                                     a.privilege_type || ':' || a.is_grantable::text \
                                FROM aclexplode(datacl) a ORDER BY 1), \
                        ARRAY(SELECT coalesce(r.rolname::text, '*') || ':' || c \
                                FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole, \
                                     unnest(s.setconfig) c \
                               WHERE s.setdatabase = d.oid ORDER BY 1) \
                   FROM pg_database d WHERE datname = $1",
                &[&db],
            )
            .await
            .map_err(|e| backup_core::pg::db_error("reading the copy's properties", &e))?;
        let (owner, comment, limit, grants, settings): (
            String,
            Option<String>,
            i32,
            Vec<String>,
            Vec<String>,
        ) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let mut problems = Vec::new();
        if superuser && owner != want.owner {
            problems.push(format!("owner {owner}, recorded {}", want.owner));
        }
        if comment != want.comment {
            problems.push(format!("comment {comment:?}, recorded {:?}", want.comment));
        }
        if limit != want.connection_limit {
            problems.push(format!(
                "connection limit {limit}, recorded {}",
                want.connection_limit
            ));
        }
        if let Some(recorded) = &want.grants {
            let mut expect: Vec<String> = recorded
                .iter()
                .map(|g| {
                    format!(
                        "{}:{}:{}",
                        g.grantee.as_deref().unwrap_or("PUBLIC"),
                        g.privilege,
                        g.grantable
                    )
                })
                .collect();
            expect.sort();
            // The owner's own privileges follow the owner (who may differ with no_owner).
            let strip = |v: &[String], who: &str| -> Vec<String> {
                v.iter()
                    .filter(|x| !x.starts_with(&format!("{who}:")))
                    .cloned()
                    .collect()
            };
            if strip(&grants, &owner) != strip(&expect, &want.owner) {
                problems.push(format!("privileges {grants:?}, recorded {expect:?}"));
            }
        }
        let mut expect_settings: Vec<String> = set
            .database_settings
            .iter()
            .map(|s| format!("{}:{}", s.role.as_deref().unwrap_or("*"), s.setting))
            .collect();
        expect_settings.sort();
        if settings != expect_settings {
            problems.push(format!(
                "settings {settings:?}, recorded {expect_settings:?}"
            ));
        }
        Ok(if problems.is_empty() {
            result(
                "database_properties",
                true,
                format!(
                    "owner, {} privileges, comment, connection limit and {} settings as recorded{}",
                    want.grants.as_ref().map_or(0, Vec::len),
                    settings.len(),
                    if skipped > 0 {
                        format!(
                            " ({skipped} settings of other roles not checked: the verifying role is not superuser)"
                        )
                    } else {
                        String::new()
                    }
                ),
                t,
            )
        } else {
            result("database_properties", false, problems.join("; "), t)
        })
    }
}

/// Checks 4–7.
async fn compare_counts(client: &Client, m: &Manifest) -> Result<Vec<CheckResult>> {
    let t = Instant::now();
    let got = object_counts(client).await?;
    let want = &m.counts;
    Ok([
        ("tables", got.tables, want.tables),
        ("sequences", got.sequences, want.sequences),
        ("indexes", got.indexes, want.indexes),
        ("constraints", got.constraints, want.constraints),
    ]
    .into_iter()
    .map(|(name, g, w)| {
        if g == w {
            result(name, true, format!("{g}"), t)
        } else {
            result(
                name,
                false,
                format!("restored copy has {g}, manifest recorded {w}"),
                t,
            )
        }
    })
    .collect())
}

/// Check 8: exact row counts per table.
async fn compare_rows(client: &Client, m: &Manifest) -> Result<CheckResult> {
    let t = Instant::now();
    if m.tables.is_empty() && m.counts.tables > 0 {
        return Ok(result(
            "row_counts",
            true,
            "skipped: the manifest has no row counts (backup.row_counts = false)",
            t,
        ));
    }
    let got = table_counts(client).await?;
    let mut problems = Vec::new();
    for want in &m.tables {
        match got
            .iter()
            .find(|g| g.schema == want.schema && g.name == want.name)
        {
            Some(g) if g.rows == want.rows => {}
            Some(g) => problems.push(format!(
                "{}.{}: {} rows, manifest {}",
                want.schema, want.name, g.rows, want.rows
            )),
            None => problems.push(format!("{}.{}: missing", want.schema, want.name)),
        }
    }
    for g in &got {
        if !m
            .tables
            .iter()
            .any(|w| w.schema == g.schema && w.name == g.name)
        {
            problems.push(format!("{}.{}: not in the manifest", g.schema, g.name));
        }
    }
    if problems.is_empty() {
        let total: i64 = m.tables.iter().map(|t| t.rows).sum();
        Ok(result(
            "row_counts",
            true,
            format!(
                "{} tables, {total} rows, all equal{}",
                m.tables.len(),
                match m.row_count_source {
                    Some(RowCountSource::Dump) => " to the rows counted in the archive",
                    Some(RowCountSource::Snapshot) | None => "",
                }
            ),
            t,
        ))
    } else {
        Ok(result(
            "row_counts",
            false,
            problems.into_iter().take(10).collect::<Vec<_>>().join("; "),
            t,
        ))
    }
}

/// Check 9: every foreign key validates (no orphan rows), by anti-join.
async fn check_foreign_keys(client: &Client) -> Result<CheckResult> {
    let t = Instant::now();
    let rows = client
        .query(
            "SELECT con.conname::text, cn.nspname::text, c.relname::text, c.relkind::text, pn.nspname::text, p.relname::text, \
                    ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, i) \
                          JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.i), \
                    ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, i) \
                          JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.i) \
             FROM pg_constraint con \
             JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace \
             JOIN pg_class p ON p.oid = con.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace \
             WHERE con.contype = 'f' AND con.conparentid = 0",
            &[],
        )
        .await
        .map_err(|e| db_error("listing foreign keys", &e))?;
    let mut bad = Vec::new();
    for r in &rows {
        let (name, cs, ct, kind, ps, pt): (String, String, String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        let fk: Vec<String> = r.get(6);
        let pk: Vec<String> = r.get(7);
        let only = if kind == "r" { "ONLY " } else { "" };
        let not_null = fk
            .iter()
            .map(|c| format!("c.{} IS NOT NULL", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let join = fk
            .iter()
            .zip(&pk)
            .map(|(f, p)| format!("p.{} = c.{}", quote_ident(p), quote_ident(f)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let sql = format!(
            "SELECT count(*) FROM {only}{}.{} c WHERE {not_null} AND NOT EXISTS (SELECT 1 FROM {}.{} p WHERE {join})",
            quote_ident(&cs),
            quote_ident(&ct),
            quote_ident(&ps),
            quote_ident(&pt)
        );
        let orphans: i64 = client
            .query_one(sql.as_str(), &[])
            .await
            .map_err(|e| db_error(format!("checking foreign key {name}"), &e))?
            .get(0);
        if orphans > 0 {
            bad.push(format!("{cs}.{ct} {name}: {orphans} orphan row(s)"));
        }
    }
    if bad.is_empty() {
        Ok(result(
            "foreign_keys",
            true,
            format!("{} foreign keys, no orphan rows", rows.len()),
            t,
        ))
    } else {
        Ok(result("foreign_keys", false, bad.join("; "), t))
    }
}

/// Check 10: restored size beside the source size. Index bloat and free space make
/// them differ; only a gross mismatch (under a tenth or over ten times) fails.
async fn compare_size(client: &Client, m: &Manifest) -> Result<CheckResult> {
    let t = Instant::now();
    let size: i64 = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .map_err(|e| db_error("reading the restored size", &e))?
        .get(0);
    let src = m.database_size_bytes.max(1);
    let ratio = size as f64 / src as f64;
    let detail = format!(
        "restored {} vs source {} (ratio {ratio:.2})",
        backup_core::util::human_size(size.max(0) as u64),
        backup_core::util::human_size(src as u64)
    );
    Ok(result("size", (0.1..=10.0).contains(&ratio), detail, t))
}

/// Check 12: every recorded sequence is in the copy; those pg_dump does not carry have
/// exactly their recorded value (the others were read by pg_dump a moment apart from us,
/// so a busy database may have moved them on).
async fn compare_sequences(client: &Client, m: &Manifest) -> Result<CheckResult> {
    let t = Instant::now();
    let got = backup_core::stats::sequence_values(client).await?;
    let mut problems = Vec::new();
    let mut moved = 0usize;
    for want in &m.sequences {
        let Some(have) = got
            .iter()
            .find(|g| g.schema == want.schema && g.name == want.name)
        else {
            problems.push(format!("{}.{} is missing", want.schema, want.name));
            continue;
        };
        let same = have.last_value == want.last_value && have.is_called == want.is_called;
        if !want.dumped && !same {
            problems.push(format!(
                "{}.{} is at {}, the backup recorded {}",
                want.schema, want.name, have.last_value, want.last_value
            ));
        } else if !same {
            moved += 1;
        }
    }
    let skipped = m.sequences.iter().filter(|s| !s.dumped).count();
    Ok(if problems.is_empty() {
        result(
            "sequence_values",
            true,
            format!(
                "{} sequences, {skipped} of them set from the manifest (pg_dump skips them){}",
                m.sequences.len(),
                if moved > 0 {
                    format!("; {moved} moved on while the dump ran")
                } else {
                    String::new()
                }
            ),
            t,
        )
    } else {
        result("sequence_values", false, problems.join("; "), t)
    })
}
