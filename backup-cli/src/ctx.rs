//! The one wiring place of the commands: the configuration, the storage targets (opened
//! once, on first use), resolving `<BACKUP>`, run locks and leases, the options of each
//! pipeline built from the configuration (`options`), and the pipelines more than one
//! command runs (`shared`). Commands depend on this and nothing of each other.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use backup_core::backup::Target;
use backup_core::catalog::{self, Resolved};
use backup_core::claim::{self, TargetLock};
use backup_core::lease::Lease;
use backup_core::lock::{self, LockGuard};
use backup_core::manifest::Manifest;
use backup_core::overview::{self, Overview};
use backup_core::restore::Decoder;
use backup_core::{Error, Result, Storage};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Loaded};
use crate::events::Reporter;

mod options;
mod shared;

pub use shared::log_prune_report;

/// Everything a command needs.
pub struct Ctx {
    loaded: Loaded,
    /// Cancelled by SIGINT/SIGTERM.
    pub cancel: CancellationToken,
    /// Draw progress bars (text logs, not quiet; the bar itself checks for a terminal).
    pub progress: bool,
    /// Notifications, metrics and audit.
    pub reporter: Reporter,
    targets: OnceLock<Vec<Target>>,
    wal_targets: OnceLock<Vec<Target>>,
}

impl Ctx {
    /// The context of one command run.
    pub fn new(
        loaded: Loaded,
        cancel: CancellationToken,
        progress: bool,
        reporter: Reporter,
    ) -> Self {
        Self {
            loaded,
            cancel,
            progress,
            reporter,
            targets: OnceLock::new(),
            wal_targets: OnceLock::new(),
        }
    }

    /// The merged configuration.
    pub fn config(&self) -> &Config {
        &self.loaded.config
    }

    /// The configuration with the layers it came from (for `config show`).
    pub fn loaded(&self) -> &Loaded {
        &self.loaded
    }

    /// The configured database's name.
    pub fn database(&self) -> &str {
        &self.config().database.name
    }

    /// Every configured storage target, opened on first use (opening checks the URL and
    /// that its backend is compiled in; nothing is contacted).
    pub fn targets(&self) -> Result<&[Target]> {
        if let Some(t) = self.targets.get() {
            return Ok(t);
        }
        let opened = self.config().storage.open_targets()?;
        Ok(self.targets.get_or_init(|| opened))
    }

    /// The WAL archive of every target (its `wal` location, see
    /// [`backup_core::walarchive::wal_location`]), opened on first use.
    pub fn wal_targets(&self) -> Result<&[Target]> {
        if let Some(t) = self.wal_targets.get() {
            return Ok(t);
        }
        let storage = &self.config().storage;
        let opened = storage
            .targets
            .iter()
            .map(|t| {
                Ok(Target {
                    storage: backup_storage::open(
                        &backup_core::walarchive::wal_location(t.url()),
                        &storage.options,
                    )?,
                    optional: t.optional(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if opened.is_empty() {
            return Err(Error::usage("no storage target configured"));
        }
        Ok(self.wal_targets.get_or_init(|| opened))
    }

    /// The first target's WAL archive: where a point-in-time restore and a drill read
    /// (wal-fetch, which tries every target, serves the recovering server).
    pub fn primary_wal(&self) -> Result<Arc<dyn Storage>> {
        self.wal_targets()?
            .first()
            .map(|t| t.storage.clone())
            .ok_or_else(|| Error::usage("no storage target configured"))
    }

    /// What each target holds (with its WAL archive), one [`Overview`] per target in the
    /// configured order: what `status` and `report` show.
    pub async fn overviews(&self) -> Result<Vec<Overview>> {
        let opts = self.overview_options()?;
        let wal = self.wal_targets()?;
        let mut out = Vec::new();
        for (i, t) in self.targets()?.iter().enumerate() {
            let archive = wal.get(i).map(|w| &w.storage);
            out.push(overview::gather(t.storage.as_ref(), archive, &opts).await);
        }
        Ok(out)
    }

    /// The first target: where `list`, `restore` and `verify` look.
    pub fn primary(&self) -> Result<&Target> {
        self.targets()?
            .first()
            .ok_or_else(|| Error::usage("no storage target configured"))
    }

    /// Find `<BACKUP>`: a name or `latest` in the first target, a file path, or a URL.
    /// A manifest that names another backup's objects is refused; with
    /// `[integrity] verify_keys`, so is a backup without a valid signature by one of them.
    pub async fn resolve(&self, spec: &str) -> Result<Resolved> {
        let resolved = self.resolve_unauthenticated(spec).await?;
        let keys = self.verify_keys()?;
        if !keys.is_empty() {
            match &resolved.manifest {
                Some(m) => backup_core::signing::authenticate(m, &keys)?,
                None => {
                    return Err(Error::Refused(format!(
                        "{spec} has no manifest, so no signature, and integrity.verify_keys requires one: refusing to read it (nothing was touched)"
                    )));
                }
            }
        }
        Ok(resolved)
    }

    /// `[integrity] verify_keys` (empty: backups are not authenticated).
    pub fn verify_keys(&self) -> Result<Vec<backup_core::signing::VerifyKey>> {
        self.config().integrity.verify_keys()
    }

    async fn resolve_unauthenticated(&self, spec: &str) -> Result<Resolved> {
        let primary = self.primary()?.storage.clone();
        let opts = self.config().storage.options.clone();
        catalog::resolve(
            &primary,
            spec,
            self.database(),
            move |dir: &Path| -> Result<Arc<dyn Storage>> {
                backup_storage::open(&dir.display().to_string(), &opts)
            },
        )
        .await
    }

    /// Take the run lock of `operation` on `database` in `storage` (waiting up to
    /// `--lock-timeout` when given, else `lock.timeout_secs`).
    pub async fn lock(
        &self,
        storage: Arc<dyn Storage>,
        database: &str,
        operation: &str,
        lock_timeout: Option<u64>,
    ) -> Result<LockGuard> {
        lock::acquire(
            storage,
            database,
            operation,
            self.lock_options(lock_timeout),
        )
        .await
    }

    /// Release a run lock within the cleanup deadline: a store that stopped answering
    /// cannot hold the process. A lock left behind is taken over by the next run (same
    /// host: at once; elsewhere: when stale).
    pub async fn release(&self, guard: LockGuard) {
        let then = "the next run takes the lock over (at once on this host, else once it is stale)";
        let released = backup_core::backup::within(
            "releasing the run lock",
            then,
            self.cleanup_budget(),
            guard.release(),
        );
        if let Some(Err(e)) = released.await {
            tracing::warn!("Could not release a lock: {e}");
        }
    }

    /// Take the lock on restoring into `target_db` (held on the database server, so a
    /// restore needs nothing but read access to the storage).
    pub async fn lock_restore_target(
        &self,
        target_db: &str,
        lock_timeout: Option<u64>,
    ) -> Result<TargetLock> {
        let timeout = self.lock_options(lock_timeout).timeout;
        claim::lock_target(&self.config().database, target_db, timeout).await
    }

    /// A lease on the backup being read, so that prune keeps it meanwhile (None for a
    /// bare file, which prune never deletes, or on storage that cannot be written).
    pub async fn lease(&self, resolved: &Resolved, operation: &str) -> Option<Lease> {
        resolved.manifest.as_ref()?;
        backup_core::lease::take(
            resolved.storage.clone(),
            &resolved.name,
            operation,
            self.lock_options(None).stale_after,
        )
        .await
    }

    /// Release a lease within the cleanup deadline; a lease left behind expires by itself
    /// (prune ignores it once it is stale or its process is gone).
    pub async fn release_lease(&self, lease: Option<Lease>) {
        if let Some(l) = lease {
            let _ = backup_core::backup::within(
                "releasing the lease on the backup",
                "it expires by itself",
                self.cleanup_budget(),
                l.release(),
            )
            .await;
        }
    }

    /// Time cleanup may take now (`storage.timeouts.cleanup_secs`, less after a signal).
    pub fn cleanup_budget(&self) -> Duration {
        backup_core::backup::cleanup_budget(
            self.config().storage.options.timeouts.cleanup(),
            &self.cancel,
        )
    }

    /// The decoder of a stored object (None for plain custom-format archives).
    pub fn decoder(&self, manifest: Option<&Manifest>) -> Result<Option<Decoder>> {
        match manifest {
            Some(m) => {
                let keys = crate::codecs::keys_for(self.config(), Some(m))?;
                backup_core::codec::decoder_for(m, &keys)
            }
            None => Ok(None),
        }
    }

    /// Check that the configured key opens an encrypted backup, before anything is
    /// touched or recorded.
    pub async fn check_key(&self, resolved: &Resolved) -> Result<()> {
        let keys = crate::codecs::keys_for(self.config(), resolved.manifest.as_ref())?;
        backup_core::codec::check_key(resolved, &keys).await
    }
}
