//! The configured part of a backup: what `[backup]` says, deserialized as it is
//! (rustic_core's `*Options` pattern), apart from the run-time parts of
//! [`BackupOptions`](super::BackupOptions) (name, transforms, progress).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Compression;
use crate::error::{Error, Result};
use crate::manifest::Compression as CompressionName;

/// The `[backup]` settings. Missing keys take these defaults; keys of the section that
/// are not settings of the pipeline (the CLI's own) are left to their reader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackupSettings {
    /// `gzip` (pg_dump's own), `zstd`, or `none`.
    pub compression: CompressionName,
    /// Compression level (gzip 0–9, default 6; zstd 1–22, default 3).
    pub level: Option<i32>,
    /// Parallel pg_dump jobs; more than 1 dumps in directory format, staged on local disk.
    pub jobs: u32,
    /// Where a parallel dump is staged (default: the system's temporary directory).
    pub staging_dir: Option<PathBuf>,
    /// Check free space on local targets (and the staging disk) first.
    pub space_check: bool,
    /// Expected stored size as a fraction of `pg_database_size`, for the space check.
    pub space_ratio: f64,
    /// Count rows of every table in the dump's snapshot.
    pub row_counts: bool,
    /// Extra `pg_dump` arguments that are not secrets (e.g. `--exclude-table=tmp_*`).
    pub pg_dump_args: Vec<String>,
}

impl Default for BackupSettings {
    /// The old scripts' behaviour: custom format, gzip level 6, one job.
    fn default() -> Self {
        Self {
            compression: CompressionName::Gzip,
            level: None,
            jobs: 1,
            staging_dir: None,
            space_check: true,
            space_ratio: 0.5,
            row_counts: true,
            pg_dump_args: Vec::new(),
        }
    }
}

impl BackupSettings {
    /// The compression these settings ask for; a level out of range is a configuration
    /// error (`backup.level`).
    pub fn compression(&self) -> Result<Compression> {
        let bad = |message: String| Error::Config {
            key: "backup.level".into(),
            message,
        };
        match self.compression {
            CompressionName::Gzip => {
                let l = self.level.unwrap_or(6);
                if !(0..=9).contains(&l) {
                    return Err(bad(format!("gzip level must be 0–9, got {l}")));
                }
                Ok(Compression::Gzip(l))
            }
            CompressionName::Zstd => {
                let l = self.level.unwrap_or(3);
                if !(1..=22).contains(&l) {
                    return Err(bad(format!("zstd level must be 1–22, got {l}")));
                }
                Ok(Compression::Zstd(l))
            }
            CompressionName::None => Ok(Compression::None),
        }
    }

    /// Check every value (configuration errors name their `backup.` key).
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, message: &str| {
            Err(Error::Config {
                key: format!("backup.{key}"),
                message: message.into(),
            })
        };
        self.compression()?;
        if self.jobs == 0 {
            return bad("jobs", "must be at least 1");
        }
        if self.space_ratio.is_nan() || self.space_ratio <= 0.0 {
            return bad("space_ratio", "must be greater than 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_checked_per_kind() {
        let with = |compression, level| BackupSettings {
            compression,
            level,
            ..BackupSettings::default()
        };
        assert_eq!(
            BackupSettings::default().compression().ok(),
            Some(Compression::Gzip(6))
        );
        assert_eq!(
            with(CompressionName::Zstd, None).compression().ok(),
            Some(Compression::Zstd(3))
        );
        let err = with(CompressionName::Gzip, Some(12))
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("backup.level"), "{err}");
        assert!(with(CompressionName::Zstd, Some(0)).validate().is_err());
        assert_eq!(
            with(CompressionName::None, Some(99)).compression().ok(),
            Some(Compression::None)
        );
    }

    #[test]
    fn deserializes_from_a_section_with_other_keys() {
        let s: BackupSettings = serde_json::from_value(serde_json::json!({
            "compression": "zstd", "jobs": 4, "verify": true
        }))
        .unwrap();
        assert_eq!(s.compression, CompressionName::Zstd);
        assert_eq!(s.jobs, 4);
        assert!(s.space_check);
        let bad = serde_json::json!({ "compression": "rar" });
        assert!(serde_json::from_value::<BackupSettings>(bad).is_err());
    }
}
