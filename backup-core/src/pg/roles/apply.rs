//! Restoring what [`RoleSet`] recorded: the missing roles (never changing an existing
//! one), the database's settings and its owner, privileges, comment and limit.

use tokio_postgres::Client;
use tracing::{info, warn};

use super::{Role, RoleSet};
use crate::error::{Error, Result};
use crate::pg::{db_error, quote_ident, quote_literal};

/// Settings whose value is a list the catalog stores already quoted (`search_path`):
/// written as they are, not as one string literal (which would make one element).
const LIST_SETTINGS: &[&str] = &[
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "shared_preload_libraries",
    "local_preload_libraries",
];

/// `name TO value` for `ALTER … SET`, from a catalog `name=value`.
pub fn set_clause(setting: &str) -> Result<String> {
    let (name, value) = setting
        .split_once('=')
        .ok_or_else(|| Error::Corrupt(format!("role setting {setting:?} has no '='")))?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        return Err(Error::Corrupt(format!(
            "role setting {setting:?} has an invalid name"
        )));
    }
    if LIST_SETTINGS.contains(&name.to_ascii_lowercase().as_str()) {
        Ok(format!("{name} TO {value}"))
    } else {
        Ok(format!("{name} TO {}", quote_literal(value)))
    }
}

fn create_sql(r: &Role) -> String {
    let flag = |on: bool, yes: &str| {
        if on {
            yes.to_string()
        } else {
            format!("NO{yes}")
        }
    };
    let mut sql = format!(
        "CREATE ROLE {} WITH {} {} {} {} {} {} {} CONNECTION LIMIT {}",
        quote_ident(&r.name),
        flag(r.superuser, "SUPERUSER"),
        flag(r.inherit, "INHERIT"),
        flag(r.createrole, "CREATEROLE"),
        flag(r.createdb, "CREATEDB"),
        flag(r.login, "LOGIN"),
        flag(r.replication, "REPLICATION"),
        flag(r.bypassrls, "BYPASSRLS"),
        r.connection_limit
    );
    if let Some(v) = &r.valid_until {
        sql.push_str(&format!(" VALID UNTIL {}", quote_literal(v)));
    }
    if let Some(p) = &r.password {
        sql.push_str(&format!(" PASSWORD {}", quote_literal(p)));
    }
    sql
}

/// The names of the server's roles.
async fn role_names(admin: &Client) -> Result<Vec<String>> {
    Ok(admin
        .query("SELECT rolname::text FROM pg_roles", &[])
        .await
        .map_err(|e| db_error("listing the server's roles", &e))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The roles of `set` that the server `admin` is connected to lacks.
pub async fn missing<'a>(admin: &Client, set: &'a RoleSet) -> Result<Vec<&'a Role>> {
    let existing = role_names(admin).await?;
    Ok(set
        .roles
        .iter()
        .filter(|r| !existing.contains(&r.name))
        .collect())
}

/// Check, before anything is touched, that the connected role may create `missing`.
pub async fn check_can_create(admin: &Client, missing: &[&Role]) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    let row = admin
        .query_one(
            "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| db_error("checking privileges", &e))?;
    let (superuser, createrole): (bool, bool) = (row.get(0), row.get(1));
    let names = |rs: &[&Role]| {
        rs.iter()
            .map(|r| crate::pg::display_ident(&r.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !superuser && !createrole {
        return Err(Error::Refused(format!(
            "the backup needs roles this server lacks ({}), and the restoring role may not create them (it needs CREATEROLE): create them first, restore as a role with CREATEROLE, or set restore.roles = \"none\" to restore without them",
            names(missing)
        )));
    }
    if !superuser {
        let special: Vec<&Role> = missing
            .iter()
            .copied()
            .filter(|r| r.superuser || r.replication || r.bypassrls)
            .collect();
        if !special.is_empty() {
            return Err(Error::Refused(format!(
                "roles {} are SUPERUSER, REPLICATION or BYPASSRLS, which only a superuser may create: restore as a superuser, create them first, or set restore.roles = \"none\"",
                names(&special)
            )));
        }
    }
    Ok(())
}

/// Create `missing` (all of `set`'s roles the server lacks) in one transaction, with
/// their settings and the memberships whose member is one of them; an existing role is
/// never changed. Returns the created names.
pub async fn create_missing(
    admin: &mut Client,
    set: &RoleSet,
    missing: &[&Role],
) -> Result<Vec<String>> {
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let created: Vec<String> = missing.iter().map(|r| r.name.clone()).collect();
    let existing_after: Vec<String> = set.roles.iter().map(|r| r.name.clone()).collect();
    let tx = admin
        .transaction()
        .await
        .map_err(|e| db_error("starting the role creation", &e))?;
    for r in missing {
        tx.batch_execute(&create_sql(r))
            .await
            .map_err(|e| db_error(format!("creating role {}", r.name), &e))?;
        for s in &r.settings {
            tx.batch_execute(&format!(
                "ALTER ROLE {} SET {}",
                quote_ident(&r.name),
                set_clause(s)?
            ))
            .await
            .map_err(|e| db_error(format!("setting {s:?} for role {}", r.name), &e))?;
        }
    }
    let predefined: Vec<String> = tx
        .query(
            "SELECT rolname::text FROM pg_roles WHERE rolname ~ '^pg_'",
            &[],
        )
        .await
        .map_err(|e| db_error("listing predefined roles", &e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for m in &set.memberships {
        if !created.contains(&m.member) {
            if created.contains(&m.role) {
                warn!(
                    "Not granting new role {} to existing role {}: restore never changes an existing role",
                    m.role, m.member
                );
            }
            continue;
        }
        if !existing_after.contains(&m.role) && !predefined.contains(&m.role) {
            warn!(
                "Role {} is not on this server: not granted to {}",
                m.role, m.member
            );
            continue;
        }
        let admin_opt = if m.admin { " WITH ADMIN OPTION" } else { "" };
        tx.batch_execute(&format!(
            "GRANT {} TO {}{admin_opt}",
            quote_ident(&m.role),
            quote_ident(&m.member)
        ))
        .await
        .map_err(|e| db_error(format!("granting {} to {}", m.role, m.member), &e))?;
    }
    tx.commit()
        .await
        .map_err(|e| db_error("committing the new roles", &e))?;
    info!(
        "Created {} role(s) the backup needs: {}",
        created.len(),
        created.join(", ")
    );
    Ok(created)
}

/// Drop roles created for a restore that then failed (best effort: a role that owns
/// something by now is left, with a warning).
pub async fn drop_created(admin: &Client, created: &[String]) {
    for name in created.iter().rev() {
        if let Err(e) = admin
            .batch_execute(&format!("DROP ROLE IF EXISTS {}", quote_ident(name)))
            .await
        {
            warn!("Could not drop role {name} created for the failed restore: {e}");
        }
    }
}

/// Apply the database's role settings (`ALTER ROLE … IN DATABASE target SET`,
/// `ALTER DATABASE target SET`) to `target`; settings of roles the server lacks are
/// skipped with a warning.
pub async fn apply_database_settings(admin: &Client, set: &RoleSet, target: &str) -> Result<()> {
    let existing = role_names(admin).await?;
    for s in &set.database_settings {
        let clause = set_clause(&s.setting)?;
        let sql = match &s.role {
            Some(role) if !existing.contains(role) => {
                warn!(
                    "Role {role} is not on this server: its setting {} in {target} is skipped",
                    s.setting
                );
                continue;
            }
            Some(role) => format!(
                "ALTER ROLE {} IN DATABASE {} SET {clause}",
                quote_ident(role),
                quote_ident(target)
            ),
            None => format!("ALTER DATABASE {} SET {clause}", quote_ident(target)),
        };
        admin
            .batch_execute(&sql)
            .await
            .map_err(|e| db_error(format!("applying {} to {target}", s.setting), &e))?;
    }
    Ok(())
}

/// Give `target` the backed-up database's owner (unless `no_owner`), privileges, comment
/// and connection limit (the roles must exist; a missing owner leaves the restoring role
/// as owner, with a warning).
pub async fn apply_database_properties(
    admin: &Client,
    set: &RoleSet,
    target: &str,
    no_owner: bool,
) -> Result<()> {
    let Some(p) = &set.database else {
        return Ok(());
    };
    let db = quote_ident(target);
    let exists = |role: &str| {
        let role = role.to_string();
        async move {
            admin
                .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
                .await
                .map(|r| r.is_some())
                .map_err(|e| db_error("looking up a role", &e))
        }
    };
    let mut sql: Vec<String> = Vec::new();
    if !no_owner {
        if exists(&p.owner).await? {
            sql.push(format!(
                "ALTER DATABASE {db} OWNER TO {}",
                quote_ident(&p.owner)
            ));
        } else {
            warn!(
                "Role {} (the owner of the backed-up database) is not on this server: {target} stays owned by the restoring role",
                p.owner
            );
        }
    }
    if let Some(grants) = &p.grants {
        sql.push(format!("REVOKE ALL ON DATABASE {db} FROM PUBLIC"));
        for g in grants {
            let to = match &g.grantee {
                None => "PUBLIC".to_string(),
                Some(r) if exists(r).await? => quote_ident(r),
                Some(r) => {
                    warn!(
                        "Role {r} is not on this server: its {} on {target} is skipped",
                        g.privilege
                    );
                    continue;
                }
            };
            if !["CONNECT", "CREATE", "TEMPORARY"].contains(&g.privilege.as_str()) {
                return Err(Error::Corrupt(format!(
                    "the backup records an unknown database privilege {:?}",
                    g.privilege
                )));
            }
            sql.push(format!(
                "GRANT {} ON DATABASE {db} TO {to}{}",
                g.privilege,
                if g.grantable {
                    " WITH GRANT OPTION"
                } else {
                    ""
                }
            ));
        }
    }
    sql.push(format!(
        "COMMENT ON DATABASE {db} IS {}",
        p.comment
            .as_deref()
            .map_or_else(|| "NULL".to_string(), quote_literal)
    ));
    sql.push(format!(
        "ALTER DATABASE {db} CONNECTION LIMIT {}",
        p.connection_limit
    ));
    for s in sql {
        admin
            .batch_execute(&s)
            .await
            .map_err(|e| db_error(format!("applying the database's properties ({s})"), &e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn settings_are_quoted_except_lists() {
        assert_eq!(
            set_clause("statement_timeout=30s").unwrap(),
            "statement_timeout TO '30s'"
        );
        assert_eq!(
            set_clause("search_path=app, \"My Schema\", public").unwrap(),
            "search_path TO app, \"My Schema\", public"
        );
        assert_eq!(
            set_clause("application_name=it's").unwrap(),
            "application_name TO 'it''s'"
        );
        assert!(set_clause("no equals").is_err());
        assert!(set_clause("x; DROP TABLE t=1").is_err());
    }

    #[test]
    fn create_sql_states_every_attribute() {
        let r = Role {
            name: "app user".into(),
            superuser: false,
            inherit: true,
            createrole: false,
            createdb: true,
            login: true,
            replication: false,
            bypassrls: false,
            connection_limit: 5,
            valid_until: Some("2030-01-01 00:00:00+00".into()),
            password: Some("SCRAM-SHA-256$4096:abc".into()),
            settings: vec![],
        };
        assert_eq!(
            create_sql(&r),
            "CREATE ROLE \"app user\" WITH NOSUPERUSER INHERIT NOCREATEROLE CREATEDB LOGIN NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 5 VALID UNTIL '2030-01-01 00:00:00+00' PASSWORD 'SCRAM-SHA-256$4096:abc'"
        );
    }
}
