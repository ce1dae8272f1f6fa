//! The configured part of a restore: what `[restore]` says about pg_restore, deserialized
//! as it is, apart from the run-time parts of [`RestoreOptions`](super::RestoreOptions).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `[restore]` settings of pg_restore. Missing keys take these defaults; keys of the
/// section that are not settings of the pipeline (the CLI's own) are left to their reader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestoreSettings {
    /// Parallel pg_restore jobs (custom format: > 1 downloads to a local file first;
    /// directory format: always unpacked to a local directory).
    pub jobs: u32,
    /// `pg_restore --no-owner`: objects owned by the restoring role.
    pub no_owner: bool,
    /// `pg_restore --role`.
    pub role: Option<String>,
    /// Directory for temporary downloads and unpacked archives.
    pub temp_dir: Option<PathBuf>,
    /// Roles the backup needs that the server lacks: `missing` creates them before the
    /// restore (never changing an existing role), `none` leaves them out.
    pub roles: RolesMode,
}

/// `restore.roles`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolesMode {
    /// Create the roles the server lacks.
    #[default]
    Missing,
    /// Create none.
    None,
}

impl Default for RestoreSettings {
    /// One job, owners kept, the system's temporary directory.
    fn default() -> Self {
        Self {
            jobs: 1,
            no_owner: false,
            role: None,
            temp_dir: None,
            roles: RolesMode::Missing,
        }
    }
}

impl RestoreSettings {
    /// Check every value (configuration errors name their `restore.` key).
    pub fn validate(&self) -> crate::Result<()> {
        if self.jobs == 0 {
            return Err(crate::Error::Config {
                key: "restore.jobs".into(),
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}
