//! Issue 13, two cases the other hardening tests leave out: the decoded archive a killed
//! parallel restore leaves in its temporary directory, and prune racing a verification.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kaizen_backup_e2e::cli::{signal, wait};
use kaizen_backup_e2e::{Cli, Pg, TestDb, unique, wait_until};
use nix::sys::signal::Signal;

/// Name prefix of the decoded archive a parallel restore downloads.
const RESTORE_PREFIX: &str = "kaizen-restore-";

/// A run in the background whose stderr is collected as it comes, so that a test can
/// wait for a line it logs.
struct Running {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn start(cli: &Cli, envs: &[(&str, &str)], args: &[&str]) -> Self {
        let mut child = cli.spawn_with(envs, args);
        let pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Self { child, stderr }
    }

    /// Wait (up to 120 s) until the run logs `line`; panics with its stderr otherwise.
    fn wait_for_log(&mut self, line: &str) {
        let seen = wait_until(Duration::from_secs(120), Duration::from_millis(20), || {
            self.stderr.lock().unwrap().contains(line) || self.child.try_wait().unwrap().is_some()
        });
        let stderr = self.stderr.lock().unwrap().clone();
        assert!(
            seen && stderr.contains(line),
            "the run never logged {line:?}:\n{stderr}"
        );
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(mut self) {
        signal(&self.child, Signal::SIGKILL);
        self.child.wait().unwrap();
    }
}

/// The decoded archives of parallel restores in `dir`, by the pid in their name.
fn restore_files(dir: &Path, pid: u32) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            // kaizen-restore-<host tag>-<pid>-<random>
            name.starts_with(RESTORE_PREFIX)
                && name.split('-').nth(3) == Some(pid.to_string().as_str())
        })
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// A database holding `x = 'restored'`, the content the restores bring in.
fn source(pg: &Pg, prefix: &str) -> TestDb {
    let db = pg.create_db(prefix);
    pg.psql(
        &db.name,
        "CREATE TABLE x(v text); INSERT INTO x VALUES ('restored')",
    );
    db
}

#[test]
fn a_killed_parallel_restore_leaves_a_private_archive_that_the_next_run_removes() {
    let pg = Pg::get();
    let src = source(&pg, "kg_dl_src");
    let cli = Cli::for_db(&src.name);
    let temp = cli.path().join("restore-tmp");
    std::fs::create_dir(&temp).unwrap();
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o700)).unwrap();
    let cli = cli.env("KAIZEN_BACKUP_RESTORE__TEMP_DIR", temp.to_str().unwrap());
    cli.run(&["backup", "b", "--no-prune"]).assert_code(0);
    let target = pg.target_with_content("kg_dl_dst");
    let other = pg.target_with_content("kg_dl_live");
    let before = pg.fingerprint(&target.name);

    let pause = [("KAIZEN_BACKUP_TEST_PAUSE", "restore-downloaded")];
    let restore =
        |t: &str| ["restore", "b", t, "--jobs", "2", "--no-safety-backup"].map(String::from);
    // A restore that stays alive meanwhile, stopped with its decoded archive on disk
    // (started first: every run cleans up when it starts).
    let live_args = restore(&other.name);
    let live_args: Vec<&str> = live_args.iter().map(String::as_str).collect();
    let mut live = Running::start(&cli, &pause, &live_args);
    live.wait_for_log("Test pause point restore-downloaded reached");
    let live_file = restore_files(&temp, live.pid());
    assert_eq!(live_file.len(), 1, "{live_file:?}");

    // Stopped with the whole decoded archive on disk, before pg_restore reads it.
    let args = restore(&target.name);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut dead = Running::start(&cli, &pause, &args);
    dead.wait_for_log("Test pause point restore-downloaded reached");
    let left = restore_files(&temp, dead.pid());
    assert_eq!(left.len(), 1, "{left:?}");
    let left = left.into_iter().next().unwrap();
    assert_eq!(
        mode(&left),
        0o600,
        "{} is readable by others",
        left.display()
    );
    assert!(std::fs::metadata(&left).unwrap().len() > 0);
    dead.kill();
    assert!(left.exists(), "nothing was left to clean up");
    // The target was never touched, and is usable.
    assert_eq!(pg.psql(&target.name, "SELECT v FROM keep_me"), "original");
    kaizen_backup_e2e::assert_same(&pg.fingerprint(&target.name), &before);

    let next = cli.run(&args);
    next.assert_code(0)
        .assert_stderr_contains(&format!("Removed {} left by a killed run", left.display()))
        .assert_stderr_contains("Restore completed successfully");
    assert!(!left.exists(), "{} was not removed", left.display());
    assert!(live_file[0].exists(), "the live run's archive was removed");
    assert_eq!(pg.psql(&target.name, "SELECT v FROM x"), "restored");
    // The next run's own archive went with it: only the live one is left.
    let remaining: Vec<PathBuf> = std::fs::read_dir(&temp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(remaining, live_file);

    // Once that run is killed too, its archive goes with the next run.
    live.kill();
    cli.run(&["backup", "after", "--no-prune"]).assert_code(0);
    assert!(
        std::fs::read_dir(&temp).unwrap().next().is_none(),
        "{:?}",
        std::fs::read_dir(&temp)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect::<Vec<_>>()
    );
    assert_eq!(pg.psql(&other.name, "SELECT v FROM keep_me"), "original");
    // Neither killed run left a copy on the server either.
    for t in [&target.name, &other.name] {
        let copies = pg.databases_with_prefix(&format!("kaizen_restore_{t}_"));
        assert!(copies.is_empty(), "{copies:?}");
    }
}

/// A role dropped at the end of the test (after the databases declared after it).
struct Role(String);

impl Drop for Role {
    fn drop(&mut self) {
        let _ = Pg::get().try_psql("postgres", &format!("DROP ROLE IF EXISTS {}", self.0));
    }
}

#[test]
fn prune_keeps_a_backup_while_it_is_being_verified() {
    let pg = Pg::get();
    // The backup grants a role something: the verification's test restore re-grants it,
    // and waits while a session holds that role locked (an uncommitted DROP ROLE keeps
    // the role's lock, which recording a grant to it waits for; the rollback at the end
    // of that session brings the role back).
    let reader = Role(unique("kg_reader"));
    pg.psql("postgres", &format!("CREATE ROLE {}", reader.0));
    let src = source(&pg, "kg_vlease_src");
    pg.psql(&src.name, &format!("GRANT SELECT ON x TO {}", reader.0));
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "old", "--no-prune"]).assert_code(0);
    cli.run(&["backup", "new", "--no-prune"]).assert_code(0);

    let key: u32 = rand::random::<u32>() >> 1;
    let holder = pg.hold_advisory_lock(
        &src.name,
        &format!(
            "BEGIN; REVOKE ALL ON x FROM {r}; DROP ROLE {r}; SELECT pg_advisory_lock({key})",
            r = reader.0
        ),
    );
    let child = cli.spawn(&["verify", "old"]);
    // Its test restore has loaded the data and waits on the role: the verification is
    // at a known step, holding its lease on `old`.
    let waiting = wait_until(Duration::from_secs(120), Duration::from_millis(20), || {
        pg.psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE starts_with(datname, 'kaizen_verify_') \
                 AND wait_event_type = 'Lock' AND query LIKE 'GRANT %{}%'",
                reader.0
            ),
        ) == "1"
    });
    assert!(waiting, "the verification never reached its grant");
    assert!(
        cli.backup_files()
            .iter()
            .any(|f| f.starts_with("old.") && f.ends_with(".lease")),
        "no lease on old: {:?}",
        cli.backup_files()
    );
    // Retention that keeps only the newest backup, whatever was verified.
    let retention = [
        ("KAIZEN_BACKUP_RETENTION__KEEP_LAST", "1"),
        ("KAIZEN_BACKUP_RETENTION__KEEP_VERIFIED", "false"),
    ];
    cli.run_with(&retention, &["prune"])
        .assert_code(0)
        .assert_stderr_contains("Keeping old although retention would delete it")
        .assert_stderr_contains("being read (verify by");
    assert!(cli.backups().join("old.manifest.json").is_file());

    // The role comes back when the lock holder's transaction rolls back.
    drop(holder);
    wait(child)
        .assert_code(0)
        .assert_stderr_contains("All integrity checks passed");
    assert!(
        !cli.backup_files().iter().any(|f| f.ends_with(".lease")),
        "lease left: {:?}",
        cli.backup_files()
    );
    cli.run_with(&retention, &["prune"])
        .assert_code(0)
        .assert_stderr_contains("Deleted backup old");
    assert!(!cli.backups().join("old.manifest.json").exists());
    assert!(cli.backups().join("new.manifest.json").is_file());
}
