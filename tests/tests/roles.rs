//! Issue 15, part 1: a logical backup restores onto a new, empty server. Every backup
//! carries the roles its database needs (owners, grantees, policy roles, default
//! privileges, memberships, role settings); a restore onto a server that lacks them
//! creates them first, never changing an existing role, and refuses before touching
//! anything when it may not.

#![allow(clippy::unwrap_used)]

use kaizen_backup_e2e::Cli;
use kaizen_backup_e2e::cluster::Cluster;

const SETUP: &str = "
create role app nologin;
create role readers nologin;
create role \"Auditor Role\" nologin;
create role app_login login password 'secret-1' connection limit 7 valid until '2031-01-01 00:00:00+00' in role readers;
create role boss login createdb in role app;
alter role app_login set statement_timeout = '42s';
alter role app_login set search_path = app, \"odd schema\", public;
grant readers to \"Auditor Role\" with admin option;
create role unrelated login;
";

const APP: &str = "
create schema app authorization app;
create schema \"odd schema\" authorization app;
set role app;
create table app.t (id int primary key, owner_name text);
insert into app.t values (1, 'app_login'), (2, 'someone else');
alter table app.t enable row level security;
create policy mine on app.t for select to readers using (owner_name = current_user);
grant usage on schema app to readers;
grant select on app.t to readers;
grant select (id) on app.t to \"Auditor Role\";
alter default privileges in schema app grant select on tables to readers;
reset role;
alter database app owner to app;
revoke connect on database app from public;
grant connect on database app to readers, boss;
alter database app set work_mem = '5MB';
alter database app connection limit 50;
comment on database app is 'Kaizen''s app';
alter role readers in database app set statement_timeout = '9s';
";

/// What must come back identical, read with the cluster's superuser.
fn fingerprint(c: &Cluster, db: &str) -> Vec<String> {
    let roles = c.psql(
        "postgres",
        "select rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication, rolbypassrls, rolconnlimit, rolvaliduntil from pg_roles where rolname in ('app','readers','Auditor Role','app_login','boss') order by 1",
    );
    let passwords = c.psql(
        "postgres",
        "select rolname, rolpassword from pg_authid where rolname in ('app_login','boss') order by 1",
    );
    let members = c.psql(
        "postgres",
        "select g.rolname, m.rolname, a.admin_option from pg_auth_members a join pg_roles g on g.oid = a.roleid join pg_roles m on m.oid = a.member where m.rolname in ('app','readers','Auditor Role','app_login','boss') order by 1, 2",
    );
    let settings = c.psql(
        "postgres",
        &format!(
            "select coalesce(r.rolname, '*'), s.setconfig from pg_db_role_setting s left join pg_roles r on r.oid = s.setrole left join pg_database d on d.oid = s.setdatabase where s.setdatabase = 0 or d.datname = '{db}' order by 1, 2"
        ),
    );
    let database = c.psql(
        "postgres",
        &format!("select pg_get_userbyid(datdba), array(select unnest(datacl)::text order by 1), datconnlimit, shobj_description(oid, 'pg_database') from pg_database where datname = '{db}'"),
    );
    let acls = c.psql(
        db,
        "select c.relname, pg_get_userbyid(c.relowner), c.relacl, (select string_agg(attname || '=' || attacl::text, ',') from pg_attribute where attrelid = c.oid and attacl is not null) from pg_class c where c.relnamespace = 'app'::regnamespace order by 1",
    );
    let schemas = c.psql(
        db,
        "select nspname, pg_get_userbyid(nspowner) from pg_namespace where nspname in ('app', 'odd schema') order by 1",
    );
    let policies = c.psql(
        db,
        "select polname, polroles::regrole[]::text, pg_get_expr(polqual, polrelid) from pg_policy order by 1",
    );
    let defaults = c.psql(
        db,
        "select pg_get_userbyid(defaclrole), defaclnamespace::regnamespace, defaclacl from pg_default_acl order by 1",
    );
    vec![
        roles, passwords, members, settings, database, acls, schemas, policies, defaults,
    ]
}

/// What a refused restore must leave as it was: whether database `app` exists, and the roles.
fn server_state(c: &Cluster) -> (String, String) {
    (
        c.psql(
            "postgres",
            "select count(*) from pg_database where datname = 'app'",
        ),
        c.psql(
            "postgres",
            "select string_agg(rolname, ',' order by rolname) from pg_roles",
        ),
    )
}

fn cli_for(c: &Cluster, db: &str, backups: &std::path::Path) -> Cli {
    Cli::new()
        .env("POSTGRES_HOST", "127.0.0.1")
        .env("POSTGRES_PORT", &c.port.to_string())
        .env("POSTGRES_USER", "postgres")
        .env("POSTGRES_DB", db)
        .env("BACKUP_DIR", backups.to_str().unwrap())
}

fn source() -> (Cluster, tempfile::TempDir) {
    let mut src = Cluster::init("kb-roles-src-", "");
    src.start();
    src.psql("postgres", SETUP);
    src.psql("postgres", "create database app");
    src.psql("app", APP);
    let backups = tempfile::tempdir().unwrap();
    (src, backups)
}

#[test]
fn a_backup_restores_onto_an_empty_server_with_roles_grants_and_policies_intact() {
    let (src, backups) = source();
    let cli = cli_for(&src, "app", backups.path());
    cli.run(&["backup", "full"]).assert_code(0);
    let listed = cli.list();
    assert_eq!(listed[0]["roles"]["count"], 5, "{}", listed[0]);
    assert_eq!(listed[0]["roles"]["passwords"], true);
    let verify = cli.run(&["verify", "full", "--json"]);
    verify.assert_code(0);
    let roles_check = verify.verify_check(|c| c["name"] == "roles");
    assert!(
        roles_check["detail"]
            .as_str()
            .unwrap()
            .contains("5 roles recorded, password hashes included"),
        "{roles_check}"
    );
    // `unrelated` is not something the database needs.
    let stored = std::fs::read_to_string(backups.path().join("full.roles.json")).unwrap();
    assert!(!stored.contains("unrelated"), "{stored}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(backups.path().join("full.roles.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o077,
        0,
        "the roles object (password hashes) is private"
    );

    // A new server, empty of application roles; `boss` exists already with other
    // attributes and is left exactly as it is.
    let mut dst = Cluster::init("kb-roles-dst-", "");
    dst.start();
    dst.psql("postgres", "create role boss login connection limit 3");
    let before_boss = dst.psql(
        "postgres",
        "select rolcreatedb, rolconnlimit, (select count(*) from pg_auth_members where member = 'boss'::regrole) from pg_roles where rolname = 'boss'",
    );
    let to = cli_for(&dst, "app", backups.path());
    to.run(&["restore", "full"]).assert_code(0);
    let (a, b) = (fingerprint(&src, "app"), fingerprint(&dst, "app"));
    // Everything equal but boss's own attributes, membership and password.
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        if i == 0 || i == 1 || i == 2 {
            let strip = |s: &str| {
                s.lines()
                    .filter(|l| !l.contains("boss"))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            assert_eq!(strip(x), strip(y), "part {i}");
        } else {
            assert_eq!(x, y, "part {i}");
        }
    }
    assert_eq!(
        dst.psql(
            "postgres",
            "select rolcreatedb, rolconnlimit, (select count(*) from pg_auth_members where member = 'boss'::regrole) from pg_roles where rolname = 'boss'",
        ),
        before_boss,
        "an existing role is never changed"
    );
    // verify applies the recorded properties to its copy and reads them back: a roles
    // object that disagrees with what the database had (edited, checksum made to match)
    // fails there.
    let path = backups.path().join("full.roles.json");
    let mut set: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    set["database"]["connection_limit"] = (-7).into();
    let bytes = serde_json::to_vec_pretty(&set).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let mpath = backups.path().join("full.manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["roles"]["sha256"] = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes)).into()
    };
    m["roles"]["size_bytes"] = bytes.len().into();
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let out = cli.run(&["verify", "full", "--json"]);
    out.assert_code(1);
    let failed = out.verify_check(|c| c["passed"] == false);
    assert_eq!(failed["name"], "database_properties", "{failed}");

    // The restored role logs in with its own password, and RLS works for it.
    assert_eq!(
        dst.psql(
            "app",
            "set role app_login; select string_agg(id::text, ',') from app.t"
        ),
        "1"
    );
}

#[test]
fn no_owner_encrypted_and_globals_only_restores_get_the_roles_too() {
    let (src, backups) = source();
    let key = backups.path().join("key.txt");
    let base = cli_for(&src, "app", backups.path());
    let rcpt = base.run(&["keygen", "--output", key.to_str().unwrap()]);
    rcpt.assert_code(0);
    let cli = base
        .env("KAIZEN_BACKUP_ENCRYPTION__TYPE", "age")
        .env("KAIZEN_BACKUP_ENCRYPTION__RECIPIENTS", rcpt.stdout.trim())
        .env(
            "KAIZEN_BACKUP_ENCRYPTION__IDENTITY_FILE",
            key.to_str().unwrap(),
        );
    cli.run(&["backup", "enc"]).assert_code(0);
    let stored = std::fs::read(backups.path().join("enc.roles.json.age")).unwrap();
    assert!(
        !String::from_utf8_lossy(&stored).contains("app_login"),
        "the roles object is encrypted"
    );

    let mut dst = Cluster::init("kb-roles-dst2-", "");
    dst.start();
    let to = |db: &str| {
        cli_for(&dst, db, backups.path())
            .env("KAIZEN_BACKUP_ENCRYPTION__TYPE", "age")
            .env("KAIZEN_BACKUP_ENCRYPTION__RECIPIENTS", rcpt.stdout.trim())
            .env(
                "KAIZEN_BACKUP_ENCRYPTION__IDENTITY_FILE",
                key.to_str().unwrap(),
            )
    };
    // --globals-only: the roles and nothing else.
    to("app")
        .run(&["restore", "--globals-only", "enc"])
        .assert_code(0);
    assert_eq!(
        dst.psql("postgres", "select count(*) from pg_roles where rolname in ('app','readers','Auditor Role','app_login','boss')"),
        "5"
    );
    assert_eq!(
        dst.psql(
            "postgres",
            "select count(*) from pg_database where datname = 'app'"
        ),
        "0"
    );
    // no_owner into another name: grants and policies to the roles still come back.
    to("copy")
        .env("KAIZEN_BACKUP_RESTORE__NO_OWNER", "true")
        .run(&["restore", "enc", "copy"])
        .assert_code(0);
    assert_eq!(
        dst.psql(
            "copy",
            "select polroles::regrole[]::text from pg_policy where polname = 'mine'"
        ),
        "{readers}"
    );
    assert_eq!(
        dst.psql(
            "copy",
            "select has_table_privilege('readers', 'app.t', 'select')"
        ),
        "t"
    );
    // The database's own settings came with it, under its new name.
    assert_eq!(
        dst.psql(
            "postgres",
            "select s.setconfig from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase where d.datname = 'copy' and s.setrole = 'readers'::regrole"
        ),
        "{statement_timeout=9s}"
    );
}

#[test]
fn a_restoring_role_without_createrole_is_refused_before_anything_is_touched() {
    let (src, backups) = source();
    // Taken by a role that may read the data but not pg_authid: no password hashes, and
    // the backup does not fail for it.
    src.psql(
        "postgres",
        "create role backupper login bypassrls in role app; grant connect on database app to backupper",
    );
    cli_for(&src, "app", backups.path())
        .env("POSTGRES_USER", "backupper")
        .run(&["backup", "b"])
        .assert_code(0);
    let listed = cli_for(&src, "app", backups.path()).list();
    assert_eq!(listed[0]["roles"]["passwords"], false, "{}", listed[0]);
    let stored = std::fs::read_to_string(backups.path().join("b.roles.json")).unwrap();
    assert!(!stored.contains("SCRAM"), "{stored}");
    let mut dst = Cluster::init("kb-roles-dst3-", "");
    dst.start();
    dst.psql("postgres", "create role restorer login createdb");
    let before = server_state(&dst);
    let out = cli_for(&dst, "app", backups.path())
        .env("POSTGRES_USER", "restorer")
        .run(&["restore", "b"]);
    out.assert_code(1)
        .assert_stderr_contains("CREATEROLE")
        .assert_stderr_contains("restore.roles");
    assert!(out.stderr.contains("app_login"), "{}", out.stderr);
    assert_eq!(
        server_state(&dst),
        before,
        "a refused restore changed the server"
    );

    // A damaged roles object: verify names it (without a key or a database), and a
    // restore refuses before anything is created.
    let path = backups.path().join("b.roles.json");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let cli = cli_for(&dst, "app", backups.path());
    let out = cli.run(&["verify", "b", "--quick", "--json"]);
    out.assert_code(1);
    let failed = out.verify_check(|c| c["passed"] == false);
    assert_eq!(failed["name"], "roles", "{failed}");
    assert!(
        failed["detail"]
            .as_str()
            .unwrap()
            .contains("checksum mismatch for b.roles.json"),
        "{failed}"
    );
    let out = cli.run(&["restore", "b"]);
    out.assert_code(1)
        .assert_stderr_contains("checksum mismatch for b.roles.json");
    assert_eq!(
        server_state(&dst),
        before,
        "a refused restore changed the server"
    );
}
