//! Email notifier against a real SMTP server (maildev, started by `cargo xtask test`).
#![allow(clippy::unwrap_used)] // tests may unwrap (team rules)

mod common;

use std::time::{Duration, Instant};

use backup_core::{Error, EventKind, Notifier, Secret};
use backup_notify::{Common, EmailConfig, NotifierConfig, SmtpTls};
use common::{closed_port, event, service_var, unique_db};

fn smtp() -> (String, u16, String) {
    (
        service_var("KAIZEN_TEST_SMTP_HOST"),
        service_var("KAIZEN_TEST_SMTP_PORT").parse().unwrap(),
        service_var("KAIZEN_TEST_MAILDEV_API"),
    )
}

fn email(
    host: &str,
    port: u16,
    recipients: &[&str],
    password: Option<&str>,
    retries: u32,
) -> Box<dyn Notifier> {
    backup_notify::build(&NotifierConfig::Email(EmailConfig {
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        smtp_host: host.to_string(),
        smtp_port: Some(port),
        smtp_user: password.map(|_| "backup".to_string()),
        smtp_password: password.map(Secret::new),
        from: Some("Kaizen Backup <backup@kaizen.example>".into()),
        tls: SmtpTls::None,
        common: Common {
            retries,
            timeout_secs: 5,
            ..Common::default()
        },
    }))
    .unwrap()
}

/// Messages maildev holds whose subject is `subject`, waiting a little for delivery.
async fn received(api: &str, subject: &str) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all: Vec<serde_json::Value> = reqwest::get(format!("{api}/email"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mine: Vec<_> = all
            .into_iter()
            .filter(|m| m["subject"] == subject)
            .collect();
        if !mine.is_empty() || Instant::now() > deadline {
            return mine;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn failure_mail_reaches_every_recipient_with_the_summary_subject() {
    let (host, port, api) = smtp();
    let db = unique_db("mail");
    let n = email(
        &host,
        port,
        &["ops@kaizen.example", "dba@kaizen.example"],
        None,
        0,
    );
    n.check().await.unwrap();
    n.notify(&event(EventKind::BackupFailed, &db))
        .await
        .unwrap();
    let subject = format!("[kaizen-backup] FAILED backup of {db}");
    let msgs = received(&api, &subject).await;
    assert_eq!(
        msgs.len(),
        1,
        "exactly one message with subject {subject:?}"
    );
    let m = &msgs[0];
    let mut to: Vec<String> = m["to"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["address"].as_str().unwrap().to_string())
        .collect();
    to.sort();
    assert_eq!(to, ["dba@kaizen.example", "ops@kaizen.example"]);
    assert_eq!(m["from"][0]["address"], "backup@kaizen.example");
    let text = m["text"].as_str().unwrap();
    assert!(
        text.starts_with(&format!("FAILED backup of {db}\n")),
        "{text}"
    );
    assert!(
        text.contains("Error: Cannot connect to database: kaizen_studio@db:5432"),
        "{text}"
    );
    assert!(text.contains("Backup: backup_20240115_143000"), "{text}");
    assert!(text.contains("Event: backup.failed"), "{text}");
}

#[tokio::test]
async fn success_mail_has_size_duration_and_targets() {
    let (host, port, api) = smtp();
    let db = unique_db("mailok");
    let n = email(&host, port, &["ops@kaizen.example"], None, 0);
    n.notify(&event(EventKind::BackupSucceeded, &db))
        .await
        .unwrap();
    let msgs = received(&api, &format!("[kaizen-backup] SUCCEEDED backup of {db}")).await;
    assert_eq!(msgs.len(), 1);
    let text = msgs[0]["text"].as_str().unwrap();
    for want in [
        "Size: 2.3M",
        "Duration: 12.3s",
        "Targets: file:///var/backups/kaizen, s3://kaizen-backups/prod",
    ] {
        assert!(text.contains(want), "{want:?} missing in {text}");
    }
}

#[tokio::test]
async fn wrong_smtp_port_gives_a_clear_error_without_the_password() {
    let port = closed_port();
    let n = email(
        "127.0.0.1",
        port,
        &["ops@kaizen.example"],
        Some("SMTP-PASSWORD-42"),
        1,
    );
    let err = n
        .notify(&event(EventKind::BackupFailed, "db1"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Notify { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "cannot send mail through SMTP server 127.0.0.1:{port}"
        )),
        "{msg}"
    );
    assert!(msg.contains("after 2 attempt(s)"), "{msg}");
    let check = n.check().await.unwrap_err().to_string();
    assert!(check.contains(&format!("127.0.0.1:{port}")), "{check}");
    let all = format!("{msg} {err:?} {check} {n:?}");
    assert!(!all.contains("SMTP-PASSWORD-42"), "{all}");
}

#[tokio::test]
async fn bad_addresses_are_configuration_errors() {
    let err = backup_notify::build(&NotifierConfig::Email(EmailConfig {
        recipients: vec!["not an address".into()],
        smtp_host: "localhost".into(),
        smtp_port: None,
        smtp_user: None,
        smtp_password: None,
        from: None,
        tls: SmtpTls::Starttls,
        common: Common::default(),
    }))
    .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("not an address"), "{err}");
    let none = backup_notify::build(&NotifierConfig::Email(EmailConfig {
        recipients: vec![],
        smtp_host: "localhost".into(),
        smtp_port: None,
        smtp_user: None,
        smtp_password: None,
        from: None,
        tls: SmtpTls::Starttls,
        common: Common::default(),
    }))
    .unwrap_err();
    assert!(none.to_string().contains("no recipients"), "{none}");
}
