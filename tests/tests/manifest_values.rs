//! Issue 14: the manifest's `format`, `compression`, `encryption` and `kind` are closed
//! sets. A value this version does not know (written by a newer kaizen-backup) is an
//! error naming the field and the value, never a panic and never a guess; `list` still
//! shows the other backups. A physical backup is refused by the commands that need a
//! logical one, before they touch anything.

#![allow(clippy::unwrap_used)]

use kaizen_backup_e2e::pg::assert_same;
use kaizen_backup_e2e::{Cli, Pg};

fn edit_manifest(cli: &Cli, name: &str, f: impl FnOnce(&mut serde_json::Value)) {
    let path = cli.backups().join(format!("{name}.manifest.json"));
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut m);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

fn no_panic(out: &kaizen_backup_e2e::cli::Output) {
    assert!(!out.all().contains("panicked"), "{}", out.all());
}

#[test]
fn an_unknown_value_names_the_field_and_list_shows_the_other_backups() {
    let pg = Pg::get();
    let src = pg.sample_db("kb_mval");
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "good"]).assert_code(0);
    cli.run(&["backup", "newer"]).assert_code(0);
    edit_manifest(&cli, "newer", |m| m["compression"] = "lz4".into());

    let out = cli.run(&["list", "--json"]);
    no_panic(&out);
    out.assert_code(0)
        .assert_stderr_contains("Unreadable manifest newer.manifest.json")
        .assert_stderr_contains(
            "`compression` is \"lz4\", which this version of kaizen-backup does not know (it knows gzip, zstd, none)",
        );
    let names: Vec<String> = out
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["good"]);

    for args in [
        &["verify", "newer", "--quick"][..],
        &["contents", "newer"],
        &["restore", "newer", "kb_mval_never", "--no-safety-backup"],
    ] {
        let out = cli.run(args);
        no_panic(&out);
        out.assert_code(1)
            .assert_stderr_contains("`compression` is \"lz4\"");
    }
    assert!(!pg.db_exists("kb_mval_never"));
}

#[test]
fn a_physical_backup_is_refused_by_logical_commands_before_anything_is_touched() {
    let pg = Pg::get();
    let src = pg.sample_db("kb_mphys");
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "phys"]).assert_code(0);
    edit_manifest(&cli, "phys", |m| m["kind"] = "physical".into());
    let refused =
        "backup \"phys\" is a physical backup: physical backups are not supported by this command";

    let target = pg.target_with_content("kb_mphys_target");
    let before = pg.fingerprint(&target.name);
    // With the safety backup on: refused before it is taken.
    let out = cli.run(&["restore", "phys", &target.name]);
    no_panic(&out);
    out.assert_code(2).assert_stderr_contains(refused);
    assert_same(&pg.fingerprint(&target.name), &before);
    let out = cli.run(&["contents", "phys"]);
    no_panic(&out);
    out.assert_code(2).assert_stderr_contains(refused);
    // verify checks physical backups, from the WAL positions this manifest lacks.
    for args in [&["verify", "phys"][..], &["verify", "phys", "--quick"]] {
        let out = cli.run(args);
        no_panic(&out);
        out.assert_code(1)
            .assert_stderr_contains("says physical but records no WAL positions");
    }
    // Nothing was recorded or added: no verify record, no safety backup.
    assert!(!cli.backups().join("phys.verify.json").exists());
    let list = cli.list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["kind"], "physical");
}
