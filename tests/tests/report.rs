//! Issue 21: `report --html FILE`, one self-contained page of what the storage holds.
//! Rendered for real storages (logical and physical backups with their WAL, a failed
//! verification, a pinned backup, an incomplete leftover, a drill; a database named
//! `<script>…`; nothing at all; thousands of backups) and opened in headless Chromium:
//! its DOM lists every backup and names the failed check, each chart has one point per
//! backup, nothing is logged to the console, and a screenshot is taken.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kaizen_backup_e2e::pitr_site::Site;
use kaizen_backup_e2e::{Cli, Output, Pg, unique};

/// The browser `cargo xtask test` provides, or None (with the reason on stderr).
fn chromium() -> Option<PathBuf> {
    match std::env::var_os("KAIZEN_TEST_CHROMIUM") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!(
                "SKIPPED: the browser checks of this test: KAIZEN_TEST_CHROMIUM is not set \
                 (`cargo xtask test` installs Debian's chromium when it can; it could not here)"
            );
            None
        }
    }
}

/// Run headless Chromium on `page` with `args`, offline (every host name fails to resolve).
fn browse(bin: &Path, page: &Path, args: &[&str]) -> Output {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .arg("180")
        .arg(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-extensions",
            "--hide-scrollbars",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// The page's DOM after loading, with nothing on the console; a phone-width screenshot
/// that is a real picture.
fn open_in_browser(page: &Path) -> Option<String> {
    let bin = chromium()?;
    let dom = browse(&bin, page, &["--dump-dom"]);
    assert_eq!(dom.code, 0, "chromium --dump-dom failed:\n{}", dom.stderr);
    for bad in [
        "Uncaught",
        "CONSOLE",
        "console",
        "net::ERR",
        "Failed to load",
    ] {
        assert!(
            !dom.stderr.contains(bad),
            "the browser logged {bad:?}:\n{}",
            dom.stderr
        );
    }
    assert!(dom.stdout.contains("</html>"), "no DOM: {}", dom.stdout);

    let shot = page.with_extension("png");
    let out = browse(
        &bin,
        page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=412,2000",
        ],
    );
    assert_eq!(out.code, 0, "chromium --screenshot failed:\n{}", out.stderr);
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    assert_eq!(width, 412, "the screenshot is not at phone width");
    assert!(
        png.len() > 15_000,
        "a blank screenshot? {} bytes",
        png.len()
    );
    Some(dom.stdout)
}

fn report(run: impl Fn(&[&str]) -> Output, file: &Path) -> String {
    let path = file.display().to_string();
    run(&["report", "--html", &path])
        .assert_code(0)
        .assert_stderr_contains("Report written to");
    std::fs::read_to_string(file).unwrap()
}

/// The part of `doc` from the series section of `database` (`logical`/`physical`) to its end.
fn series<'a>(doc: &'a str, database: &str, kind: &str) -> &'a str {
    let head =
        format!("<section class=\"series\" data-database=\"{database}\" data-kind=\"{kind}\"");
    let start = doc
        .find(&head)
        .unwrap_or_else(|| panic!("no {kind} series of {database}"));
    let rest = &doc[start..];
    &rest[..rest.find("</section>").unwrap()]
}

/// How many points the `chart` (`size`, `duration`) of a series draws, and what it says.
fn chart_points(series: &str, chart: &str) -> (usize, String) {
    let start = series
        .find(&format!("<svg class=\"chart {chart}\""))
        .unwrap_or_else(|| panic!("no {chart} chart"));
    let svg = &series[start..];
    let svg = &svg[..svg.find("</svg>").unwrap()];
    let declared = svg
        .split("data-points=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_default()
        .to_string();
    (svg.matches("<circle class=\"pt").count(), declared)
}

/// The table row of backup `name`.
fn row<'a>(doc: &'a str, name: &str) -> &'a str {
    let at = doc
        .find(&format!("data-name=\"{name}\"><td>"))
        .unwrap_or_else(|| panic!("backup {name} is not listed"));
    let rest = &doc[at..];
    &rest[..rest.find("</tr>").unwrap()]
}

/// Neither markup that runs nor anything fetched from elsewhere.
fn self_contained(html: &str) {
    let lower = html.to_lowercase();
    for bad in [
        "<script", "<link", "<img", "<iframe", "src=", "href=", "@import",
    ] {
        assert!(!lower.contains(bad), "the page has {bad:?}");
    }
    assert!(html.contains("<style>"), "no inline CSS");
}

#[test]
fn report_of_logical_and_physical_backups_with_a_failure_a_pin_a_leftover_and_a_drill() {
    let site = Site::new("\n[retention]\nkeep_last = 1\n");
    let tmp = site.root.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    kaizen_backup_e2e::cluster::give_to_postgres(&tmp);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&site.config)
            .unwrap();
        writeln!(f, "\n[restore]\ntemp_dir = \"{}\"", tmp.display()).unwrap();
    }
    site.run(&["backup", "--physical", "base1", "--no-prune"])
        .assert_code(0);
    site.mark(1);
    site.run(&["backup", "good", "--no-prune"]).assert_code(0);
    site.run(&["verify", "good"]).assert_code(0);
    site.run(&["pin", "good"]).assert_code(0);
    site.cluster.psql(
        "postgres",
        "create table filler as select g, md5(g::text) from generate_series(1, 50000) g",
    );
    site.run(&["backup", "bad", "--no-prune"]).assert_code(0);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(site.archive.join("bad.manifest.json")).unwrap())
            .unwrap();
    let data = site.archive.join(m["object"].as_str().unwrap());
    let bytes = std::fs::read(&data).unwrap();
    std::fs::write(&data, &bytes[..bytes.len() / 2]).unwrap();
    site.run(&["verify", "bad"])
        .assert_code(1)
        .assert_stderr_contains("check `file`");
    // A 40% drop: most of the data is gone in the next backup.
    site.cluster.psql("postgres", "drop table filler");
    site.run(&["backup", "small", "--no-prune"]).assert_code(0);
    // After the verifications: their temporary databases are gone at this point (a drill to
    // a moment inside a test restore would find one half made).
    let quiet = site.mark(2);
    site.archive_now();
    site.run(&["backup", "--physical", "base2", "--no-prune"])
        .assert_code(0);
    site.mark(3);
    site.archive_now();
    site.run(&["drill", "--to-time", &format!("{quiet}+00")])
        .assert_code(0);
    std::fs::write(site.archive.join("killed_run.dump"), b"half a dump").unwrap();

    let file = site.root.path().join("report.html");
    let html = report(|a| site.run(a), &file);
    self_contained(&html);
    assert!(html.contains("<svg"), "no inline SVG");

    for doc in std::iter::once(html.clone()).chain(open_in_browser(&file)) {
        // Every backup is listed, the failed one with its check, the pinned one marked,
        // with what prune would do.
        for name in ["base1", "base2", "good", "bad", "small"] {
            row(&doc, name);
        }
        let bad = row(&doc, "bad");
        assert!(
            bad.contains("FAILED") && bad.contains("<code class=\"check\">file</code>"),
            "{bad}"
        );
        assert!(bad.contains("would be removed"), "{bad}");
        let good = row(&doc, "good");
        assert!(
            good.contains("⚑ pinned") && good.contains("keep: "),
            "{good}"
        );
        assert!(good.contains("✔ verified"), "{good}");
        assert!(row(&doc, "small").contains("keep: newest backup"));
        assert!(row(&doc, "base1").contains("would be removed"));
        assert!(
            doc.contains("data-name=\"killed_run.dump\""),
            "leftover missing"
        );
        assert!(doc.contains("◐ incomplete"));
        // One point per backup in each chart, and the shrunken backup stands out.
        let logical = series(&doc, "postgres", "logical");
        for chart in ["size", "duration"] {
            assert_eq!(
                chart_points(logical, chart),
                (3, "3".to_string()),
                "{chart}"
            );
        }
        assert_eq!(logical.matches("class=\"vmark").count(), 3);
        assert!(logical.contains("<circle class=\"pt drop\" data-name=\"small\""));
        assert!(logical.contains("check <code class=\"check\">file</code> FAILED"));
        let physical = series(&doc, "postgres", "physical");
        assert_eq!(chart_points(physical, "size"), (2, "2".to_string()));
        // The recovery window on its timeline, the WAL archive, and the drill with its RTO.
        assert!(doc.contains("<svg class=\"chart timeline\""));
        assert!(
            doc.contains("class=\"stretch\">Recoverable from"),
            "no window"
        );
        assert!(doc.contains("class=\"window\""));
        assert!(doc.contains("last archived <code>0000000"), "no WAL line");
        let drill = &doc[doc.find("<tr class=\"drill\"").expect("no drill row")..];
        let drill = &drill[..drill.find("</tr>").unwrap()];
        assert!(
            drill.contains("✔ passed") && drill.contains("class=\"num rto\">"),
            "{drill}"
        );
        // Ages in the reader's terms beside UTC dates.
        assert!(
            doc.contains(" UTC</time> <span class=\"ago\">("),
            "no UTC date with its age"
        );
    }

    // `status --json` reads the same overview: its newest backup is the page's newest.
    let st = site.run(&["status", "--json"]);
    st.assert_code(0);
    assert_eq!(st.json()[0]["newest"]["name"], "small");
    assert_eq!(st.json()[0]["incomplete"], 1);
}

/// Drops a database whose name needs quoting.
struct QuotedDb(String);

impl Drop for QuotedDb {
    fn drop(&mut self) {
        let _ = Pg::get().try_psql(
            "postgres",
            &format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.0.replace('"', "\"\"")
            ),
        );
    }
}

#[test]
fn a_database_named_like_markup_is_shown_as_text_and_a_single_backup_is_one_point() {
    let pg = Pg::get();
    let db = QuotedDb(format!("<script>alert('{}')</script>", unique("x")));
    pg.psql("postgres", &format!("CREATE DATABASE \"{}\"", db.0));
    pg.psql(&db.0, "create table t as select generate_series(1, 100) i");
    let cli = Cli::for_db(&db.0);
    cli.run(&["backup", "only", "--verify"]).assert_code(0);
    let file = cli.path().join("out/report.html");
    std::fs::create_dir(cli.path().join("out")).unwrap();
    let html = report(|a| cli.run(a), &file);
    self_contained(&html);
    let escaped =
        db.0.replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('\'', "&#39;");
    assert!(html.contains(&escaped), "the name is not shown escaped");

    let Some(dom) = open_in_browser(&file) else {
        return;
    };
    // In the DOM the name is text: no script element, the text as the serializer writes it.
    assert!(!dom.to_lowercase().contains("<script"), "a script element");
    let text = db.0.replace('<', "&lt;").replace('>', "&gt;");
    assert!(dom.contains(&text), "the name is not text in the DOM");
    let attr = db.0.replace('<', "&lt;").replace('>', "&gt;");
    let s = series(&dom, &attr, "logical");
    assert_eq!(chart_points(s, "size"), (1, "1".to_string()));
    assert_eq!(s.matches("<tr class=\"backup").count(), 1);
    assert!(row(&dom, "only").contains("✔ verified"));
}

#[test]
fn an_empty_storage_gives_a_page_that_says_so() {
    let cli = Cli::new();
    let file = cli.path().join("empty.html");
    let html = report(|a| cli.run(a), &file);
    self_contained(&html);
    assert!(html.contains("No backups."));
    assert!(html.contains("– no backup"));
    if let Some(dom) = open_in_browser(&file) {
        assert!(!dom.contains("<tr class=\"backup"));
    }
    // Nothing but the page is left beside it.
    let names: Vec<String> = std::fs::read_dir(cli.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("report") || n.ends_with(".tmp"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn report_needs_a_file_and_a_writable_place() {
    let cli = Cli::new();
    cli.run(&["report"]).assert_code(2);
    let missing = cli.path().join("no/such/dir/r.html");
    cli.run(&["report", "--html", missing.to_str().unwrap()])
        .assert_code(1)
        .assert_stderr_contains("cannot create a temporary file for the report");
    assert!(!cli.path().join("no").exists());
}

#[test]
fn thousands_of_backups_keep_the_page_small() {
    let cli = Cli::new();
    let dir = cli.backups();
    std::fs::create_dir_all(&dir).unwrap();
    let n = 3000;
    let start = chrono::Utc::now() - chrono::Duration::hours(8 * n as i64);
    for i in 0..n {
        let name = format!("b{i:05}");
        let finished = start + chrono::Duration::hours(8 * i as i64);
        let manifest = serde_json::json!({
            "format_version": 1,
            "name": name,
            "object": format!("{name}.dump"),
            "database": "kaizen_studio",
            "server_version": "17.0",
            "pg_dump_version": "pg_dump (PostgreSQL) 17.0",
            "format": "custom",
            "compression": "gzip",
            "compression_level": 6,
            "encryption": "none",
            "started_at": finished - chrono::Duration::seconds(60 + (i % 30) as i64),
            "finished_at": finished,
            "size_bytes": 50_000_000 + (i as u64 % 97) * 100_000,
            "sha256": "0".repeat(64),
            "tool_version": "0.1.0",
            "pinned": i % 1000 == 0,
            "database_size_bytes": 8192,
            "tables": [],
            "counts": {"tables": 0, "sequences": 0, "indexes": 0, "constraints": 0},
            "kind": "backup",
        });
        std::fs::write(dir.join(format!("{name}.dump")), b"data").unwrap();
        std::fs::write(
            dir.join(format!("{name}.manifest.json")),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        if i % 100 == 7 {
            let record = serde_json::json!({
                "format_version": 1,
                "name": name,
                "started_at": finished,
                "finished_at": finished,
                "passed": i % 200 != 7,
                "quick": false,
                "checks": [{"name": "row_counts", "passed": i % 200 != 7, "detail": "public.users: 1 rows, manifest 2", "duration_seconds": 1.0}],
                "tool_version": "0.1.0",
            });
            std::fs::write(
                dir.join(format!("{name}.verify.json")),
                serde_json::to_vec(&record).unwrap(),
            )
            .unwrap();
        }
    }
    let file = cli.path().join("big.html");
    let html = report(|a| cli.run(a), &file);
    self_contained(&html);
    assert!(html.len() < 200_000, "{} bytes for {n} backups", html.len());
    let s = series(&html, "kaizen_studio", "logical");
    assert_eq!(chart_points(s, "size"), (120, "120".to_string()));
    assert!(s.contains("are aggregated"));
    assert!(row(&html, "b02999").contains("keep: no retention rule"));
    // Older pinned and failed backups are still listed.
    row(&html, "b01000");
    assert!(row(&html, "b00007").contains("FAILED"));
    assert!(s.contains("older backup(s) not listed"));
    if let Some(dom) = open_in_browser(&file) {
        assert_eq!(
            chart_points(series(&dom, "kaizen_studio", "logical"), "size").0,
            120
        );
    }
}
