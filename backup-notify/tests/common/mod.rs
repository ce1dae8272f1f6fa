//! Test helpers: service variables from `cargo xtask test`, free ports, and sample
//! events. (The recording HTTP server is `kaizen-test-http`.)
#![allow(dead_code)]

use backup_core::{Event, EventKind};

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A service variable set by `cargo xtask test`.
pub fn service_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `cargo xtask test` (or source target/test-env/env.sh after `cargo xtask env`)")
    })
}

/// A database name unique to this test process and call.
pub fn unique_db(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fully filled, fixed event (stable JSON).
pub fn event(kind: EventKind, database: &str) -> Event {
    let mut e = Event::new(kind, database);
    e.timestamp = "2024-01-15T14:30:00Z".parse().unwrap();
    e.host = "backup-host".into();
    e.backup = Some("backup_20240115_143000".into());
    e.targets = vec![
        "file:///var/backups/kaizen".into(),
        "s3://kaizen-backups/prod".into(),
    ];
    if kind.is_failure() {
        e.error = Some(
            "Cannot connect to database: kaizen_studio@db:5432 — is PostgreSQL running?".into(),
        );
    } else {
        e.size_bytes = Some(2_411_724);
        e.duration_seconds = Some(12.34);
    }
    e
}
