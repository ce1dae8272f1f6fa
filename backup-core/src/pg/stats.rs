//! The database's shape: object counts and exact row counts, used in the manifest at
//! dump time and again after a test restore; and the server's WAL archiver statistics,
//! which `status` reports.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::error::Result;
use crate::manifest::{ObjectCounts, TableCount};
use crate::pg::{db_error, quote_ident};

/// Schemas that belong to PostgreSQL, not to the application.
const USER_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'";

/// Server facts recorded in the manifest.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// `server_version`, e.g. `15.18 (Debian 15.18-0+deb12u1)`.
    pub version: String,
    /// Major version, e.g. 15.
    pub major: u32,
    /// `pg_database_size(current_database())`.
    pub database_size: i64,
    /// Encoding name.
    pub encoding: String,
    /// Collation.
    pub lc_collate: String,
    /// Ctype.
    pub lc_ctype: String,
    /// Locale provider (`icu`, `builtin`; `None` for libc, the only one before 15).
    pub locale_provider: Option<String>,
    /// The ICU (or builtin) locale when that provider is used.
    pub locale: Option<String>,
}

/// Read server and database facts.
pub async fn server_info<C: GenericClient>(c: &C) -> Result<ServerInfo> {
    let row = c
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int, \
                    pg_database_size(current_database()), pg_encoding_to_char(d.encoding), \
                    d.datcollate::text, d.datctype::text \
             FROM pg_database d WHERE d.datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| db_error("reading server information", &e))?;
    let num: i32 = row.get(1);
    // datlocprovider (15+): c = libc, i = icu, b = builtin (17+); the locale column is
    // daticulocale in 15 and 16, datlocale from 17.
    let (locale_provider, locale) = if num >= 150000 {
        let column = if num >= 170000 {
            "datlocale"
        } else {
            "daticulocale"
        };
        let r = c
            .query_one(
                &format!(
                    "SELECT CASE datlocprovider WHEN 'i' THEN 'icu' WHEN 'b' THEN 'builtin' END, {column}::text \
                     FROM pg_database WHERE datname = current_database()"
                ),
                &[],
            )
            .await
            .map_err(|e| db_error("reading the database's locale provider", &e))?;
        let provider: Option<String> = r.get(0);
        (provider.clone(), provider.and(r.get(1)))
    } else {
        (None, None)
    };
    Ok(ServerInfo {
        version: row.get(0),
        major: (num / 10000) as u32,
        database_size: row.get(2),
        encoding: row.get(3),
        lc_collate: row.get(4),
        lc_ctype: row.get(5),
        locale_provider,
        locale,
    })
}

/// Count tables, sequences, indexes and constraints in user schemas
/// (objects that belong to extensions are left out, as pg_dump leaves them out).
pub async fn object_counts<C: GenericClient>(c: &C) -> Result<ObjectCounts> {
    let sql = format!(
        "SELECT \
          (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
            WHERE c.relkind IN ('r','p') AND {USER_SCHEMAS} \
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')), \
          (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
            WHERE c.relkind = 'S' AND {USER_SCHEMAS} \
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')), \
          (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
            WHERE c.relkind IN ('i','I') AND {USER_SCHEMAS} \
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')), \
          (SELECT count(*) FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace \
            WHERE {USER_SCHEMAS} \
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_constraint'::regclass AND d.objid = con.oid AND d.deptype = 'e'))"
    );
    let row = c
        .query_one(sql.as_str(), &[])
        .await
        .map_err(|e| db_error("counting objects", &e))?;
    Ok(ObjectCounts {
        tables: row.get(0),
        sequences: row.get(1),
        indexes: row.get(2),
        constraints: row.get(3),
    })
}

/// The size of table `c` on disk with its indexes and TOAST; a partitioned table's is the
/// sum of its partitions' (at every level).
const TABLE_SIZE: &str = "CASE WHEN c.relkind = 'p' THEN \
      (WITH RECURSIVE tree(oid) AS (SELECT c.oid UNION ALL \
         SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.oid) \
       SELECT sum(pg_total_relation_size(tree.oid))::bigint FROM tree) \
    ELSE pg_total_relation_size(c.oid) END";

/// Every user table with its exact row count (`count(*)`, in the caller's snapshot) and
/// its size.
/// Partitioned tables count the rows of all their partitions; ordinary tables count
/// only their own rows (`ONLY`), so inheritance is not counted twice.
pub async fn table_counts<C: GenericClient>(c: &C) -> Result<Vec<TableCount>> {
    let sql = format!(
        "SELECT n.nspname::text, c.relname::text, c.relkind::text, {TABLE_SIZE} \
           FROM pg_class c \
           JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE c.relkind IN ('r','p') AND {USER_SCHEMAS} \
            AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e') \
          ORDER BY 1, 2"
    );
    let rows = c
        .query(sql.as_str(), &[])
        .await
        .map_err(|e| db_error("listing tables", &e))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let schema: String = r.get(0);
        let name: String = r.get(1);
        let kind: String = r.get(2);
        let only = if kind == "r" { "ONLY " } else { "" };
        let q = format!(
            "SELECT count(*) FROM {only}{}.{}",
            quote_ident(&schema),
            quote_ident(&name)
        );
        let row = c
            .query_one(q.as_str(), &[])
            .await
            .map_err(|e| db_error(format!("counting rows of {schema}.{name}"), &e))?;
        out.push(TableCount {
            schema,
            name,
            rows: row.get(0),
            size_bytes: r.get(3),
        });
    }
    Ok(out)
}

/// Every user table that [`table_counts`] lists, with its rows taken from `dumped`
/// (`(schema, name) → rows` counted in the archive by [`crate::rows::CopyRowCounter`])
/// instead of a scan: a partitioned table has the rows of its partitions (those that
/// hold data: ordinary tables), a table with no data in the archive has 0 rows. Only the
/// catalog is read.
pub async fn table_counts_from<C: GenericClient>(
    c: &C,
    dumped: &BTreeMap<(String, String), i64>,
) -> Result<Vec<TableCount>> {
    let sql = format!(
        "SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text, {TABLE_SIZE} \
           FROM pg_class c \
           JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE c.relkind IN ('r','p') AND {USER_SCHEMAS} \
            AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e') \
          ORDER BY 2, 3"
    );
    let tables = c
        .query(sql.as_str(), &[])
        .await
        .map_err(|e| db_error("listing tables", &e))?;
    let leaves = c
        .query(
            "WITH RECURSIVE tree(root, relid) AS ( \
               SELECT oid, oid FROM pg_class WHERE relkind = 'p' \
               UNION ALL \
               SELECT tree.root, i.inhrelid FROM tree JOIN pg_inherits i ON i.inhparent = tree.relid) \
             SELECT tree.root::int8, n.nspname::text, c.relname::text FROM tree \
               JOIN pg_class c ON c.oid = tree.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.relkind = 'r'",
            &[],
        )
        .await
        .map_err(|e| db_error("listing partitions", &e))?;
    let rows_of = |schema: String, name: String| dumped.get(&(schema, name)).copied().unwrap_or(0);
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        let oid: i64 = t.get(0);
        let (schema, name, kind): (String, String, String) = (t.get(1), t.get(2), t.get(3));
        let size_bytes: Option<i64> = t.get(4);
        let rows = if kind == "p" {
            leaves
                .iter()
                .filter(|l| l.get::<_, i64>(0) == oid)
                .map(|l| rows_of(l.get(1), l.get(2)))
                .sum()
        } else {
            rows_of(schema.clone(), name.clone())
        };
        out.push(TableCount {
            schema,
            name,
            rows,
            size_bytes,
        });
    }
    Ok(out)
}

/// What the server's archiver did with `archive_command` (`pg_stat_archiver`), counted
/// since `stats_reset`. PostgreSQL counts every failure, including those where
/// `wal-push` never ran (a missing binary, an unreadable configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArchiverStats {
    /// `archive_mode` is `on` or `always` (when `off`, nothing is archived and the
    /// counters stay 0).
    pub enabled: bool,
    /// WAL files archived.
    pub archived_count: i64,
    /// The last one archived.
    pub last_archived_wal: Option<String>,
    /// When it was archived.
    pub last_archived_time: Option<DateTime<Utc>>,
    /// Failed attempts (`archive_command` exited non-zero or was killed).
    pub failed_count: i64,
    /// The file of the last failed attempt.
    pub last_failed_wal: Option<String>,
    /// When it failed.
    pub last_failed_time: Option<DateTime<Utc>>,
    /// When these counters started.
    pub stats_reset: Option<DateTime<Utc>>,
}

impl ArchiverStats {
    /// Whether archiving is failing now: the last attempt failed (a failure after the last
    /// success). The archiver retries the same file until it succeeds, so this stays true
    /// until the cause is fixed.
    pub fn failing(&self) -> bool {
        match (self.last_failed_time, self.last_archived_time) {
            (Some(failed), Some(archived)) => failed > archived,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// Read `pg_stat_archiver` (readable by any role).
pub async fn archiver_stats<C: GenericClient>(c: &C) -> Result<ArchiverStats> {
    let micros = |t: &str| format!("(extract(epoch FROM {t}) * 1000000)::int8");
    let sql = format!(
        "SELECT current_setting('archive_mode') <> 'off', archived_count, last_archived_wal, {}, \
                failed_count, last_failed_wal, {}, {} FROM pg_stat_archiver",
        micros("last_archived_time"),
        micros("last_failed_time"),
        micros("stats_reset"),
    );
    let row = c
        .query_one(sql.as_str(), &[])
        .await
        .map_err(|e| db_error("reading pg_stat_archiver", &e))?;
    let time = |i: usize| {
        row.get::<_, Option<i64>>(i)
            .and_then(DateTime::from_timestamp_micros)
    };
    Ok(ArchiverStats {
        enabled: row.get(0),
        archived_count: row.get(1),
        last_archived_wal: row.get(2),
        last_archived_time: time(3),
        failed_count: row.get(4),
        last_failed_wal: row.get(5),
        last_failed_time: time(6),
        stats_reset: time(7),
    })
}

/// Every sequence's value (user schemas, and those extensions own), with whether pg_dump
/// carries it: it skips extension members that are not extension configuration.
pub async fn sequence_values<C: GenericClient>(
    c: &C,
) -> Result<Vec<crate::manifest::SequenceValue>> {
    let seqs = c
        .query(
            "SELECT n.nspname::text, s.relname::text, x.extname::text, \
                    (x.oid IS NULL OR s.oid = ANY(coalesce(x.extconfig, '{}'::oid[]))) \
               FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace \
               LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid AND d.deptype = 'e' \
               LEFT JOIN pg_extension x ON x.oid = d.refobjid \
              WHERE s.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp_' \
              ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| db_error("listing sequences", &e))?;
    let mut out = Vec::with_capacity(seqs.len());
    for row in seqs {
        let (schema, name): (String, String) = (row.get(0), row.get(1));
        let sql = format!(
            "SELECT last_value, is_called FROM {}.{}",
            crate::pg::quote_ident(&schema),
            crate::pg::quote_ident(&name)
        );
        let v = c
            .query_one(sql.as_str(), &[])
            .await
            .map_err(|e| db_error(format!("reading sequence {schema}.{name}"), &e))?;
        out.push(crate::manifest::SequenceValue {
            schema,
            name,
            last_value: v.get(0),
            is_called: v.get(1),
            extension: row.get(2),
            dumped: row.get(3),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(secs, 0)
    }

    #[test]
    fn failing_means_the_last_attempt_failed() {
        let s = |archived: Option<DateTime<Utc>>, failed: Option<DateTime<Utc>>| ArchiverStats {
            enabled: true,
            archived_count: 0,
            last_archived_wal: None,
            last_archived_time: archived,
            failed_count: i64::from(failed.is_some()),
            last_failed_wal: None,
            last_failed_time: failed,
            stats_reset: None,
        };
        assert!(!s(None, None).failing());
        assert!(!s(at(10), None).failing());
        assert!(s(None, at(10)).failing());
        assert!(s(at(10), at(20)).failing());
        // Failed, then archived on a retry: no longer failing (the count stays).
        assert!(!s(at(20), at(10)).failing());
    }
}
