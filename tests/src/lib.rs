//! Harness for the end-to-end tests: the services started by `cargo xtask test`,
//! a runner for the `kaizen-backup` binary, and admin SQL on the test cluster.
//!
//! Every test makes its own uniquely named databases and its own working
//! directory, so tests run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

pub mod cli;
pub mod cluster;
pub mod http;
pub mod pg;
pub mod pitr_site;
pub mod proxy;
pub mod receiver;
pub mod services;

pub use cli::{Cli, Output};
pub use cluster::Cluster;
pub use http::Recorder;
pub use pg::{Pg, TestDb, assert_same};
pub use services::{Azure, Gcs, S3, Smtp};

/// A uniquely named empty database on the test cluster (`PREFIX_<random>`), dropped
/// (WITH FORCE) when the handle is dropped.
pub fn fresh_db(prefix: &str) -> TestDb {
    Pg::get().create_db(prefix)
}

/// Load the Kaizen Studio sample (`tests/fixtures/kaizen_sample.sql`) into `db`.
pub fn load_sample(db: &str) {
    Pg::get().load_sample(db)
}

/// Everything that makes a database what it is: every table's ordered content hash,
/// sequence values, large objects and the schema; compare with [`assert_same`].
pub fn db_fingerprint(db: &str) -> String {
    Pg::get().fingerprint(db)
}

/// Poll `done` every `every` until it returns true (true) or `timeout` passes (false).
pub fn wait_until(
    timeout: std::time::Duration,
    every: std::time::Duration,
    mut done: impl FnMut() -> bool,
) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// A variable set by `cargo xtask test`; panics with how to run the tests otherwise.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `cargo xtask test` (it starts PostgreSQL and the emulators; a --services list must include the server this test needs)")
    })
}

/// A short random lowercase suffix for unique names.
pub fn unique(prefix: &str) -> String {
    use rand::Rng;
    let n: u64 = rand::rng().random();
    format!("{prefix}_{:x}", n & 0xffff_ffff_ffff)
}

/// A free TCP port on 127.0.0.1 (nothing listens on it when this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
