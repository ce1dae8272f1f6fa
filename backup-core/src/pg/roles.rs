//! The roles a database needs from its cluster: captured with every logical backup,
//! created on a server that lacks them before a restore.
//!
//! ```text
//! backup:  owners, grantees, policy roles, default-privilege roles, per-database role
//!          settings (pg_shdepend, pg_database, pg_db_role_setting)
//!            + the roles they are members of, + the members of them (pg_auth_members)
//!          ─▶ RoleSet (JSON; password hashes only when the backup role may read pg_authid)
//! restore: missing roles created with their attributes, passwords, role settings and
//!          memberships among created ones — an existing role is never changed
//! ```
//!
//! Predefined roles (`pg_*`) exist on every server and are never captured or created.

mod apply;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::pg::db_error;

pub use apply::{
    apply_database_properties, apply_database_settings, check_can_create, create_missing,
    drop_created, missing, set_clause,
};

/// Format of [`RoleSet`].
pub const ROLES_FORMAT_VERSION: u32 = 1;

/// One role and what `CREATE ROLE` needs to make it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Name.
    pub name: String,
    /// `SUPERUSER`.
    pub superuser: bool,
    /// `INHERIT`.
    pub inherit: bool,
    /// `CREATEROLE`.
    pub createrole: bool,
    /// `CREATEDB`.
    pub createdb: bool,
    /// `LOGIN`.
    pub login: bool,
    /// `REPLICATION`.
    pub replication: bool,
    /// `BYPASSRLS`.
    pub bypassrls: bool,
    /// `CONNECTION LIMIT` (-1: none).
    pub connection_limit: i32,
    /// `VALID UNTIL`, as the server printed it.
    pub valid_until: Option<String>,
    /// The password verifier (SCRAM or md5 hash), when the backup role could read it.
    pub password: Option<String>,
    /// `ALTER ROLE … SET` values for every database (`name=value`).
    pub settings: Vec<String>,
}

/// `GRANT role TO member`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The group role.
    pub role: String,
    /// The member.
    pub member: String,
    /// `WITH ADMIN OPTION`.
    pub admin: bool,
}

/// `ALTER ROLE role IN DATABASE <the database> SET setting`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseRoleSetting {
    /// The role (`None`: every role, `ALTER DATABASE … SET`).
    pub role: Option<String>,
    /// `name=value`.
    pub setting: String,
}

/// One privilege on the database (`aclexplode(datacl)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseGrant {
    /// The grantee (`None`: PUBLIC).
    pub grantee: Option<String>,
    /// `CONNECT`, `CREATE` or `TEMPORARY`.
    pub privilege: String,
    /// `WITH GRANT OPTION`.
    pub grantable: bool,
}

/// The database's own properties, which a dump without `--create` does not carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseProperties {
    /// Owner.
    pub owner: String,
    /// Its privileges; `None` while they are the defaults.
    pub grants: Option<Vec<DatabaseGrant>>,
    /// `COMMENT ON DATABASE`.
    pub comment: Option<String>,
    /// `CONNECTION LIMIT` (-1: none).
    pub connection_limit: i32,
}

/// What a database needs from its cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleSet {
    /// [`ROLES_FORMAT_VERSION`].
    pub format_version: u32,
    /// Whether password verifiers are included (the backup role could read them).
    pub passwords: bool,
    /// The roles, sorted by name.
    pub roles: Vec<Role>,
    /// Memberships among them (and in predefined roles).
    pub memberships: Vec<Membership>,
    /// Settings of roles (and of every role) in this database.
    pub database_settings: Vec<DatabaseRoleSetting>,
    /// The database's owner, privileges, comment and connection limit.
    #[serde(default)]
    pub database: Option<DatabaseProperties>,
}

const REFERENCED: &str = "
WITH RECURSIVE db AS (SELECT oid FROM pg_database WHERE datname = current_database()),
direct AS (
    SELECT refobjid AS oid FROM pg_shdepend
     WHERE refclassid = 'pg_authid'::regclass
       AND (dbid = (SELECT oid FROM db)
            OR (dbid = 0 AND classid = 'pg_database'::regclass AND objid = (SELECT oid FROM db)))
    UNION SELECT datdba FROM pg_database WHERE oid = (SELECT oid FROM db)
    UNION SELECT setrole FROM pg_db_role_setting
     WHERE setdatabase = (SELECT oid FROM db) AND setrole <> 0
),
up AS (
    SELECT oid FROM direct
    UNION SELECT m.roleid FROM pg_auth_members m JOIN up ON m.member = up.oid
),
down AS (
    SELECT oid FROM direct
    UNION SELECT m.member FROM pg_auth_members m JOIN down ON m.roleid = down.oid
)
SELECT r.oid, r.rolname::text, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb,
       r.rolcanlogin, r.rolreplication, r.rolbypassrls, r.rolconnlimit, r.rolvaliduntil::text
  FROM pg_roles r
 WHERE r.oid IN (SELECT oid FROM up UNION SELECT oid FROM down)
   AND r.rolname !~ '^pg_'
 ORDER BY r.rolname";

/// Run a catalog query, naming `what` on failure.
async fn rows(
    client: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    what: &str,
) -> Result<Vec<tokio_postgres::Row>> {
    client
        .query(sql, params)
        .await
        .map_err(|e| db_error(what, &e))
}

/// Read the roles the connected database needs (see the module docs).
pub async fn capture(client: &Client) -> Result<RoleSet> {
    let referenced = rows(
        client,
        REFERENCED,
        &[],
        "reading the roles the database needs",
    )
    .await?;
    let oids: Vec<u32> = referenced.iter().map(|r| r.get(0)).collect();
    let mut roles: Vec<Role> = referenced
        .iter()
        .map(|r| Role {
            name: r.get(1),
            superuser: r.get(2),
            inherit: r.get(3),
            createrole: r.get(4),
            createdb: r.get(5),
            login: r.get(6),
            replication: r.get(7),
            bypassrls: r.get(8),
            connection_limit: r.get(9),
            valid_until: r.get(10),
            password: None,
            settings: Vec::new(),
        })
        .collect();
    let readable: bool = client
        .query_one("SELECT has_table_privilege('pg_authid', 'SELECT')", &[])
        .await
        .map_err(|e| db_error("checking access to password hashes", &e))?
        .get(0);
    if readable {
        let hashes = rows(
            client,
            "SELECT rolname::text, rolpassword FROM pg_authid WHERE oid = ANY($1) AND rolpassword IS NOT NULL",
            &[&oids],
            "reading password hashes",
        )
        .await?;
        for row in hashes {
            let name: String = row.get(0);
            if let Some(r) = roles.iter_mut().find(|r| r.name == name) {
                r.password = Some(row.get(1));
            }
        }
    }
    let settings = rows(
        client,
        "SELECT r.rolname::text, unnest(s.setconfig) FROM pg_db_role_setting s \
         JOIN pg_roles r ON r.oid = s.setrole WHERE s.setdatabase = 0 AND s.setrole = ANY($1) \
         ORDER BY 1",
        &[&oids],
        "reading role settings",
    )
    .await?;
    for row in settings {
        let name: String = row.get(0);
        if let Some(r) = roles.iter_mut().find(|r| r.name == name) {
            r.settings.push(row.get(1));
        }
    }
    let memberships = rows(
        client,
        "SELECT g.rolname::text, m.rolname::text, am.admin_option FROM pg_auth_members am \
         JOIN pg_roles g ON g.oid = am.roleid JOIN pg_roles m ON m.oid = am.member \
         WHERE am.member = ANY($1) AND (am.roleid = ANY($1) OR g.rolname ~ '^pg_') \
         ORDER BY 1, 2",
        &[&oids],
        "reading role memberships",
    )
    .await?
    .iter()
    .map(|r| Membership {
        role: r.get(0),
        member: r.get(1),
        admin: r.get(2),
    })
    .collect();
    let database_settings = rows(
        client,
        "SELECT r.rolname::text, unnest(s.setconfig) FROM pg_db_role_setting s \
         LEFT JOIN pg_roles r ON r.oid = s.setrole \
         WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         ORDER BY 1 NULLS FIRST",
        &[],
        "reading the database's settings",
    )
    .await?
    .iter()
    .map(|r| DatabaseRoleSetting {
        role: r.get(0),
        setting: r.get(1),
    })
    .collect();
    Ok(RoleSet {
        format_version: ROLES_FORMAT_VERSION,
        passwords: readable,
        roles,
        memberships,
        database_settings,
        database: Some(database_properties(client).await?),
    })
}

/// The connected database's owner, privileges (`None` while they are the defaults),
/// comment and connection limit.
async fn database_properties(client: &Client) -> Result<DatabaseProperties> {
    let props = client
        .query_one(
            "SELECT pg_get_userbyid(datdba)::text, datacl IS NOT NULL, \
                    shobj_description(oid, 'pg_database'), datconnlimit \
               FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| db_error("reading the database's properties", &e))?;
    let grants = if props.get::<_, bool>(1) {
        let acl = rows(
            client,
            "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee)::text END, \
                    a.privilege_type, a.is_grantable \
               FROM pg_database d, aclexplode(d.datacl) a \
              WHERE d.datname = current_database() ORDER BY 1 NULLS FIRST, 2",
            &[],
            "reading the database's privileges",
        )
        .await?;
        Some(
            acl.iter()
                .map(|r| DatabaseGrant {
                    grantee: r.get(0),
                    privilege: r.get(1),
                    grantable: r.get(2),
                })
                .collect(),
        )
    } else {
        None
    };
    Ok(DatabaseProperties {
        owner: props.get(0),
        grants,
        comment: props.get(2),
        connection_limit: props.get(3),
    })
}

impl RoleSet {
    /// Serialize.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self)
            .map_err(|e| Error::other(format!("cannot serialize the roles: {e}")))
    }

    /// Parse, checking the format version.
    pub fn from_json(data: &[u8]) -> Result<Self> {
        let set: Self = serde_json::from_slice(data)
            .map_err(|e| Error::Corrupt(format!("the backup's roles object: {e}")))?;
        if set.format_version > ROLES_FORMAT_VERSION {
            return Err(Error::Corrupt(format!(
                "the backup's roles object has format version {}, newer than this kaizen-backup reads ({ROLES_FORMAT_VERSION}): upgrade kaizen-backup",
                set.format_version
            )));
        }
        Ok(set)
    }
}
