//! `[storage]`: the targets (URLs) and the backend options, and opening them.

use backup_core::Result;
use backup_core::backup::Target;
use serde::{Deserialize, Serialize};

/// One storage target: a URL, or `{ url, optional }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TargetSpec {
    Url(String),
    Full {
        url: String,
        #[serde(default)]
        optional: bool,
    },
}

impl TargetSpec {
    /// The target's URL (or plain path).
    pub fn url(&self) -> &str {
        match self {
            Self::Url(u) | Self::Full { url: u, .. } => u,
        }
    }
    /// Whether a failure of this target leaves a backup good.
    pub fn optional(&self) -> bool {
        matches!(self, Self::Full { optional: true, .. })
    }
}

/// `[storage]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageSection {
    /// Where backups go; the first one is where `list`, `restore` and `verify` look.
    pub targets: Vec<TargetSpec>,
    /// Backend options (`[storage.s3]`, ...).
    #[serde(flatten)]
    pub options: backup_storage::StorageOptions,
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            targets: vec![TargetSpec::Url("./backups".into())],
            options: backup_storage::StorageOptions::default(),
        }
    }
}

impl StorageSection {
    /// Open every configured target (checks their URLs and that their backend is
    /// compiled in; nothing is contacted).
    pub fn open_targets(&self) -> Result<Vec<Target>> {
        self.targets
            .iter()
            .map(|t| {
                Ok(Target {
                    storage: backup_storage::open(t.url(), &self.options)?,
                    optional: t.optional(),
                })
            })
            .collect()
    }
}
