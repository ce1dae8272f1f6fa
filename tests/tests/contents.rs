//! Issue 18 (first part): `kaizen-backup contents BACKUP [--json]` lists what a backup holds
//! from the archive itself — partitions under their parent, exact row counts from the
//! manifest — for custom and parallel backups, compressed and encrypted (key only, no
//! database), and refuses a damaged one.

#![allow(clippy::unwrap_used)]

use kaizen_backup_e2e::{Cli, Pg, TestDb, unique};
use serde_json::Value;

fn shop(pg: &Pg, prefix: &str) -> TestDb {
    let db = pg.create_db(prefix);
    pg.psql(
        &db.name,
        "CREATE EXTENSION pgcrypto;
         CREATE SCHEMA \"Sales Data\";
         CREATE TABLE \"Sales Data\".\"Audit Log\" (id bigint GENERATED ALWAYS AS IDENTITY, at date NOT NULL, region text NOT NULL) PARTITION BY RANGE (at);
         CREATE TABLE \"Sales Data\".\"Audit Log 2024\" PARTITION OF \"Sales Data\".\"Audit Log\" FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') PARTITION BY LIST (region);
         CREATE TABLE \"Sales Data\".\"Audit Log 2024 eu\" PARTITION OF \"Sales Data\".\"Audit Log 2024\" FOR VALUES IN ('eu');
         CREATE TABLE \"Sales Data\".\"Audit Log 2024 us\" PARTITION OF \"Sales Data\".\"Audit Log 2024\" FOR VALUES IN ('us');
         CREATE TABLE \"Sales Data\".\"Audit Log 2025\" PARTITION OF \"Sales Data\".\"Audit Log\" FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         INSERT INTO \"Sales Data\".\"Audit Log\" (at, region) SELECT DATE '2024-01-01' + g, CASE WHEN g % 3 = 0 THEN 'us' ELSE 'eu' END FROM generate_series(0, 499) g;
         CREATE TABLE public.users (id serial PRIMARY KEY, email text);
         INSERT INTO public.users (email) SELECT 'u' || g || '@x' FROM generate_series(1, 42) g;
         CREATE SEQUENCE public.invoice_no;
         CREATE VIEW public.active_users AS SELECT * FROM public.users;
         CREATE MATERIALIZED VIEW public.user_count AS SELECT count(*) FROM public.users;
         CREATE FUNCTION public.add(a int, b int) RETURNS int LANGUAGE sql AS 'SELECT a + b';
         CREATE TYPE public.mood AS ENUM ('ok', 'sad');",
    );
    db
}

fn schema<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no schema {name}: {c}"))
}

fn check(c: &Value, name: &str) {
    assert_eq!(c["name"], name);
    let sales = schema(c, "Sales Data");
    let tables = sales["tables"].as_array().unwrap();
    assert_eq!(
        tables.len(),
        1,
        "partitions must not be top-level tables: {sales}"
    );
    let log = &tables[0];
    assert_eq!(log["name"], "Audit Log");
    assert_eq!(log["rows"], 500);
    let parts: Vec<&str> = log["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(parts, ["Audit Log 2024", "Audit Log 2025"]);
    let p2024 = &log["partitions"][0];
    assert_eq!(p2024["rows"], 366);
    let sub: Vec<(&str, i64)> = p2024["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["rows"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        sub,
        [("Audit Log 2024 eu", 244), ("Audit Log 2024 us", 122)]
    );
    assert_eq!(log["partitions"][1]["rows"], 134);
    // Sizes at dump time: a partitioned table's is the sum of its partitions'.
    let size = |v: &Value| v["size_bytes"].as_i64().unwrap();
    let leaves = size(&p2024["partitions"][0]) + size(&p2024["partitions"][1]);
    assert!(leaves > 0, "{p2024}");
    assert_eq!(size(p2024), leaves);
    assert_eq!(size(log), leaves + size(&log["partitions"][1]));
    let public = schema(c, "public");
    assert_eq!(public["tables"][0]["name"], "users");
    assert_eq!(public["tables"][0]["rows"], 42);
    assert!(
        public["tables"][0]["size_bytes"].as_i64().unwrap() > 0,
        "{public}"
    );
    let seqs = public["sequences"].as_array().unwrap();
    assert!(seqs.contains(&Value::from("invoice_no")), "{public}");
    assert!(seqs.contains(&Value::from("users_id_seq")), "{public}");
    assert_eq!(public["views"], serde_json::json!(["active_users"]));
    assert_eq!(
        public["materialized_views"],
        serde_json::json!(["user_count"])
    );
    assert_eq!(
        public["functions"],
        serde_json::json!(["add(integer, integer)"])
    );
    assert_eq!(public["types"], serde_json::json!(["mood"]));
    assert!(
        c["extensions"]
            .as_array()
            .unwrap()
            .contains(&Value::from("pgcrypto")),
        "{c}"
    );
    // Rows of leaf tables only: 500 audit rows + 42 users.
    assert_eq!(c["totals"]["rows"], 542);
    assert_eq!(c["totals"]["tables"], 6);
}

#[test]
fn contents_lists_partitions_under_their_parent_with_exact_rows() {
    let pg = Pg::get();
    let db = shop(&pg, "kct");
    let cli = Cli::for_db(&db.name);
    let name = unique("c");
    cli.run(&["backup", &name]).assert_code(0);
    let out = cli.run(&["contents", &name, "--json"]);
    out.assert_code(0);
    check(&out.json(), &name);
    // The text listing: partitions indented under the parent, odd names quoted.
    let text = cli.run(&["contents", &name]);
    text.assert_code(0);
    let t = &text.stdout;
    assert!(t.contains("schema \"Sales Data\""), "{t}");
    let lines: Vec<&str> = t.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("  table \"Audit Log\"  500 rows, "))
        .unwrap_or_else(|| panic!("{t}"));
    assert!(lines[at].ends_with("  (partitioned)"), "{t}");
    assert!(
        lines[at + 1].starts_with("    partition \"Audit Log 2024\"  366 rows, "),
        "{t}"
    );
    assert!(
        lines[at + 2].starts_with("      partition \"Audit Log 2024 eu\"  244 rows, "),
        "{t}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("  table users  42 rows, ")),
        "{t}"
    );
    // The same from a parallel backup (the TOC comes from toc.dat in the tar archive).
    let par = unique("cp");
    cli.run(&["backup", &par, "--jobs", "2"]).assert_code(0);
    let out = cli.run(&["contents", &par, "--json"]);
    out.assert_code(0);
    check(&out.json(), &par);
}

#[test]
fn contents_of_an_encrypted_backup_needs_the_key_and_no_database() {
    let pg = Pg::get();
    let db = shop(&pg, "kct_enc");
    let base = Cli::new();
    let key = base.path().join("k");
    let rcpt = base.run(&["keygen", "--output", key.to_str().unwrap()]);
    rcpt.assert_code(0);
    let cli = Cli::for_db(&db.name)
        .env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "zstd")
        .env("KAIZEN_BACKUP_ENCRYPTION__TYPE", "age")
        .env("KAIZEN_BACKUP_ENCRYPTION__RECIPIENTS", rcpt.stdout.trim());
    let name = unique("ce");
    cli.run(&["backup", &name]).assert_code(0);
    // No key: a clear refusal.
    cli.run(&["contents", &name, "--json"]).assert_code(1);
    // With the key and a database that does not answer: works.
    let out = cli.run_with(
        &[
            ("KAIZEN_BACKUP_AGE_IDENTITY_FILE", key.to_str().unwrap()),
            ("POSTGRES_HOST", "127.0.0.1"),
            ("POSTGRES_PORT", "1"),
        ],
        &["contents", &name, "--json"],
    );
    out.assert_code(0);
    check(&out.json(), &name);
}

#[test]
fn contents_of_a_damaged_or_missing_backup_fails_clearly() {
    let pg = Pg::get();
    let db = pg.create_db("kct_bad");
    pg.psql(
        &db.name,
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 10) g",
    );
    let cli = Cli::for_db(&db.name).env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "none");
    cli.run(&["backup", "b"]).assert_code(0);
    let path = cli.backups().join("b.dump");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..40]).unwrap();
    cli.run(&["contents", "b"])
        .assert_code(1)
        .assert_stderr_contains("Invalid backup file format or corrupted file");
    std::fs::write(&path, b"not a dump at all").unwrap();
    cli.run(&["contents", "b"])
        .assert_code(1)
        .assert_stderr_contains("Invalid backup file format or corrupted file");
    cli.run(&["contents", "nope"]).assert_code(1);
}
