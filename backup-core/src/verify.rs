//! The `Verifier` trait: one named check of a backup.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::manifest::Manifest;
use crate::pg::PgConfig;
use crate::storage::Storage;

/// Outcome of one check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckResult {
    /// Check name (`file`, `archive`, `test_restore`, `tables`, ...).
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// Human-readable figures or reason.
    pub detail: String,
    /// Seconds spent.
    pub duration_seconds: f64,
}

/// The stored result of a verification (`NAME.verify.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyRecord {
    /// Record format version.
    pub format_version: u32,
    /// Backup name.
    pub name: String,
    /// When verification started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
    /// Whether every check passed.
    pub passed: bool,
    /// Whether only the quick checks ran.
    pub quick: bool,
    /// Every check, in order.
    pub checks: Vec<CheckResult>,
    /// Version of kaizen-backup that verified.
    pub tool_version: String,
}

/// Everything a check may look at.
#[derive(Debug, Clone)]
pub struct VerifyContext {
    /// Backup name.
    pub name: String,
    /// Where the backup lives.
    pub storage: Arc<dyn Storage>,
    /// Key of the data object in `storage`.
    pub data_key: String,
    /// The manifest, if the backup has one (bare files do not).
    pub manifest: Option<Manifest>,
    /// Connection settings for checks that need a server (test restore), and the
    /// PostgreSQL binaries (`bin_dir`) a physical backup's recovery drill runs.
    pub pg: Option<PgConfig>,
    /// The WAL archive a physical backup's recovery drill replays from (`None`: the
    /// backup's own WAL).
    pub wal: Option<Arc<dyn Storage>>,
}

/// One verification check. Other Kaizen services can run these as a library.
#[async_trait]
pub trait Verifier: Send + Sync + std::fmt::Debug {
    /// Check name, e.g. `file`.
    fn name(&self) -> &'static str;
    /// Run the check.
    async fn verify(&self, ctx: &VerifyContext) -> Result<Vec<CheckResult>>;
}
