//! `config check --connect`: reaches the database, every storage target and notifier.

#![allow(clippy::unwrap_used)]

use kaizen_backup_e2e::{Cli, Pg};

#[test]
fn config_check_connect_reports_each_dependency() {
    let pg = Pg::get();
    let db = pg.create_db("kc_check");
    let cli = Cli::for_db(&db.name);
    cli.run(&["config", "check", "--connect"])
        .assert_code(0)
        .assert_stderr_contains("Configuration is valid")
        .assert_stderr_contains(&format!("Database {}@", db.name))
        .assert_stderr_contains("is reachable and writable");
    let bad = Cli::for_db(&db.name).env("POSTGRES_PASSWORD", "Not-The-Pw");
    let out = bad.run(&["config", "check", "--connect"]);
    out.assert_code(1)
        .assert_stderr_contains("Cannot connect to database")
        .assert_stderr_contains("1 check(s) failed");
    assert!(!out.all().contains("Not-The-Pw"));
    // Without --connect only the configuration itself is checked.
    bad.run(&["config", "check"]).assert_code(0);
    // An unwritable storage target fails the check.
    let ro = Cli::for_db(&db.name).env("BACKUP_DIR", "/proc/kaizen-no-such-dir");
    ro.run(&["config", "check", "--connect"])
        .assert_code(1)
        .assert_stderr_contains("storage file:///proc/kaizen-no-such-dir");
}
