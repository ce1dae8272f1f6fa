//! The test environment itself: every server `cargo xtask test` starts answers and holds
//! what the other tests expect (bucket, container, SMTP capture, ...), and the recording
//! HTTP server behaves as documented.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use kaizen_backup_e2e::http::{get, request};
use kaizen_backup_e2e::services::{
    pushgateway_metrics, pushgateway_url, venv_bin, webdav_endpoint,
};
use kaizen_backup_e2e::{Azure, Gcs, Pg, Recorder, S3, Smtp, unique};

#[test]
fn postgres_answers_over_tcp_with_password_and_socket() {
    let pg = Pg::get();
    assert_eq!(pg.psql("postgres", "SELECT 1"), "1");
    // TCP needs the password (scram-sha-256).
    let out = std::process::Command::new(pg.bin.join("psql"))
        .args([
            "-X", "-At", "-h", &pg.host, "-p", &pg.port, "-U", &pg.user, "-d", "postgres", "-c",
            "SELECT 2",
        ])
        .env("PGPASSWORD", &pg.password)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    let out = std::process::Command::new(pg.bin.join("psql"))
        .args([
            "-X", "-At", "-w", "-h", &pg.host, "-p", &pg.port, "-U", &pg.user, "-d", "postgres",
            "-c", "SELECT 3",
        ])
        .env("PGPASSWORD", "wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn sample_database_loads_and_fingerprint_is_stable() {
    let pg = Pg::get();
    let db = pg.sample_db("kb_env_sample");
    let a = pg.fingerprint(&db.name);
    assert_eq!(a, pg.fingerprint(&db.name));
    pg.psql(
        &db.name,
        "UPDATE users SET display_name = display_name || 'x' WHERE id = 1",
    );
    let b = pg.fingerprint(&db.name);
    assert_ne!(a, b);
    // A sequence's is_called flag alone changes it too.
    let seq = pg.psql(&db.name, "SELECT pg_get_serial_sequence('users', 'id')");
    let last = pg.psql(&db.name, &format!("SELECT last_value FROM {seq}"));
    pg.psql(&db.name, &format!("SELECT setval('{seq}', {last}, false)"));
    assert_ne!(b, pg.fingerprint(&db.name));
}

#[test]
fn s3_bucket_exists() {
    let s3 = S3::get();
    let (status, body) = get(&format!("{}/{}", s3.endpoint, s3.bucket));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ListBucketResult"), "{body}");
}

#[test]
fn gcs_bucket_exists() {
    let gcs = Gcs::get();
    let (status, body) = get(&format!("{}/storage/v1/b/{}", gcs.endpoint, gcs.bucket));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn azurite_answers() {
    let az = Azure::get();
    assert!(az.endpoint.ends_with("/devstoreaccount1"));
    // Unauthenticated: refused, but by Azurite.
    let (status, body) = get(&format!(
        "{}/{}?restype=container",
        az.endpoint, az.container
    ));
    assert!((400..500).contains(&status), "{status} {body}");
}

#[test]
fn webdav_stores_files() {
    let base = webdav_endpoint();
    let name = format!("{base}{}.txt", unique("kb_env"));
    let (status, _) = request("PUT", &name, &[], b"hello webdav");
    assert!(status == 201 || status == 204, "{status}");
    assert_eq!(get(&name), (200, "hello webdav".to_string()));
}

#[test]
fn maildev_captures_smtp_mail() {
    let smtp = Smtp::get();
    let rcpt = format!("{}@example.com", unique("kb_env"));
    let stream = std::net::TcpStream::connect((smtp.host.as_str(), smtp.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    let mut expect = |code: &str| loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with(code), "expected {code}, got {line:?}");
        if line.as_bytes().get(3) != Some(&b'-') {
            break;
        }
    };
    expect("220");
    for (cmd, code) in [
        ("EHLO test".to_string(), "250"),
        ("MAIL FROM:<backup@example.com>".to_string(), "250"),
        (format!("RCPT TO:<{rcpt}>"), "250"),
        ("DATA".to_string(), "354"),
        (
            format!(
                "From: backup@example.com\r\nTo: {rcpt}\r\nSubject: env check\r\n\r\nhello\r\n."
            ),
            "250",
        ),
        ("QUIT".to_string(), "221"),
    ] {
        write!(w, "{cmd}\r\n").unwrap();
        expect(code);
    }
    let msgs = smtp.wait_for(&rcpt, Duration::from_secs(10));
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["subject"], "env check");
}

#[test]
fn pushgateway_accepts_metrics() {
    let job = unique("kb_env_job");
    let (status, body) = request(
        "PUT",
        &format!("{}/metrics/job/{job}", pushgateway_url()),
        &[("Content-Type", "text/plain")],
        b"kaizen_env_check 42\n",
    );
    assert!((200..300).contains(&status), "{status} {body}");
    assert!(pushgateway_metrics().contains(&format!(
        "kaizen_env_check{{instance=\"\",job=\"{job}\"}} 42"
    )));
}

#[test]
fn venv_has_kubernetes_validate() {
    assert!(venv_bin().join("kubernetes-validate").is_file());
}

#[test]
fn recorder_records_and_answers_with_queued_statuses() {
    let rec = Recorder::start();
    rec.respond_with(&[500, 429]);
    let url = format!("{}/hook", rec.url);
    let body = br#"{"text":"hi"}"#;
    let headers = [("Content-Type", "application/json")];
    assert_eq!(request("POST", &url, &headers, body).0, 500);
    assert_eq!(request("POST", &url, &headers, body).0, 429);
    assert_eq!(request("POST", &url, &headers, body).0, 200);
    let reqs = rec.wait_for(3, Duration::from_secs(5));
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/hook");
    assert_eq!(reqs[0].header("content-type"), Some("application/json"));
    assert_eq!(reqs[0].json()["text"], "hi");
    rec.delay(Duration::from_millis(300));
    let t = std::time::Instant::now();
    request("POST", &url, &headers, body);
    assert!(t.elapsed() >= Duration::from_millis(300));
}
