//! Slack and webhook notifiers against a local recording HTTP server.
#![allow(clippy::unwrap_used)] // tests may unwrap (team rules)

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backup_core::{Error, EventKind, Notifier, Secret};
use backup_notify::{Common, NotifierConfig, SlackConfig, WebhookConfig};
use common::{closed_port, event};
use hmac::{Hmac, Mac};
use kaizen_test_http::{Recorder, Reply};
use serde_json::json;
use sha2::Sha256;

fn common(retries: u32, timeout_secs: u64) -> Common {
    Common {
        retries,
        timeout_secs,
        ..Common::default()
    }
}

fn slack(url: String, c: Common) -> Box<dyn Notifier> {
    backup_notify::build(&NotifierConfig::Slack(SlackConfig {
        webhook_url: Secret::new(url),
        common: c,
    }))
    .unwrap()
}

fn webhook(
    url: String,
    secret: Option<&str>,
    headers: &[(&str, &str)],
    c: Common,
) -> Box<dyn Notifier> {
    backup_notify::build(&NotifierConfig::Webhook(WebhookConfig {
        url: Secret::new(url),
        secret: secret.map(Secret::new),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), Secret::new(*v)))
            .collect::<BTreeMap<_, _>>(),
        common: c,
    }))
    .unwrap()
}

#[tokio::test]
async fn slack_success_message_has_the_exact_block_kit_shape() {
    let server = Recorder::start();
    let n = slack(
        format!("{}/services/T000/B000/XXXXSECRET", server.url),
        common(0, 5),
    );
    n.notify(&event(EventKind::BackupSucceeded, "kaizen_studio"))
        .await
        .unwrap();
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/services/T000/B000/XXXXSECRET");
    assert_eq!(reqs[0].header("content-type"), Some("application/json"));
    let title = ":white_check_mark: SUCCEEDED backup of kaizen_studio";
    assert_eq!(
        reqs[0].json(),
        json!({
            "text": title,
            "blocks": [
                { "type": "header", "text": { "type": "plain_text", "text": title } },
                { "type": "section", "fields": [
                    { "type": "mrkdwn", "text": "*Database*\nkaizen_studio" },
                    { "type": "mrkdwn", "text": "*Backup*\nbackup_20240115_143000" },
                    { "type": "mrkdwn", "text": "*Size*\n2.3M" },
                    { "type": "mrkdwn", "text": "*Duration*\n12.3s" },
                    { "type": "mrkdwn", "text": "*Targets*\nfile:///var/backups/kaizen, s3://kaizen-backups/prod" },
                    { "type": "mrkdwn", "text": "*Host*\nbackup-host" },
                    { "type": "mrkdwn", "text": "*Time*\n2024-01-15 14:30:00 UTC" }
                ]},
                { "type": "context", "elements": [
                    { "type": "mrkdwn", "text": "kaizen-backup · `backup.succeeded`" }
                ]}
            ]
        })
    );
}

#[tokio::test]
async fn slack_failure_message_says_what_failed_and_the_error() {
    let server = Recorder::start();
    let n = slack(format!("{}/services/T/B/C", server.url), common(0, 5));
    let e = event(EventKind::BackupFailed, "kaizen_studio");
    n.notify(&e).await.unwrap();
    let body = server.requests()[0].json();
    assert_eq!(body["text"], ":x: FAILED backup of kaizen_studio");
    let blocks = body["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 4);
    assert_eq!(
        blocks[2],
        json!({ "type": "section", "text": { "type": "mrkdwn",
            "text": "*Error*\n```Cannot connect to database: kaizen_studio@db:5432 — is PostgreSQL running?```" } })
    );
    // The error is in its own block, not repeated among the fields.
    assert!(!blocks[1].to_string().contains("Cannot connect"));
}

#[tokio::test]
async fn slack_client_error_is_not_retried_and_never_shows_the_url_path() {
    let server = Recorder::start();
    server.script(&[Reply::Status(404)]);
    let n = slack(
        format!("{}/services/T/B/TOPSECRETPATH", server.url),
        common(3, 5),
    );
    let err = n
        .notify(&event(EventKind::BackupFailed, "kaizen_studio"))
        .await
        .unwrap_err();
    assert_eq!(server.requests().len(), 1, "a 4xx must not be retried");
    let msg = err.to_string();
    assert!(matches!(err, Error::Notify { .. }), "{err:?}");
    assert!(msg.contains("HTTP 404"), "{msg}");
    assert!(msg.contains(&server.url), "{msg}");
    assert!(!msg.contains("TOPSECRETPATH"), "{msg}");
    assert!(!format!("{n:?}").contains("TOPSECRETPATH"));
}

#[tokio::test]
async fn webhook_posts_the_versioned_event_signed_with_hmac() {
    let server = Recorder::start();
    let secret = "shared-hmac-secret";
    let n = webhook(
        format!("{}/hooks/kaizen?token=abc", server.url),
        Some(secret),
        &[("Authorization", "Bearer token-123"), ("X-Team", "data")],
        common(0, 5),
    );
    let e = event(EventKind::BackupFailed, "kaizen_studio");
    n.notify(&e).await.unwrap();
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/hooks/kaizen?token=abc");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-kaizen-event"), Some("backup.failed"));
    assert_eq!(r.header("authorization"), Some("Bearer token-123"));
    assert_eq!(r.header("x-team"), Some("data"));
    assert_eq!(
        r.json(),
        json!({
            "version": 1,
            "kind": "backup.failed",
            "timestamp": "2024-01-15T14:30:00Z",
            "host": "backup-host",
            "database": "kaizen_studio",
            "backup": "backup_20240115_143000",
            "targets": ["file:///var/backups/kaizen", "s3://kaizen-backups/prod"],
            "error": "Cannot connect to database: kaizen_studio@db:5432 — is PostgreSQL running?"
        })
    );
    // The signature is HMAC-SHA256 over the exact bytes received.
    let sig = r.header("x-kaizen-signature").unwrap();
    let hex_sig = sig.strip_prefix("sha256=").unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&r.body);
    mac.verify_slice(&hex::decode(hex_sig).unwrap()).unwrap();
    // And does not verify with another key.
    let mut other = Hmac::<Sha256>::new_from_slice(b"wrong").unwrap();
    other.update(&r.body);
    assert!(other.verify_slice(&hex::decode(hex_sig).unwrap()).is_err());
    assert!(!String::from_utf8_lossy(&r.body).contains(secret));
}

#[tokio::test]
async fn webhook_without_secret_sends_no_signature() {
    let server = Recorder::start();
    let n = webhook(format!("{}/h", server.url), None, &[], common(0, 5));
    n.notify(&event(EventKind::VerifySucceeded, "db1"))
        .await
        .unwrap();
    let r = &server.requests()[0];
    assert_eq!(r.header("x-kaizen-signature"), None);
    assert_eq!(r.json()["kind"], "verify.succeeded");
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let server = Recorder::start();
    server.script(&[Reply::Status(500), Reply::Status(503)]);
    let n = webhook(format!("{}/h", server.url), Some("k"), &[], common(3, 5));
    n.notify(&event(EventKind::BackupSucceeded, "db1"))
        .await
        .unwrap();
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3, "two 5xx answers, then success");
    // Every attempt carries the same body and signature.
    assert_eq!(reqs[0].body, reqs[2].body);
    assert_eq!(
        reqs[0].header("x-kaizen-signature"),
        reqs[2].header("x-kaizen-signature")
    );
}

#[tokio::test]
async fn retries_are_bounded_and_the_last_answer_is_reported() {
    let server = Recorder::start();
    server.script(&[Reply::Status(500); 10]);
    let n = slack(format!("{}/services/x", server.url), common(2, 5));
    let err = n
        .notify(&event(EventKind::BackupFailed, "db1"))
        .await
        .unwrap_err();
    assert_eq!(server.requests().len(), 3);
    let msg = err.to_string();
    assert!(
        msg.contains("HTTP 500") && msg.contains("after 3 attempt(s)"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_hanging_server_times_out_with_a_clear_error() {
    let server = Recorder::start();
    server.script(&[Reply::Hang, Reply::Hang]);
    let n = webhook(format!("{}/h", server.url), None, &[], common(1, 1));
    let started = Instant::now();
    let err = n
        .notify(&event(EventKind::BackupFailed, "db1"))
        .await
        .unwrap_err();
    // Guard against waiting forever (not a speed goal): 2 attempts of 1 s plus backoff.
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(server.requests().len(), 2, "a timeout is retried");
    let msg = err.to_string();
    assert!(msg.contains("no answer within 1s (timed out)"), "{msg}");
    assert!(msg.contains("after 2 attempt(s)"), "{msg}");
}

#[tokio::test]
async fn the_delivery_deadline_bounds_all_attempts() {
    let server = Recorder::start();
    server.script(&[Reply::Hang; 6]);
    let c = Common {
        deadline_secs: 3,
        ..common(5, 2)
    };
    let n = webhook(format!("{}/h?token=abc", server.url), None, &[], c);
    let started = Instant::now();
    let err = n
        .notify(&event(EventKind::BackupFailed, "db1"))
        .await
        .unwrap_err();
    // 6 attempts of 2 s would take 12 s and more: the deadline cuts them at 3 s.
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(server.requests().len() <= 2);
    let msg = err.to_string();
    assert!(
        msg.contains("no answer within the delivery deadline of 3s"),
        "{msg}"
    );
    assert!(!msg.contains("abc"), "{msg}");
}

#[tokio::test]
async fn connection_refused_is_reported_without_secrets() {
    let port = closed_port();
    let n = webhook(
        format!("http://127.0.0.1:{port}/hook/SECRETPATH?token=SECRETTOKEN"),
        Some("HMACSECRET"),
        &[("Authorization", "Bearer SECRETBEARER")],
        common(1, 2),
    );
    let err = n
        .notify(&event(EventKind::BackupFailed, "db1"))
        .await
        .unwrap_err();
    let msg = format!("{err} {err:?} {n:?}");
    assert!(
        msg.contains(&format!("http://127.0.0.1:{port}: connection failed")),
        "{msg}"
    );
    for secret in ["SECRETPATH", "SECRETTOKEN", "HMACSECRET", "SECRETBEARER"] {
        assert!(!msg.contains(secret), "{secret} leaked: {msg}");
    }
}

#[tokio::test]
async fn bad_webhook_settings_are_configuration_errors_that_hide_values() {
    let bad_header = backup_notify::build(&NotifierConfig::Webhook(WebhookConfig {
        url: Secret::new("https://example.com/h"),
        secret: None,
        headers: [(
            "Authorization".to_string(),
            Secret::new("Bearer x\nSECRETVALUE"),
        )]
        .into(),
        common: Common::default(),
    }))
    .unwrap_err();
    assert!(matches!(bad_header, Error::Config { .. }), "{bad_header:?}");
    assert_eq!(bad_header.exit_code(), 2);
    let msg = bad_header.to_string();
    assert!(
        msg.contains("Authorization") && !msg.contains("SECRETVALUE"),
        "{msg}"
    );

    let bad_url = backup_notify::build(&NotifierConfig::Slack(SlackConfig {
        webhook_url: Secret::new("not a url SECRET"),
        common: Common::default(),
    }))
    .unwrap_err();
    assert!(matches!(bad_url, Error::Config { .. }));
    assert!(!bad_url.to_string().contains("SECRET"));
}

#[tokio::test]
async fn the_on_filter_selects_events_and_notify_all_skips_the_rest() {
    let server = Recorder::start();
    let only_failures = webhook(
        format!("{}/h", server.url),
        None,
        &[],
        Common {
            on: Some(vec!["backup.failed".into()]),
            ..common(0, 5)
        },
    );
    let default = webhook(format!("{}/d", server.url), None, &[], common(0, 5));
    assert!(!only_failures.wants(EventKind::BackupSucceeded));
    assert!(default.wants(EventKind::BackupSucceeded));
    assert!(default.wants(EventKind::BackupStale));
    assert!(!default.wants(EventKind::PruneCompleted));
    let all = vec![only_failures, default];
    let failed =
        backup_core::notify::notify_all(&all, &event(EventKind::BackupSucceeded, "db1")).await;
    assert!(failed.is_empty());
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, vec!["/d".to_string()]);
}
