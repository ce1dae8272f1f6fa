//! Issue 19, immutable storage: S3 Object Lock on moto. Every object a backup writes gets
//! a retain-until date, a locked version cannot be deleted, `prune` keeps locked backups
//! (reported as kept by lock, not as failures) and deletes them once the lock has expired.

#![allow(clippy::unwrap_used)]

use kaizen_backup_e2e::http::{exchange, request};
use kaizen_backup_e2e::services::S3;
use kaizen_backup_e2e::{Cli, Pg, TestDb, unique};

/// moto takes any signature, but refuses anonymous requests for private objects.
const AUTH: (&str, &str) = (
    "Authorization",
    "AWS4-HMAC-SHA256 Credential=kaizen-test/20260101/us-east-1/s3/aws4_request, \
     SignedHeaders=host, Signature=0",
);

fn small_db(pg: &Pg, prefix: &str) -> TestDb {
    let db = pg.create_db(prefix);
    pg.psql(
        &db.name,
        "CREATE TABLE t(x int primary key); INSERT INTO t SELECT generate_series(1, 100)",
    );
    db
}

/// A CLI for `db` whose configuration file sets `object_lock` to `lock` (a TOML value).
fn lock_cli(s3: &S3, db: &str, lock: &str) -> (Cli, String) {
    let cli = s3.cli(db);
    let path = cli.path().join("kaizen.toml");
    std::fs::write(&path, format!("[storage.s3]\nobject_lock = {lock}\n")).unwrap();
    (cli, path.display().to_string())
}

/// The text of every `<tag>` element of `xml`.
fn values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(v, _)| v.to_string()))
        .collect()
}

/// The keys under `prefix` in `bucket` (raw ListObjectsV2; moto does not check signatures).
fn keys(s3: &S3, bucket: &str, prefix: &str) -> Vec<String> {
    let url = format!("{}/{bucket}?list-type=2&prefix={prefix}/", s3.endpoint);
    let (code, body) = request("GET", &url, &[AUTH], b"");
    assert_eq!(code, 200, "{body}");
    values(&body, "Key")
}

/// Every version of `key`: its version ids.
fn versions(s3: &S3, bucket: &str, key: &str) -> Vec<String> {
    let url = format!("{}/{bucket}?versions&prefix={key}", s3.endpoint);
    let (code, body) = request("GET", &url, &[AUTH], b"");
    assert_eq!(code, 200, "{body}");
    values(&body, "Version")
        .iter()
        .filter(|v| values(v, "Key") == [key])
        .flat_map(|v| values(v, "VersionId"))
        .collect()
}

/// The object's `x-amz-object-lock-*` header values: (mode, retain-until).
fn retention(s3: &S3, bucket: &str, key: &str) -> (Option<String>, Option<String>) {
    let (code, head, _) = exchange(
        "HEAD",
        &format!("{}/{bucket}/{key}", s3.endpoint),
        &[AUTH],
        b"",
    );
    assert_eq!(code, 200, "HEAD {key}");
    let header = |name: &str| {
        head.iter()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
    };
    (
        header("x-amz-object-lock-mode"),
        header("x-amz-object-lock-retain-until-date"),
    )
}

fn entry<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report[0]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {report}"))
}

#[test]
fn every_object_is_locked_and_prune_keeps_it_until_the_lock_expires() {
    let pg = Pg::get();
    let s3 = S3::get();
    let db = small_db(&pg, "kol_prune");
    let bucket = s3.object_lock_bucket();
    let prefix = unique("ol");
    let url = format!("s3://{bucket}/{prefix}");
    let (cli, config) = lock_cli(&s3, &db.name, r#"{ mode = "GOVERNANCE", days = 2 }"#);
    let run = |cli: &Cli, args: &[&str]| {
        let mut all = vec!["--config", config.as_str(), "--storage", url.as_str()];
        all.extend_from_slice(args);
        cli.run(&all)
    };
    run(&cli, &["backup", "old"]).assert_code(0);
    run(&cli, &["backup", "new"]).assert_code(0);

    // Archived WAL too.
    let segment = cli.path().join("000000010000000000000042");
    std::fs::write(&segment, vec![4u8; 16 * 1024 * 1024]).unwrap();
    run(&cli, &["wal-push", segment.to_str().unwrap()]).assert_code(0);
    let wal = keys(&s3, &bucket, &format!("{prefix}/wal"));
    assert!(
        wal.iter().any(|k| k.contains("/000000010000000000000042-")),
        "{wal:?}"
    );
    for key in &wal {
        assert_eq!(
            retention(&s3, &bucket, key).0.as_deref(),
            Some("GOVERNANCE"),
            "{key}"
        );
    }

    // Every object carries a GOVERNANCE retention about two days ahead.
    let all = keys(&s3, &bucket, &prefix);
    assert!(all.iter().any(|k| k.ends_with("/old.dump")), "{all:?}");
    assert!(all.len() >= 4, "{all:?}");
    let now = chrono::Utc::now();
    for key in &all {
        let (mode, until) = retention(&s3, &bucket, key);
        assert_eq!(mode.as_deref(), Some("GOVERNANCE"), "{key}");
        let until = chrono::DateTime::parse_from_rfc3339(&until.unwrap()).unwrap();
        let ahead = until.with_timezone(&chrono::Utc) - now;
        assert!(
            ahead > chrono::Duration::hours(47) && ahead <= chrono::Duration::days(2),
            "{key}: retain until {until}"
        );
    }

    // The run's lock object was written (and deleted) without a retention.
    let url_versions = format!("{}/{bucket}?versions&prefix={prefix}/", s3.endpoint);
    let (code, listing) = request("GET", &url_versions, &[AUTH], b"");
    assert_eq!(code, 200, "{listing}");
    let lock_versions: Vec<(String, String)> = values(&listing, "Version")
        .iter()
        .filter(|v| values(v, "Key")[0].ends_with(".lock"))
        .map(|v| {
            (
                values(v, "Key")[0].clone(),
                values(v, "VersionId")[0].clone(),
            )
        })
        .collect();
    assert!(!lock_versions.is_empty(), "{listing}");
    for (key, id) in &lock_versions {
        let url = format!("{}/{bucket}/{key}?versionId={id}", s3.endpoint);
        let (code, head, _) = exchange("HEAD", &url, &[AUTH], b"");
        assert_eq!(code, 200, "{key}");
        assert!(
            !head.iter().any(|l| l.starts_with("x-amz-object-lock")),
            "{key}: {head:?}"
        );
    }

    // Deleting the locked version itself is denied; the object stays.
    let dump = format!("{prefix}/old.dump");
    let ids = versions(&s3, &bucket, &dump);
    assert_eq!(ids.len(), 1, "{ids:?}");
    let (code, body) = request(
        "DELETE",
        &format!("{}/{bucket}/{dump}?versionId={}", s3.endpoint, ids[0]),
        &[AUTH],
        b"",
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("AccessDenied"), "{body}");
    assert!(keys(&s3, &bucket, &prefix).contains(&dump));

    // Retention would delete `old`: prune keeps it, as kept by lock, and fails nothing.
    let cli = cli.env("BACKUP_RETENTION_COUNT", "1");
    let out = run(&cli, &["prune", "--json"]);
    out.assert_code(0)
        .assert_stderr_contains("Keep old")
        .assert_stderr_contains("kept by Object Lock until");
    let report = out.json();
    let old = entry(&report, "old");
    assert_eq!(old["removed"], false);
    assert_eq!(old["keep"], serde_json::json!(["kept_by_lock"]));
    assert!(old["locked_until"].is_string(), "{old}");
    assert_eq!(report[0]["errors"], serde_json::json!([]));
    assert_eq!(keys(&s3, &bucket, &prefix), all, "prune deleted something");

    // The lock of `old` ends (backdated here; GOVERNANCE lets a bypassing user do it).
    for key in all.iter().filter(|k| k.contains("/old.")) {
        let body = "<Retention><Mode>GOVERNANCE</Mode>\
                    <RetainUntilDate>2020-01-01T00:00:00Z</RetainUntilDate></Retention>";
        let (code, text) = request(
            "PUT",
            &format!("{}/{bucket}/{key}?retention", s3.endpoint),
            &[AUTH, ("x-amz-bypass-governance-retention", "true")],
            body.as_bytes(),
        );
        assert_eq!(code, 200, "{key}: {text}");
    }
    let out = run(&cli, &["prune", "--json"]);
    out.assert_code(0).assert_stderr_contains("Deleted old");
    let report = out.json();
    assert_eq!(entry(&report, "old")["removed"], true);
    assert_eq!(entry(&report, "new")["removed"], false);
    assert_eq!(report[0]["errors"], serde_json::json!([]));
    let left = keys(&s3, &bucket, &prefix);
    assert!(!left.iter().any(|k| k.contains("/old.")), "{left:?}");
    assert!(left.iter().any(|k| k.ends_with("/new.dump")), "{left:?}");
    let names: Vec<String> = run(&cli, &["list", "--json"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["new"]);
}

#[test]
fn config_check_wants_object_lock_on_the_bucket_and_valid_values() {
    let pg = Pg::get();
    let s3 = S3::get();
    let db = small_db(&pg, "kol_check");
    let good = r#"{ mode = "COMPLIANCE", days = 1 }"#;

    // A bucket without Object Lock: the check says so.
    let (cli, config) = lock_cli(&s3, &db.name, good);
    let plain = s3.url(&unique("ol"));
    cli.run(&[
        "--config",
        &config,
        "--storage",
        &plain,
        "config",
        "check",
        "--connect",
    ])
    .assert_code(1)
    .assert_stderr_contains("does not have Object Lock enabled");
    // And a backup there fails rather than writing unlocked objects.
    cli.run(&["--config", &config, "--storage", &plain, "backup", "b"])
        .assert_code(1);

    let bucket = s3.object_lock_bucket();
    let locked = format!("s3://{bucket}/{}", unique("ol"));
    cli.run(&[
        "--config",
        &config,
        "--storage",
        &locked,
        "config",
        "check",
        "--connect",
    ])
    .assert_code(0);

    for (bad, key) in [
        (r#"{ mode = "FOREVER", days = 1 }"#, "object_lock.mode"),
        (r#"{ mode = "GOVERNANCE", days = 0 }"#, "object_lock.days"),
    ] {
        let (cli, config) = lock_cli(&s3, &db.name, bad);
        cli.run(&["--config", &config, "--storage", &locked, "config", "check"])
            .assert_code(2)
            .assert_stderr_contains(key);
    }
    let (cli, config) = lock_cli(&s3, &db.name, r#"{ mode = "GOVERNANCE" }"#);
    cli.run(&["--config", &config, "--storage", &locked, "config", "check"])
        .assert_code(2)
        .assert_stderr_contains("days");
}
