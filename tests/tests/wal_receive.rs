//! Issue 17: WAL streaming. A cluster of the test's own does not archive; `kaizen-backup
//! wal-receive` streams its WAL through a replication slot into the same archive layout
//! as `wal-push`. Restores are started for real: the markers are exactly those committed
//! up to the target, including targets inside the partial segment (the segment still
//! being written, stored every flush interval), after a SIGKILL of the receiver, after a
//! SIGTERM (which stores the partial segment and exits 0), and after the server died a
//! flush interval after the last commit (the RPO).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kaizen_backup_e2e::pitr_site::{Site, names, upto};
use kaizen_backup_e2e::receiver::Receiver;
use kaizen_backup_e2e::{Recorder, wait_until};

/// Archived object names of the site's archive (`NAME-SHA…`).
fn archived(site: &Site) -> Vec<String> {
    // Not the local store's unfinished writes (`.partial.KEY.…`).
    names(&site.archive.join("wal"))
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect()
}

/// The archived complete segments, by name.
fn segments(site: &Site) -> Vec<String> {
    archived(site)
        .into_iter()
        .filter(|n| n.len() > 24 && n.as_bytes()[24] == b'-')
        .map(|n| n[..24].to_string())
        .collect()
}

fn partials(site: &Site) -> Vec<String> {
    archived(site)
        .into_iter()
        .filter_map(|n| n.split_once(".partial-").map(|(s, _)| s.to_string()))
        .collect()
}

fn current_segment(site: &Site) -> String {
    site.cluster
        .psql("postgres", "select pg_walfile_name(pg_current_wal_lsn())")
}

#[test]
fn streamed_wal_restores_exactly_to_a_time_and_inside_the_partial_segment() {
    let site = Site::streaming("", "");
    let rx = Receiver::start(&site, 1, &[]);
    rx.wait_streaming(&site);
    site.run(&["backup", "--physical", "base"]).assert_code(0);
    let mut times = vec![String::new()];
    for i in 1..=20 {
        times.push(site.mark(i));
        if i == 10 {
            site.received_now();
        }
    }
    // 11 to 20 are only in the segment being written: stored as its partial segment.
    let seg = current_segment(&site);
    rx.wait_archived(&site);
    assert!(partials(&site).contains(&seg), "{:?}", archived(&site));
    assert!(!segments(&site).contains(&seg), "{:?}", archived(&site));

    let between = |i: usize| format!("{}+00", times[i + 1]);
    let (t5, t15) = (between(5), between(15));
    let cases: Vec<(&str, Vec<&str>, Vec<i32>)> = vec![
        ("to_time", vec!["--to-time", &t5], upto(5)),
        ("in_partial", vec!["--to-time", &t15], upto(15)),
        ("latest", vec![], upto(20)),
    ];
    for (dir, target, want) in cases {
        let (_c, got) = site.restore_markers(dir, &target);
        assert_eq!(got, want, "{dir}: markers after recovery");
    }
    // wal-fetch serves the partial segment under the segment's name, full-sized.
    let dest = site.root.path().join("fetched");
    site.run(&["wal-fetch", &seg, dest.to_str().unwrap()])
        .assert_code(0);
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), 16 << 20);
    // A target past the partial segment's last commit is refused before anything is written.
    let late = (chrono::Utc::now() + chrono::Duration::minutes(10))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    let pgdata = site.new_pgdata("late");
    let out = site.run(&[
        "restore",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--to-time",
        &late,
    ]);
    out.assert_code(1);
    assert!(out.all().contains("partial segment"), "{}", out.all());
    assert!(!pgdata.exists());
}

#[test]
fn rpo_a_commit_older_than_the_flush_interval_survives_the_server() {
    let site = Site::streaming("flush_interval = \"2s\"\n", "");
    let rx = Receiver::start(&site, 1, &[]);
    rx.wait_streaming(&site);
    site.run(&["backup", "--physical", "base"]).assert_code(0);
    site.mark(1);
    site.received_now();
    site.mark(2);
    let committed = std::time::Instant::now();
    // The promise under test: a commit reaches the archive without any segment switch,
    // within flush_interval plus the upload. Without partial segments the archive would
    // not reach it at all on this quiet server (wait_archived would time out). The bound
    // is loose: CI runs this beside every other test on two cores.
    rx.wait_archived(&site);
    let rpo = committed.elapsed();
    assert!(
        rpo <= Duration::from_secs(30),
        "the commit took {rpo:?} to reach the archive (flush_interval 2 s)"
    );
    let mut site = site;
    site.cluster.stop("immediate");
    let lost_after = committed.elapsed();
    std::fs::remove_dir_all(&site.cluster.data).unwrap();
    assert!(
        partials(&site).iter().any(|p| p.len() == 24),
        "{:?}",
        archived(&site)
    );
    let (_c, got) = site.restore_markers("after_crash", &[]);
    assert_eq!(
        got,
        upto(2),
        "committed {lost_after:?} before the server died"
    );
    drop(rx);
}

#[test]
fn a_receiver_killed_with_sigkill_resumes_from_its_slot_with_no_gap() {
    let site = Site::streaming("", "");
    let mut rx = Receiver::start(&site, 1, &[]);
    rx.wait_streaming(&site);
    site.run(&["backup", "--physical", "base"]).assert_code(0);
    for i in 1..=5 {
        site.mark(i);
    }
    site.received_now();
    for i in 6..=8 {
        site.mark(i);
    }
    site.wait_received_locally(&rx.slot);
    rx.kill9();
    // While it is down the server goes on: a segment completes, more commits follow.
    site.mark(9);
    site.cluster.psql("postgres", "select pg_switch_wal()");
    for i in 10..=12 {
        site.mark(i);
    }
    let rx = Receiver::start(&site, 2, &[]);
    rx.wait_streaming(&site);
    site.received_now();
    rx.wait_archived(&site);
    let segs = segments(&site);
    let nums: Vec<u64> = segs
        .iter()
        .map(|s| u64::from_str_radix(&s[16..], 16).unwrap())
        .collect();
    assert!(
        nums.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive segments: {segs:?}"
    );
    assert_eq!(rx.metric("kaizen_backup_wal_receive_gaps_total"), Some(0.0));
    assert!(!rx.log().contains("missing"), "{}", rx.log());
    let (_c, got) = site.restore_markers("after_kill", &[]);
    assert_eq!(got, upto(12));
}

#[test]
fn a_primary_restarted_under_the_receiver_loses_nothing_and_leaves_no_gap() {
    let site = Site::streaming("", "");
    let rx = Receiver::start(&site, 1, &[]);
    rx.wait_streaming(&site);
    let out = site.run(&["backup", "--physical", "base"]);
    out.assert_code(0);
    // archive_mode is off, but the receiver streams: nothing to warn about.
    assert!(!out.all().contains("archive_mode is off"), "{}", out.all());
    for i in 1..=3 {
        site.mark(i);
    }
    site.wait_received_locally(&rx.slot);
    let mut site = site;
    // A crash: pg_receivewal loses its connection, the receiver starts it again once
    // the server accepts connections, and it continues from its slot.
    site.cluster.stop("immediate");
    site.cluster.start();
    for i in 4..=6 {
        site.mark(i);
    }
    rx.wait_streaming(&site);
    site.received_now();
    rx.wait_archived(&site);
    assert_eq!(rx.metric("kaizen_backup_wal_receive_gaps_total"), Some(0.0));
    let (_c, got) = site.restore_markers("after_restart", &[]);
    assert_eq!(got, upto(6));
}

/// A failover: the primary dies, its streaming standby is promoted (timeline 2) and takes
/// over the primary's address. The receiver, restarting pg_receivewal against that
/// address, creates its slot there, finishes timeline 1 up to the switch, stores the
/// timeline history and goes on along timeline 2; a restore follows it.
#[test]
fn a_promoted_standby_is_followed_onto_its_new_timeline() {
    use kaizen_backup_e2e::cluster::{Cluster, as_postgres};
    let site = Site::streaming("", "hot_standby = on\n");
    let rx = Receiver::start(&site, 1, &[]);
    rx.wait_streaming(&site);
    site.run(&["backup", "--physical", "base"]).assert_code(0);
    for i in 1..=3 {
        site.mark(i);
    }
    site.received_now();
    // The standby, streaming from the primary.
    let standby_data = site.root.path().join("standby");
    let out = as_postgres(&site.cluster.bin.join("pg_basebackup"))
        .args(["-h", "127.0.0.1", "-p", &site.cluster.port.to_string()])
        .args(["-U", "postgres", "-c", "fast", "-X", "stream", "-R", "-D"])
        .arg(&standby_data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut standby = Cluster::adopt(&standby_data, site.root.path());
    standby.start();
    for i in 4..=5 {
        site.mark(i);
    }
    site.wait_received_locally(&rx.slot);
    let caught_up = wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
        standby
            .try_psql("postgres", "select count(*) from marker")
            .is_ok_and(|n| n == "5")
    });
    assert!(
        caught_up,
        "the standby did not replay marker 5:\n{}",
        standby.log()
    );

    // Failover.
    let mut site = site;
    let address = site.cluster.port;
    site.cluster.stop("immediate");
    standby.psql("postgres", "select pg_promote()");
    standby.wait_promoted();
    standby.stop("fast");
    standby.port = address;
    standby.start();
    let old = std::mem::replace(&mut site.cluster, standby);
    drop(old);

    for i in 6..=8 {
        site.mark(i);
    }
    rx.wait_streaming(&site);
    site.received_now();
    rx.wait_archived(&site);
    let files = archived(&site);
    assert!(
        files.iter().any(|n| n.starts_with("00000002.history")),
        "{files:?}"
    );
    assert!(
        segments(&site).iter().any(|s| s.starts_with("00000002")),
        "{files:?}"
    );
    assert_eq!(
        rx.metric("kaizen_backup_wal_receive_gaps_total"),
        Some(0.0),
        "{}",
        rx.log()
    );
    let (_c, got) = site.restore_markers("after_failover", &[]);
    assert_eq!(got, upto(8));
}

#[test]
fn sigterm_stores_the_partial_segment_and_exits_0() {
    // An hour between partial stores: only the SIGTERM can store marker 3.
    let site = Site::streaming("flush_interval = \"1h\"\n", "");
    let mut rx = Receiver::start(&site, 1, &[]);
    rx.wait_streaming(&site);
    site.run(&["backup", "--physical", "base"]).assert_code(0);
    for i in 1..=3 {
        site.mark(i);
    }
    site.wait_received_locally(&rx.slot);
    let seg = current_segment(&site);
    assert!(!partials(&site).contains(&seg), "{:?}", archived(&site));
    let code = rx.term();
    assert_eq!(code, 0, "{}", rx.log());
    assert!(
        rx.log().contains("everything received is stored"),
        "{}",
        rx.log()
    );
    assert!(partials(&site).contains(&seg), "{:?}", archived(&site));
    let (_c, got) = site.restore_markers("after_term", &[]);
    assert_eq!(got, upto(3));
    // No receiver and no archive_command: a base backup warns that it reaches only its end.
    let gone = wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
        site.cluster
            .try_psql("postgres", "select count(*) from pg_stat_replication")
            .is_ok_and(|n| n == "0")
    });
    assert!(gone, "the receiver's connection is still there");
    let out = site.run(&["backup", "--physical", "unprotected"]);
    out.assert_code(0);
    assert!(
        out.all()
            .contains("archive_mode is off and no kaizen-backup wal-receive streams"),
        "{}",
        out.all()
    );
}

#[test]
fn healthz_and_metrics_answer() {
    let site = Site::streaming("", "");
    let rx = Receiver::start(&site, 1, &[]);
    let healthy = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        rx.get("/healthz").is_some_and(|(code, _)| code == 200)
    });
    assert!(healthy, "{:?}\n{}", rx.get("/healthz"), rx.log());
    site.mark(1);
    rx.wait_archived(&site);
    let (code, body) = rx.get("/metrics").unwrap();
    assert_eq!(code, 200);
    for name in [
        "kaizen_backup_wal_receive_streaming{database=\"postgres\",slot=\"kaizen_backup\"} 1",
        "kaizen_backup_wal_receive_lag_bytes{",
        "kaizen_backup_wal_receive_lag_seconds{",
        "kaizen_backup_wal_receive_last_upload_timestamp_seconds{",
        "kaizen_backup_wal_receive_errors_total{",
        "# TYPE kaizen_backup_wal_receive_errors_total counter",
    ] {
        assert!(body.contains(name), "{name} missing:\n{body}");
    }
    site.received_now();
    let stored = wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
        rx.metric("kaizen_backup_wal_receive_last_segment_timestamp_seconds")
            .is_some()
    });
    assert!(stored, "{}", rx.get("/metrics").unwrap().1);
    assert_eq!(rx.get("/nothing").map(|(c, _)| c), Some(404));
}

#[test]
fn a_lost_slot_is_a_gap_reported_by_log_metric_and_event_and_ends_the_window() {
    let hook = Recorder::start();
    let site = Site::streaming(
        &format!(
            "\n[[notify]]\ntype = \"webhook\"\nurl = \"{}/h\"\non = [\"wal.gap\"]\n",
            hook.url
        ),
        "",
    );
    let mut rx = Receiver::start(&site, 1, &[]);
    rx.wait_streaming(&site);
    site.run(&["backup", "--physical", "base"]).assert_code(0);
    site.mark(1);
    site.received_now();
    rx.kill9();
    // The server removes WAL the slot still needed: the slot is invalidated.
    site.cluster.psql(
        "postgres",
        "alter system set max_slot_wal_keep_size = '1MB'",
    );
    site.cluster.psql("postgres", "select pg_reload_conf()");
    let lost = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        site.cluster.psql(
            "postgres",
            "insert into marker (i) select coalesce(max(i), 0) + 1 from marker; select pg_switch_wal(); checkpoint;",
        );
        site.cluster.psql(
            "postgres",
            "select wal_status from pg_replication_slots where slot_name = 'kaizen_backup'",
        ) == "lost"
    });
    assert!(
        lost,
        "the slot was never invalidated:\n{}",
        site.cluster.log()
    );
    let rx = Receiver::start(&site, 2, &[]);
    rx.wait_streaming(&site);
    site.received_now();
    let announced = wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
        hook.requests()
            .iter()
            .any(|r| r.json()["kind"] == "wal.gap")
    });
    assert!(announced, "no wal.gap event; log:\n{}", rx.log());
    let ev = hook
        .requests()
        .into_iter()
        .find(|r| r.json()["kind"] == "wal.gap")
        .unwrap()
        .json();
    assert!(
        ev["error"]
            .as_str()
            .unwrap()
            .contains("missing from the archive"),
        "{ev}"
    );
    assert!(rx.log().contains("invalidated"), "{}", rx.log());
    assert!(
        rx.metric("kaizen_backup_wal_receive_gaps_total")
            .is_some_and(|g| g >= 1.0)
    );
    // The window ends at the gap: a restore to the end of the archive is refused.
    let pgdata = site.new_pgdata("past_gap");
    let out = site.run(&["restore", "--pgdata", pgdata.to_str().unwrap()]);
    out.assert_code(1);
    assert!(out.all().contains("gap"), "{}", out.all());
    assert!(!pgdata.exists());
    // status claims no window past the gap either: it ends before the first missing
    // segment (which it names), earlier than the last archived WAL.
    let out = site.run(&["status", "--json"]);
    let row = &out.json()[0];
    let window = &row["recovery_window"];
    let missing = window["ends_before"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        ev["error"].as_str().unwrap().contains(&missing) && !missing.is_empty(),
        "{window} / {ev}"
    );
    let at =
        |v: &serde_json::Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    assert!(at(&window["to"]) < at(&row["wal"]["time"]), "{row}");
    let text = site.run(&["status"]).all();
    assert!(
        text.contains(&format!(
            "WAL segment {missing} is missing from the archive"
        )),
        "{text}"
    );
}
