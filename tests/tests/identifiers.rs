//! Issue 15 (3): names with spaces, quotes, dots, commas, semicolons, unicode, leading and
//! trailing spaces, 63 bytes, reserved words, TOC keywords and newlines survive backup →
//! verify → restore, in the custom format and through a parallel dump.

#![allow(clippy::unwrap_used)]

use kaizen_backup_e2e::pg::assert_same;
use kaizen_backup_e2e::{Cli, Pg, TestDb, unique};

/// `"…"`, doubling embedded quotes.
fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A database whose every kind of object has awkward names.
fn awkward_db(pg: &Pg, prefix: &str) -> (TestDb, Vec<(String, String)>) {
    let db = pg.create_db(prefix);
    let long = "l".repeat(63);
    let names: Vec<&str> = vec![
        "Audit Log",
        "TABLE DATA x",
        "with \"quotes\"",
        "dot.ted",
        "comma, semi;colon",
        "ünïcødé 表",
        "  lead and trail  ",
        &long,
        "select",
        "line\nbreak",
        "1; 0 16390 TABLE public t postgres",
    ];
    let mut sql = String::from("CREATE SCHEMA \"Sales Data\"; CREATE SCHEMA \"a.b c\";\n");
    let mut tables = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let schema = if i % 2 == 0 { "Sales Data" } else { "a.b c" };
        if *n == "Audit Log" {
            // A partitioned table with partitions whose names have spaces too.
            sql.push_str(&format!(
                "CREATE TABLE {s}.{t} (id int GENERATED ALWAYS AS IDENTITY, \"at day\" date NOT NULL, \"the note\" text) PARTITION BY RANGE (\"at day\");\n\
                 CREATE TABLE {s}.\"Audit Log 2024\" PARTITION OF {s}.{t} FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');\n\
                 CREATE TABLE {s}.\"Audit Log 2025\" PARTITION OF {s}.{t} FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');\n\
                 INSERT INTO {s}.{t} (\"at day\", \"the note\") SELECT DATE '2024-06-01' + g, 'n' || g FROM generate_series(0, 299) g;\n",
                s = q(schema),
                t = q(n)
            ));
            tables.push((schema.to_string(), n.to_string()));
            tables.push((schema.to_string(), "Audit Log 2024".to_string()));
            tables.push((schema.to_string(), "Audit Log 2025".to_string()));
            continue;
        }
        let idx = format!("idx {i} {n}");
        let idx: String = idx.chars().take(40).collect();
        sql.push_str(&format!(
            "CREATE TABLE {s}.{t} (\"the id\" serial PRIMARY KEY, {c} text, \"Ω\" int);\n\
             CREATE INDEX {x} ON {s}.{t} ({c});\n\
             INSERT INTO {s}.{t} ({c}, \"Ω\") SELECT md5(g::text), g FROM generate_series(1, {rows}) g;\n",
            s = q(schema),
            t = q(n),
            c = q(&format!("col {n}")),
            x = q(&idx),
            rows = 10 + i * 7,
        ));
        tables.push((schema.to_string(), n.to_string()));
    }
    pg.psql(&db.name, &sql);
    (db, tables)
}

fn round_trip(extra: &[&str], prefix: &str) {
    let pg = Pg::get();
    let (src, tables) = awkward_db(&pg, prefix);
    let cli = Cli::for_db(&src.name);
    let name = unique("ids");
    let mut args = vec!["backup", &name];
    args.extend_from_slice(extra);
    cli.run(&args).assert_code(0);
    // The manifest recorded every awkward table with its exact name and row count.
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cli.backups().join(format!("{name}.manifest.json"))).unwrap(),
    )
    .unwrap();
    let recorded: Vec<(String, String)> = m["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["schema"].as_str().unwrap().to_string(),
                t["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for t in &tables {
        assert!(recorded.contains(t), "manifest lacks {t:?}: {recorded:?}");
    }
    let quick = cli.run(&["verify", &name, "--quick"]);
    quick.assert_code(0);
    assert!(
        quick.stderr.contains(&format!("{} tables", tables.len())),
        "{}",
        quick.stderr
    );
    cli.run(&["verify", &name]).assert_code(0);
    let dst = pg.adopt(&unique(&format!("{prefix}_dst")));
    cli.run(&["restore", &name, &dst.name, "--no-safety-backup"])
        .assert_code(0);
    assert_same(&pg.fingerprint(&src.name), &pg.fingerprint(&dst.name));
}

#[test]
fn awkward_identifiers_round_trip_and_verify_in_the_custom_format() {
    round_trip(&[], "kid_custom");
}

#[test]
fn awkward_identifiers_round_trip_and_verify_through_a_parallel_dump() {
    round_trip(&["--jobs", "2"], "kid_par");
}
