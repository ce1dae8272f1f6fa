//! Unit tests of the configuration layers.
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};

use super::validate::extract as checked;
use super::vars::var_layer;
use super::*;

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn extract(env: &HashMap<String, String>) -> Result<Config> {
    let fig = Figment::from(Serialized::defaults(Config::default()))
        .merge(var_layer("environment", env)?);
    checked(&fig)
}

fn from_toml(text: &str) -> Result<Config> {
    let fig = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text));
    checked(&fig)
}

#[test]
fn unknown_sections_and_keys_name_the_closest_valid_one() {
    let err = from_toml("[encryptoin]\ntype = \"age\"\n").unwrap_err();
    assert_eq!(err.exit_code(), 2);
    let msg = err.to_string();
    assert!(msg.contains("unknown section `encryptoin`"), "{msg}");
    assert!(msg.contains("did you mean `encryption`"), "{msg}");
    for (toml, key, hint) in [
        (
            "[backup]\ncompresion = \"zstd\"\n",
            "backup.compresion",
            "compression",
        ),
        (
            "[storage.s3]\nendpiont = \"http://x\"\n",
            "storage.s3.endpiont",
            "endpoint",
        ),
        (
            "[storage]\ntargets = [{ url = \"/b\", optonal = true }]\n",
            "storage.targets.optonal",
            "optional",
        ),
        (
            "[[notify]]\ntype = \"webhook\"\nurl = \"http://h\"\nretires = 2\n",
            "notify.retires",
            "retries",
        ),
        (
            "[[notify]]\ntype = \"slack\"\nwebhook_url = \"http://h\"\nsmtp_host = \"x\"\n",
            "notify.smtp_host",
            "",
        ),
        (
            "[retention]\nkeep_dialy = 3\n",
            "retention.keep_dialy",
            "keep_daily",
        ),
        ("databse = 1\n", "databse", "database"),
    ] {
        let msg = from_toml(toml).unwrap_err().to_string();
        assert!(msg.contains(&format!("`{key}`")), "{toml}: {msg}");
        assert!(msg.contains(hint), "{toml}: {msg}");
    }
    // Webhook headers are free-form; every documented notifier key is accepted.
    from_toml(
        "[[notify]]\ntype = \"webhook\"\nurl = \"http://h\"\nheaders = { X-Anything = \"v\" }\non = [\"restore.failed\"]\n\n[[notify]]\ntype = \"email\"\nrecipients = [\"a@b\"]\nsmtp_host = \"h\"\nsmtp_port = 25\nsmtp_user = \"u\"\nsmtp_password = \"p\"\nfrom = \"f@b\"\ntls = \"none\"\nname = \"n\"\ntimeout_secs = 3\nretries = 1\n",
    )
    .unwrap();
}

#[test]
fn an_over_long_database_name_is_a_config_error() {
    let err = extract(&vars(&[("POSTGRES_DB", &"d".repeat(64))])).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("at most 63 bytes"), "{err}");
    extract(&vars(&[("POSTGRES_DB", &"d".repeat(63))])).unwrap();
}

#[test]
fn unknown_variables_are_refused_and_legacy_ones_kept() {
    let err = extract(&vars(&[("KAIZEN_BACKUP_ENCRYPTOIN__TYPE", "age")])).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.exit_code(), 2);
    assert!(msg.contains("KAIZEN_BACKUP_ENCRYPTOIN__TYPE"), "{msg}");
    assert!(msg.contains("KAIZEN_BACKUP_ENCRYPTION__TYPE"), "{msg}");
    let msg = extract(&vars(&[("KAIZEN_BACKUP_ENCRYPTION_TYPE", "age")]))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("did you mean KAIZEN_BACKUP_ENCRYPTION__TYPE"),
        "{msg}"
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pw");
    std::fs::write(&f, "pw\n").unwrap();
    extract(&vars(&[
        ("POSTGRES_PASSWORD_FILE", f.to_str().unwrap()),
        ("KAIZEN_BACKUP_DATABASE__PASSWORD_FILE", f.to_str().unwrap()),
        ("KAIZEN_BACKUP_AGE_IDENTITY_FILE", "/k"),
        ("KAIZEN_BACKUP_AGE_PASSPHRASE_FILE", "/k"),
        ("BACKUP_DIR", "/b"),
        ("SLACK_WEBHOOK_URL", "https://hooks.slack.com/x"),
        ("ENVIRONMENT", "staging"),
        (
            "KAIZEN_BACKUP_STORAGE__S3__SECRET_ACCESS_KEY_FILE",
            f.to_str().unwrap(),
        ),
    ]))
    .unwrap();
}

proptest::proptest! {
    /// No configuration text panics: it loads, or is a configuration error (exit 2).
    #[test]
    fn any_toml_loads_or_is_a_config_error(
        text in "\\PC{0,60}",
        lines in proptest::collection::vec(
            ("(database|storage|storage\\.s3|backup|restore|log|lock|retention|notify|metrics|encryption|audit|[a-z_]{1,10})",
             "(name|port|targets|type|compression|level|jobs|keep_daily|environment|on|url|[a-z_]{1,10})",
             "(-?[0-9]{1,25}|\"[^\"\\\\]{0,10}\"|true|\\[\\]|\\[\"x\", 1\\]|\\{ a = 1 \\}|1e400|nan|-inf)"),
            0..5,
        ),
    ) {
        let check = |r: Result<Config>| match r {
            Ok(c) => { let _ = c.storage.open_targets(); Ok(()) }
            Err(e) if e.exit_code() == 2 => Ok(()),
            Err(e) => Err(proptest::test_runner::TestCaseError::fail(format!("exit {}: {e}", e.exit_code()))),
        };
        check(from_toml(&text))?;
        let mut doc = String::new();
        for (section, key, value) in &lines {
            if section == "notify" {
                doc.push_str(&format!("[[notify]]\ntype = \"webhook\"\n{key} = {value}\n"));
            } else {
                doc.push_str(&format!("[{section}]\n{key} = {value}\n"));
            }
        }
        check(from_toml(&doc))?;
    }

    /// No environment panics either.
    #[test]
    fn any_variables_load_or_are_a_config_error(
        pairs in proptest::collection::vec(
            ("(KAIZEN_BACKUP_[A-Z_]{0,20}|POSTGRES_PORT|PGPORT|DATABASE_URL|BACKUP_DIR|ENVIRONMENT|BACKUP_RETENTION_DAYS|KAIZEN_BACKUP_STORAGE__TARGETS)", "\\PC{0,20}"),
            0..4,
        ),
    ) {
        let env: HashMap<String, String> = pairs.into_iter().collect();
        if let Err(e) = extract(&env) {
            proptest::prop_assert_eq!(e.exit_code(), 2, "{}", e);
        }
    }
}

#[test]
fn old_variables_and_precedence() {
    let c = extract(&vars(&[
        ("PGHOST", "pg-host"),
        ("PGPORT", "6000"),
        (
            "DATABASE_URL",
            "postgres://url_user:p%40ss@url-host:7000/url_db?sslmode=require",
        ),
        ("POSTGRES_HOST", "old-host"),
        ("POSTGRES_DB", "kaizen_studio_dev"),
        ("BACKUP_DIR", "/var/backups/kaizen"),
        ("S3_BACKUP_BUCKET", "kaizen-studio-backups"),
        ("KAIZEN_BACKUP_DATABASE__PORT", "5433"),
        ("KAIZEN_BACKUP_BACKUP__COMPRESSION", "none"),
    ]))
    .unwrap();
    assert_eq!(c.database.host, "old-host");
    assert_eq!(c.database.port, 5433);
    assert_eq!(c.database.name, "kaizen_studio_dev");
    assert_eq!(c.database.user, "url_user");
    assert_eq!(
        c.database.password.as_ref().map(|p| p.expose().to_string()),
        Some("p@ss".into())
    );
    assert_eq!(c.database.sslmode.as_deref(), Some("require"));
    assert_eq!(
        c.backup.settings.compression,
        backup_core::manifest::Compression::None
    );
    let urls: Vec<&str> = c.storage.targets.iter().map(TargetSpec::url).collect();
    assert_eq!(
        urls,
        ["/var/backups/kaizen", "s3://kaizen-studio-backups/backups"]
    );
}

#[test]
fn invalid_value_names_key_and_variable() {
    let err = extract(&vars(&[("POSTGRES_PORT", "abc")])).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("database.port") && msg.contains("POSTGRES_PORT"),
        "{msg}"
    );
    assert_eq!(err.exit_code(), 2);
}

#[test]
fn password_file_and_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pw");
    std::fs::write(&f, "from-file\n").unwrap();
    let c = extract(&vars(&[("POSTGRES_PASSWORD_FILE", f.to_str().unwrap())])).unwrap();
    assert_eq!(c.database.password.unwrap().expose(), "from-file");
    let err = extract(&vars(&[
        ("POSTGRES_PASSWORD", "x"),
        ("POSTGRES_PASSWORD_FILE", f.to_str().unwrap()),
    ]))
    .unwrap_err();
    assert!(err.to_string().contains("set only one"));
    assert!(!err.to_string().contains("from-file"));
}

#[test]
fn any_key_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s3key");
    std::fs::write(&f, "aws-secret-from-file\n").unwrap();
    let c = extract(&vars(&[(
        "KAIZEN_BACKUP_STORAGE__S3__SECRET_ACCESS_KEY_FILE",
        f.to_str().unwrap(),
    )]))
    .unwrap();
    assert_eq!(
        c.storage.options.s3.secret_access_key.unwrap().expose(),
        "aws-secret-from-file"
    );
    let err = extract(&vars(&[(
        "KAIZEN_BACKUP_DATABASE__PASSWORD_FILE",
        "/nonexistent/pw",
    )]))
    .unwrap_err();
    assert_eq!(err.exit_code(), 2);
}

#[test]
fn bad_database_url_is_config_error_without_secret() {
    let err = extract(&vars(&[("DATABASE_URL", "mysql://u:topsecret@h/db")])).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(!err.to_string().contains("topsecret"));
}

/// Load as `kaizen-backup` would with this configuration file, environment and `.env`.
fn load_with(
    toml: &str,
    env: &HashMap<String, String>,
    dotenv: &HashMap<String, String>,
) -> Result<Loaded> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kaizen-backup.toml");
    std::fs::write(&file, toml).unwrap();
    let global = crate::cli::GlobalArgs {
        config: Some(file),
        ..Default::default()
    };
    from_layers(&global, env, dotenv)
}

#[test]
fn legacy_variables_map_to_notifiers_after_the_configured_ones() {
    use backup_notify::{NotifierConfig, SmtpTls};
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("smtp_password");
    std::fs::write(&pw, "FILEPASSWORD\n").unwrap();
    let env = vars(&[
        (
            "SLACK_WEBHOOK_URL",
            "https://hooks.slack.com/services/A/B/C",
        ),
        (
            "BACKUP_EMAIL_RECIPIENT",
            "a@example.com b@example.com,c@example.com",
        ),
        ("SMTP_PORT", "465"),
        ("SMTP_USER", "12345"),
        ("SMTP_PASSWORD_FILE", pw.to_str().unwrap()),
        ("SMTP_TLS", "SSL"),
    ]);
    // SMTP_HOST and SMTP_FROM from .env; the environment's SMTP_PORT wins over .env's.
    let dotenv = vars(&[
        ("SMTP_HOST", "mail.example.com"),
        ("SMTP_FROM", "backup@example.com"),
        ("SMTP_PORT", "25"),
    ]);
    let toml = "[[notify]]\ntype = \"webhook\"\nurl = \"https://hooks.example.com/h\"\n";
    let loaded = load_with(toml, &env, &dotenv).unwrap();
    let kinds: Vec<&str> = loaded.config.notify.iter().map(|n| n.kind()).collect();
    assert_eq!(kinds, ["webhook", "slack", "email"]);
    let NotifierConfig::Email(backup_notify::EmailConfig {
        recipients,
        smtp_host,
        smtp_port,
        smtp_user,
        smtp_password,
        from,
        tls,
        ..
    }) = &loaded.config.notify[2]
    else {
        panic!("{:?}", loaded.config.notify)
    };
    assert_eq!(
        recipients,
        &["a@example.com", "b@example.com", "c@example.com"]
    );
    assert_eq!(smtp_host, "mail.example.com");
    assert_eq!(*smtp_port, Some(465));
    assert_eq!(smtp_user.as_deref(), Some("12345"));
    assert_eq!(smtp_password.as_ref().unwrap().expose(), "FILEPASSWORD");
    assert_eq!(from.as_deref(), Some("backup@example.com"));
    assert_eq!(*tls, SmtpTls::Tls);
    backup_notify::build_all(&loaded.config.notify).unwrap();

    // Nothing set: no notifier. A bad port or TLS mode: a configuration error naming the variable.
    let none = load_with("", &HashMap::new(), &HashMap::new()).unwrap();
    assert!(none.config.notify.is_empty());
    for (var, value) in [("SMTP_TLS", "maybe"), ("SMTP_PORT", "smtp")] {
        let env = vars(&[("BACKUP_EMAIL_RECIPIENT", "a@example.com"), (var, value)]);
        let err = load_with("", &env, &HashMap::new()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains(var), "{err}");
    }
}

/// A secret variable, its value, the key `config show` lists it under, and the other
/// variables it needs.
type SecretCase<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)]);

#[test]
fn every_legacy_secret_and_its_file_form_is_shown_redacted_with_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "s3cr3t-value";
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let file = file.to_str().unwrap();
    let url = format!("postgres://u:{secret}@h/db");
    let url_file = dir.path().join("url");
    std::fs::write(&url_file, &url).unwrap();
    let url_file = url_file.to_str().unwrap();
    let cases: &[SecretCase] = &[
        ("POSTGRES_PASSWORD", secret, "database.password", &[]),
        ("POSTGRES_PASSWORD_FILE", file, "database.password", &[]),
        ("PGPASSWORD", secret, "database.password", &[]),
        ("PGPASSWORD_FILE", file, "database.password", &[]),
        ("DATABASE_URL", &url, "database.password", &[]),
        ("DATABASE_URL_FILE", url_file, "database.password", &[]),
        ("SLACK_WEBHOOK_URL", secret, "notify.0", &[]),
        ("SLACK_WEBHOOK_URL_FILE", file, "notify.0", &[]),
        (
            "SMTP_PASSWORD",
            secret,
            "notify.0",
            &[("BACKUP_EMAIL_RECIPIENT", "a@example.com")],
        ),
        (
            "SMTP_PASSWORD_FILE",
            file,
            "notify.0",
            &[("BACKUP_EMAIL_RECIPIENT", "a@example.com")],
        ),
        (
            "KAIZEN_BACKUP_AGE_PASSPHRASE",
            secret,
            "encryption.passphrase",
            &[],
        ),
        (
            "KAIZEN_BACKUP_AGE_PASSPHRASE_FILE",
            file,
            "encryption.passphrase",
            &[],
        ),
        (
            "KAIZEN_BACKUP_DATABASE__PASSWORD",
            secret,
            "database.password",
            &[],
        ),
        (
            "KAIZEN_BACKUP_DATABASE__PASSWORD_FILE",
            file,
            "database.password",
            &[],
        ),
    ];
    for (var, value, key, others) in cases {
        for (layer, in_env) in [("environment", true), (".env file", false)] {
            let mut set = vars(others);
            set.insert(var.to_string(), value.to_string());
            let (env, dotenv) = if in_env {
                (set, HashMap::new())
            } else {
                (HashMap::new(), set)
            };
            let loaded = load_with("", &env, &dotenv).unwrap_or_else(|e| panic!("{var}: {e}"));
            let rows = describe(&loaded).unwrap();
            let (_, shown, source) = rows
                .iter()
                .find(|(k, _, _)| k == key)
                .unwrap_or_else(|| panic!("{var}: no {key} in {rows:?}"));
            assert!(shown.to_string().contains("***"), "{var}: {key} = {shown}");
            assert!(
                source.starts_with(layer) && source.contains(var),
                "{var}: {key} comes from {source:?}"
            );
            let all = format!("{rows:?}");
            assert!(!all.contains(secret), "{var}: {all}");
        }
    }
}

#[test]
fn the_age_variables_give_way_to_the_configuration() {
    let env = vars(&[
        ("KAIZEN_BACKUP_AGE_IDENTITY_FILE", "/from/env"),
        ("KAIZEN_BACKUP_AGE_PASSPHRASE", "env-pass"),
    ]);
    let dotenv = vars(&[("KAIZEN_BACKUP_AGE_IDENTITY_FILE", "/from/dotenv")]);
    let loaded = load_with("", &env, &dotenv).unwrap();
    let keys = crate::codecs::keys(&loaded.config).unwrap();
    assert_eq!(keys.identity_file.as_deref(), Some(Path::new("/from/env")));
    assert_eq!(keys.passphrase.unwrap().expose(), "env-pass");
    let loaded = load_with(
        "[encryption]\nidentity_file = \"/from/file\"\n",
        &env,
        &dotenv,
    )
    .unwrap();
    let c = &loaded.config.encryption;
    assert_eq!(c.identity_file.as_deref(), Some(Path::new("/from/file")));
    assert_eq!(c.passphrase.as_ref().unwrap().expose(), "env-pass");
    // An empty identity variable is no key.
    let loaded = load_with(
        "",
        &vars(&[("KAIZEN_BACKUP_AGE_IDENTITY_FILE", "")]),
        &HashMap::new(),
    )
    .unwrap();
    assert_eq!(loaded.config.encryption.identity_file, None);
}

#[test]
fn a_notify_that_is_no_list_is_an_error_even_with_the_old_variables() {
    let env = vars(&[(
        "SLACK_WEBHOOK_URL",
        "https://hooks.slack.com/services/A/B/C",
    )]);
    let err = load_with("notify = \"slack\"\n", &env, &HashMap::new()).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("notify"), "{err}");
    let err = load_with("backup = 5\n", &HashMap::new(), &HashMap::new()).unwrap_err();
    assert!(err.to_string().contains("`backup`"), "{err}");
}

#[test]
fn webdav_credentials_keep_their_old_variables_and_stay_secret() {
    let c = extract(&vars(&[
        ("KAIZEN_BACKUP_WEBDAV_USER", "backup"),
        ("KAIZEN_BACKUP_WEBDAV_PASSWORD", "123456"),
    ]))
    .unwrap();
    let webdav = &c.storage.options.webdav;
    assert_eq!(webdav.user.as_deref(), Some("backup"));
    assert_eq!(webdav.password.as_ref().map(|p| p.expose()), Some("123456"));
    assert!(!serde_json::to_string(&c).unwrap().contains("123456"));
    // The configuration key wins over the old name.
    let c = extract(&vars(&[
        ("KAIZEN_BACKUP_WEBDAV_PASSWORD", "old-pass"),
        ("KAIZEN_BACKUP_STORAGE__WEBDAV__PASSWORD", "new-pass"),
    ]))
    .unwrap();
    let password = c.storage.options.webdav.password;
    assert_eq!(password.as_ref().map(|p| p.expose()), Some("new-pass"));
}
