//! Issue 5: notifications and metrics against real servers (a recording HTTP server for
//! Slack and webhooks, maildev for SMTP, the Prometheus Pushgateway).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use kaizen_backup_e2e::http::{Recorder, get};
use kaizen_backup_e2e::services::{Smtp, pushgateway_url};
use kaizen_backup_e2e::{Cli, Pg, TestDb, free_port, unique};
use sha2::Sha256;

fn small_db(pg: &Pg, prefix: &str) -> TestDb {
    let db = pg.create_db(prefix);
    pg.psql(
        &db.name,
        "CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 10)",
    );
    db
}

fn with_config(cli: Cli, toml: &str) -> Cli {
    std::fs::write(cli.path().join("kaizen-backup.toml"), toml).unwrap();
    cli
}

#[test]
fn slack_and_webhook_receive_the_success_signed() {
    let pg = Pg::get();
    let db = small_db(&pg, "kn_ok");
    let slack = Recorder::start();
    let hook = Recorder::start();
    let cli = with_config(
        Cli::for_db(&db.name),
        &format!(
            "[[notify]]\ntype = \"slack\"\nwebhook_url = \"{}/services/T0/B0/SECRETPATH\"\n\n\
             [[notify]]\ntype = \"webhook\"\nurl = \"{}/hook\"\nsecret = \"hmac-key\"\nheaders = {{ X-Team = \"kaizen\" }}\n",
            slack.url, hook.url
        ),
    );
    cli.run(&["backup", "nb"]).assert_code(0);
    let s = slack.wait_for(1, Duration::from_secs(10));
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].path, "/services/T0/B0/SECRETPATH");
    let msg = s[0].json();
    assert_eq!(
        msg["text"],
        format!(":white_check_mark: SUCCEEDED backup of {}", db.name)
    );
    assert_eq!(msg["blocks"][0]["type"], "header");
    let fields = msg["blocks"][1]["fields"].to_string();
    for want in [
        "*Backup*\\nnb",
        "*Size*",
        "*Duration*",
        "*Targets*",
        "*Database*",
    ] {
        assert!(fields.contains(want), "{want} missing in {fields}");
    }

    let h = hook.wait_for(1, Duration::from_secs(10));
    let ev = h[0].json();
    assert_eq!(ev["version"], 1);
    assert_eq!(ev["kind"], "backup.succeeded");
    assert_eq!(ev["database"], db.name.as_str());
    assert_eq!(ev["backup"], "nb");
    assert!(ev["size_bytes"].as_u64().unwrap() > 0);
    assert_eq!(h[0].header("X-Kaizen-Event"), Some("backup.succeeded"));
    assert_eq!(h[0].header("X-Team"), Some("kaizen"));
    let mut mac = Hmac::<Sha256>::new_from_slice(b"hmac-key").unwrap();
    mac.update(&h[0].body);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(h[0].header("X-Kaizen-Signature"), Some(want.as_str()));
}

#[test]
fn webhook_retries_on_500_then_succeeds() {
    let pg = Pg::get();
    let db = small_db(&pg, "kn_retry");
    let hook = Recorder::start();
    hook.respond_with(&[500, 503]);
    let cli = with_config(
        Cli::for_db(&db.name),
        &format!("[[notify]]\ntype = \"webhook\"\nurl = \"{}/h\"\n", hook.url),
    );
    let out = cli.run(&["backup", "r"]);
    out.assert_code(0);
    assert_eq!(hook.wait_for(3, Duration::from_secs(10)).len(), 3);
    assert!(
        !out.stderr.contains("Notification not delivered"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_hanging_receiver_times_out_and_the_backup_still_succeeds() {
    let pg = Pg::get();
    let db = small_db(&pg, "kn_hang");
    let hook = Recorder::start();
    hook.delay(Duration::from_secs(60));
    let cli = with_config(
        Cli::for_db(&db.name),
        &format!(
            "[[notify]]\ntype = \"webhook\"\nurl = \"{}/slow?token=abc123\"\ntimeout_secs = 1\nretries = 1\n",
            hook.url
        ),
    );
    let started = Instant::now();
    let out = cli.run(&["backup", "h"]);
    out.assert_code(0)
        .assert_stderr_contains("Notification not delivered")
        .assert_stderr_contains("timed out");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        !out.all().contains("abc123"),
        "the URL's token leaked: {}",
        out.stderr
    );
    assert_eq!(cli.list().len(), 1);
}

#[test]
fn email_arrives_with_subject_and_recipients() {
    let pg = Pg::get();
    let db = small_db(&pg, "kn_mail");
    let smtp = Smtp::get();
    let rcpt = format!("{}@example.com", unique("ops"));
    let cli = Cli::for_db(&db.name)
        .env("BACKUP_EMAIL_RECIPIENT", &format!("{rcpt}, second-{rcpt}"))
        .env("SMTP_HOST", &smtp.host)
        .env("SMTP_PORT", &smtp.port.to_string())
        .env("SMTP_TLS", "none")
        .env("POSTGRES_PASSWORD", "wrong-Pa55word");
    cli.run(&["backup", "m"]).assert_code(1);
    let msgs = smtp.wait_for(&rcpt, Duration::from_secs(15));
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(
        msgs[0]["subject"],
        format!("[kaizen-backup] FAILED backup of {}", db.name)
    );
    let to = msgs[0]["to"].to_string();
    assert!(to.contains(&rcpt) && to.contains(&format!("second-{rcpt}")));
    let text = msgs[0]["text"].as_str().unwrap_or_default();
    assert!(text.contains("Cannot connect to database"), "{text}");
    assert!(!msgs[0].to_string().contains("wrong-Pa55word"));
}

#[test]
fn wrong_smtp_port_is_reported_and_the_backup_still_counts() {
    let pg = Pg::get();
    let db = small_db(&pg, "kn_smtpport");
    let cli = Cli::for_db(&db.name)
        .env("BACKUP_EMAIL_RECIPIENT", "ops@example.com")
        .env("SMTP_HOST", "127.0.0.1")
        .env("SMTP_PORT", &free_port().to_string())
        .env("SMTP_TLS", "none");
    let out = cli.run(&["backup", "ok", "-q"]);
    out.assert_code(0)
        .assert_stderr_contains("Notification not delivered: email");
    assert_eq!(cli.list().len(), 1);
}

#[test]
fn a_failed_backup_notifies_every_channel_without_the_password() {
    let pg = Pg::get();
    let db = small_db(&pg, "kn_fail");
    let slack = Recorder::start();
    let hook = Recorder::start();
    let smtp = Smtp::get();
    let rcpt = format!("{}@example.com", unique("fail"));
    let password = "Sekr1t-Hunter2";
    let cli = with_config(
        Cli::for_db(&db.name),
        &format!(
            "[[notify]]\ntype = \"webhook\"\nurl = \"{}/h\"\n\n[[notify]]\ntype = \"email\"\nrecipients = [\"{rcpt}\"]\nsmtp_host = \"{}\"\nsmtp_port = {}\ntls = \"none\"\n",
            hook.url, smtp.host, smtp.port
        ),
    )
    .env("SLACK_WEBHOOK_URL", &format!("{}/services/x", slack.url))
    .env("POSTGRES_PASSWORD", password);
    let out = cli.run(&["backup", "f", "-vv"]);
    out.assert_code(1);
    assert!(!out.all().contains(password));
    let s = slack.wait_for(1, Duration::from_secs(10));
    let h = hook.wait_for(1, Duration::from_secs(10));
    let m = smtp.wait_for(&rcpt, Duration::from_secs(15));
    assert_eq!((s.len(), h.len(), m.len()), (1, 1, 1));
    assert!(
        s[0].json()["text"]
            .as_str()
            .unwrap()
            .contains("FAILED backup of")
    );
    assert_eq!(h[0].json()["kind"], "backup.failed");
    assert!(
        h[0].json()["error"]
            .as_str()
            .unwrap()
            .contains("password authentication failed")
    );
    for body in [
        String::from_utf8_lossy(&s[0].body).to_string(),
        String::from_utf8_lossy(&h[0].body).to_string(),
        m[0].to_string(),
    ] {
        assert!(
            !body.contains(password),
            "password leaked into a notification"
        );
    }
}

#[test]
fn only_the_configured_events_are_sent() {
    let pg = Pg::get();
    let db = small_db(&pg, "kn_on");
    let hook = Recorder::start();
    let cli = with_config(
        Cli::for_db(&db.name),
        &format!(
            "[[notify]]\ntype = \"webhook\"\nurl = \"{}/h\"\non = [\"backup.failed\"]\n",
            hook.url
        ),
    );
    // Notifications are sent before the process exits: what arrived by then is all.
    cli.run(&["backup", "quiet"]).assert_code(0);
    assert!(hook.requests().is_empty());
    let bad = with_config(
        Cli::for_db(&db.name),
        "[[notify]]\ntype = \"webhook\"\nurl = \"http://x\"\non = [\"backup.exploded\"]\n",
    );
    bad.run(&["backup", "x"])
        .assert_code(2)
        .assert_stderr_contains("backup.exploded");
}

#[test]
fn metrics_reach_the_pushgateway_and_the_textfile() {
    let pg = Pg::get();
    let db = small_db(&pg, "kn_metrics");
    let prom = pushgateway_url();
    let cli = with_config(
        Cli::for_db(&db.name),
        &format!(
            "[metrics]\ntextfile = \"metrics/kaizen_backup.prom\"\npushgateway = \"{prom}\"\njob = \"kaizen_backup_test\"\n"
        ),
    );
    cli.run(&["backup", "p1"]).assert_code(0);
    let (status, body) = get(&format!("{prom}/metrics"));
    assert_eq!(status, 200);
    let line = body
        .lines()
        .find(|l| {
            l.starts_with("kaizen_backup_last_success_timestamp_seconds{")
                && l.contains(&format!("database=\"{}\"", db.name))
        })
        .unwrap_or_else(|| panic!("no success metric for {} in the Pushgateway", db.name));
    assert!(line.contains("job=\"kaizen_backup_test\""), "{line}");
    // A failure keeps the last success in both sinks.
    let failing = with_config(
        Cli::for_db(&db.name)
            .env("BACKUP_DIR", cli.backups().to_str().unwrap())
            .env("POSTGRES_PASSWORD", "nope"),
        &format!(
            "[metrics]\ntextfile = \"{}\"\npushgateway = \"{prom}\"\njob = \"kaizen_backup_test\"\n",
            cli.path().join("metrics/kaizen_backup.prom").display()
        ),
    );
    failing.run(&["backup", "p2"]).assert_code(1);
    let text = std::fs::read_to_string(cli.path().join("metrics/kaizen_backup.prom")).unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&db.name))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("kaizen_backup_last_status"), 0.0);
    assert!(value("kaizen_backup_last_success_timestamp_seconds") > 1.7e9);
    assert!(value("kaizen_backup_last_success_timestamp") > 1.7e9);
    assert!(text.contains("# TYPE kaizen_backup_last_status gauge"));
    let (_, body) = get(&format!("{prom}/metrics"));
    let has = |name: &str| {
        body.lines().any(|l| {
            l.starts_with(&format!("{name}{{")) && l.contains(&format!("database=\"{}\"", db.name))
        })
    };
    assert!(
        has("kaizen_backup_last_success_timestamp_seconds") && has("kaizen_backup_last_status")
    );
    let status_line = body
        .lines()
        .find(|l| {
            l.starts_with("kaizen_backup_last_status{")
                && l.contains(&format!("database=\"{}\"", db.name))
        })
        .unwrap();
    assert!(status_line.ends_with(" 0"), "{status_line}");
}

#[test]
fn status_reports_stale_backups_and_notifies() {
    let pg = Pg::get();
    let db = small_db(&pg, "kn_stale");
    let hook = Recorder::start();
    let cli = with_config(
        Cli::for_db(&db.name),
        &format!("[[notify]]\ntype = \"webhook\"\nurl = \"{}/h\"\n", hook.url),
    );
    // No backup at all: stale.
    cli.run(&["status", "--max-age", "24h"])
        .assert_code(1)
        .assert_stderr_contains("no backup of");
    cli.run(&["backup", "s", "--no-prune"]).assert_code(0);
    let out = cli.run(&["status", "--json", "--max-age", "24h"]);
    out.assert_code(0);
    assert_eq!(out.json()[0]["newest"]["name"], "s");
    // Make it old: stale, exit 1, backup.stale sent.
    let path = cli.backups().join("s.manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["finished_at"] = serde_json::json!("2020-01-01T00:00:00Z");
    std::fs::write(&path, m.to_string()).unwrap();
    cli.run(&["status", "--max-age", "24h"])
        .assert_code(1)
        .assert_stderr_contains("is stale");
    let reqs = hook.wait_for(3, Duration::from_secs(10));
    assert!(
        reqs.iter().any(|r| r.json()["kind"] == "backup.stale"),
        "{:?}",
        reqs.iter()
            .map(|r| r.json()["kind"].clone())
            .collect::<Vec<_>>()
    );
    cli.run(&["status", "--max-age", "soon"]).assert_code(2);
}

#[test]
fn secrets_in_the_configuration_can_come_from_files() {
    let pg = Pg::get();
    let db = small_db(&pg, "kn_secretfile");
    let hook = Recorder::start();
    let cli = Cli::for_db(&db.name).env_remove("POSTGRES_PASSWORD");
    let pw = cli.path().join("db-password");
    std::fs::write(&pw, format!("{}\n", pg.password)).unwrap();
    let key = cli.path().join("hmac-key");
    std::fs::write(&key, "key-from-file\n").unwrap();
    let cli = with_config(
        cli,
        &format!(
            "[database]\npassword = {{ file = \"{}\" }}\n\n[[notify]]\ntype = \"webhook\"\nurl = \"{}/h\"\nsecret = {{ file = \"{}\" }}\n",
            pw.display(),
            hook.url,
            key.display()
        ),
    );
    cli.run(&["backup", "sf"]).assert_code(0);
    let h = hook.wait_for(1, Duration::from_secs(10));
    let mut mac = Hmac::<Sha256>::new_from_slice(b"key-from-file").unwrap();
    mac.update(&h[0].body);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(h[0].header("X-Kaizen-Signature"), Some(want.as_str()));
    let shown = cli.run(&["config", "show"]);
    assert!(!shown.all().contains(&pg.password) && !shown.all().contains("key-from-file"));
}
