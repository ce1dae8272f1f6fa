//! Core of kaizen-backup: the [`Storage`], [`Notifier`] and [`Verifier`] traits,
//! the backup [`Manifest`], and the pipelines that drive PostgreSQL's own tools
//! (`pg_dump`/`pg_restore` for logical backups, `pg_basebackup` and the WAL archive
//! for physical ones).
//!
//! This crate knows PostgreSQL and its tools; it knows no cloud SDK, no HTTP
//! client and no SMTP. Plugins (storage backends, notifiers, verifiers) depend on
//! it and implement its traits.
//!
//! The folders show the architecture:
//!
//! | where | what |
//! |---|---|
//! | `storage.rs`, `notify.rs`, `verify.rs`, `transform.rs` | the plugin traits and their contracts |
//! | `error.rs`, `secret.rs`, `audit.rs`, `util.rs` | the vocabulary every part shares |
//! | `pipeline/` | what a command runs: backup (logical and physical), restore, point-in-time restore, the WAL archive and WAL streaming, catalog, retention and prune, contents, the overview `status` and `report` show |
//! | `coord/` | runs that must not collide: locks, leases, claims, what killed runs left |
//! | `pg/` | PostgreSQL plumbing: connection settings and TLS, `.pgpass`, server facts |
//! | `format/` | what is stored: the manifest, codecs (zstd, age), tar, names, pg_dump's table of contents, WAL names |
//!
//! The public API is curated below: the modules a library user needs, re-exported at
//! the root under their short names (`backup_core::backup`, `backup_core::manifest`, …),
//! and the main types.

mod coord;
mod format;
mod pipeline;
mod secret;
mod verify;

pub mod audit;
pub mod error;
pub mod notify;
pub mod pg;
pub mod storage;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod transform;
pub mod util;

pub use coord::{claim, lease, leftovers, lock};
pub use format::{codec, manifest, name, rows, signing, tar, toc, wal};
pub use pg::stats;
pub(crate) use pg::{pgpass, tls};
pub use pipeline::pitr::{recovery, window};
pub use pipeline::{
    backup, catalog, contents, drill, overview, pitr, prune, restore, retention, selective,
    walarchive, walreceive,
};

pub use error::{Error, Result};
pub use manifest::{Manifest, ObjectCounts, TableCount};
pub use notify::{Event, EventKind, Notifier};
pub use pg::PgConfig;
pub use secret::Secret;
pub use storage::{ByteStream, ObjectMeta, ObjectWriter, Storage};
pub use verify::{CheckResult, Verifier, VerifyContext, VerifyRecord};

/// Version of kaizen-backup recorded in manifests.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");
