//! Issue 18: `kaizen-backup restore BACKUP SIDE_DB --table S.T … [--schema S …]
//! [--with-dependencies]` gives back some tables in a new database — with their indexes,
//! constraints, identity values, triggers and policies, partitions with their parent —
//! proven against the manifest's row counts; it never touches an existing database.

#![allow(clippy::unwrap_used)]

use kaizen_backup_e2e::{Cli, Pg, S3, TestDb, unique};

const SHOP: &str = "
    CREATE EXTENSION pgcrypto;
    CREATE TYPE public.state AS ENUM ('new', 'paid');
    CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN NEW.note := coalesce(NEW.note, ''touched''); RETURN NEW; END';
    CREATE TABLE public.customers (id serial PRIMARY KEY, name text NOT NULL);
    INSERT INTO public.customers (name) SELECT 'c' || g FROM generate_series(1, 30) g;
    CREATE TABLE public.orders (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        customer_id int NOT NULL REFERENCES public.customers(id),
        state public.state NOT NULL DEFAULT 'new',
        token text NOT NULL DEFAULT encode(gen_random_bytes(4), 'hex'),
        note text CHECK (note <> ''));
    CREATE INDEX orders_customer ON public.orders (customer_id);
    CREATE TRIGGER orders_touch BEFORE INSERT ON public.orders FOR EACH ROW EXECUTE FUNCTION public.touch();
    ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY;
    CREATE POLICY orders_paid ON public.orders USING (state = 'paid');
    INSERT INTO public.orders (customer_id, state) SELECT 1 + g % 30, CASE WHEN g % 2 = 0 THEN 'paid'::public.state ELSE 'new' END FROM generate_series(1, 200) g;
    CREATE TABLE public.order_lines (order_id bigint NOT NULL REFERENCES public.orders(id), qty int NOT NULL);
    INSERT INTO public.order_lines SELECT 1 + g % 200, g FROM generate_series(1, 300) g;
    CREATE VIEW public.paid AS SELECT * FROM public.orders WHERE state = 'paid';
    CREATE SCHEMA \"Sales Data\";
    CREATE TABLE \"Sales Data\".\"Audit Log\" (id bigint GENERATED ALWAYS AS IDENTITY, at date NOT NULL, region text NOT NULL) PARTITION BY RANGE (at);
    CREATE TABLE \"Sales Data\".\"Audit Log 2024\" PARTITION OF \"Sales Data\".\"Audit Log\" FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') PARTITION BY LIST (region);
    CREATE TABLE \"Sales Data\".\"Audit Log 2024 eu\" PARTITION OF \"Sales Data\".\"Audit Log 2024\" FOR VALUES IN ('eu');
    CREATE TABLE \"Sales Data\".\"Audit Log 2024 us\" PARTITION OF \"Sales Data\".\"Audit Log 2024\" FOR VALUES IN ('us');
    CREATE TABLE \"Sales Data\".\"Audit Log 2025\" PARTITION OF \"Sales Data\".\"Audit Log\" FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
    CREATE INDEX ON \"Sales Data\".\"Audit Log\" (at);
    INSERT INTO \"Sales Data\".\"Audit Log\" (at, region) SELECT DATE '2024-01-01' + g, CASE WHEN g % 3 = 0 THEN 'us' ELSE 'eu' END FROM generate_series(0, 499) g;
    CREATE SCHEMA \"Ünï code\";
    CREATE TABLE \"Ünï code\".\"we\"\"ird name.x\" (v text);
    INSERT INTO \"Ünï code\".\"we\"\"ird name.x\" SELECT 'w' || g FROM generate_series(1, 7) g;
    CREATE TABLE \"Ünï code\".\"a.b\" (v int);
    INSERT INTO \"Ünï code\".\"a.b\" SELECT g FROM generate_series(1, 3) g;
    CREATE TABLE public.base (v int);
    CREATE TABLE public.child (w int) INHERITS (public.base);
    INSERT INTO public.base VALUES (1), (2);
    INSERT INTO public.child VALUES (3, 4);";

fn shop(pg: &Pg, prefix: &str) -> TestDb {
    let db = pg.create_db(prefix);
    pg.psql(&db.name, SHOP);
    db
}

/// User tables of `db`, `schema.table`, sorted.
fn tables(pg: &Pg, db: &str) -> Vec<String> {
    pg.psql(
        db,
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// The rows of `table`, in a stable order, as one string.
fn rows(pg: &Pg, db: &str, table: &str, order: &str) -> String {
    pg.psql(
        db,
        &format!(
            "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY {order}), '')) FROM {table} t"
        ),
    )
}

/// Nothing was created: no SIDE_DB, no temporary copy.
fn nothing_created(pg: &Pg, side: &str) {
    assert!(!pg.db_exists(side), "{side} exists");
    assert!(
        pg.databases_with_prefix(&format!("kaizen_restore_{side}"))
            .is_empty(),
        "a temporary copy of {side} was left"
    );
}

#[test]
fn one_table_comes_back_with_its_objects_and_left_out_keys_are_listed() {
    let pg = Pg::get();
    let db = shop(&pg, "ksr_one");
    let cli = Cli::for_db(&db.name);
    cli.run(&["backup", "b"]).assert_code(0);
    let side = pg.adopt(&unique("ksr_side"));
    let out = cli.run(&["restore", "b", &side.name, "--table", "public.orders"]);
    out.assert_code(0)
        .assert_stderr_contains("public.orders: 200 rows, as recorded")
        .assert_stderr_contains("foreign key orders_customer_id_fkey on public.orders (references public.customers)")
        .assert_stderr_contains("foreign key order_lines_order_id_fkey on public.order_lines (references public.orders)");
    assert_eq!(tables(&pg, &side.name), ["public.orders"]);
    assert_eq!(
        rows(&pg, &side.name, "public.orders", "id"),
        rows(&pg, &db.name, "public.orders", "id")
    );
    // Index, check, primary key, trigger (with its function), policy, RLS, enum type,
    // extension default: all there; the view and the other tables are not.
    let facts = "SELECT (SELECT count(*) FROM pg_indexes WHERE tablename = 'orders') || ',' || \
        (SELECT count(*) FROM pg_constraint WHERE conrelid = 'public.orders'::regclass) || ',' || \
        (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.orders'::regclass) || ',' || \
        (SELECT count(*) FROM pg_policies WHERE tablename = 'orders') || ',' || \
        (SELECT relrowsecurity FROM pg_class WHERE oid = 'public.orders'::regclass) || ',' || \
        (SELECT count(*) FROM pg_views WHERE schemaname = 'public')";
    assert_eq!(pg.psql(&side.name, facts), "2,2,1,1,true,0");
    assert_eq!(
        pg.psql(
            &side.name,
            "SELECT count(*) FROM pg_extension WHERE extname = 'pgcrypto'"
        ),
        "1"
    );
    // The identity continues after the restored rows; the trigger and defaults work.
    assert_eq!(
        pg.psql(
            &side.name,
            "INSERT INTO public.orders (customer_id) VALUES (999) RETURNING id || ',' || note || ',' || state || ',' || length(token)"
        )
        .lines()
        .next()
        .unwrap(),
        "201,touched,new,8"
    );

    // --with-dependencies: the referenced tables too, and the keys kept.
    let side2 = pg.adopt(&unique("ksr_dep"));
    cli.run(&[
        "restore",
        "b",
        &side2.name,
        "--table",
        "public.order_lines",
        "--with-dependencies",
    ])
    .assert_code(0);
    assert_eq!(
        tables(&pg, &side2.name),
        ["public.customers", "public.order_lines", "public.orders"]
    );
    assert_eq!(
        pg.psql(
            &side2.name,
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
        ),
        "2"
    );
    // The serial sequence of customers continues too.
    assert_eq!(
        pg.psql(&side2.name, "SELECT nextval('public.customers_id_seq')"),
        "31"
    );
}

#[test]
fn a_schema_a_partitioned_table_and_odd_names_come_back_exactly() {
    let pg = Pg::get();
    let db = shop(&pg, "ksr_names");
    let cli = Cli::for_db(&db.name);
    cli.run(&["backup", "b"]).assert_code(0);

    // A schema: the partitioned table with every partition, each count proven.
    let side = pg.adopt(&unique("ksr_schema"));
    cli.run(&["restore", "b", &side.name, "--schema", "Sales Data"])
        .assert_code(0)
        .assert_stderr_contains("\"Sales Data\".\"Audit Log 2024 us\": 122 rows, as recorded");
    assert_eq!(
        tables(&pg, &side.name),
        [
            "Sales Data.Audit Log",
            "Sales Data.Audit Log 2024",
            "Sales Data.Audit Log 2024 eu",
            "Sales Data.Audit Log 2024 us",
            "Sales Data.Audit Log 2025",
        ]
    );
    let log = "\"Sales Data\".\"Audit Log\"";
    assert_eq!(
        rows(&pg, &side.name, log, "id"),
        rows(&pg, &db.name, log, "id")
    );
    assert_eq!(
        pg.psql(
            &side.name,
            &format!("INSERT INTO {log} (at, region) VALUES ('2025-06-01', 'eu') RETURNING id")
        )
        .lines()
        .next()
        .unwrap(),
        "501"
    );
    // The partitioned table by name, quoted: the same.
    let side2 = pg.adopt(&unique("ksr_part"));
    cli.run(&[
        "restore",
        "b",
        &side2.name,
        "--table",
        "\"Sales Data\".\"Audit Log\"",
    ])
    .assert_code(0);
    assert_eq!(tables(&pg, &side2.name).len(), 5);

    // Quotes, spaces, unicode and dots: quoted identifiers, and an unquoted spec split at
    // the dot that names a table.
    let side3 = pg.adopt(&unique("ksr_odd"));
    cli.run(&[
        "restore",
        "b",
        &side3.name,
        "--table",
        "\"Ünï code\".\"we\"\"ird name.x\"",
        "--table",
        "Ünï code.a.b",
    ])
    .assert_code(0);
    assert_eq!(
        tables(&pg, &side3.name),
        ["Ünï code.a.b", "Ünï code.we\"ird name.x"]
    );
    // An inheritance child comes with the table it inherits from, each counted as the
    // backup counted it (the parent's own rows).
    let side4 = pg.adopt(&unique("ksr_inh"));
    cli.run(&["restore", "b", &side4.name, "--table", "public.child"])
        .assert_code(0)
        .assert_stderr_contains("public.base: 2 rows, as recorded")
        .assert_stderr_contains("public.child: 1 rows, as recorded");
    assert_eq!(tables(&pg, &side4.name), ["public.base", "public.child"]);
    let weird = "\"Ünï code\".\"we\"\"ird name.x\"";
    assert_eq!(
        rows(&pg, &side3.name, weird, "v"),
        rows(&pg, &db.name, weird, "v")
    );
}

#[test]
fn refusals_create_nothing_and_change_nothing() {
    let pg = Pg::get();
    let db = shop(&pg, "ksr_refuse");
    let cli = Cli::for_db(&db.name).env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "none");
    cli.run(&["backup", "b"]).assert_code(0);

    // An unknown name: the closest ones are listed.
    let side = unique("ksr_unknown");
    cli.run(&["restore", "b", &side, "--table", "public.Orders"])
        .assert_code(1)
        .assert_stderr_contains("table public.Orders is not in the backup; closest: public.orders");
    cli.run(&["restore", "b", &side, "--schema", "sales data"])
        .assert_code(1)
        .assert_stderr_contains("closest: \"Sales Data\"");
    nothing_created(&pg, &side);

    // An existing database is never replaced in this mode.
    let existing = pg.target_with_content("ksr_exists");
    cli.run(&["restore", "b", &existing.name, "--table", "public.orders"])
        .assert_code(1)
        .assert_stderr_contains("never replaces one");
    assert_eq!(pg.psql(&existing.name, "SELECT v FROM keep_me"), "original");
    assert_eq!(tables(&pg, &existing.name), ["public.keep_me"]);

    // Usage: SIDE_DB is required, --with-dependencies needs a selection.
    cli.run(&["restore", "b", "--table", "public.orders"])
        .assert_code(2);
    cli.run(&["restore", "b", &side, "--with-dependencies"])
        .assert_code(2);

    // The manifest's count disagrees with the data: the proof fails, SIDE_DB is gone.
    let manifest = cli.backups().join("b.manifest.json");
    let original = std::fs::read(&manifest).unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&original).unwrap();
    for t in m["tables"].as_array_mut().unwrap() {
        if t["name"] == "orders" {
            t["rows"] = serde_json::json!(199);
        }
    }
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    cli.run(&["restore", "b", &side, "--table", "public.orders"])
        .assert_code(1)
        .assert_stderr_contains("public.orders: 200 rows, the manifest recorded 199");
    nothing_created(&pg, &side);
    std::fs::write(&manifest, &original).unwrap();

    // A corrupted backup: refused by its checksum before anything is created.
    let data = cli.backups().join("b.dump");
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    cli.run(&["restore", "b", &side, "--table", "public.orders"])
        .assert_code(1)
        .assert_stderr_contains("checksum mismatch");
    nothing_created(&pg, &side);
    // Names are checked from the archive's start, before the whole archive is read.
    cli.run(&["restore", "b", &side, "--table", "public.nope"])
        .assert_code(1)
        .assert_stderr_contains("table public.nope is not in the backup");
    nothing_created(&pg, &side);
}

#[test]
fn parallel_and_encrypted_backups_restore_selected_tables_with_jobs() {
    let pg = Pg::get();
    let db = shop(&pg, "ksr_par");
    let base = Cli::new();
    let key = base.path().join("k");
    let rcpt = base.run(&["keygen", "--output", key.to_str().unwrap()]);
    rcpt.assert_code(0);
    let cli = Cli::for_db(&db.name)
        .env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "zstd")
        .env("KAIZEN_BACKUP_ENCRYPTION__TYPE", "age")
        .env("KAIZEN_BACKUP_ENCRYPTION__RECIPIENTS", rcpt.stdout.trim())
        .env("KAIZEN_BACKUP_AGE_IDENTITY_FILE", key.to_str().unwrap());
    // Encrypted custom format, restored with --jobs (pg_restore seeks in the local copy).
    cli.run(&["backup", "enc"]).assert_code(0);
    let side = pg.adopt(&unique("ksr_enc"));
    cli.run(&[
        "restore",
        "enc",
        &side.name,
        "--table",
        "public.orders",
        "--schema",
        "Sales Data",
        "--jobs",
        "2",
    ])
    .assert_code(0);
    assert_eq!(tables(&pg, &side.name).len(), 6);
    assert_eq!(
        rows(&pg, &side.name, "public.orders", "id"),
        rows(&pg, &db.name, "public.orders", "id")
    );
    // An encrypted parallel (directory-format) backup.
    cli.run(&["backup", "par", "--jobs", "2"]).assert_code(0);
    let side2 = pg.adopt(&unique("ksr_dir"));
    cli.run(&[
        "restore",
        "par",
        &side2.name,
        "--table",
        "public.customers",
        "--jobs",
        "2",
    ])
    .assert_code(0)
    .assert_stderr_contains("public.customers: 30 rows, as recorded");
    assert_eq!(tables(&pg, &side2.name), ["public.customers"]);
    assert_eq!(
        rows(&pg, &side2.name, "public.customers", "id"),
        rows(&pg, &db.name, "public.customers", "id")
    );
}

#[test]
fn a_table_comes_back_from_a_backup_in_s3() {
    let pg = Pg::get();
    let s3 = S3::get();
    let db = shop(&pg, "ksr_s3");
    let url = s3.url(&unique("sr"));
    let cli = s3.cli(&db.name);
    cli.run(&["--storage", &url, "backup", "b"]).assert_code(0);
    let side = pg.adopt(&unique("ksr_s3side"));
    cli.run(&[
        "--storage",
        &url,
        "restore",
        "b",
        &side.name,
        "--table",
        "public.order_lines",
    ])
    .assert_code(0)
    .assert_stderr_contains("public.order_lines: 300 rows, as recorded");
    assert_eq!(tables(&pg, &side.name), ["public.order_lines"]);
    assert_eq!(
        rows(&pg, &side.name, "public.order_lines", "order_id, qty"),
        rows(&pg, &db.name, "public.order_lines", "order_id, qty")
    );
}
