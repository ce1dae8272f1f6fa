//! `[[notify]]` and `[metrics]` as users write them in TOML.
#![allow(clippy::unwrap_used)] // tests may unwrap (team rules)

use backup_core::EventKind;
use backup_notify::metrics::MetricsConfig;
use backup_notify::{EmailConfig, NotifierConfig, SmtpTls};

#[derive(Debug, serde::Deserialize)]
struct File {
    notify: Vec<NotifierConfig>,
    metrics: MetricsConfig,
}

const TOML: &str = r#"
[[notify]]
type = "slack"
webhook_url = "https://hooks.slack.com/services/T000/B000/XXXX"

[[notify]]
type = "email"
name = "ops-mail"
recipients = ["ops@example.com", "dba@example.com"]
smtp_host = "smtp.example.com"
smtp_user = "backup"
smtp_password = "MAILPASSWORD"
tls = "tls"
on = ["backup.failed", "verify.failed", "backup.stale"]

[[notify]]
type = "webhook"
url = "https://example.com/hooks/backup?token=URLTOKEN"
secret = "HMACSECRET"
headers = { Authorization = "Bearer HEADERTOKEN" }
timeout_secs = 3
retries = 1

[[notify]]
type = "webhook"
name = "second-hook"
url = "https://example.org/h"

[metrics]
textfile = "/var/lib/node_exporter/textfile/kaizen_backup.prom"
pushgateway = "http://pushgateway:9091"
job = "kaizen_backup"
"#;

#[test]
fn the_documented_example_parses_builds_and_hides_its_secrets() {
    let f: File = toml::from_str(TOML).unwrap();
    assert_eq!(f.notify.len(), 4);
    assert_eq!(
        f.notify.iter().map(|n| n.kind()).collect::<Vec<_>>(),
        ["slack", "email", "webhook", "webhook"]
    );
    let NotifierConfig::Email(EmailConfig {
        tls, recipients, ..
    }) = &f.notify[1]
    else {
        panic!()
    };
    assert_eq!(*tls, SmtpTls::Tls);
    assert_eq!(recipients.len(), 2);
    assert_eq!(f.notify[2].common().timeout_secs, 3);
    assert_eq!(f.notify[2].common().retries, 1);
    assert_eq!(f.notify[3].common().timeout_secs, 10, "default");
    assert_eq!(f.notify[3].common().retries, 3, "default");
    assert_eq!(
        f.notify[1].common().events().unwrap(),
        [
            EventKind::BackupFailed,
            EventKind::VerifyFailed,
            EventKind::BackupStale
        ]
    );
    let built = backup_notify::build_all(&f.notify).unwrap();
    let names: Vec<String> = built.iter().map(|n| n.name()).collect();
    assert_eq!(names, ["slack", "ops-mail", "webhook", "second-hook"]);
    assert!(!built[1].wants(EventKind::BackupSucceeded));
    assert!(built[0].wants(EventKind::BackupSucceeded));
    // Neither the configuration nor the built notifiers print a secret.
    let shown = format!(
        "{:?} {:?} {}",
        f.notify,
        built,
        serde_json::to_string(&f.notify).unwrap()
    );
    for secret in [
        "XXXX",
        "MAILPASSWORD",
        "URLTOKEN",
        "HMACSECRET",
        "HEADERTOKEN",
    ] {
        assert!(!shown.contains(secret), "{secret} shown: {shown}");
    }
    assert_eq!(f.metrics.job.as_deref(), Some("kaizen_backup"));
}

#[test]
fn unknown_type_and_unknown_event_are_refused_with_their_name() {
    let err = toml::from_str::<File>("[[notify]]\ntype = \"teams\"\nurl = \"x\"\n[metrics]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("teams"), "{err}");
    let f: File = toml::from_str(
        "[[notify]]\ntype = \"webhook\"\nurl = \"https://e.com\"\non = [\"backup.exploded\"]\n[metrics]\n",
    )
    .unwrap();
    let err = backup_notify::build_all(&f.notify).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("backup.exploded"), "{err}");
}
