//! Unit tests of the configuration layers.
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
    super::extract(&fig)
}

fn from_toml(text: &str) -> Result<Config> {
    let fig = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text));
    super::extract(&fig)
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
            Ok(c) => { let _ = open_targets(&c); Ok(()) }
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
    assert_eq!(c.backup.compression, "none");
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
