//! The options of each pipeline, from the configuration: what a command adds is only
//! what its flags say.

use backup_core::backup::{BackupOptions, Compression};
use backup_core::lock::LockOptions;
use backup_core::manifest::Manifest;
use backup_core::overview::OverviewOptions;
use backup_core::restore::RestoreOptions;
use backup_core::retention::RetentionPolicy;
use backup_core::walarchive::PushOptions;
use backup_core::{Error, Result};
use backup_verify::VerifyOptions;

use super::Ctx;

impl Ctx {
    /// Backup `name` as `[backup]` configures it, with the cleanup deadline of
    /// `[storage.timeouts]` and `[encryption]` (core builds the encoders from them).
    pub fn backup_options(&self, name: String) -> Result<BackupOptions> {
        let c = self.config();
        let mut opts = BackupOptions::with_settings(name, c.backup.settings.clone())?;
        opts.cleanup_timeout = c.storage.options.timeouts.cleanup();
        opts.encryption = c.encryption.clone();
        opts.signing_key = c.integrity.signing_key()?;
        Ok(opts)
    }

    /// How WAL files are stored (by `wal-push` and `wal-receive` alike): zstd at
    /// `[backup]`'s level (WAL compresses well with zstd whatever pg_dump's own
    /// compression is), and `[encryption]`.
    pub fn wal_push_options(&self) -> Result<PushOptions> {
        let c = self.config();
        Ok(PushOptions {
            zstd_level: match c.backup.settings.compression()? {
                Compression::None => None,
                Compression::Zstd(level) => Some(level),
                Compression::Gzip(_) => Some(3),
            },
            encryption: c.encryption.clone(),
            signing_key: c.integrity.signing_key()?,
        })
    }

    /// A restore into `target_db` as `[restore]` configures it.
    pub fn restore_options(&self, target_db: &str) -> RestoreOptions {
        RestoreOptions {
            settings: self.config().restore.settings.clone(),
            ..RestoreOptions::new(target_db)
        }
    }

    /// Verifying the backup `manifest` describes: the test restore takes `[restore]`'s
    /// jobs and temporary directory, and the configured keys when the backup is encrypted
    /// (--quick needs no key).
    pub fn verify_options(
        &self,
        quick: bool,
        manifest: Option<&Manifest>,
    ) -> Result<VerifyOptions> {
        let c = self.config();
        // A physical backup is unpacked even by --quick (pg_verifybackup reads the files).
        let keys = if quick && !manifest.is_some_and(Manifest::is_physical) {
            Default::default()
        } else {
            crate::codecs::keys_for(c, manifest)?
        };
        Ok(VerifyOptions {
            quick,
            cancel: self.cancel.clone(),
            keys,
            jobs: c.restore.settings.jobs,
            temp_dir: c.restore.settings.temp_dir.clone(),
        })
    }

    /// The `restore_command` a restored server runs: this binary by absolute path, the
    /// configuration files and `--storage` flags of this run, and no secret (the server's
    /// OS user must be able to read the files, which hold or name the secrets).
    pub fn restore_command(&self) -> Result<String> {
        let exe = std::env::current_exe()
            .map_err(|e| Error::other(format!("cannot tell where this program is: {e}")))?;
        let mut cmd = shell_quote(&exe.display().to_string());
        let loaded = self.loaded();
        if let Some(file) = loaded.files.last() {
            cmd.push_str(" --config ");
            cmd.push_str(&shell_quote(&file.display().to_string()));
        }
        // Without a file, the targets come from flags or the environment, which the
        // server's environment lacks: name them on the command line.
        let urls: Vec<String> = if loaded.storage_flags.is_empty() && loaded.files.is_empty() {
            self.config()
                .storage
                .targets
                .iter()
                .map(|t| t.url().to_string())
                .collect()
        } else {
            loaded.storage_flags.clone()
        };
        for url in &urls {
            // The command line is written to postgresql.auto.conf and becomes the
            // arguments of every wal-fetch: no credentials in it.
            if has_password(url) {
                return Err(Error::Config {
                    key: "storage.targets".into(),
                    message: "a storage URL with a password cannot go into restore_command: \
                              put the target and its credentials in a configuration file \
                              (--config) that the server's OS user can read"
                        .into(),
                });
            }
            cmd.push_str(" --storage ");
            cmd.push_str(&shell_quote(url));
        }
        cmd.push_str(" wal-fetch %f %p");
        Ok(cmd)
    }

    /// `[retention]`.
    pub fn retention(&self) -> &RetentionPolicy {
        &self.config().retention
    }

    /// What `status` and `report` gather of each target, now: the configured database,
    /// `[retention]`, the lease expiry of `[lock]` and the keys of `[encryption]`.
    pub fn overview_options(&self) -> Result<OverviewOptions> {
        let c = self.config();
        Ok(OverviewOptions {
            database: c.database.name.clone(),
            policy: c.retention.clone(),
            now: chrono::Utc::now(),
            lease_stale_after: self.lock_options(None).stale_after,
            keys: crate::codecs::keys(c)?,
        })
    }

    /// `[lock]`, with `--lock-timeout` (when given) for the wait.
    pub fn lock_options(&self, lock_timeout: Option<u64>) -> LockOptions {
        self.config().lock.options(lock_timeout)
    }
}

/// Quote a word for `sh -c` (PostgreSQL runs `restore_command` through the shell).
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:=@,+".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Whether a URL carries a password (`user:password@` before its host).
fn has_password(url: &str) -> bool {
    url.split_once("://")
        .and_then(|(_, rest)| rest.split('/').next().unwrap_or("").rsplit_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_a_url_is_seen_and_words_are_quoted_for_sh() {
        assert!(has_password(
            "webdavs://backup:s3cret@dav.example.com/kaizen"
        ));
        assert!(!has_password("sftp://backup@host/dir"));
        assert!(!has_password("s3://bucket/prefix/a:b@c"));
        assert!(!has_password("/var/backups/kaizen"));
        assert_eq!(
            shell_quote("/usr/bin/kaizen-backup"),
            "/usr/bin/kaizen-backup"
        );
        assert_eq!(shell_quote("/tmp/a b/it's"), "'/tmp/a b/it'\\''s'");
    }
}
