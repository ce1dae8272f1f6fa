//! Issue 13, inputs: misspelled configuration, storage URLs that used to panic, backup
//! names that cannot be restored by name, a wrong age key taken for corruption, a
//! production setting overridden by the environment, `config show` sources (every
//! legacy secret variable redacted, with its name), the audit trail kept out of the text
//! log, an over-long target name, and restore events.

#![allow(clippy::unwrap_used)]

use kaizen_backup_e2e::http::Recorder;
use kaizen_backup_e2e::{Cli, Pg, TestDb, unique};

fn small_db(pg: &Pg, prefix: &str) -> TestDb {
    let db = pg.create_db(prefix);
    pg.psql(
        &db.name,
        "CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 10)",
    );
    db
}

fn write_config(cli: &Cli, toml: &str) -> std::path::PathBuf {
    let path = cli.path().join("kaizen-backup.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn keygen(cli: &Cli, name: &str) -> (std::path::PathBuf, String) {
    let path = cli.path().join(name);
    let out = cli.run(&["keygen", "--output", path.to_str().unwrap()]);
    out.assert_code(0);
    (path, out.stdout.trim().to_string())
}

fn no_panic(out: &kaizen_backup_e2e::Output) {
    assert!(
        !out.stderr.contains("panicked") && out.code != 101,
        "panic:\n{}",
        out.stderr
    );
}

#[test]
fn a_misspelled_section_or_key_is_refused_naming_the_closest_one() {
    let pg = Pg::get();
    let db = small_db(&pg, "khi_typo");
    let cli = Cli::for_db(&db.name);
    let (_, rcpt) = keygen(&cli, "k");
    let file = write_config(
        &cli,
        &format!("[encryptoin]\ntype = \"age\"\nrecipients = [\"{rcpt}\"]\n"),
    );
    for args in [&["config", "check"][..], &["backup", "typo"]] {
        let out = cli.run(args);
        out.assert_code(2)
            .assert_stderr_contains("unknown section `encryptoin`")
            .assert_stderr_contains("did you mean `encryption`?")
            .assert_stderr_contains(&file.display().to_string());
    }
    // Nothing was written: the typo never became an unencrypted backup.
    assert!(cli.backup_files().is_empty(), "{:?}", cli.backup_files());

    // A key inside a known section, and a notifier's own keys, are checked too.
    write_config(&cli, "[retention]\nkeep_dialy = 7\n");
    cli.run(&["config", "check"])
        .assert_code(2)
        .assert_stderr_contains("unknown key `retention.keep_dialy`")
        .assert_stderr_contains("did you mean `keep_daily`?");
    write_config(
        &cli,
        "[[notify]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/h\"\nretires = 2\n",
    );
    cli.run(&["config", "check"])
        .assert_code(2)
        .assert_stderr_contains("unknown key `notify.retires`")
        .assert_stderr_contains("did you mean `retries`?");
    std::fs::remove_file(cli.path().join("kaizen-backup.toml")).unwrap();

    // The same in the environment, naming the variable and the one that was meant.
    let out = cli.run_with(
        &[
            ("KAIZEN_BACKUP_ENCRYPTOIN__TYPE", "age"),
            ("KAIZEN_BACKUP_ENCRYPTOIN__RECIPIENTS", &rcpt),
        ],
        &["backup", "typo_env"],
    );
    out.assert_code(2)
        .assert_stderr_contains("KAIZEN_BACKUP_ENCRYPTOIN__")
        .assert_stderr_contains("did you mean `encryption` (KAIZEN_BACKUP_ENCRYPTION__");
    cli.run_with(
        &[("KAIZEN_BACKUP_ENCRYPTION_TYPE", "age")],
        &["backup", "t2"],
    )
    .assert_code(2)
    .assert_stderr_contains("did you mean KAIZEN_BACKUP_ENCRYPTION__TYPE?");
    assert!(cli.backup_files().is_empty(), "{:?}", cli.backup_files());

    // The old scripts' variables and the _FILE variants stay valid.
    let pw = cli.path().join("pw");
    std::fs::write(&pw, format!("{}\n", pg.password)).unwrap();
    cli.env_remove("POSTGRES_PASSWORD")
        .env("POSTGRES_PASSWORD_FILE", pw.to_str().unwrap())
        .env("SLACK_WEBHOOK_URL", "http://127.0.0.1:9/services/x")
        .env("BACKUP_RETENTION_COUNT", "3")
        .env("ENVIRONMENT", "staging")
        .env("KAIZEN_BACKUP_AGE_IDENTITY_FILE", "/nonexistent")
        .env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "zstd")
        .run(&["config", "check"])
        .assert_code(0);
}

#[test]
fn storage_urls_that_used_to_panic_are_usage_errors() {
    // With credentials the old code got as far as signing a request, and panicked there.
    let endpoint = format!("http://127.0.0.1:{}", kaizen_backup_e2e::free_port());
    let cli = Cli::new()
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_ALLOW_HTTP", "true");
    for url in [
        "s3://bucket with space/p",
        "s3://bucket%20x/p",
        "gs://bucket with space/p",
        "az://con tainer/p",
        "s3://b\tb/p",
        "s3:///p",
    ] {
        for cmd in [&["list"][..], &["config", "check"]] {
            let mut args = vec!["--storage", url];
            args.extend_from_slice(cmd);
            let out = cli.run(&args);
            no_panic(&out);
            out.assert_code(2);
            assert!(
                out.stderr.contains("bucket") || out.stderr.contains("container"),
                "{url}: {}",
                out.stderr
            );
        }
    }
}

#[test]
fn backup_names_ending_in_a_data_suffix_are_refused_and_inner_dots_work() {
    let pg = Pg::get();
    let db = small_db(&pg, "khi_names");
    let cli = Cli::for_db(&db.name);
    for name in [
        "nightly.dump",
        "nightly.tar",
        "nightly.dump.zst",
        "nightly.age",
    ] {
        let out = cli.run(&["backup", name]);
        out.assert_code(2)
            .assert_stderr_contains("must not end in")
            .assert_stderr_contains("as a file path");
    }
    assert!(cli.backup_files().is_empty(), "{:?}", cli.backup_files());

    // Asking for such a name says why it cannot be one, and creates nothing.
    let target = unique("khi_names_dst");
    let _guard = pg.adopt(&target);
    cli.run(&["restore", "nightly.dump", &target])
        .assert_code(1)
        .assert_stderr_contains("taken as a file path");
    assert!(!pg.db_exists(&target));
    cli.run(&["verify", "nightly.dump", "--quick"])
        .assert_code(1)
        .assert_stderr_contains("taken as a file path");

    // A suffix inside the name is fine: backup, verify and restore by name.
    cli.run(&["backup", "nightly.dump.v2"]).assert_code(0);
    cli.run(&["verify", "nightly.dump.v2"]).assert_code(0);
    cli.run(&["restore", "nightly.dump.v2", &target])
        .assert_code(0);
    assert_eq!(pg.psql(&target, "SELECT count(*) FROM t"), "10");
}

#[test]
fn a_wrong_age_key_is_no_matching_identity_and_records_nothing() {
    let pg = Pg::get();
    let src = pg.create_db("khi_key");
    // Larger than one read buffer, so the wrong key used to surface as a short file.
    pg.psql(
        &src.name,
        "CREATE TABLE big(id int, v text); INSERT INTO big SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 60000) g",
    );
    let cli = Cli::for_db(&src.name);
    let (right, rcpt) = keygen(&cli, "right");
    let (wrong, _) = keygen(&cli, "wrong");
    let cli = cli
        .env("KAIZEN_BACKUP_ENCRYPTION__TYPE", "age")
        .env("KAIZEN_BACKUP_ENCRYPTION__RECIPIENTS", &rcpt);
    cli.run(&["backup", "enc"]).assert_code(0);
    let data = std::fs::metadata(cli.backups().join("enc.dump.age")).unwrap();
    assert!(data.len() > 600_000, "backup too small: {}", data.len());

    let wrong_key = [("KAIZEN_BACKUP_AGE_IDENTITY_FILE", wrong.to_str().unwrap())];
    let out = cli.run_with(&wrong_key, &["verify", "enc"]);
    out.assert_code(1)
        .assert_stderr_contains("no matching identity")
        .assert_stderr_contains("backup enc")
        .assert_stderr_contains(&rcpt);
    assert!(!out.stderr.contains("truncated"), "{}", out.stderr);
    assert!(!out.stderr.contains("corrupt"), "{}", out.stderr);
    assert!(
        !cli.backups().join("enc.verify.json").exists(),
        "a verify result was recorded for a key that does not match"
    );
    let listed = cli.list();
    assert_eq!(listed[0]["name"], "enc");
    assert_ne!(listed[0]["verified"], false, "{listed:?}");

    // Restore: refused the same way, the target untouched, no temporary database left.
    let target = pg.target_with_content("khi_key_dst");
    let before = pg.fingerprint(&target.name);
    cli.run_with(
        &wrong_key,
        &["restore", "enc", &target.name, "--no-safety-backup"],
    )
    .assert_code(1)
    .assert_stderr_contains("no matching identity")
    .assert_stderr_contains("backup enc");
    assert_eq!(pg.fingerprint(&target.name), before);
    assert!(
        pg.databases_with_prefix("kaizen_restore_")
            .iter()
            .all(|d| !d.contains(&target.name))
    );

    // The right key still verifies it.
    cli.run_with(
        &[("KAIZEN_BACKUP_AGE_IDENTITY_FILE", right.to_str().unwrap())],
        &["verify", "enc"],
    )
    .assert_code(0);
    assert_eq!(cli.list()[0]["verified"], true);
}

#[test]
fn production_in_the_config_file_wins_over_a_staging_environment() {
    let pg = Pg::get();
    let db = small_db(&pg, "khi_prod");
    let cli = Cli::for_db(&db.name).env("ENVIRONMENT", "staging");
    write_config(&cli, "[restore]\nenvironment = \"Production\"\n");
    cli.run(&["backup", "p"]).assert_code(0);
    let target = pg.target_with_content("khi_prod_dst");
    let before = pg.fingerprint(&target.name);
    cli.run(&["restore", "p", &target.name, "--no-safety-backup"])
        .assert_code(1)
        .assert_stderr_contains("without confirmation");
    assert_eq!(pg.fingerprint(&target.name), before);
    let shown = cli.run(&["config", "show"]);
    shown.assert_code(0);
    let line = shown
        .stdout
        .lines()
        .find(|l| l.starts_with("restore.environment"))
        .unwrap();
    assert!(
        line.contains("= production") && line.ends_with("# kaizen-backup.toml"),
        "{line}"
    );
    // Confirmed, it goes ahead.
    cli.run(&[
        "restore",
        "p",
        &target.name,
        "--no-safety-backup",
        "--confirm-production",
        &target.name,
    ])
    .assert_code(0);
}

#[test]
fn an_over_long_target_name_is_a_usage_error() {
    let pg = Pg::get();
    let db = small_db(&pg, "khi_long");
    let cli = Cli::for_db(&db.name);
    cli.run(&["backup", "l"]).assert_code(0);
    let long = format!("khi_{}", "x".repeat(60));
    cli.run(&["restore", "l", &long])
        .assert_code(2)
        .assert_stderr_contains("at most 63 bytes");
    assert!(!pg.db_exists(&long[..63]));
}

#[test]
fn config_show_says_default_and_shows_the_legacy_slack_notifier() {
    let cli = Cli::new().env(
        "SLACK_WEBHOOK_URL",
        "https://hooks.slack.com/services/T0/B0/TOPSECRETPATH",
    );
    let out = cli.run(&["config", "show"]);
    out.assert_code(0);
    assert!(!out.all().contains("TOPSECRETPATH"), "{}", out.stdout);
    assert!(!out.stdout.contains(".rs:"), "{}", out.stdout);
    let port = out
        .stdout
        .lines()
        .find(|l| l.starts_with("database.port"))
        .unwrap();
    assert!(port.ends_with("# default"), "{port}");
    let slack = out
        .stdout
        .lines()
        .find(|l| l.starts_with("notify.0"))
        .unwrap_or_else(|| panic!("no notifier shown:\n{}", out.stdout));
    assert!(
        slack.contains("slack") && slack.contains("***") && slack.contains("SLACK_WEBHOOK_URL"),
        "{slack}"
    );
    let json = cli.run(&["config", "show", "--json"]).json();
    assert_eq!(json["notify.0"]["value"]["type"], "slack");
    assert_eq!(json["database.host"]["source"], "default");
}

/// A secret variable, its value, the key `config show` lists it under, and the other
/// variables it needs.
type SecretCase<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)]);

#[test]
fn config_show_lists_every_legacy_secret_and_its_file_form_redacted_with_its_variable() {
    let cli = Cli::new();
    // A URL, so that it is a valid Slack webhook too.
    let secret = "Sup3rSecretValue";
    let value = format!("https://hooks.slack.com/services/T0/B0/{secret}");
    let file = cli.path().join("secret");
    std::fs::write(&file, format!("{value}\n")).unwrap();
    let file = file.to_str().unwrap();
    let email = [("BACKUP_EMAIL_RECIPIENT", "ops@example.com")];
    let cases: &[SecretCase] = &[
        ("POSTGRES_PASSWORD", &value, "database.password", &[]),
        ("POSTGRES_PASSWORD_FILE", file, "database.password", &[]),
        ("PGPASSWORD", &value, "database.password", &[]),
        ("PGPASSWORD_FILE", file, "database.password", &[]),
        ("SLACK_WEBHOOK_URL", &value, "notify.0", &[]),
        ("SLACK_WEBHOOK_URL_FILE", file, "notify.0", &[]),
        ("SMTP_PASSWORD", &value, "notify.0", &email),
        ("SMTP_PASSWORD_FILE", file, "notify.0", &email),
        (
            "KAIZEN_BACKUP_AGE_PASSPHRASE",
            &value,
            "encryption.passphrase",
            &[],
        ),
        (
            "KAIZEN_BACKUP_AGE_PASSPHRASE_FILE",
            file,
            "encryption.passphrase",
            &[],
        ),
    ];
    for (var, value, key, others) in cases {
        let mut envs = vec![(*var, *value)];
        envs.extend_from_slice(others);
        let out = cli.run_with(&envs, &["config", "show", "--json"]);
        out.assert_code(0);
        assert!(!out.all().contains(secret), "{var}: {}", out.all());
        let row = &out.json()[*key];
        assert!(row["value"].to_string().contains("***"), "{var}: {row}");
        let source = row["source"].as_str().unwrap_or_default();
        assert!(
            source.starts_with("environment (") && source.contains(var),
            "{var}: {row}"
        );
    }
}

#[test]
fn the_text_log_leaves_the_audit_trail_to_the_audit_file() {
    let cli = Cli::new().env("KAIZEN_BACKUP_AUDIT__FILE", "audit.jsonl");
    let out = cli.run(&["config", "check"]);
    out.assert_code(0);
    assert!(!out.stderr.contains("[AUDIT]"), "{}", out.stderr);
    assert!(
        out.stderr.contains("[SUCCESS] Configuration is valid"),
        "{}",
        out.stderr
    );
    let trail = std::fs::read_to_string(cli.path().join("audit.jsonl")).unwrap();
    let outcomes: Vec<String> = trail
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["outcome"].to_string())
        .collect();
    assert_eq!(outcomes, ["\"started\"", "\"succeeded\""]);
    // The JSON log keeps it.
    let json = cli.run(&["--log-format", "json", "config", "check"]);
    assert!(
        json.stderr.contains("kaizen_backup::audit"),
        "{}",
        json.stderr
    );
}

fn kinds(hook: &Recorder) -> Vec<String> {
    hook.requests()
        .iter()
        .map(|r| r.json()["kind"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn restores_raise_started_completed_failed_and_refused_events() {
    let pg = Pg::get();
    let db = small_db(&pg, "khi_ev");
    let hook = Recorder::start();
    let cli = Cli::for_db(&db.name);
    write_config(
        &cli,
        &format!(
            "[[notify]]\ntype = \"webhook\"\nurl = \"{}/h\"\non = [\"restore.started\", \"restore.completed\", \"restore.failed\", \"restore.refused\"]\n",
            hook.url
        ),
    );
    cli.run(&["backup", "ev"]).assert_code(0);
    assert!(
        hook.requests().is_empty(),
        "backup events were not asked for"
    );

    let target = unique("khi_ev_dst");
    let _guard = pg.adopt(&target);
    cli.run(&["restore", "ev", &target]).assert_code(0);
    assert_eq!(kinds(&hook), ["restore.started", "restore.completed"]);
    let done = hook.requests()[1].json();
    assert_eq!(done["backup"], "ev");
    assert_eq!(done["database"], target.as_str());

    // Refused: production without confirmation, nothing changed.
    hook.clear();
    cli.run_with(
        &[("ENVIRONMENT", "production")],
        &["restore", "ev", &target, "--no-safety-backup"],
    )
    .assert_code(1);
    assert_eq!(kinds(&hook), ["restore.started", "restore.refused"]);
    assert!(
        hook.requests()[1].json()["error"]
            .as_str()
            .unwrap()
            .contains("confirmation")
    );

    // Failed: a corrupted backup.
    hook.clear();
    let data = cli.backups().join("ev.dump");
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    cli.run(&["restore", "ev", &target, "--no-safety-backup"])
        .assert_code(1);
    assert_eq!(kinds(&hook), ["restore.started", "restore.failed"]);
    assert!(
        hook.requests()[1].json()["error"]
            .as_str()
            .unwrap()
            .contains("checksum")
    );
}

#[test]
fn an_event_that_is_never_raised_is_a_config_error() {
    let cli = Cli::new();
    write_config(
        &cli,
        "[[notify]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/h\"\non = [\"restore.finished\"]\n",
    );
    cli.run(&["config", "check"])
        .assert_code(2)
        .assert_stderr_contains("restore.finished")
        .assert_stderr_contains("restore.completed")
        .assert_stderr_contains("restore.refused");
}
