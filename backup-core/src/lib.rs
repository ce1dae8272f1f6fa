//! Core of kaizen-backup: the [`Storage`], [`Notifier`] and [`Verifier`] traits,
//! the backup [`Manifest`], and the backup, restore and catalog pipelines that
//! drive `pg_dump`/`pg_restore`.
//!
//! This crate knows PostgreSQL and its tools; it knows no cloud SDK, no HTTP
//! client and no SMTP. Plugins (storage backends, notifiers, verifiers) depend on
//! it and implement its traits.

pub mod audit;
pub mod backup;
pub mod catalog;
pub mod claim;
pub mod codec;
pub mod contents;
pub mod error;
pub mod lease;
pub mod leftovers;
pub mod lock;
pub mod manifest;
pub mod name;
pub mod notify;
pub mod pg;
pub mod pgpass;
pub mod pitr;
pub mod prune;
pub mod recovery;
pub mod restore;
pub mod retention;
pub mod secret;
pub mod stats;
pub mod storage;
pub mod tar;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod tls;
pub mod toc;
pub mod transform;
pub mod util;
pub mod verify;
pub mod wal;
pub mod walarchive;
pub mod window;

pub use error::{Error, Result};
pub use manifest::{Manifest, ObjectCounts, TableCount};
pub use notify::{Event, EventKind, Notifier};
pub use pg::PgConfig;
pub use secret::Secret;
pub use storage::{ByteStream, ObjectMeta, ObjectWriter, Storage};
pub use verify::{CheckResult, Verifier, VerifyContext, VerifyRecord};

/// Version of kaizen-backup recorded in manifests.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");
