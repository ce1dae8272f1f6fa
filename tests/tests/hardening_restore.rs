//! Issue 13, restore and verify safety: a restore killed during its swap, leftovers of
//! killed runs, targets that must be refused, read-only storage, and prune racing a
//! restore.
//!
//! Runs here connect as a role of their own: a run drops only the leftovers its own role
//! owns, so the concurrent tests (as the superuser) never clean up what these tests
//! leave on purpose.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use kaizen_backup_e2e::cli::{signal, wait};
use kaizen_backup_e2e::{Cli, Output, Pg, TestDb, unique, wait_until};
use nix::sys::signal::Signal;

/// First key of the advisory lock a restore holds on its target name (`"KZRT"`).
const TARGET_LOCK_CLASS: i64 = 0x4b5a_5254;

/// A login role with CREATEDB (not superuser), a source database it owns holding
/// `x = 'restored'`, and a target database it owns holding `x = 'current'`.
struct Setup {
    pg: Pg,
    role: String,
    _source: TestDb,
    target: TestDb,
    cli: Cli,
}

const PASSWORD: &str = "restorer-pw";

fn setup(prefix: &str) -> Setup {
    let pg = Pg::get();
    let role = unique(&format!("{prefix}_role"));
    pg.psql(
        "postgres",
        &format!("CREATE ROLE {role} LOGIN CREATEDB PASSWORD '{PASSWORD}'"),
    );
    let owned = |p: &str, value: &str| {
        let db = pg.create_db(p);
        pg.psql(
            "postgres",
            &format!("ALTER DATABASE {} OWNER TO {role}", db.name),
        );
        pg.psql(
            &db.name,
            &format!("SET ROLE {role}; CREATE TABLE x(v text); INSERT INTO x VALUES ('{value}')"),
        );
        db
    };
    let source = owned(&format!("{prefix}_src"), "restored");
    let target = owned(&format!("{prefix}_dst"), "current");
    let cli = Cli::for_db(&source.name)
        .env("POSTGRES_USER", &role)
        .env("POSTGRES_PASSWORD", PASSWORD);
    Setup {
        pg,
        role,
        _source: source,
        target,
        cli,
    }
}

impl Setup {
    fn value(&self) -> String {
        self.pg.psql(&self.target.name, "SELECT v FROM x")
    }

    fn accepts_connections(&self) -> bool {
        self.pg.psql(
            "postgres",
            &format!(
                "SELECT datallowconn FROM pg_database WHERE datname = '{}'",
                self.target.name
            ),
        ) == "t"
    }

    fn leftovers(&self, kind: &str) -> Vec<String> {
        self.pg
            .databases_with_prefix(&format!("kaizen_{kind}_{}_", self.target.name))
    }

    /// A restore of `backup` into the target, stopped at test pause point `point`.
    fn paused_restore(&self, backup: &str, point: &str) -> std::process::Child {
        self.cli.spawn_with(
            &[("KAIZEN_BACKUP_TEST_PAUSE", point)],
            &["restore", backup, &self.target.name, "--no-safety-backup"],
        )
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        for kind in ["restore", "old"] {
            for db in self.leftovers(kind) {
                let _ = self
                    .pg
                    .try_psql("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"));
            }
        }
    }
}

fn assert_stderr_lacks(out: &Output, s: &str) {
    assert!(
        !out.stderr.contains(s),
        "stderr contains {s:?}:\n{}",
        out.stderr
    );
}

#[test]
fn a_restore_killed_before_its_swap_commits_leaves_the_target_as_it_was() {
    let s = setup("kh_pre");
    s.cli.run(&["backup", "b", "--no-prune"]).assert_code(0);
    let child = s.paused_restore("b", "swap-before-commit");
    // Paused inside the swap's transaction, after the renames: the exact step at which
    // the old code had already closed the target to every connection.
    let paused = wait_until(Duration::from_secs(120), Duration::from_millis(50), || {
        s.pg.psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = '{}' \
                 AND state = 'idle in transaction' AND query LIKE 'ALTER DATABASE \"{}\" OWNER TO%'",
                s.role, s.target.name
            ),
        ) == "1"
    });
    assert!(paused, "the restore never reached its swap");
    // A run of the same role meanwhile leaves the live restore's database alone.
    let other = s.cli.run(&["backup", "meanwhile", "--no-prune"]);
    other.assert_code(0);
    assert_stderr_lacks(&other, "Dropped kaizen_restore_");
    assert_eq!(s.leftovers("restore").len(), 1, "the live copy was dropped");

    signal(&child, Signal::SIGKILL);
    wait(child);
    // The server rolled the swap back: the target is there, open, with its old data.
    assert!(s.accepts_connections());
    assert_eq!(s.value(), "current");
    assert_eq!(s.leftovers("restore").len(), 1);
    assert!(s.leftovers("old").is_empty());

    // The next run of any command on that server says what it cleaned up.
    s.cli
        .run(&["backup", "next", "--no-prune"])
        .assert_code(0)
        .assert_stderr_contains("Dropped kaizen_restore_")
        .assert_stderr_contains("its target was not changed");
    assert!(s.leftovers("restore").is_empty());
    assert_eq!(s.value(), "current");
    // And a restore now goes through.
    s.cli
        .run(&["restore", "b", &s.target.name, "--no-safety-backup"])
        .assert_code(0);
    assert_eq!(s.value(), "restored");
    assert!(s.leftovers("restore").is_empty() && s.leftovers("old").is_empty());
}

#[test]
fn a_restore_killed_after_its_swap_commits_leaves_the_restored_database_in_place() {
    let s = setup("kh_post");
    s.cli.run(&["backup", "b", "--no-prune"]).assert_code(0);
    let child = s.paused_restore("b", "swap-after-commit");
    // The replaced database becomes visible under its kaizen_old_ name only at COMMIT.
    let committed = wait_until(Duration::from_secs(120), Duration::from_millis(50), || {
        !s.leftovers("old").is_empty()
    });
    assert!(committed, "the restore never committed its swap");
    signal(&child, Signal::SIGKILL);
    wait(child);
    assert!(s.accepts_connections());
    assert_eq!(s.value(), "restored");
    assert_eq!(s.leftovers("old").len(), 1);

    // The next verify finishes the swap: the previous database goes, and says so.
    s.cli
        .run(&["verify", "b"])
        .assert_code(0)
        .assert_stderr_contains("Dropped kaizen_old_")
        .assert_stderr_contains("the restored database is in place");
    assert!(s.leftovers("old").is_empty());
    assert!(s.leftovers("restore").is_empty());
    assert_eq!(s.value(), "restored");
}

#[test]
fn templates_closed_and_maintenance_databases_are_refused_as_targets() {
    let pg = Pg::get();
    let src = pg.target_with_content("kh_refuse_src");
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "b", "--no-prune"]).assert_code(0);
    let closed = pg.target_with_content("kh_closed");
    pg.psql(
        "postgres",
        &format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false",
            closed.name
        ),
    );
    let tables = |db: &str| {
        pg.psql(
            db,
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace",
        )
    };
    let before_files = cli.backup_files();
    let before: Vec<String> = ["template1", "postgres"]
        .iter()
        .map(|d| tables(d))
        .collect();
    for (target, reason) in [
        ("template1", "template database"),
        ("template0", "template database"),
        (closed.name.as_str(), "does not accept connections"),
        ("postgres", "maintenance database"),
    ] {
        let out = cli.run(&["restore", "b", target]);
        out.assert_code(2)
            .assert_stderr_contains(&format!("refusing to restore into {target}"))
            .assert_stderr_contains(reason)
            .assert_stderr_contains("nothing was changed");
    }
    // Nothing touched: no safety backup, no lease, no temporary database, same tables.
    assert_eq!(cli.backup_files(), before_files);
    let after: Vec<String> = ["template1", "postgres"]
        .iter()
        .map(|d| tables(d))
        .collect();
    assert_eq!(before, after);
    assert!(
        pg.databases_with_prefix("kaizen_restore_template")
            .is_empty()
    );
    pg.psql(
        "postgres",
        &format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true", closed.name),
    );
    assert_eq!(pg.psql(&closed.name, "SELECT v FROM keep_me"), "original");
    // A database created from template1 now is still empty.
    let fresh = pg.create_db("kh_fresh");
    assert_eq!(tables(&fresh.name), "0");
}

/// Every file of `dir` with its bytes and modification time.
fn snapshot(dir: &std::path::Path) -> BTreeMap<String, (Vec<u8>, std::time::SystemTime)> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().to_string(),
                (
                    std::fs::read(e.path()).unwrap(),
                    e.metadata().unwrap().modified().unwrap(),
                ),
            )
        })
        .collect()
}

/// `cli`'s command run as the unprivileged OS user `nobody`.
fn run_as_nobody(cli: &Cli, args: &[&str]) -> Output {
    let inner = cli.command(args);
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "nobody", "--"])
        .arg(inner.get_program())
        .args(inner.get_args())
        .current_dir(cli.path())
        .env_clear()
        .stdin(Stdio::null());
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let out = cmd.output().unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

#[test]
fn restore_and_verify_work_from_read_only_storage() {
    use std::os::unix::fs::PermissionsExt;
    let pg = Pg::get();
    let src = pg.sample_db("kh_ro_src");
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "b", "--no-prune"]).assert_code(0);
    // Readable by everyone, writable by root only: for `nobody` a read-only mount.
    let perm = |p: &std::path::Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    perm(cli.path(), 0o755);
    perm(&cli.backups(), 0o755);
    for e in std::fs::read_dir(cli.backups()).unwrap().flatten() {
        perm(&e.path(), 0o644);
    }
    let probe = run_as_nobody(&cli, &["list"]);
    probe.assert_code(0);
    let before = snapshot(&cli.backups());

    let dst = pg.adopt(&unique("kh_ro_dst"));
    run_as_nobody(&cli, &["restore", "b", &dst.name])
        .assert_code(0)
        .assert_stderr_contains("Restore completed successfully")
        .assert_stderr_contains("Could not take a lease on b");
    kaizen_backup_e2e::assert_same(
        &kaizen_backup_e2e::db_fingerprint(&src.name),
        &kaizen_backup_e2e::db_fingerprint(&dst.name),
    );
    // Replacing an existing database from read-only storage (no safety backup possible).
    run_as_nobody(&cli, &["restore", "b", &dst.name, "--no-safety-backup"]).assert_code(0);
    run_as_nobody(&cli, &["verify", "b"])
        .assert_code(0)
        .assert_stderr_contains("All integrity checks passed")
        .assert_stderr_contains("Could not take a lease on b");
    assert_eq!(snapshot(&cli.backups()), before, "the storage changed");
}

#[test]
fn prune_keeps_a_backup_while_it_is_being_restored() {
    let pg = Pg::get();
    let src = pg.target_with_content("kh_lease_src");
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "old", "--no-prune"]).assert_code(0);
    cli.run(&["backup", "new", "--no-prune"]).assert_code(0);
    let dst = pg.target_with_content("kh_lease_dst");
    // Another restore into the same target holds the server-side lock: ours has taken
    // its lease on `old` and waits.
    let holder = pg.hold_advisory_lock(
        "postgres",
        &format!(
            "SELECT pg_advisory_lock({TARGET_LOCK_CLASS}, hashtext('{}'))",
            dst.name
        ),
    );
    let child = cli.spawn(&[
        "restore",
        "old",
        &dst.name,
        "--no-safety-backup",
        "--lock-timeout",
        "600",
    ]);
    let leased = wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
        cli.backup_files()
            .iter()
            .any(|f| f.starts_with("old.") && f.ends_with(".lease"))
    });
    assert!(leased, "the restore never took its lease");
    let retention = [("BACKUP_RETENTION_COUNT", "1")];
    cli.run_with(&retention, &["prune"])
        .assert_code(0)
        .assert_stderr_contains("Keeping old although retention would delete it")
        .assert_stderr_contains("being read (restore by");
    assert!(cli.backups().join("old.manifest.json").is_file());

    drop(holder);
    wait(child).assert_code(0);
    assert_eq!(pg.psql(&dst.name, "SELECT v FROM keep_me"), "original");
    assert!(
        !cli.backup_files().iter().any(|f| f.ends_with(".lease")),
        "lease left: {:?}",
        cli.backup_files()
    );
    cli.run_with(&retention, &["prune"])
        .assert_code(0)
        .assert_stderr_contains("Deleted backup old");
    assert!(!cli.backups().join("old.manifest.json").exists());
}

#[test]
fn prune_ignores_the_lease_of_a_killed_restore() {
    let pg = Pg::get();
    let src = pg.target_with_content("kh_dead_src");
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "old", "--no-prune"]).assert_code(0);
    cli.run(&["backup", "new", "--no-prune"]).assert_code(0);
    let dst = pg.target_with_content("kh_dead_dst");
    let holder = pg.hold_advisory_lock(
        "postgres",
        &format!(
            "SELECT pg_advisory_lock({TARGET_LOCK_CLASS}, hashtext('{}'))",
            dst.name
        ),
    );
    let child = cli.spawn(&["restore", "old", &dst.name, "--lock-timeout", "600"]);
    let leased = wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
        cli.backup_files().iter().any(|f| f.ends_with(".lease"))
    });
    assert!(leased, "the restore never took its lease");
    signal(&child, Signal::SIGKILL);
    wait(child);
    drop(holder);
    // Its process is gone (same host): the lease no longer protects the backup.
    cli.run_with(&[("BACKUP_RETENTION_COUNT", "1")], &["prune"])
        .assert_code(0)
        .assert_stderr_contains("Deleted backup old")
        .assert_stderr_contains("the lease of a run that is gone");
    assert!(!cli.backup_files().iter().any(|f| f.ends_with(".lease")));
}
