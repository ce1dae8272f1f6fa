//! The backup manifest (`NAME.manifest.json`): field names are a contract.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Current manifest format version.
pub const FORMAT_VERSION: u32 = 1;

/// Suffix of manifest objects.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// Suffix of verification records.
pub const VERIFY_SUFFIX: &str = ".verify.json";

/// One table and its exact row count at the dump's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCount {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Exact row count (`count(*)` in the dump's snapshot).
    pub rows: i64,
}

/// Object counts of the database at the dump's snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectCounts {
    /// Tables (ordinary and partitioned) in user schemas.
    pub tables: i64,
    /// Sequences.
    pub sequences: i64,
    /// Indexes on user tables.
    pub indexes: i64,
    /// Constraints (check, foreign key, primary key, unique, exclusion).
    pub constraints: i64,
}

/// Everything recorded about one backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format_version: u32,
    /// Backup name.
    pub name: String,
    /// Key of the data object, relative to the storage root.
    pub object: String,
    /// Database that was dumped.
    pub database: String,
    /// Server version string (`server_version`).
    pub server_version: String,
    /// `pg_dump --version` output.
    pub pg_dump_version: String,
    /// pg_dump archive format (`custom`).
    pub format: String,
    /// Compression of the stored stream: `gzip` (inside the archive), `zstd`, `none`.
    pub compression: String,
    /// Compression level.
    #[serde(default)]
    pub compression_level: Option<i32>,
    /// Encryption: `none` or `age`.
    pub encryption: String,
    /// Public recipients (age), never secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// When the dump started.
    pub started_at: DateTime<Utc>,
    /// When the data object was committed.
    pub finished_at: DateTime<Utc>,
    /// Stored size in bytes.
    pub size_bytes: u64,
    /// SHA-256 (hex) of the stored bytes.
    pub sha256: String,
    /// kaizen-backup version.
    pub tool_version: String,
    /// Pinned backups are never removed by retention.
    #[serde(default)]
    pub pinned: bool,
    /// `pg_database_size` at dump time.
    pub database_size_bytes: i64,
    /// Database encoding, used when creating restore targets.
    #[serde(default)]
    pub encoding: Option<String>,
    /// Database collation.
    #[serde(default)]
    pub lc_collate: Option<String>,
    /// Database ctype.
    #[serde(default)]
    pub lc_ctype: Option<String>,
    /// Tables with exact row counts at the dump's snapshot.
    pub tables: Vec<TableCount>,
    /// Object counts at the dump's snapshot.
    pub counts: ObjectCounts,
    /// Host that took the backup.
    #[serde(default)]
    pub host: Option<String>,
    /// `backup`, or `safety` for the copy taken before a restore replaced a database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Physical backups: where their WAL starts and ends, and the cluster they belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<PhysicalInfo>,
}

/// What a physical backup records beside the common fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhysicalInfo {
    /// Timeline the backup was taken on.
    pub timeline: u32,
    /// WAL position where the backup starts (recovery begins here).
    pub start_lsn: crate::wal::Lsn,
    /// WAL position where it is consistent (the earliest recovery target).
    pub end_lsn: crate::wal::Lsn,
    /// The cluster's system identifier (`pg_control_system()`): WAL of another cluster
    /// never applies.
    pub system_identifier: String,
    /// The cluster's `wal_segment_size` in bytes.
    pub wal_segment_size: u64,
}

impl Manifest {
    /// Manifest key for a backup name.
    pub fn key_for(name: &str) -> String {
        format!("{name}{MANIFEST_SUFFIX}")
    }

    /// Verify-record key for a backup name.
    pub fn verify_key_for(name: &str) -> String {
        format!("{name}{VERIFY_SUFFIX}")
    }

    /// Serialize (pretty JSON).
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self)
            .map_err(|e| Error::other(format!("cannot serialize manifest: {e}")))
    }

    /// Parse and check the format version.
    pub fn from_json(data: &[u8]) -> Result<Self> {
        let m: Manifest = serde_json::from_slice(data)
            .map_err(|e| Error::Corrupt(format!("manifest is not valid JSON: {e}")))?;
        if m.format_version > FORMAT_VERSION {
            return Err(Error::Corrupt(format!(
                "manifest format_version {} is newer than this kaizen-backup understands ({FORMAT_VERSION}); upgrade kaizen-backup",
                m.format_version
            )));
        }
        Ok(m)
    }
}
