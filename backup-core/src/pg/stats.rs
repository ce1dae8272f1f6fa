//! The database's shape: object counts and exact row counts, used in the manifest at
//! dump time and again after a test restore.

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
    Ok(ServerInfo {
        version: row.get(0),
        major: (num / 10000) as u32,
        database_size: row.get(2),
        encoding: row.get(3),
        lc_collate: row.get(4),
        lc_ctype: row.get(5),
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

/// Every user table with its exact row count (`count(*)`, in the caller's snapshot).
/// Partitioned tables count the rows of all their partitions; ordinary tables count
/// only their own rows (`ONLY`), so inheritance is not counted twice.
pub async fn table_counts<C: GenericClient>(c: &C) -> Result<Vec<TableCount>> {
    let sql = format!(
        "SELECT n.nspname::text, c.relname::text, c.relkind::text FROM pg_class c \
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
        });
    }
    Ok(out)
}
