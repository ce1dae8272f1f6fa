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
    let json = out.json();
    let check = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "locale")
        .unwrap()
        .clone();
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
