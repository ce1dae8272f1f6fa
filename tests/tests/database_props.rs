//! Issue 15, part 2: a restore gives back the database's own properties — encoding and
//! locale (ICU included) for a new database; owner, privileges, settings, comment and
//! connection limit whether it creates the database or replaces one.

#![allow(clippy::unwrap_used)]

use kaizen_backup_e2e::{Cli, Pg, unique};

fn locale(pg: &Pg, db: &str) -> String {
    pg.psql(
        "postgres",
        &format!(
            "select pg_encoding_to_char(encoding), datcollate, datctype, datlocprovider, coalesce(daticulocale, '') from pg_database where datname = '{db}'"
        ),
    )
}

#[test]
fn a_latin1_and_an_icu_database_come_back_with_their_encoding_and_locale() {
    let pg = Pg::get();
    let latin = pg.adopt(&unique("kb_latin1"));
    pg.psql(
        "postgres",
        &format!(
            "create database {} encoding 'LATIN1' lc_collate 'C' lc_ctype 'C' template template0",
            latin.name
        ),
    );
    let icu = pg.adopt(&unique("kb_icu"));
    pg.psql(
        "postgres",
        &format!(
            "create database {} locale_provider icu icu_locale 'de-DE' template template0",
            icu.name
        ),
    );
    let mut clis = Vec::new();
    for db in [&latin, &icu] {
        pg.psql(
            &db.name,
            "create table t (s text); insert into t values ('Äpfel'), ('Zebra'), ('apfel')",
        );
        let cli = Cli::for_db(&db.name);
        cli.run(&["backup", "b"]).assert_code(0);
        let copy = pg.adopt(&unique("kb_locale_copy"));
        cli.run(&["restore", "b", &copy.name]).assert_code(0);
        assert_eq!(
            locale(&pg, &copy.name),
            locale(&pg, &db.name),
            "{}",
            db.name
        );
        assert_eq!(
            pg.psql(&copy.name, "select string_agg(s, ',' order by s) from t"),
            pg.psql(&db.name, "select string_agg(s, ',' order by s) from t"),
            "the same collation orders the same"
        );
        clis.push(cli);
    }
    assert!(
        locale(&pg, &icu.name).contains("|i|de-DE"),
        "{}",
        locale(&pg, &icu.name)
    );
    assert!(locale(&pg, &latin.name).starts_with("LATIN1|"));
    // verify compares the test restore's locale with the source's.
    let out = clis[1].run(&["verify", "b", "--json"]);
    out.assert_code(0);
    let check = out.verify_check(|c| c["name"] == "locale");
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("icu locale de-DE"),
        "{check}"
    );
}

fn props(pg: &Pg, db: &str) -> String {
    pg.psql(
        "postgres",
        &format!(
            "select pg_get_userbyid(d.datdba), array(select unnest(d.datacl)::text order by 1), d.datconnlimit, \
                    shobj_description(d.oid, 'pg_database'), \
                    array(select coalesce(r.rolname, '*') || ':' || s.setconfig::text from pg_db_role_setting s \
                          left join pg_roles r on r.oid = s.setrole where s.setdatabase = d.oid order by 1) \
             from pg_database d where d.datname = '{db}'"
        ),
    )
}

#[test]
fn restore_over_an_existing_database_keeps_the_backups_grants_settings_comment_and_limit() {
    let pg = Pg::get();
    let role = unique("kb_props_role");
    pg.psql("postgres", &format!("create role {role} nologin"));
    let src = pg.create_db("kb_props");
    let db = &src.name;
    pg.psql(
        "postgres",
        &format!(
            "revoke connect on database {db} from public; grant connect, temporary on database {db} to {role}; \
             alter database {db} set work_mem = '7MB'; alter database {db} connection limit 40; \
             comment on database {db} is 'props under test'; \
             alter role {role} in database {db} set statement_timeout = '11s'"
        ),
    );
    pg.psql(db, "create table t (x int); insert into t values (1)");
    let cli = Cli::for_db(db);
    cli.run(&["backup", "b"]).assert_code(0);
    let at_backup = props(&pg, db);

    // Replaced: the copy gets the backup's properties before the swap (an existing
    // database's would otherwise be lost with it).
    pg.psql(
        "postgres",
        &format!(
            "grant connect on database {db} to public; comment on database {db} is 'changed later'; \
             alter database {db} reset work_mem"
        ),
    );
    cli.run(&["restore", "b", db, "--no-safety-backup"])
        .assert_code(0);
    assert_eq!(props(&pg, db), at_backup);

    // A new database gets them too (under its own name).
    let copy = pg.adopt(&unique("kb_props_copy"));
    cli.run(&["restore", "b", &copy.name]).assert_code(0);
    assert_eq!(
        props(&pg, &copy.name).replace(&copy.name, "DB"),
        at_backup.replace(db.as_str(), "DB")
    );
}

/// Install a tiny extension whose script creates a sequence (as PostGIS's topology does),
/// into the test server's share directory. `None` when that directory is not writable.
fn install_seq_extension() -> Option<()> {
    let bin = std::path::PathBuf::from(kaizen_backup_e2e::env("KAIZEN_TEST_PG_BIN"));
    let out = std::process::Command::new(bin.join("pg_config"))
        .arg("--sharedir")
        .output()
        .ok()?;
    let dir =
        std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("extension");
    std::fs::write(
        dir.join("kaizen_seq_test.control"),
        "default_version = '1.0'\nrelocatable = false\nschema = kaizen_seq_test\n",
    )
    .ok()?;
    std::fs::write(
        dir.join("kaizen_seq_test--1.0.sql"),
        "CREATE SEQUENCE kaizen_seq_test.topology_id_seq;\nCREATE TABLE kaizen_seq_test.topology (id int PRIMARY KEY DEFAULT nextval('kaizen_seq_test.topology_id_seq'), name text);\nSELECT pg_extension_config_dump('kaizen_seq_test.topology', '');\n",
    )
    .ok()?;
    Some(())
}

#[test]
fn an_extension_owned_sequence_that_pg_dump_skips_comes_back_at_its_value() {
    if install_seq_extension().is_none() {
        eprintln!("skipped: the server's extension directory is not writable");
        return;
    }
    let pg = Pg::get();
    let src = pg.create_db("kb_extseq");
    pg.psql(
        &src.name,
        "create schema kaizen_seq_test; create extension kaizen_seq_test; \
         insert into kaizen_seq_test.topology (name) values ('a'), ('b'), ('c')",
    );
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "b"]).assert_code(0);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cli.backups().join("b.manifest.json")).unwrap())
            .unwrap();
    let seq = m["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "topology_id_seq")
        .unwrap()
        .clone();
    assert_eq!(seq["last_value"], 3, "{seq}");
    assert_eq!(seq["dumped"], false, "{seq}");
    assert_eq!(seq["extension"], "kaizen_seq_test");

    // The restore sets it; without that, the next insert would collide with id 1.
    let copy = pg.adopt(&unique("kb_extseq_copy"));
    let out = cli.run(&["restore", "b", &copy.name]);
    out.assert_code(0)
        .assert_stderr_contains("kaizen_seq_test.topology_id_seq");
    assert_eq!(
        pg.psql(
            &copy.name,
            "insert into kaizen_seq_test.topology (name) values ('d') returning id"
        ),
        "4"
    );
    // verify sets it in its test restore and compares every sequence.
    let out = cli.run(&["verify", "b", "--json"]);
    out.assert_code(0);
    let check = out.verify_check(|c| c["name"] == "sequence_values");
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("1 of them set from the manifest"),
        "{check}"
    );
}
