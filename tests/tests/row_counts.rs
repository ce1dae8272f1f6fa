//! Issue 20: exact row counts read from the archive itself when pg_dump writes its data
//! uncompressed (zstd and none modes), equal to `count(*)`, with the manifest saying how
//! they were counted; and verify's proof still holds.

#![allow(clippy::unwrap_used)]

use kaizen_backup_e2e::{Cli, Pg};

/// Tables whose COPY text is awkward to count: escaped newlines, tabs and backslashes,
/// values that look like COPY's `\.` terminator, bytea, NULLs, an empty table, rows of a
/// table without columns, names that need quoting, declarative partitions two levels
/// deep with a default, inheritance, large objects between data blocks, and many tables.
const AWKWARD: &str = r#"
CREATE TABLE texts (id int, t text, b bytea);
INSERT INTO texts VALUES
  (1, E'two\nlines', '\x0a5c0d'),
  (2, E'back\\slash\\.', '\x5c2e0a'),
  (3, E'\\.', NULL),
  (4, E'tab\there\r\n', '\x'),
  (5, NULL, NULL),
  (6, '', '\x0a0a0a');
INSERT INTO texts SELECT g, repeat(E'x\ny\\', g % 50), decode(repeat('0a5c', g % 30), 'hex') FROM generate_series(7, 20000) g;
CREATE TABLE empty (a int);
CREATE TABLE no_columns ();
INSERT INTO no_columns SELECT FROM generate_series(1, 7);
CREATE TABLE "Odd ""name"" with
newline" (a text);
INSERT INTO "Odd ""name"" with
newline" VALUES ('x'), (E'\\.\n');
CREATE TABLE measures (at date, v int) PARTITION BY RANGE (at);
CREATE TABLE measures_2023 PARTITION OF measures FOR VALUES FROM ('2023-01-01') TO ('2024-01-01') PARTITION BY LIST (v);
CREATE TABLE measures_2023_a PARTITION OF measures_2023 FOR VALUES IN (1, 2);
CREATE TABLE measures_2023_rest PARTITION OF measures_2023 DEFAULT;
CREATE TABLE measures_other PARTITION OF measures DEFAULT;
INSERT INTO measures SELECT date '2023-01-01' + g % 700, g % 5 FROM generate_series(1, 3000) g;
CREATE TABLE parent (a int);
CREATE TABLE child (b int) INHERITS (parent);
INSERT INTO parent VALUES (1), (2);
INSERT INTO child VALUES (3, 3), (4, 4), (5, 5);
SELECT lo_from_bytea(0, '\x0a0a5c2e0a');
SELECT lo_from_bytea(0, '\x00');
DO $$ BEGIN FOR i IN 1..150 LOOP
  EXECUTE format('CREATE TABLE many_%s AS SELECT g FROM generate_series(1, %s) g', i, i % 4);
END LOOP; END $$;
"#;

fn manifest(cli: &Cli, name: &str) -> serde_json::Value {
    let text =
        std::fs::read_to_string(cli.backups().join(format!("{name}.manifest.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `schema|name|rows` of every table in the manifest, sorted.
fn manifest_rows(m: &serde_json::Value) -> Vec<String> {
    let mut rows: Vec<String> = m["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{}|{}|{}",
                t["schema"].as_str().unwrap(),
                t["name"].as_str().unwrap(),
                t["rows"]
            )
        })
        .collect();
    rows.sort();
    rows
}

/// The same, from `count(*)` on the server (partitioned tables with their partitions,
/// ordinary tables without their inheritance children).
fn server_rows(pg: &Pg, db: &str) -> Vec<String> {
    let sql = "DO $$ DECLARE r record; n bigint; BEGIN \
        CREATE TEMP TABLE counted (s text, t text, n bigint); \
        FOR r IN SELECT c.relnamespace::regnamespace::text AS s, c.relname::text AS t, c.relkind, c.oid \
                 FROM pg_class c WHERE c.relkind IN ('r','p') AND c.relnamespace = 'public'::regnamespace LOOP \
          EXECUTE format('SELECT count(*) FROM %s %s', CASE WHEN r.relkind = 'r' THEN 'ONLY' ELSE '' END, r.oid::regclass) INTO n; \
          INSERT INTO counted VALUES (r.s, r.t, n); \
        END LOOP; END $$; \
        SELECT string_agg(s || '|' || t || '|' || n, E'\\x1f') FROM counted";
    let out = pg.psql(db, sql);
    let mut rows: Vec<String> = out
        .split('\u{1f}')
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    rows.sort();
    rows
}

#[test]
fn rows_counted_in_the_archive_equal_count_star_and_verify_proves_them() {
    let pg = Pg::get();
    let src = pg.create_db("krc_src");
    pg.psql(&src.name, AWKWARD);
    let want = server_rows(&pg, &src.name);
    assert!(want.len() > 150, "{want:?}");
    assert!(want.contains(&"public|texts|20000".to_string()), "{want:?}");
    assert!(
        want.contains(&"public|measures|3000".to_string()),
        "{want:?}"
    );
    assert!(want.contains(&"public|parent|2".to_string()), "{want:?}");
    for (compression, source) in [("zstd", "dump"), ("none", "dump"), ("gzip", "snapshot")] {
        let cli = Cli::for_db(&src.name).env("KAIZEN_BACKUP_BACKUP__COMPRESSION", compression);
        let name = format!("rc_{compression}");
        cli.run(&["backup", &name]).assert_code(0);
        let m = manifest(&cli, &name);
        assert_eq!(m["row_count_source"], source, "{compression}");
        assert_eq!(manifest_rows(&m), want, "{compression}");
        // However the rows were counted, every table has its size (for `contents`).
        for t in m["tables"].as_array().unwrap() {
            assert!(
                t["size_bytes"].as_i64().is_some_and(|b| b >= 0),
                "{compression}: {t}"
            );
        }
        if compression == "zstd" {
            // The proof: a test restore holds exactly the rows the archive holds.
            let out = cli.run(&["verify", &name]);
            out.assert_code(0);
            assert!(
                out.all().contains(&format!("{} tables", want.len())),
                "{}",
                out.all()
            );
        }
    }
}

#[test]
fn data_that_is_not_copy_text_is_counted_in_the_snapshot() {
    let pg = Pg::get();
    let src = pg.create_db("krc_ins");
    pg.psql(
        &src.name,
        "CREATE TABLE t (a text); INSERT INTO t VALUES (E'a\\nb'), ('c'), (E'd;\\n\\nINSERT');",
    );
    let cli = Cli::for_db(&src.name).env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "zstd");
    std::fs::write(
        cli.path().join("kaizen-backup.toml"),
        "[backup]\npg_dump_args = [\"--inserts\"]\n",
    )
    .unwrap();
    cli.run(&["backup", "ins"])
        .assert_code(0)
        .assert_stderr_contains("counting them in the snapshot");
    let m = manifest(&cli, "ins");
    assert_eq!(m["row_count_source"], "snapshot");
    assert_eq!(manifest_rows(&m), ["public|t|3"]);
    cli.run(&["verify", "ins"]).assert_code(0);
}
