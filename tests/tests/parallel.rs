//! Issue 8: parallel dump (`backup --jobs N`, directory format streamed as one tar
//! archive), restored and verified like any other backup, locally and on S3.

#![allow(clippy::unwrap_used)]

use kaizen_backup_e2e::cli::{signal, wait};
use kaizen_backup_e2e::pg::assert_same;
use kaizen_backup_e2e::services::S3;
use kaizen_backup_e2e::{Cli, Pg, unique};

fn manifest(cli: &Cli, name: &str) -> serde_json::Value {
    let text =
        std::fs::read_to_string(cli.backups().join(format!("{name}.manifest.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A CLI whose parallel dumps are staged in a directory the test can inspect.
fn staged_cli(db: &str) -> (Cli, std::path::PathBuf) {
    staged(Cli::for_db(db))
}

fn staged(cli: Cli) -> (Cli, std::path::PathBuf) {
    let staging = cli.path().join("staging");
    let cli = cli.env(
        "KAIZEN_BACKUP_BACKUP__STAGING_DIR",
        staging.to_str().unwrap(),
    );
    (cli, staging)
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn parallel_backup_round_trips_verifies_and_is_a_plain_tar() {
    let pg = Pg::get();
    let src = pg.sample_db("kp_src");
    let (cli, staging) = staged_cli(&src.name);
    let out = cli.run(&["backup", "par", "--jobs", "2"]);
    out.assert_code(0)
        .assert_stderr_contains("[SUCCESS] Backup completed successfully");
    assert!(
        out.stderr.contains(&format!(
            "Backup file: {}",
            cli.backups().join("par.tar").display()
        )),
        "{}",
        out.stderr
    );
    let m = manifest(&cli, "par");
    assert_eq!(m["format"], "directory");
    assert_eq!(m["object"], "par.tar");
    assert_eq!(m["compression"], "gzip");
    let users = m["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "users")
        .unwrap();
    assert_eq!(users["rows"], 2000);
    // The staging directory is emptied.
    assert!(entries(&staging).is_empty(), "{:?}", entries(&staging));

    // An ordinary tar archive: GNU tar lists it, the table of contents comes last.
    let tar = std::process::Command::new("tar")
        .arg("-tf")
        .arg(cli.backups().join("par.tar"))
        .output()
        .unwrap();
    assert!(
        tar.status.success(),
        "{}",
        String::from_utf8_lossy(&tar.stderr)
    );
    let listing = String::from_utf8(tar.stdout).unwrap();
    let names: Vec<&str> = listing.lines().collect();
    assert_eq!(names.last(), Some(&"toc.dat"), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with(".dat.gz")), "{names:?}");
    assert!(
        names.contains(&"blobs.toc"),
        "large objects missing: {names:?}"
    );

    cli.run(&["verify", "par", "--quick"]).assert_code(0);
    // Verify: every check, including the exact comparison with the manifest.
    let v = cli.run(&["verify", "par", "--json"]);
    v.assert_code(0)
        .assert_stderr_contains("Backup is valid and can be used for restore");
    let record = v.json();
    let checks: Vec<&str> = record["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for want in [
        "file",
        "archive",
        "test_restore",
        "row_counts",
        "foreign_keys",
    ] {
        assert!(checks.contains(&want), "{want} missing from {checks:?}");
    }
    assert_eq!(cli.list()[0]["verified"], true);

    // Restore with and without parallel jobs: identical to the source, large objects included.
    let mut targets = Vec::new();
    for jobs in ["1", "2"] {
        let dst = pg.adopt(&unique("kp_dst"));
        targets.push(dst.name.clone());
        cli.run(&["restore", "par", &dst.name, "--jobs", jobs])
            .assert_code(0)
            .assert_stderr_contains("Restore completed successfully");
        assert_same(&pg.fingerprint(&src.name), &pg.fingerprint(&dst.name));
        assert_eq!(
            pg.psql(
                &dst.name,
                "SELECT convert_from(lo_get(invoice_pdf), 'UTF8') FROM billing_records WHERE id = 1"
            ),
            "%PDF-1.4 invoice 1"
        );
    }
    // A restore given the file path works too.
    let dst = pg.adopt(&unique("kp_path"));
    targets.push(dst.name.clone());
    let path = cli.backups().join("par.tar");
    cli.run(&["restore", path.to_str().unwrap(), &dst.name])
        .assert_code(0);
    assert_same(&pg.fingerprint(&src.name), &pg.fingerprint(&dst.name));
    // No temporary database of these restores is left.
    let temps = pg.databases_with_prefix("kaizen_restore_");
    for t in &targets {
        let base: String = t.chars().take(30).collect();
        assert!(temps.iter().all(|d| !d.contains(&base)), "{temps:?}");
    }
}

#[test]
fn parallel_zstd_backup_round_trips() {
    let pg = Pg::get();
    let src = pg.sample_db("kp_zstd");
    let (cli, _) = staged_cli(&src.name);
    let cli = cli
        .env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "zstd")
        .env("KAIZEN_BACKUP_BACKUP__JOBS", "2");
    cli.run(&["backup", "z", "--verify"])
        .assert_code(0)
        .assert_stderr_contains("All integrity checks passed");
    let m = manifest(&cli, "z");
    assert_eq!(m["format"], "directory");
    assert_eq!(m["object"], "z.tar.zst");
    assert_eq!(m["compression"], "zstd");
    let dst = pg.adopt(&unique("kp_zstd_dst"));
    cli.run(&["restore", "z", &dst.name, "--jobs", "2"])
        .assert_code(0);
    assert_same(&pg.fingerprint(&src.name), &pg.fingerprint(&dst.name));
}

#[test]
fn damaged_parallel_backup_is_refused_and_target_unchanged() {
    let pg = Pg::get();
    let src = pg.sample_db("kp_bad");
    let (cli, _) = staged_cli(&src.name);
    cli.run(&["backup", "kp_good", "--jobs", "2"])
        .assert_code(0);
    let file = cli.backups().join("kp_good.tar");
    let original = std::fs::read(&file).unwrap();
    let target = pg.target_with_content("kp_target");
    let before = pg.fingerprint(&target.name);

    // One flipped byte in the middle.
    let mut flipped = original.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    std::fs::write(&file, &flipped).unwrap();
    cli.run(&["verify", "kp_good", "--quick"])
        .assert_code(1)
        .assert_stderr_contains("checksum mismatch");
    cli.run(&["restore", "kp_good", &target.name, "--no-safety-backup"])
        .assert_code(1)
        .assert_stderr_contains("checksum mismatch");
    assert_same(&pg.fingerprint(&target.name), &before);

    // Truncated (the end of the archive and the table of contents lost).
    std::fs::write(&file, &original[..original.len() / 2]).unwrap();
    cli.run(&["verify", "kp_good"])
        .assert_code(1)
        .assert_stderr_contains("check file failed");
    cli.run(&["restore", "kp_good", &target.name, "--no-safety-backup"])
        .assert_code(1)
        .assert_stderr_contains("truncated");
    assert_same(&pg.fingerprint(&target.name), &before);
    assert!(
        pg.databases_with_prefix("kaizen_restore_")
            .iter()
            .all(|d| !d.contains("kp_target"))
    );
    assert!(
        pg.databases_with_prefix("kaizen_verify_kp_good").is_empty(),
        "verification database left behind"
    );
}

#[test]
fn sigterm_during_parallel_backup_leaves_nothing() {
    use nix::sys::signal::Signal;
    let pg = Pg::get();
    let src = pg.create_db("kp_sig");
    // big2 is half of big1: its file is complete long before big1's.
    pg.psql(&src.name, "CREATE TABLE big1 AS SELECT g, md5(g::text) AS h, repeat(md5((g*7)::text), 4) AS pad FROM generate_series(1, 800000) g; CREATE TABLE big2 AS SELECT * FROM big1 WHERE g % 2 = 0; CREATE TABLE small AS SELECT g FROM generate_series(1, 10) g");
    let (cli, staging) = staged_cli(&src.name);
    let cli = cli.env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "none");
    let child = cli.spawn(&["backup", "interrupted", "--jobs", "2"]);
    cli.wait_for_backup_file("interrupted");
    signal(&child, Signal::SIGTERM);
    let out = wait(child);
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("nothing was committed"),
        "{}",
        out.stderr
    );
    assert!(
        cli.backup_files().is_empty(),
        "left behind: {:?}",
        cli.backup_files()
    );
    assert!(
        entries(&staging).is_empty(),
        "staging left: {:?}",
        entries(&staging)
    );
    // No pg_dump worker outlives the tool.
    assert!(
        pg.pg_dump_sessions_end(&src.name),
        "pg_dump sessions still open"
    );
    // Files are streamed while pg_dump still runs, not staged until it ends.
    let out = cli.run(&["backup", "after", "--jobs", "2"]);
    out.assert_code(0);
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("Parallel dump: "))
        .unwrap_or_else(|| panic!("{}", out.stderr));
    let early: u32 = line
        .split("Parallel dump: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(early >= 1, "{line}");
    assert_eq!(cli.list().len(), 1);
}

#[test]
fn jobs_zero_is_refused() {
    let cli = Cli::new();
    cli.run(&["backup", "x", "--jobs", "0"])
        .assert_code(2)
        .assert_stderr_contains("--jobs must be at least 1");
    assert!(cli.backup_files().is_empty());
}

#[test]
fn parallel_backup_to_s3_round_trips() {
    let pg = Pg::get();
    let s3 = S3::get();
    let db = pg.create_db("kp_s3");
    // Big enough for several multipart parts, in more than one table.
    pg.psql(&db.name, "CREATE TABLE a AS SELECT g, md5(g::text) AS x, md5((g*3)::text) AS y FROM generate_series(1, 400000) g; CREATE TABLE b AS SELECT g, md5((g*5)::text) AS z FROM generate_series(1, 400000) g; ALTER TABLE a ADD PRIMARY KEY (g)");
    let url = s3.url(&unique("par"));
    let cli = s3
        .cli(&db.name)
        .env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "none");
    cli.run(&["--storage", &url, "backup", "p", "--jobs", "2"])
        .assert_code(0)
        .assert_stderr_contains(&format!("Backup file: {url}/p.tar"));
    cli.run(&["--storage", &url, "verify", "p"]).assert_code(0);
    let dst = pg.adopt(&unique("kp_s3_dst"));
    cli.run(&["--storage", &url, "restore", "p", &dst.name, "--jobs", "2"])
        .assert_code(0);
    assert_same(&pg.fingerprint(&db.name), &pg.fingerprint(&dst.name));
}

#[test]
fn parallel_backup_of_a_latin1_database_with_many_tables() {
    // pg_dump's progress messages carry object names in the database's encoding: a
    // non-UTF-8 name must not stop the reader of its messages (pg_dump would then block
    // on a full pipe once thousands of tables have been reported).
    let pg = Pg::get();
    let name = unique("kp_latin1");
    pg.psql(
        "postgres",
        &format!(
            "CREATE DATABASE {name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        ),
    );
    let src = pg.adopt(&name);
    pg.psql(
        &src.name,
        "CREATE TABLE \"café\"(v text); INSERT INTO \"café\" VALUES ('crème brûlée'); \
         DO $$ BEGIN FOR i IN 1..1500 LOOP \
           EXECUTE format('CREATE TABLE t%s(x int primary key, \"naïve\" text)', i); \
           EXECUTE format('INSERT INTO t%s VALUES (1, ''é'')', i); \
         END LOOP; END $$",
    );
    let (cli, staging) = staged_cli(&src.name);
    cli.run(&["backup", "l1", "--jobs", "2"]).assert_code(0);
    assert!(entries(&staging).is_empty());
    let dst = pg.adopt(&unique("kp_latin1_dst"));
    cli.run(&["restore", "l1", &dst.name, "--jobs", "2"])
        .assert_code(0);
    assert_same(&pg.fingerprint(&src.name), &pg.fingerprint(&dst.name));
    assert_eq!(pg.psql(&dst.name, "SELECT v FROM \"café\""), "crème brûlée");
    assert_eq!(
        pg.psql(
            &dst.name,
            "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()"
        ),
        "LATIN1"
    );
}

#[test]
fn parallel_backup_with_an_unusable_staging_dir_fails_and_stores_nothing() {
    let pg = Pg::get();
    let src = pg.sample_db("kp_nostage");
    let cli = Cli::for_db(&src.name);
    // A regular file where the staging directory's parent should be.
    let blocker = cli.path().join("not_a_dir");
    std::fs::write(&blocker, "x").unwrap();
    let staging = blocker.join("staging");
    let cli = cli.env(
        "KAIZEN_BACKUP_BACKUP__STAGING_DIR",
        staging.to_str().unwrap(),
    );
    cli.run(&["backup", "s", "--jobs", "2"])
        .assert_code(1)
        .assert_stderr_contains("creating staging directory");
    assert!(cli.backup_files().is_empty(), "{:?}", cli.backup_files());
    assert!(pg.pg_dump_sessions_end(&src.name));
}

#[test]
fn parallel_backup_is_refused_when_staging_lacks_space() {
    let pg = Pg::get();
    let s3 = S3::get();
    let db = pg.sample_db("kp_space");
    // S3 reports no free space, so only the local staging directory is checked.
    let url = s3.url(&unique("space"));
    let (cli, staging) = staged(s3.cli(&db.name));
    let cli = cli.env("KAIZEN_BACKUP_BACKUP__SPACE_RATIO", "1000000000000");
    cli.run(&["--storage", &url, "backup", "s", "--jobs", "2"])
        .assert_code(1)
        .assert_stderr_contains("staging of the parallel dump");
    assert!(entries(&staging).is_empty(), "{:?}", entries(&staging));
    let listed = cli.run(&["--storage", &url, "list", "--json"]);
    listed.assert_code(0);
    assert_eq!(listed.json().as_array().map(Vec::len), Some(0));
}

#[test]
fn parallel_restore_is_refused_when_its_temp_dir_lacks_space() {
    let pg = Pg::get();
    let src = pg.sample_db("kp_rspace");
    let (cli, _) = staged_cli(&src.name);
    let temp = cli.path().join("restore-tmp");
    let cli = cli
        .env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "none")
        .env("KAIZEN_BACKUP_RESTORE__TEMP_DIR", temp.to_str().unwrap());
    cli.run(&["backup", "big", "--jobs", "2"]).assert_code(0);
    // Uncompressed by pg_dump: the unpacked dump may be as large as the database,
    // which the manifest now says is far larger than any disk.
    let path = cli.backups().join("big.manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["database_size_bytes"] = serde_json::json!(4_000_000_000_000_000_000_i64);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let target = pg.target_with_content("kp_rspace_t");
    let before = pg.fingerprint(&target.name);
    cli.run(&["restore", "big", &target.name, "--no-safety-backup"])
        .assert_code(1)
        .assert_stderr_contains("unpacking the parallel dump");
    assert_same(&pg.fingerprint(&target.name), &before);
    assert!(entries(&temp).is_empty(), "{:?}", entries(&temp));
}
