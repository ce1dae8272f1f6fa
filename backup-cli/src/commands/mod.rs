//! One module per command.

pub mod backup;
pub mod config_cmd;
pub mod contents;
pub mod list;
pub mod prune;
pub mod restore;
pub mod status;
pub mod verify;

/// Release a run lock within the cleanup deadline (`storage.timeouts.cleanup_secs`, less
/// after a signal): a store that stopped answering cannot hold the process. A lock left
/// behind is taken over by the next run (same host: at once; elsewhere: when stale).
pub async fn release_lock(ctx: &crate::app::Ctx, guard: backup_core::lock::LockGuard) {
    let budget = ctx.cleanup_budget();
    let then = "the next run takes the lock over (at once on this host, else once it is stale)";
    let released =
        backup_core::backup::within("releasing the run lock", then, budget, guard.release());
    if let Some(Err(e)) = released.await {
        tracing::warn!("Could not release a lock: {e}");
    }
}

/// Release a lease on a backup within the cleanup deadline; a lease left behind expires
/// by itself (prune ignores it once it is stale or its process is gone).
pub async fn release_lease(ctx: &crate::app::Ctx, lease: Option<backup_core::lease::Lease>) {
    if let Some(l) = lease {
        let budget = ctx.cleanup_budget();
        let _ = backup_core::backup::within(
            "releasing the lease on the backup",
            "it expires by itself",
            budget,
            l.release(),
        )
        .await;
    }
}
