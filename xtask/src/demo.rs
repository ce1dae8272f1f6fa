//! `cargo xtask demo`: the main job end to end on an embedded sample database.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::pg::Cluster;
use crate::{build_binary, root, target_dir};

/// Tables whose content the demo compares after the restore.
const COMPARE: &str = "SELECT string_agg(format('%s.%s=%s', table_schema, table_name, \
    (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', table_schema, table_name), false, true, '')))[1]::text), \
    ', ' ORDER BY table_schema, table_name) \
    FROM information_schema.tables WHERE table_type = 'BASE TABLE' AND table_schema IN ('public', 'trust')";

/// One digest over every table's ordered content.
const DIGEST: &str = "SELECT md5(string_agg(table_schema || '.' || table_name || ':' || \
    (xpath('/row/h/text()', query_to_xml(format('SELECT md5(coalesce(string_agg(t::text, ''|'' ORDER BY t::text), '''')) AS h FROM %I.%I t', \
    table_schema, table_name), false, true, '')))[1]::text, ',' ORDER BY table_schema, table_name)) \
    FROM information_schema.tables WHERE table_type = 'BASE TABLE' AND table_schema IN ('public', 'trust')";

pub fn run() -> Result<()> {
    let demo = target_dir().join("demo");
    let backups = demo.join("backups");
    let _ = std::fs::remove_dir_all(&backups);
    std::fs::create_dir_all(&backups)?;
    println!("==> Building kaizen-backup");
    let bin = build_binary(false, &[])?;
    println!("==> Starting a throwaway PostgreSQL cluster");
    let pg = Cluster::start(&demo.join(format!("pg-{}", std::process::id())))?;
    println!(
        "    PostgreSQL ({}) on 127.0.0.1:{}",
        pg.bin.display(),
        pg.port
    );
    pg.psql("postgres", "CREATE DATABASE kaizen_studio")?;
    println!(
        "==> Loading the Kaizen Studio sample database (organizations, users, workspaces, agents, pipelines, deployments, audit_logs, billing_records, trust/EATP)"
    );
    pg.psql_file(
        "kaizen_studio",
        &root().join("tests/fixtures/kaizen_sample.sql"),
    )?;
    let kb = |args: &[&str]| -> Result<String> {
        println!("\n$ kaizen-backup {}", args.join(" "));
        let out = Command::new(&bin)
            .args(args)
            .current_dir(&demo)
            .env("POSTGRES_HOST", "127.0.0.1")
            .env("POSTGRES_PORT", pg.port.to_string())
            .env("POSTGRES_USER", "postgres")
            .env("POSTGRES_PASSWORD", &pg.password)
            .env("POSTGRES_DB", "kaizen_studio")
            .env("BACKUP_DIR", &backups)
            .output()
            .context("running kaizen-backup")?;
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        print!("{stdout}");
        if !out.status.success() {
            bail!("kaizen-backup {} failed ({})", args.join(" "), out.status);
        }
        Ok(stdout)
    };
    kb(&["backup", "demo_backup"])?;
    kb(&["list"])?;
    kb(&["restore", "latest", "kaizen_studio_restored"])?;

    println!("\n==> Comparing the source and the restored database");
    let src_counts = pg.psql("kaizen_studio", COMPARE)?;
    let dst_counts = pg.psql("kaizen_studio_restored", COMPARE)?;
    let src_digest = pg.psql("kaizen_studio", DIGEST)?;
    let dst_digest = pg.psql("kaizen_studio_restored", DIGEST)?;
    println!("    rows: {src_counts}");
    if src_counts != dst_counts || src_digest != dst_digest {
        bail!(
            "the restored database differs from the source:\n  source:   {src_counts} ({src_digest})\n  restored: {dst_counts} ({dst_digest})"
        );
    }
    println!("    every table has the same rows and content (digest {src_digest})");

    println!(
        "\n==> Bringing one table back: a bad script emptied the pipeline definitions of workspace 7; they are copied back from a side database"
    );
    pg.psql(
        "kaizen_studio",
        "UPDATE pipelines SET definition = '{}' WHERE workspace_id = 7",
    )?;
    kb(&["contents", "latest"])?;
    kb(&[
        "restore",
        "latest",
        "kaizen_studio_pipelines",
        "--table",
        "public.pipelines",
    ])?;
    println!(
        "\n$ psql -d kaizen_studio  # UPDATE pipelines p SET definition = t.definition FROM dblink('dbname=kaizen_studio_pipelines', 'SELECT id, definition FROM pipelines WHERE workspace_id = 7') …"
    );
    pg.psql(
        "kaizen_studio",
        &format!(
            "CREATE EXTENSION IF NOT EXISTS dblink; \
             UPDATE pipelines p SET definition = t.definition \
               FROM dblink('host=127.0.0.1 port={} user=postgres password={} dbname=kaizen_studio_pipelines', \
                           'SELECT id, definition FROM pipelines WHERE workspace_id = 7') AS t(id int, definition jsonb) \
              WHERE p.id = t.id",
            pg.port, pg.password
        ),
    )?;
    let digest = pg.psql("kaizen_studio", DIGEST)?;
    if digest != src_digest {
        bail!("kaizen_studio differs from the backup after copying the rows back");
    }
    println!("    workspace 7 has its pipeline definitions again (digest {digest})");
    println!("\nDone. Backups are in {}", backups.display());
    println!("The cluster is stopped and removed; rerun `cargo xtask demo` to see it again.");
    drop(pg);
    Ok(())
}
