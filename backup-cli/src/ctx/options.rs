//! The options of each pipeline, from the configuration: what a command adds is only
//! what its flags say.

use backup_core::backup::BackupOptions;
use backup_core::lock::LockOptions;
use backup_core::manifest::Manifest;
use backup_core::restore::RestoreOptions;
use backup_core::retention::RetentionPolicy;
use backup_core::{Error, Result};
use backup_verify::{DecoderFactory, VerifyOptions};

use super::Ctx;

impl Ctx {
    /// Backup `name` as `[backup]` configures it, with the cleanup deadline of
    /// `[storage.timeouts]` and the encoders (zstd, age) the configuration asks for.
    pub fn backup_options(&self, name: String) -> Result<BackupOptions> {
        let c = self.config();
        let mut opts = BackupOptions::with_settings(name, c.backup.settings.clone())?;
        opts.cleanup_timeout = c.storage.options.timeouts.cleanup();
        crate::codecs::add_encoders(c, &mut opts)?;
        Ok(opts)
    }

    /// A restore into `target_db` as `[restore]` configures it.
    pub fn restore_options(&self, target_db: &str) -> RestoreOptions {
        RestoreOptions {
            settings: self.config().restore.settings.clone(),
            ..RestoreOptions::new(target_db)
        }
    }

    /// Verifying the backup `manifest` describes: the test restore takes `[restore]`'s
    /// jobs and temporary directory, and decodes (zstd, age) with the configured keys.
    pub fn verify_options(&self, quick: bool, manifest: Option<&Manifest>) -> VerifyOptions {
        let c = self.config();
        // Decoding is needed only by the test restore: --quick needs no key.
        let decoder: Option<DecoderFactory> = match manifest {
            Some(m) if m.compression == "zstd" || m.encryption == "age" => {
                let cfg = c.clone();
                let m = m.clone();
                Some(Box::new(move || {
                    crate::codecs::decoder(&cfg, Some(&m))?
                        .ok_or_else(|| Error::other("no decoder for this backup"))
                }))
            }
            _ => None,
        };
        VerifyOptions {
            quick,
            cancel: self.cancel.clone(),
            decoder,
            jobs: c.restore.settings.jobs,
            temp_dir: c.restore.settings.temp_dir.clone(),
        }
    }

    /// `[retention]`.
    pub fn retention(&self) -> &RetentionPolicy {
        &self.config().retention
    }

    /// `[lock]`, with `--lock-timeout` (when given) for the wait.
    pub fn lock_options(&self, lock_timeout: Option<u64>) -> LockOptions {
        self.config().lock.options(lock_timeout)
    }
}
