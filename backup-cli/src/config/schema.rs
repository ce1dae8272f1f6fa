//! The shape of the configuration: one struct per section. Where core has the settings
//! of a pipeline ([`BackupSettings`], [`RestoreSettings`], [`RetentionPolicy`], …) the
//! section is that type itself, so nothing is copied field by field; a section that also
//! holds the command's own keys (`[backup] verify`, `[restore] environment`) is the
//! two parts side by side, each read on its own (see `validate::extract`).
//!
//! [`BackupSettings`]: backup_core::backup::BackupSettings
//! [`RestoreSettings`]: backup_core::restore::RestoreSettings
//! [`RetentionPolicy`]: backup_core::retention::RetentionPolicy

use std::path::PathBuf;

use backup_core::PgConfig;
use backup_core::backup::BackupSettings;
use backup_core::restore::RestoreSettings;
use serde::{Deserialize, Serialize};

use super::targets::StorageSection;
use crate::cli::LogFormat;

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub database: PgConfig,
    pub storage: StorageSection,
    /// Read part by part (see the module docs).
    #[serde(skip_deserializing)]
    pub backup: BackupSection,
    /// Read part by part (see the module docs).
    #[serde(skip_deserializing)]
    pub restore: RestoreSection,
    pub log: LogSection,
    pub lock: LockSection,
    pub retention: backup_core::retention::RetentionPolicy,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<backup_notify::NotifierConfig>,
    pub metrics: backup_notify::metrics::MetricsConfig,
    pub encryption: backup_core::codec::EncryptionConfig,
    /// `[integrity]`: signed manifests.
    pub integrity: backup_core::signing::IntegrityConfig,
    pub audit: backup_core::audit::AuditConfig,
    pub drill: DrillSection,
    /// `[wal]`: WAL streaming (`wal-receive`).
    pub wal: backup_core::walreceive::ReceiveSettings,
}

/// `[drill]`: what `kaizen-backup drill` checks in the restored copy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrillSection {
    /// SQL returning one timestamptz: the newest marker (e.g. `SELECT max(created_at)
    /// FROM audit_logs`); in the restored copy it must not be after the target.
    pub marker_query: Option<String>,
    /// The database the marker query runs in (default: `database.name`).
    pub marker_database: Option<String>,
    /// The restore time the operator promises (e.g. `30m`): published beside the measured
    /// RTO, and the drill fails when it takes longer.
    pub rto_target: Option<String>,
}

/// `[backup]`: the pipeline's settings and what the command does after a backup.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackupSection {
    #[serde(flatten)]
    pub settings: BackupSettings,
    #[serde(flatten)]
    pub after: AfterBackup,
}

/// The `[backup]` keys of the command: what follows a successful backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AfterBackup {
    /// Verify after each backup.
    pub verify: bool,
    /// Apply retention after each successful backup.
    pub prune: bool,
}

impl Default for AfterBackup {
    fn default() -> Self {
        Self {
            verify: false,
            prune: true,
        }
    }
}

/// `[restore]`: pg_restore's settings and the command's safeguards.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreSection {
    #[serde(flatten)]
    pub settings: RestoreSettings,
    #[serde(flatten)]
    pub safety: RestoreSafety,
}

/// The `[restore]` keys of the command: what protects an existing database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RestoreSafety {
    /// `production` makes replacing a database ask for confirmation.
    pub environment: Option<String>,
    /// Back up an existing target before replacing it.
    pub safety_backup: bool,
}

impl Default for RestoreSafety {
    fn default() -> Self {
        Self {
            environment: None,
            safety_backup: true,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    pub format: LogFormat,
    /// Also append log lines to this file (e.g. backups/backup.log).
    pub file: Option<PathBuf>,
    /// `debug` to see more (DEBUG=true sets it).
    pub level: Option<String>,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            file: None,
            level: None,
        }
    }
}

/// `[lock]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockSection {
    /// A lock not refreshed for this long is considered abandoned.
    pub stale_after_secs: u64,
    /// How long to wait for another run's lock.
    pub timeout_secs: u64,
}

impl Default for LockSection {
    fn default() -> Self {
        Self {
            stale_after_secs: 600,
            timeout_secs: 0,
        }
    }
}

impl LockSection {
    /// Lock options, with `--lock-timeout` overriding the configured wait.
    pub fn options(&self, timeout_override: Option<u64>) -> backup_core::lock::LockOptions {
        backup_core::lock::LockOptions {
            stale_after: std::time::Duration::from_secs(self.stale_after_secs.max(10)),
            timeout: std::time::Duration::from_secs(timeout_override.unwrap_or(self.timeout_secs)),
        }
    }
}
