//! Issue 3: verification proves a backup restores exactly, and catches each corruption.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use kaizen_backup_e2e::cli::{signal, wait};
use kaizen_backup_e2e::{Cli, Pg, unique, wait_until};

const ALL_CHECKS: [&str; 14] = [
    "file",
    "archive",
    "roles",
    "test_restore",
    "tables",
    "sequences",
    "indexes",
    "constraints",
    "row_counts",
    "foreign_keys",
    "size",
    "locale",
    "sequence_values",
    "database_properties",
];

fn edit_manifest(cli: &Cli, name: &str, f: impl FnOnce(&mut serde_json::Value)) {
    let path = cli.backups().join(format!("{name}.manifest.json"));
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut m);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

fn no_verify_db_left(pg: &Pg, name: &str) {
    let left = pg.databases_with_prefix(&format!("kaizen_verify_{name}_"));
    assert!(left.is_empty(), "temporary databases left: {left:?}");
}

#[test]
fn good_backup_passes_every_check_and_is_listed_verified() {
    let pg = Pg::get();
    let src = pg.sample_db("kv_good");
    let cli = Cli::for_db(&src.name);
    let name = unique("good");
    cli.run(&["backup", &name]).assert_code(0);
    let out = cli.run(&["verify", &name, "--json"]);
    out.assert_code(0)
        .assert_stderr_contains("[SUCCESS] Backup file validation passed")
        .assert_stderr_contains("[INFO] Restoring to temporary database...")
        .assert_stderr_contains("[SUCCESS] All integrity checks passed")
        .assert_stderr_contains("[INFO] Backup is valid and can be used for restore");
    let rec = out.json();
    assert_eq!(rec["passed"], true);
    let names: Vec<&str> = rec["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for check in &ALL_CHECKS {
        assert!(names.contains(check), "missing check {check}: {names:?}");
    }
    no_verify_db_left(&pg, &name);
    let list = cli.list();
    assert_eq!(list[0]["verified"], true);
    assert_eq!(list[0]["verify_status"], "verified");
    // The record is stored beside the backup.
    assert!(cli.backups().join(format!("{name}.verify.json")).is_file());
    // `verify latest` is what the scheduled job runs.
    cli.run(&["verify", "latest"]).assert_code(0);
}

#[test]
fn quick_verify_needs_no_database() {
    let pg = Pg::get();
    let src = pg.sample_db("kv_quick");
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "q"]).assert_code(0);
    let offline = Cli::new()
        .env("BACKUP_DIR", cli.backups().to_str().unwrap())
        .env("POSTGRES_PORT", "1");
    let out = offline.run(&["verify", "q", "--quick", "--json"]);
    out.assert_code(0);
    let names: Vec<String> = out.json()["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["file", "archive", "roles"]);
}

#[test]
fn backup_with_verify_flag_verifies() {
    let pg = Pg::get();
    let src = pg.sample_db("kv_flag");
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "v", "--verify"])
        .assert_code(0)
        .assert_stderr_contains("All integrity checks passed");
    assert_eq!(cli.list()[0]["verified"], true);
}

#[test]
fn truncated_file_fails_the_file_check() {
    let pg = Pg::get();
    let src = pg.sample_db("kv_trunc");
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "t"]).assert_code(0);
    let p = cli.backups().join("t.dump");
    let data = std::fs::read(&p).unwrap();
    std::fs::write(&p, &data[..data.len() - 100]).unwrap();
    cli.run(&["verify", "t"])
        .assert_code(1)
        .assert_stderr_contains("check `file`")
        .assert_stderr_contains("truncated");
    assert_eq!(cli.list()[0]["verified"], false);
    assert_eq!(cli.list()[0]["verify_status"], "FAILED");
    no_verify_db_left(&pg, "t");
}

#[test]
fn flipped_byte_fails_the_file_check() {
    let pg = Pg::get();
    let src = pg.sample_db("kv_flip");
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "f"]).assert_code(0);
    let p = cli.backups().join("f.dump");
    let mut data = std::fs::read(&p).unwrap();
    let i = data.len() / 2;
    data[i] ^= 0x80;
    std::fs::write(&p, &data).unwrap();
    cli.run(&["verify", "f", "--quick"])
        .assert_code(1)
        .assert_stderr_contains("checksum mismatch");
}

#[test]
fn a_different_database_under_this_name_is_caught() {
    let pg = Pg::get();
    let src = pg.sample_db("kv_a");
    let other = pg.create_db("kv_b");
    pg.psql(
        &other.name,
        "CREATE TABLE unrelated(x int); INSERT INTO unrelated VALUES (1)",
    );
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "a"]).assert_code(0);
    let cli_b = Cli::for_db(&other.name).env("BACKUP_DIR", cli.backups().to_str().unwrap());
    cli_b.run(&["backup", "b"]).assert_code(0);
    // Put b's data under a's name, with a manifest whose checksum fits the new data.
    std::fs::copy(cli.backups().join("b.dump"), cli.backups().join("a.dump")).unwrap();
    let b: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cli.backups().join("b.manifest.json")).unwrap(),
    )
    .unwrap();
    edit_manifest(&cli, "a", |m| {
        m["sha256"] = b["sha256"].clone();
        m["size_bytes"] = b["size_bytes"].clone();
    });
    let out = cli.run(&["verify", "a"]);
    out.assert_code(1).assert_stderr_contains("check `archive`");
    no_verify_db_left(&pg, "a");
}

#[test]
fn an_edited_row_count_is_caught() {
    let pg = Pg::get();
    let src = pg.sample_db("kv_rows");
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "r"]).assert_code(0);
    edit_manifest(&cli, "r", |m| {
        for t in m["tables"].as_array_mut().unwrap() {
            if t["name"] == "users" {
                t["rows"] = serde_json::json!(1999);
            }
        }
    });
    let out = cli.run(&["verify", "r"]);
    out.assert_code(1)
        .assert_stderr_contains("check `row_counts`")
        .assert_stderr_contains("public.users: 2000 rows, manifest 1999");
    no_verify_db_left(&pg, "r");
}

#[test]
fn a_dump_missing_a_table_is_caught() {
    let pg = Pg::get();
    let src = pg.sample_db("kv_missing");
    let cli = Cli::for_db(&src.name);
    std::fs::write(
        cli.path().join("kaizen-backup.toml"),
        "[backup]\npg_dump_args = [\"--exclude-table=public.billing_records\"]\n",
    )
    .unwrap();
    cli.run(&["backup", "m"]).assert_code(0);
    cli.run(&["verify", "m", "--quick"])
        .assert_code(1)
        .assert_stderr_contains("public.billing_records");
}

#[test]
fn killed_verify_leaves_nothing_the_next_run_does_not_clean() {
    let pg = Pg::get();
    let src = pg.create_db("kv_kill");
    pg.psql(&src.name, "CREATE TABLE big AS SELECT g, md5(g::text) AS h FROM generate_series(1, 1500000) g; CREATE INDEX ON big(h)");
    let cli = Cli::for_db(&src.name);
    let name = unique("k");
    cli.run(&["backup", &name]).assert_code(0);
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGKILL,
    ] {
        let child = cli.spawn(&["verify", &name]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while pg
            .databases_with_prefix(&format!("kaizen_verify_{name}_"))
            .is_empty()
        {
            assert!(
                Instant::now() < deadline,
                "verify never created its database"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Signal once the test restore is connected to the temporary database (loading it).
        let restoring = wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
            pg.psql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE 'kaizen_verify_{name}_%'"
                ),
            ) != "0"
        });
        assert!(restoring, "nothing ever connected to the verify database");
        signal(&child, sig);
        let out = wait(child);
        assert_ne!(out.code, 0);
        if sig == nix::sys::signal::Signal::SIGTERM {
            no_verify_db_left(&pg, &name);
        }
    }
    cli.run(&["verify", &name]).assert_code(0);
    no_verify_db_left(&pg, &name);
}

#[test]
fn verify_never_drops_the_database_of_a_verification_still_running() {
    let pg = Pg::get();
    let src = pg.sample_db("kv_busy");
    let cli = Cli::for_db(&src.name);
    let name = unique("bz");
    cli.run(&["backup", &name]).assert_code(0);
    // Another verification, still downloading: its database exists and nobody is
    // connected to it yet, but it holds the lock on the name (taken before creating it).
    let busy = format!("kaizen_verify_{}_x", unique("other"));
    let holder = pg.hold_advisory_lock(
        "postgres",
        &format!("SELECT pg_advisory_lock(1264211522, hashtext('{busy}'))"),
    );
    pg.psql("postgres", &format!("CREATE DATABASE {busy}"));
    cli.run(&["verify", &name]).assert_code(0);
    assert!(
        pg.db_exists(&busy),
        "a running verification's database was dropped"
    );
    // That verification was killed: its lock went with its connection, and the next
    // verify (this one or a concurrent test's) removes the leftover.
    drop(holder);
    cli.run(&["verify", &name]).assert_code(0);
    assert!(!pg.db_exists(&busy), "the leftover was not dropped");
    no_verify_db_left(&pg, &name);
}

#[test]
fn verify_works_as_a_createdb_role_that_is_not_superuser() {
    let pg = Pg::get();
    let src = pg.sample_db("kv_role");
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "nr"]).assert_code(0);
    let role = unique("kv_verifier");
    pg.psql(
        "postgres",
        &format!("CREATE ROLE {role} LOGIN CREATEDB PASSWORD 'verifier-pw'"),
    );
    let as_role = Cli::for_db(&src.name)
        .env("BACKUP_DIR", cli.backups().to_str().unwrap())
        .env("POSTGRES_USER", &role)
        .env("POSTGRES_PASSWORD", "verifier-pw");
    as_role
        .run(&["verify", "nr"])
        .assert_code(0)
        .assert_stderr_contains("All integrity checks passed");
    no_verify_db_left(&pg, "nr");
    pg.psql("postgres", &format!("DROP ROLE {role}"));
}
