//! Issue 2: backup, restore and list on local storage, against real PostgreSQL.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use kaizen_backup_e2e::cli::{signal, wait};
use kaizen_backup_e2e::pg::assert_same;
use kaizen_backup_e2e::{Cli, Pg, free_port, unique};

fn manifest(cli: &Cli, name: &str) -> serde_json::Value {
    let text =
        std::fs::read_to_string(cli.backups().join(format!("{name}.manifest.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn sample_database_round_trips_exactly() {
    let pg = Pg::get();
    let src = pg.sample_db("kb_src");
    let cli = Cli::for_db(&src.name);
    let out = cli.run(&["backup", "first"]);
    out.assert_code(0)
        .assert_stderr_contains("[INFO] Starting backup: first")
        .assert_stderr_contains("[SUCCESS] Backup completed successfully")
        .assert_stderr_contains("[INFO] Backup size: ");
    assert!(
        out.stderr.contains(&format!(
            "Backup file: {}",
            cli.backups().join("first.dump").display()
        )),
        "{}",
        out.stderr
    );

    // Manifest contract.
    let m = manifest(&cli, "first");
    for key in [
        "format_version",
        "name",
        "database",
        "server_version",
        "pg_dump_version",
        "format",
        "compression",
        "encryption",
        "started_at",
        "finished_at",
        "size_bytes",
        "sha256",
        "tool_version",
        "pinned",
        "database_size_bytes",
        "tables",
        "counts",
    ] {
        assert!(m.get(key).is_some(), "manifest lacks {key}: {m}");
    }
    assert_eq!(m["database"], src.name.as_str());
    assert_eq!(m["format"], "custom");
    assert_eq!(m["compression"], "gzip");
    let users = m["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "users")
        .unwrap();
    assert_eq!(users["schema"], "public");
    assert_eq!(users["rows"], 2000);
    let audit = m["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "audit_logs")
        .unwrap();
    assert_eq!(audit["rows"], 12000);
    assert!(m["counts"]["tables"].as_i64().unwrap() >= 14);
    assert!(m["counts"]["sequences"].as_i64().unwrap() >= 8);
    let data = std::fs::read(cli.backups().join("first.dump")).unwrap();
    assert_eq!(m["size_bytes"].as_u64().unwrap(), data.len() as u64);
    assert!(data.starts_with(b"PGDMP"));

    // Files are private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(cli.backups().join("first.dump"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "backup readable by others: {mode:o}");

    // list --json
    let list = cli.list();
    assert_eq!(list.len(), 1);
    for key in ["name", "created_at", "size_bytes", "sha256", "database"] {
        assert!(list[0].get(key).is_some(), "list entry lacks {key}");
    }
    assert_eq!(list[0]["sha256"], m["sha256"]);

    // Restore into a new database and compare everything.
    let dst = pg.adopt(&unique("kb_dst"));
    cli.run(&["restore", "first", &dst.name])
        .assert_code(0)
        .assert_stderr_contains("Restore completed successfully");
    assert_same(&pg.fingerprint(&src.name), &pg.fingerprint(&dst.name));
    assert!(
        pg.databases_with_prefix("kaizen_restore_")
            .iter()
            .all(|d| !d.contains(&dst.name))
    );
}

#[test]
fn default_name_is_utc_timestamp_and_latest_resolves() {
    let pg = Pg::get();
    let src = pg.create_db("kb_name");
    pg.psql(
        &src.name,
        "CREATE TABLE t(x int); INSERT INTO t VALUES (1),(2)",
    );
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup"]).assert_code(0);
    let list = cli.list();
    let name = list[0]["name"].as_str().unwrap().to_string();
    assert!(
        name.starts_with("backup_") && name.len() == "backup_20240115_143000".len(),
        "{name}"
    );
    assert!(name[7..15].chars().all(|c| c.is_ascii_digit()) && &name[15..16] == "_");
    let dst = pg.adopt(&unique("kb_latest"));
    cli.run(&["restore", "latest", &dst.name]).assert_code(0);
    assert_eq!(pg.psql(&dst.name, "SELECT sum(x) FROM t"), "3");
}

#[test]
fn nonexistent_backup_fails_cleanly() {
    let pg = Pg::get();
    let src = pg.create_db("kb_none");
    let cli = Cli::for_db(&src.name);
    let dst = unique("kb_never");
    let out = cli.run(&["restore", "no_such_backup", &dst]);
    out.assert_code(1).assert_stderr_contains("not found");
    assert!(!pg.db_exists(&dst));
    cli.run(&["restore", "latest", &dst])
        .assert_code(1)
        .assert_stderr_contains("no backup");
    cli.run(&["restore", "/nonexistent/x.dump", &dst])
        .assert_code(1);
    assert!(!pg.db_exists(&dst));
}

#[test]
fn flipped_byte_is_refused_and_target_unchanged() {
    let pg = Pg::get();
    let src = pg.sample_db("kb_flip");
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "b"]).assert_code(0);
    let path = cli.backups().join("b.dump");
    let mut data = std::fs::read(&path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x01;
    std::fs::write(&path, &data).unwrap();

    let target = pg.target_with_content("kb_target");
    let before = pg.fingerprint(&target.name);
    let out = cli.run(&["restore", "b", &target.name, "--no-safety-backup"]);
    out.assert_code(1)
        .assert_stderr_contains("Invalid backup file format or corrupted file")
        .assert_stderr_contains("checksum mismatch");
    assert_same(&pg.fingerprint(&target.name), &before);
    assert!(
        pg.databases_with_prefix(&format!("kaizen_restore_{}", target.name))
            .is_empty()
    );
}

#[test]
fn truncated_backup_is_refused_and_target_unchanged() {
    let pg = Pg::get();
    let src = pg.sample_db("kb_trunc");
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "b"]).assert_code(0);
    let path = cli.backups().join("b.dump");
    let data = std::fs::read(&path).unwrap();
    std::fs::write(&path, &data[..data.len() / 3]).unwrap();
    let target = pg.target_with_content("kb_target");
    let before = pg.fingerprint(&target.name);
    cli.run(&["restore", "b", &target.name, "--no-safety-backup"])
        .assert_code(1)
        .assert_stderr_contains("Invalid backup file format or corrupted file");
    assert_same(&pg.fingerprint(&target.name), &before);
    // A truncated bare file (no manifest) is refused by pg_restore's own check.
    let bare = cli.path().join("bare.dump");
    std::fs::write(&bare, &data[..data.len() / 3]).unwrap();
    let out = cli.run(&[
        "restore",
        bare.to_str().unwrap(),
        &target.name,
        "--no-safety-backup",
    ]);
    out.assert_code(1).assert_stderr_contains("no manifest");
    assert_same(&pg.fingerprint(&target.name), &before);
    assert!(
        pg.databases_with_prefix(&format!("kaizen_restore_{}", target.name))
            .is_empty()
    );
}

#[test]
fn bare_dump_file_restores_with_a_warning() {
    let pg = Pg::get();
    let src = pg.sample_db("kb_bare");
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "b"]).assert_code(0);
    let bare = cli.path().join("copied.dump");
    std::fs::copy(cli.backups().join("b.dump"), &bare).unwrap();
    let dst = pg.adopt(&unique("kb_bare_dst"));
    let out = cli.run(&["restore", bare.to_str().unwrap(), &dst.name]);
    out.assert_code(0)
        .assert_stderr_contains("no manifest: its checksum cannot be checked");
    assert_same(&pg.fingerprint(&src.name), &pg.fingerprint(&dst.name));
}

#[test]
fn wrong_password_is_reported_without_the_password() {
    let pg = Pg::get();
    let src = pg.create_db("kb_pw");
    let cli = Cli::for_db(&src.name).env("POSTGRES_PASSWORD", "Wr0ngSecret-xyz");
    let out = cli.run(&["backup", "b", "-vv"]);
    out.assert_code(1)
        .assert_stderr_contains(&format!(
            "Cannot connect to database: {}@{}:{}",
            src.name, pg.host, pg.port
        ))
        .assert_stderr_contains("password authentication failed");
    assert!(!out.all().contains("Wr0ngSecret-xyz"));
    assert!(
        cli.backup_files().iter().all(|f| !f.starts_with('b')),
        "{:?}",
        cli.backup_files()
    );
}

#[test]
fn unreachable_host_fails_clearly() {
    let pg = Pg::get();
    let cli = Cli::for_db("kaizen_studio")
        .env("POSTGRES_PORT", &free_port().to_string())
        .env("POSTGRES_HOST", &pg.host);
    let started = Instant::now();
    let out = cli.run(&["backup", "b"]);
    out.assert_code(1)
        .assert_stderr_contains("Cannot connect to database: kaizen_studio@");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(cli.backup_files().is_empty());
}

#[test]
fn silent_server_times_out_instead_of_hanging() {
    // Accepts TCP connections but never speaks (a hung server or a half-open proxy).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in listener.incoming().take(8) {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(60));
    });
    let cli = Cli::for_db("kaizen_studio")
        .env("POSTGRES_HOST", "127.0.0.1")
        .env("POSTGRES_PORT", &port.to_string())
        .env("KAIZEN_BACKUP_DATABASE__CONNECT_TIMEOUT", "2");
    let started = Instant::now();
    let mut child = cli.spawn(&["backup", "b"]);
    let deadline = started + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("backup still waiting for a silent server after 30 s (connect_timeout = 2 s)");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = wait(child);
    out.assert_code(1).assert_stderr_contains(&format!(
        "Cannot connect to database: kaizen_studio@127.0.0.1:{port}"
    ));
    assert!(cli.backup_files().is_empty());
    drop(held);
}

#[test]
fn pg_dump_not_on_path() {
    let pg = Pg::get();
    let src = pg.create_db("kb_path");
    let cli = Cli::for_db(&src.name).env("PATH", "/nonexistent");
    let out = cli.run(&["backup", "b"]);
    out.assert_code(1)
        .assert_stderr_contains("pg_dump command not found")
        .assert_stderr_contains("apt-get install postgresql-client");
    assert!(cli.backup_files().is_empty());
}

#[test]
fn invalid_names_are_refused_before_anything_runs() {
    let cli = Cli::new().env("POSTGRES_PORT", "1");
    for bad in ["../x", "/etc/passwd", "", "a b", "latest", ".hidden"] {
        let out = cli.run(&["backup", bad]);
        out.assert_code(2)
            .assert_stderr_contains("invalid backup name");
    }
    assert!(!cli.backups().exists(), "nothing may be created");
}

#[test]
fn existing_name_is_refused_and_original_kept() {
    let pg = Pg::get();
    let src = pg.create_db("kb_dup");
    pg.psql(&src.name, "CREATE TABLE t(x int); INSERT INTO t VALUES (1)");
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "dup"]).assert_code(0);
    let before = std::fs::read(cli.backups().join("dup.dump")).unwrap();
    let m_before = std::fs::read(cli.backups().join("dup.manifest.json")).unwrap();
    pg.psql(&src.name, "INSERT INTO t VALUES (2)");
    cli.run(&["backup", "dup"])
        .assert_code(1)
        .assert_stderr_contains("already exists");
    assert_eq!(
        std::fs::read(cli.backups().join("dup.dump")).unwrap(),
        before
    );
    assert_eq!(
        std::fs::read(cli.backups().join("dup.manifest.json")).unwrap(),
        m_before
    );
}

#[test]
fn invalid_configuration_names_the_key() {
    let cli = Cli::new().env("POSTGRES_PORT", "not-a-port");
    let out = cli.run(&["backup", "x"]);
    out.assert_code(2)
        .assert_stderr_contains("database.port")
        .assert_stderr_contains("POSTGRES_PORT");
    cli.run(&["config", "check"]).assert_code(2);

    let cli = Cli::new();
    std::fs::write(
        cli.path().join("kaizen-backup.toml"),
        "[backup]\ncompression = \"rar\"\n",
    )
    .unwrap();
    cli.run(&["config", "check"])
        .assert_code(2)
        .assert_stderr_contains("backup.compression");
    let bad = cli.path().join("bad.toml");
    std::fs::write(&bad, "[restore]\njobs = \"many\"\n").unwrap();
    cli.run(&["--config", bad.to_str().unwrap(), "config", "check"])
        .assert_code(2)
        .assert_stderr_contains("restore.jobs");
    cli.run(&["--config", "/nonexistent.toml", "list"])
        .assert_code(2);
    assert!(!cli.backups().exists());
}

#[test]
fn config_show_redacts_secrets_and_names_sources() {
    let cli = Cli::for_db("kaizen_studio")
        .env("POSTGRES_PASSWORD", "Sup3rSecret!")
        .env("BACKUP_RETENTION_COUNT", "5");
    std::fs::write(cli.path().join(".env"), "POSTGRES_HOST=from-dotenv\n").unwrap();
    let out = cli.env_remove("POSTGRES_HOST").run(&["config", "show"]);
    out.assert_code(0);
    assert!(!out.all().contains("Sup3rSecret!"));
    assert!(out.stdout.contains("***"));
    assert!(
        out.stdout.contains("from-dotenv") && out.stdout.contains(".env file (POSTGRES_HOST)"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("POSTGRES_PASSWORD"), "{}", out.stdout);
}

#[test]
fn production_restore_needs_confirmation() {
    let pg = Pg::get();
    let src = pg.create_db("kb_prodsrc");
    pg.psql(
        &src.name,
        "CREATE TABLE t(v text); INSERT INTO t VALUES ('from backup')",
    );
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "b"]).assert_code(0);
    let target = pg.target_with_content("kb_target");
    let before = pg.fingerprint(&target.name);
    let prod = Cli::for_db(&src.name)
        .env("ENVIRONMENT", "production")
        .env("BACKUP_DIR", cli.backups().to_str().unwrap());
    let out = prod.run(&["restore", "b", &target.name]);
    out.assert_code(1)
        .assert_stderr_contains("[WARNING] PRODUCTION ENVIRONMENT DETECTED")
        .assert_stderr_contains("--confirm-production");
    assert_same(&pg.fingerprint(&target.name), &before);
    prod.run(&[
        "restore",
        "b",
        &target.name,
        "--confirm-production",
        "other_db",
    ])
    .assert_code(1);
    assert_same(&pg.fingerprint(&target.name), &before);
    prod.run(&[
        "restore",
        "b",
        &target.name,
        "--confirm-production",
        &target.name,
    ])
    .assert_code(0);
    assert_eq!(pg.psql(&target.name, "SELECT v FROM t"), "from backup");
    // A safety backup of the replaced database was taken first.
    let list = cli.list();
    assert!(
        list.iter()
            .any(|b| b["kind"] == "safety" && b["database"] == target.name.as_str()),
        "{list:?}"
    );
}

#[test]
fn failing_pg_restore_leaves_target_unchanged() {
    let pg = Pg::get();
    let role = unique("kb_gone_role");
    pg.psql("postgres", &format!("CREATE ROLE {role}"));
    let src = pg.create_db("kb_fail");
    pg.psql(&src.name, &format!("CREATE TABLE a(x int); INSERT INTO a SELECT generate_series(1,1000); CREATE TABLE owned(x int); ALTER TABLE owned OWNER TO {role}"));
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "b"]).assert_code(0);
    // The owner role disappears: pg_restore fails midway at ALTER TABLE ... OWNER TO.
    pg.psql(&src.name, "DROP TABLE owned");
    pg.psql("postgres", &format!("DROP ROLE {role}"));
    let target = pg.target_with_content("kb_target");
    let before = pg.fingerprint(&target.name);
    // restore.roles = none: the missing role is not created for it.
    let out = cli.run_with(
        &[("KAIZEN_BACKUP_RESTORE__ROLES", "none")],
        &["restore", "b", &target.name, "--no-safety-backup"],
    );
    out.assert_code(1)
        .assert_stderr_contains("pg_restore failed");
    assert_same(&pg.fingerprint(&target.name), &before);
    assert!(
        pg.databases_with_prefix("kaizen_restore_")
            .iter()
            .all(|d| !d.contains(&target.name))
    );
    // With restore.no_owner the same backup restores.
    let ok = Cli::for_db(&src.name)
        .env("BACKUP_DIR", cli.backups().to_str().unwrap())
        .env("KAIZEN_BACKUP_RESTORE__NO_OWNER", "true");
    let dst = pg.adopt(&unique("kb_noowner"));
    ok.run(&["restore", "b", &dst.name]).assert_code(0);
    assert_eq!(pg.psql(&dst.name, "SELECT count(*) FROM a"), "1000");
    // By default the role the backup needs is created first, and the restore works.
    let again = pg.adopt(&unique("kb_roleback"));
    cli.run(&["restore", "b", &again.name]).assert_code(0);
    assert_eq!(
        pg.psql(
            &again.name,
            "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'owned'"
        ),
        role
    );
}

#[test]
fn sigterm_during_backup_leaves_nothing_and_next_backup_works() {
    use nix::sys::signal::Signal;
    let pg = Pg::get();
    let src = pg.create_db("kb_sig");
    pg.psql(&src.name, "CREATE TABLE big AS SELECT g, md5(g::text) AS h, repeat(md5((g*7)::text), 4) AS pad FROM generate_series(1, 1500000) g");
    let cli = Cli::for_db(&src.name).env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "none");
    // SIGTERM (Kubernetes stopping the pod) and SIGINT (Ctrl-C) alike.
    for (sig, name) in [(Signal::SIGTERM, "interrupted"), (Signal::SIGINT, "ctrl_c")] {
        let child = cli.spawn(&["backup", name]);
        // Wait until data is being written, then stop it.
        cli.wait_for_backup_file(name);
        let pid = child.id();
        signal(&child, sig);
        let out = wait(child);
        assert_ne!(out.code, 0, "{sig}: {}", out.stderr);
        assert!(
            out.stderr.contains("nothing was committed"),
            "{sig}: {}",
            out.stderr
        );
        assert!(
            cli.backup_files().is_empty(),
            "{sig}: left behind: {:?}",
            cli.backup_files()
        );
        assert!(cli.list().is_empty());
        // pg_dump did not outlive the tool: its session on the server ends too.
        assert!(
            pg.pg_dump_sessions_end(&src.name),
            "{sig}: pg_dump still connected after the tool (pid {pid}) exited"
        );
    }
    cli.run(&["backup", "after"]).assert_code(0);
    assert_eq!(cli.list().len(), 1);
}

#[test]
fn restore_replaces_a_database_that_has_open_connections() {
    let pg = Pg::get();
    let src = pg.create_db("kb_busy_src");
    pg.psql(
        &src.name,
        "CREATE TABLE t(v text); INSERT INTO t VALUES ('from backup')",
    );
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "b"]).assert_code(0);
    let target = pg.target_with_content("kb_target");
    // An application still connected to the target.
    let mut app = std::process::Command::new(pg.bin.join("psql"))
        .args([
            "-X",
            "-q",
            "-h",
            &pg.socket,
            "-p",
            &pg.port,
            "-U",
            &pg.user,
            "-d",
            &target.name,
        ])
        .args(["-c", "SELECT pg_sleep(120)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}'",
            target.name
        ),
    ) == "0"
    {
        assert!(Instant::now() < deadline, "the app never connected");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = cli.run(&["restore", "b", &target.name, "--no-safety-backup"]);
    let _ = app.kill();
    let _ = app.wait();
    out.assert_code(0);
    assert_eq!(pg.psql(&target.name, "SELECT v FROM t"), "from backup");
    assert!(pg.try_psql(&target.name, "SELECT 1 FROM keep_me").is_err());
}

#[test]
fn leftovers_without_manifest_are_listed_as_incomplete_only() {
    let pg = Pg::get();
    let src = pg.create_db("kb_left");
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "good"]).assert_code(0);
    std::fs::write(cli.backups().join("killed_run.dump"), b"PGDMP partial").unwrap();
    let out = cli.run(&["list"]);
    out.assert_code(0);
    assert!(
        out.stdout.contains("killed_run.dump") && out.stdout.contains("INCOMPLETE"),
        "{}",
        out.stdout
    );
    let list = cli.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "good");
    // `latest` never resolves to a leftover.
    let dst = pg.adopt(&unique("kb_left_dst"));
    cli.run(&["restore", "latest", &dst.name])
        .assert_code(0)
        .assert_stderr_contains("good");
}

#[test]
fn insufficient_disk_space_is_refused() {
    let pg = Pg::get();
    let src = pg.sample_db("kb_space");
    let cli = Cli::for_db(&src.name).env("KAIZEN_BACKUP_BACKUP__SPACE_RATIO", "1000000000");
    let out = cli.run(&["backup", "b"]);
    out.assert_code(1)
        .assert_stderr_contains("Insufficient disk space. Available: ")
        .assert_stderr_contains("Required: ");
    assert!(cli.backup_files().is_empty());
}

#[test]
fn parallel_restore_round_trips() {
    let pg = Pg::get();
    let src = pg.sample_db("kb_jobs");
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "b"]).assert_code(0);
    let dst = pg.adopt(&unique("kb_jobs_dst"));
    cli.run(&["restore", "b", &dst.name, "--jobs", "2"])
        .assert_code(0);
    assert_same(&pg.fingerprint(&src.name), &pg.fingerprint(&dst.name));
}

#[test]
fn json_logs_and_log_file() {
    let pg = Pg::get();
    let src = pg.create_db("kb_logs");
    let cli = Cli::for_db(&src.name).env("KAIZEN_BACKUP_LOG__FILE", "backups/backup.log");
    let out = cli.run(&["--log-format", "json", "backup", "j"]);
    out.assert_code(0);
    // Every line is a JSON object; one is the start of the backup, one the audit record.
    let lines: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().any(|v| {
        v["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Starting backup: j")
    }));
    let audit = lines
        .iter()
        .find(|v| v["target"] == "kaizen_backup::audit" && v["fields"]["outcome"] == "succeeded")
        .unwrap_or_else(|| panic!("no audit record: {}", out.stderr));
    assert_eq!(audit["fields"]["action"], "backup");
    let log = std::fs::read_to_string(cli.backups().join("backup.log")).unwrap();
    assert!(log.contains("Starting backup: j"));
}

#[test]
fn restore_into_existing_database_takes_a_safety_backup_first() {
    let pg = Pg::get();
    let src = pg.create_db("kb_safe_src");
    pg.psql(
        &src.name,
        "CREATE TABLE t(v text); INSERT INTO t VALUES ('from backup')",
    );
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "b"]).assert_code(0);
    let target = pg.target_with_content("kb_target");
    let before = pg.fingerprint(&target.name);

    let out = cli.run(&["restore", "b", &target.name]);
    out.assert_code(0).assert_stderr_contains("safety backup");
    assert_eq!(pg.psql(&target.name, "SELECT v FROM t"), "from backup");
    assert!(
        pg.try_psql(&target.name, "SELECT 1 FROM keep_me").is_err(),
        "the old content must be replaced, not merged"
    );
    let list = cli.list();
    let safety: Vec<_> = list.iter().filter(|b| b["kind"] == "safety").collect();
    assert_eq!(safety.len(), 1, "{list:?}");
    assert_eq!(safety[0]["database"], target.name.as_str());
    // `latest` still means the newest regular backup, not the safety copy.
    let dst = pg.adopt(&unique("kb_safe_latest"));
    cli.run(&["restore", "latest", &dst.name]).assert_code(0);
    assert_eq!(pg.psql(&dst.name, "SELECT v FROM t"), "from backup");

    // The safety backup holds exactly what the target had before.
    let name = safety[0]["name"].as_str().unwrap();
    let old = pg.adopt(&unique("kb_safe_old"));
    cli.run(&["restore", name, &old.name]).assert_code(0);
    assert_same(&pg.fingerprint(&old.name), &before);

    // --no-safety-backup skips it.
    cli.run(&["restore", "b", &target.name, "--no-safety-backup"])
        .assert_code(0);
    assert_eq!(
        cli.list().iter().filter(|b| b["kind"] == "safety").count(),
        1
    );
}

/// Command lines of the live descendants of `pid` (read from /proc).
fn descendant_cmdlines(pid: u32) -> Vec<String> {
    let mut found = Vec::new();
    let mut parents = vec![pid];
    while let Some(parent) = parents.pop() {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may hold spaces, so parse after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(parent) {
                let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                found.push(String::from_utf8_lossy(&cmd).replace('\0', " "));
                parents.push(child);
            }
        }
    }
    found
}

#[test]
fn password_never_in_argv_logs_or_manifest() {
    let pg = Pg::get();
    let src = pg.create_db("kb_secret");
    pg.psql(&src.name, "CREATE TABLE big AS SELECT g, md5(g::text) AS h, repeat(md5((g*3)::text), 4) AS pad FROM generate_series(1, 400000) g");
    let cli = Cli::for_db(&src.name)
        .env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "none")
        .env("KAIZEN_BACKUP_LOG__FILE", "backup.log");
    let child = cli.spawn(&["-vv", "backup", "s"]);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Sample every descendant until the run has exited (a gap with no child, e.g. between
    // pg_dump's version check and the dump itself, is not the end).
    loop {
        seen.extend(descendant_cmdlines(child.id()));
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
        let exited = stat
            .rsplit_once(')')
            .is_none_or(|(_, r)| r.trim_start().starts_with('Z'));
        if exited || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = wait(child);
    out.assert_code(0);
    assert!(
        seen.iter().any(|c| c.contains("pg_dump")),
        "pg_dump was never seen running: {seen:?}"
    );
    for c in &seen {
        assert!(!c.contains(&pg.password), "password in argv: {c}");
    }
    assert!(!out.all().contains(&pg.password), "password in output");
    let log = std::fs::read_to_string(cli.path().join("backup.log")).unwrap();
    assert!(log.contains("Starting backup: s"), "{log}");
    assert!(!log.contains(&pg.password), "password in the log file");
    let m = std::fs::read_to_string(cli.backups().join("s.manifest.json")).unwrap();
    assert!(!m.contains(&pg.password), "password in the manifest");
    // No passfile left behind anywhere in the working directory or temp dir.
    for f in cli.backup_files() {
        assert!(!f.contains("pgpass"), "left behind: {f}");
    }
}

#[test]
fn list_is_newest_first() {
    let pg = Pg::get();
    let src = pg.create_db("kb_order");
    let cli = Cli::for_db(&src.name);
    for name in ["one", "two", "three"] {
        cli.run(&["backup", name]).assert_code(0);
        std::thread::sleep(Duration::from_millis(1100));
    }
    let names: Vec<String> = cli
        .list()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["three", "two", "one"]);
    let text = cli.run(&["list"]);
    text.assert_code(0);
    let pos = |n: &str| text.stdout.find(n).unwrap();
    assert!(
        pos("three") < pos("two") && pos("two") < pos("one"),
        "{}",
        text.stdout
    );
}

#[test]
fn database_url_and_storage_flag() {
    let pg = Pg::get();
    let src = pg.create_db("kb_url");
    pg.psql(&src.name, "CREATE TABLE t(x int); INSERT INTO t VALUES (7)");
    let elsewhere = tempfile::tempdir().unwrap();
    let cli = Cli::new().env(
        "DATABASE_URL",
        &format!(
            "postgresql://{}:{}@{}:{}/{}",
            pg.user, pg.password, pg.host, pg.port, src.name
        ),
    );
    let storage = format!("file://{}", elsewhere.path().display());
    let out = cli.run(&["--storage", &storage, "backup", "u"]);
    out.assert_code(0);
    assert!(!out.all().contains(&pg.password));
    assert!(elsewhere.path().join("u.dump").is_file());
    assert!(elsewhere.path().join("u.manifest.json").is_file());
    assert!(
        !cli.backups().exists(),
        "BACKUP_DIR must not be used with --storage"
    );
    let dst = pg.adopt(&unique("kb_url_dst"));
    cli.run(&["--storage", &storage, "restore", "u", &dst.name])
        .assert_code(0);
    assert_eq!(pg.psql(&dst.name, "SELECT x FROM t"), "7");
}

#[test]
fn pg_dump_older_than_the_server_is_refused_before_dumping() {
    let pg = Pg::get();
    let src = pg.create_db("kb_oldtool");
    let server_major: u32 = pg
        .psql("postgres", "SHOW server_version_num")
        .parse::<u32>()
        .unwrap()
        / 10000;
    let old = server_major - 3;
    let cli = Cli::for_db(&src.name);
    let fake = cli.path().join("oldbin");
    std::fs::create_dir(&fake).unwrap();
    let ran = cli.path().join("fake_pg_dump_ran");
    for tool in ["pg_dump", "pg_restore"] {
        let script = fake.join(tool);
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nif [ \"$1\" = --version ]; then echo '{tool} (PostgreSQL) {old}.4'; exit 0; fi\n: > '{}'\nexit 1\n",
                ran.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let cli = cli.env("PATH", fake.to_str().unwrap());
    let out = cli.run(&["backup", "b"]);
    out.assert_code(1).assert_stderr_contains(&format!(
        "pg_dump {old} is older than the server (PostgreSQL {server_major})"
    ));
    assert!(!ran.exists(), "the old pg_dump must not be run to dump");
    assert!(cli.backup_files().is_empty(), "{:?}", cli.backup_files());

    // database.bin_dir picks the right tools whatever PATH says.
    let out = cli
        .env("KAIZEN_BACKUP_DATABASE__BIN_DIR", pg.bin.to_str().unwrap())
        .run(&["backup", "b"]);
    out.assert_code(0);
    assert!(!ran.exists());
}

#[test]
fn production_is_detected_from_every_documented_source() {
    let pg = Pg::get();
    let src = pg.create_db("kb_prodenv");
    pg.psql(
        &src.name,
        "CREATE TABLE t(v text); INSERT INTO t VALUES ('new')",
    );
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "b"]).assert_code(0);
    let target = pg.target_with_content("kb_target");
    let before = pg.fingerprint(&target.name);
    for (k, v) in [
        ("ENVIRONMENT", "prod"),
        ("APP_ENV", "production"),
        ("APP_ENV", "prod"),
        ("KAIZEN_BACKUP_RESTORE__ENVIRONMENT", "production"),
    ] {
        let out = cli.run_with(
            &[(k, v)],
            &["restore", "b", &target.name, "--no-safety-backup"],
        );
        out.assert_code(1)
            .assert_stderr_contains("--confirm-production");
        assert_same(&pg.fingerprint(&target.name), &before);
    }
    // Creating a database that does not exist replaces nothing: no confirmation needed.
    let fresh = pg.adopt(&unique("kb_prod_new"));
    cli.run_with(
        &[("ENVIRONMENT", "production")],
        &["restore", "b", &fresh.name],
    )
    .assert_code(0);
    assert_eq!(pg.psql(&fresh.name, "SELECT v FROM t"), "new");
}

#[test]
fn production_restore_on_a_terminal_asks_for_restore() {
    let pg = Pg::get();
    let src = pg.create_db("kb_tty");
    pg.psql(
        &src.name,
        "CREATE TABLE t(v text); INSERT INTO t VALUES ('new')",
    );
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "b"]).assert_code(0);
    let target = pg.target_with_content("kb_target");
    let before = pg.fingerprint(&target.name);
    let prod = Cli::for_db(&src.name)
        .env("ENVIRONMENT", "production")
        .env("BACKUP_DIR", cli.backups().to_str().unwrap());
    let args = ["restore", "b", &target.name, "--no-safety-backup"];

    // Anything but the word RESTORE refuses.
    let out = prod.run_tty(&args, "yes\n");
    assert_eq!(out.code, 1, "{}", out.stdout);
    for warning in [
        "[WARNING] PRODUCTION ENVIRONMENT DETECTED",
        &format!(
            "[WARNING] You are about to restore database: {}",
            target.name
        ),
        "[WARNING] This will OVERWRITE existing data!",
        "Type 'RESTORE' to continue or Ctrl+C to abort:",
    ] {
        assert!(
            out.stdout.contains(warning),
            "missing {warning:?}:\n{}",
            out.stdout
        );
    }
    assert_same(&pg.fingerprint(&target.name), &before);

    let out = prod.run_tty(&args, "RESTORE\n");
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(pg.psql(&target.name, "SELECT v FROM t"), "new");
}

/// Peak resident memory of a live process, in KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn backup_memory_stays_bounded_whatever_the_database_size() {
    let pg = Pg::get();
    let src = pg.create_db("kb_mem");
    pg.psql(&src.name, "CREATE TABLE big AS SELECT g, repeat(md5(g::text), 5) AS pad FROM generate_series(1, 1000000) g");
    // none: the stored stream is as large as the dump; zstd: its worker threads' buffers.
    for compression in ["none", "zstd"] {
        peak_rss_of_backup(&src.name, compression);
    }
}

fn peak_rss_of_backup(db: &str, compression: &str) {
    let cli = Cli::for_db(db).env("KAIZEN_BACKUP_BACKUP__COMPRESSION", compression);
    let child = cli.spawn(&["backup", "big"]);
    let pid = child.id();
    let mut peak = 0;
    while std::fs::metadata(format!("/proc/{pid}/status")).is_ok() {
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        // A zombie has no VmHWM any more: stop sampling once it exited.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = wait(child);
    out.assert_code(0);
    let bound_kib = 64 * 1024;
    if compression == "none" {
        let size = std::fs::metadata(cli.backups().join("big.dump"))
            .unwrap()
            .len();
        assert!(
            size > 2 * bound_kib * 1024,
            "the dump ({size} bytes) must be much larger than the memory bound for this test to mean anything"
        );
    }
    eprintln!("{compression}: peak RSS {peak} KiB");
    assert!(
        peak > 0 && peak < bound_kib,
        "{compression}: peak RSS {peak} KiB: the backup is not streaming in bounded memory"
    );
}

/// A 1 MiB tmpfs mounted on `dir` (root only), unmounted on drop.
struct TinyFs(std::path::PathBuf);

impl TinyFs {
    fn mount(dir: &std::path::Path) -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root: cannot mount a small filesystem for the disk-full tests");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount -t tmpfs failed");
        Some(Self(dir.to_path_buf()))
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_is_refused_up_front_or_aborts_cleanly() {
    let pg = Pg::get();
    let src = pg.sample_db("kb_full");
    let cli = Cli::for_db(&src.name);
    let Some(fs) = TinyFs::mount(&cli.backups()) else {
        return;
    };
    // The preflight estimate (from pg_database_size) does not fit in 1 MiB.
    let out = cli.run(&["backup", "b"]);
    out.assert_code(1)
        .assert_stderr_contains("Insufficient disk space. Available: ")
        .assert_stderr_contains("Required: ");
    assert!(cli.backup_files().is_empty(), "{:?}", cli.backup_files());

    // Without the preflight, the disk fills up midway: nothing is committed, nothing left.
    pg.psql(
        &src.name,
        "CREATE TABLE filler AS SELECT g, md5(g::text) AS h FROM generate_series(1, 100000) g",
    );
    let out = cli.run_with(
        &[
            ("KAIZEN_BACKUP_BACKUP__SPACE_CHECK", "false"),
            ("KAIZEN_BACKUP_BACKUP__COMPRESSION", "none"),
        ],
        &["backup", "b"],
    );
    out.assert_code(1);
    assert!(
        cli.backup_files().is_empty(),
        "left on the full disk: {:?}\n{}",
        cli.backup_files(),
        out.stderr
    );
    assert!(cli.list().is_empty());
    drop(fs);
}

#[test]
fn audit_file_records_who_did_what() {
    let pg = Pg::get();
    let src = pg.create_db("kb_audit");
    let hook = kaizen_backup_e2e::http::Recorder::start();
    let cli = Cli::for_db(&src.name).env("KAIZEN_BACKUP_AUDIT__FILE", "audit/audit.jsonl");
    std::fs::write(
        cli.path().join("kaizen-backup.toml"),
        format!(
            "[[notify]]\ntype = \"webhook\"\nurl = \"{}/audit\"\non = [\"audit\"]\n",
            hook.url
        ),
    )
    .unwrap();
    cli.run(&["backup", "a1"]).assert_code(0);
    // Audit events also go to notifiers that ask for them (and only those events).
    let reqs = hook.wait_for(2, std::time::Duration::from_secs(10));
    assert!(
        reqs.iter().all(|r| r.json()["kind"] == "audit"),
        "{:?}",
        reqs.len()
    );
    assert!(
        reqs.iter()
            .any(|r| r.json()["details"]["outcome"] == "succeeded"
                && r.json()["details"]["action"] == "backup")
    );
    let dst = pg.adopt(&unique("kb_audit_dst"));
    cli.run(&["restore", "a1", &dst.name]).assert_code(0);
    let bad = Cli::for_db(&src.name)
        .env("BACKUP_DIR", cli.backups().to_str().unwrap())
        .env(
            "KAIZEN_BACKUP_AUDIT__FILE",
            cli.path().join("audit/audit.jsonl").to_str().unwrap(),
        )
        .env("POSTGRES_PASSWORD", "Audit-Wrong-Pw");
    bad.run(&["backup", "a2"]).assert_code(1);
    let path = cli.path().join("audit/audit.jsonl");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("Audit-Wrong-Pw"));
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |action: &str, outcome: &str| {
        events
            .iter()
            .any(|e| e["action"] == action && e["outcome"] == outcome)
    };
    assert!(
        find("backup", "started") && find("backup", "succeeded") && find("backup", "failed"),
        "{text}"
    );
    assert!(
        events
            .iter()
            .all(|e| e["user"].as_str().is_some_and(|u| !u.is_empty())
                && e["host"].as_str().is_some())
    );
    assert!(find("restore", "succeeded"), "{text}");
    assert!(events.iter().all(|e| e["database"] == src.name.as_str()));
}
