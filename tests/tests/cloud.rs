//! Issue 4: backup, list, restore, verify and prune against real local cloud servers
//! (moto for S3, Azurite, gcp-storage-emulator), fan-out, optional targets, failures.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use kaizen_backup_e2e::cli::{signal, wait};
use kaizen_backup_e2e::pg::assert_same;
use kaizen_backup_e2e::proxy::Proxy;
use kaizen_backup_e2e::services::{Azure, Gcs, S3};
use kaizen_backup_e2e::{Cli, Pg, TestDb, free_port, unique};

fn small_db(pg: &Pg, prefix: &str) -> TestDb {
    let db = pg.create_db(prefix);
    pg.psql(&db.name, "CREATE TABLE t(x int primary key, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g");
    db
}

#[test]
fn s3_round_trip_of_a_multi_part_backup() {
    let pg = Pg::get();
    let s3 = S3::get();
    let db = pg.create_db("kcl_s3");
    // ~70 MiB uncompressed: several 8 MiB parts.
    pg.psql(&db.name, "CREATE TABLE big AS SELECT g, md5(g::text) AS a, md5((g*3)::text) AS b FROM generate_series(1, 700000) g");
    let url = s3.url(&unique("rt"));
    let cli = s3
        .cli(&db.name)
        .env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "none");
    let out = cli.run(&["--storage", &url, "backup", "big"]);
    out.assert_code(0)
        .assert_stderr_contains(&format!("Backup file: {url}/big.dump"));
    assert!(!out.all().contains("Aws-Secret-Never-Printed"));
    let list = cli.run(&["--storage", &url, "list", "--json"]);
    list.assert_code(0);
    let entry = &list.json()[0];
    assert_eq!(entry["name"], "big");
    assert!(entry["size_bytes"].as_u64().unwrap() > 50 * 1024 * 1024);
    let dst = pg.adopt(&unique("kcl_s3_dst"));
    cli.run(&["--storage", &url, "restore", "big", &dst.name])
        .assert_code(0);
    assert_same(&pg.fingerprint(&db.name), &pg.fingerprint(&dst.name));
    cli.run(&["--storage", &url, "verify", "big"])
        .assert_code(0);
    let dst2 = pg.adopt(&unique("kcl_s3_jobs"));
    cli.run(&[
        "--storage",
        &url,
        "restore",
        "latest",
        &dst2.name,
        "--jobs",
        "2",
    ])
    .assert_code(0);
    assert_same(&pg.fingerprint(&db.name), &pg.fingerprint(&dst2.name));
}

#[test]
fn fan_out_to_local_and_s3_then_prune_both() {
    let pg = Pg::get();
    let s3 = S3::get();
    let db = small_db(&pg, "kcl_fan");
    let url = s3.url(&unique("fan"));
    let cli = s3.cli(&db.name);
    let targets = format!("{},{url}", cli.backups().display());
    let cli = cli.env("KAIZEN_BACKUP_STORAGE__TARGETS", &targets);
    for n in ["f1", "f2", "f3"] {
        cli.run(&["backup", n, "--no-prune"]).assert_code(0);
    }
    let local = cli
        .run(&[
            "--storage",
            cli.backups().to_str().unwrap(),
            "list",
            "--json",
        ])
        .json();
    let remote = cli.run(&["--storage", &url, "list", "--json"]).json();
    assert_eq!(local.as_array().unwrap().len(), 3);
    assert_eq!(remote.as_array().unwrap().len(), 3);
    assert_eq!(
        local[0]["sha256"], remote[0]["sha256"],
        "one pass feeds both targets the same bytes"
    );
    let pruning = s3
        .cli(&db.name)
        .env("KAIZEN_BACKUP_STORAGE__TARGETS", &targets)
        .env("BACKUP_RETENTION_COUNT", "1");
    pruning.run(&["prune"]).assert_code(0);
    let remote = cli.run(&["--storage", &url, "list", "--json"]).json();
    assert_eq!(remote.as_array().unwrap().len(), 1);
    assert_eq!(remote[0]["name"], "f3");
}

#[test]
fn an_optional_target_may_fail_a_required_one_may_not() {
    let pg = Pg::get();
    let db = small_db(&pg, "kcl_opt");
    let dead = format!("http://127.0.0.1:{}", free_port());
    // Targets come from the file only (BACKUP_DIR in the environment would replace them).
    let cli = Cli::for_db(&db.name)
        .env_remove("BACKUP_DIR")
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "Dead-Secret-xyz")
        .env("AWS_ENDPOINT_URL", &dead)
        .env("AWS_ALLOW_HTTP", "true");
    std::fs::write(
        cli.path().join("kaizen-backup.toml"),
        format!(
            "[storage]\ntargets = [\"{}\", {{ url = \"s3://nowhere/p\", optional = true }}]\n",
            cli.backups().display()
        ),
    )
    .unwrap();
    let out = cli.run(&["backup", "opt"]);
    out.assert_code(0)
        .assert_stderr_contains("Optional target s3://nowhere/p");
    assert!(!out.all().contains("Dead-Secret-xyz"));
    assert_eq!(cli.list().len(), 1);

    // Required: the backup fails, and the local copy is not left as a backup either.
    std::fs::write(
        cli.path().join("kaizen-backup.toml"),
        format!(
            "[storage]\ntargets = [\"{}\", \"s3://nowhere/p\"]\n",
            cli.backups().display()
        ),
    )
    .unwrap();
    let out = cli.run(&["backup", "req"]);
    out.assert_code(1).assert_stderr_contains("s3://nowhere/p");
    assert!(
        !cli.backup_files().iter().any(|f| f.starts_with("req")),
        "{:?}",
        cli.backup_files()
    );
}

#[test]
fn azure_round_trip_and_wrong_key() {
    let pg = Pg::get();
    let az = Azure::get();
    let db = small_db(&pg, "kcl_az");
    let url = az.url(&unique("az"));
    let cli = Cli::for_db(&db.name)
        .env("KAIZEN_BACKUP_STORAGE__AZURE__ENDPOINT", &az.endpoint)
        .env("KAIZEN_BACKUP_STORAGE__AZURE__ALLOW_HTTP", "true")
        .env("AZURE_STORAGE_ACCOUNT_NAME", &az.account)
        .env("AZURE_STORAGE_ACCOUNT_KEY", &az.key);
    cli.run(&["--storage", &url, "backup", "a1"]).assert_code(0);
    let dst = pg.adopt(&unique("kcl_az_dst"));
    cli.run(&["--storage", &url, "restore", "a1", &dst.name])
        .assert_code(0);
    assert_same(&pg.fingerprint(&db.name), &pg.fingerprint(&dst.name));
    // A wrong key: clear error, exit 1, the key nowhere.
    let bad_key = "QmFkS2V5QmFkS2V5QmFkS2V5QmFkS2V5QmFkS2V5QmFkS2V5";
    let bad = Cli::for_db(&db.name)
        .env("KAIZEN_BACKUP_STORAGE__AZURE__ENDPOINT", &az.endpoint)
        .env("KAIZEN_BACKUP_STORAGE__AZURE__ALLOW_HTTP", "true")
        .env("AZURE_STORAGE_ACCOUNT_NAME", &az.account)
        .env("AZURE_STORAGE_ACCOUNT_KEY", bad_key);
    let out = bad.run(&["--storage", &url, "backup", "a2"]);
    out.assert_code(1).assert_stderr_contains(&url);
    assert!(!out.all().contains(bad_key));
    assert_eq!(
        cli.run(&["--storage", &url, "list", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn gcs_round_trip() {
    let pg = Pg::get();
    let gcs = Gcs::get();
    let db = small_db(&pg, "kcl_gcs");
    let url = gcs.url(&unique("gcs"));
    let cli = Cli::for_db(&db.name)
        .env("KAIZEN_BACKUP_STORAGE__GCS__ENDPOINT", &gcs.endpoint)
        .env("KAIZEN_BACKUP_STORAGE__GCS__ANONYMOUS", "true");
    cli.run(&["--storage", &url, "backup", "g1"]).assert_code(0);
    cli.run(&["--storage", &url, "verify", "g1"]).assert_code(0);
    let dst = pg.adopt(&unique("kcl_gcs_dst"));
    cli.run(&["--storage", &url, "restore", "latest", &dst.name])
        .assert_code(0);
    assert_same(&pg.fingerprint(&db.name), &pg.fingerprint(&dst.name));
}

#[test]
fn a_backup_killed_mid_upload_leaves_no_visible_backup() {
    let pg = Pg::get();
    let s3 = S3::get();
    let db = pg.create_db("kcl_kill");
    pg.psql(&db.name, "CREATE TABLE big AS SELECT g, md5(g::text) AS a, md5((g*3)::text) AS b FROM generate_series(1, 700000) g");
    let url = s3.url(&unique("kill"));
    let cli = s3
        .cli(&db.name)
        .env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "none");
    // The killed runs reach S3 through a proxy that stalls 2 MiB into the upload, so the
    // signal always lands mid-upload however fast the machine is.
    let proxy = Proxy::start(&s3.endpoint);
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGKILL,
    ] {
        proxy.freeze_after(2 * 1024 * 1024);
        let child = cli.spawn_with(
            &[("AWS_ENDPOINT_URL", &proxy.url)],
            &["--storage", &url, "backup", "killed"],
        );
        assert!(
            proxy.wait_frozen(Duration::from_secs(120)),
            "the backup never got 2 MiB into its upload"
        );
        signal(&child, sig);
        // SIGTERM's abort of the upload must be able to reach the server.
        proxy.thaw();
        let out = wait(child);
        assert_ne!(out.code, 0, "{}", out.stderr);
        let list = cli.run(&["--storage", &url, "list", "--json"]);
        list.assert_code(0);
        // No backup; the killed run's open upload is listed as unfinished, not as a backup.
        assert!(
            list.json()
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["kind"] == "unfinished_upload"),
            "{}",
            list.stdout
        );
        assert!(
            !list.stderr.contains("killed.dump"),
            "a partial object is visible: {}",
            list.stderr
        );
    }
    let started = Instant::now();
    cli.run(&["--storage", &url, "backup", "after", "--lock-timeout", "0"])
        .assert_code(0);
    assert!(started.elapsed() < Duration::from_secs(120));
}

#[test]
fn a_server_gone_mid_upload_fails_clearly() {
    // A tiny TCP server that accepts, reads a little, then closes every connection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = std::io::Read::read(&mut &s, &mut buf);
            drop(s);
        }
    });
    let pg = Pg::get();
    let db = small_db(&pg, "kcl_gone");
    let cli = Cli::for_db(&db.name)
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "Gone-Secret-123")
        .env("AWS_ENDPOINT_URL", &format!("http://127.0.0.1:{port}"))
        .env("AWS_ALLOW_HTTP", "true");
    let started = Instant::now();
    let out = cli.run(&["--storage", "s3://gone/p", "backup", "g"]);
    out.assert_code(1).assert_stderr_contains("s3://gone/p");
    assert!(!out.all().contains("Gone-Secret-123"));
    assert!(started.elapsed() < Duration::from_secs(300));
}

#[test]
fn a_scheme_not_compiled_in_or_unknown_is_a_usage_error() {
    let cli = Cli::new();
    cli.run(&["--storage", "ftp://x/y", "list"])
        .assert_code(2)
        .assert_stderr_contains("unknown storage scheme");
}
