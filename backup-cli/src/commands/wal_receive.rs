//! `kaizen-backup wal-receive`: stream WAL into every target's archive through a physical
//! replication slot (`backup_core::walreceive`), raise `wal.gap` for WAL the archive
//! will never hold, and serve `/metrics` and `/healthz` on `--metrics-listen`.

mod http;

use std::sync::{Arc, Mutex};

use backup_core::Result;
use backup_core::walreceive::{self, ReceiveOptions, ReceiverStatus, Stores};

use crate::cli::WalReceiveArgs;
use crate::ctx::Ctx;

/// Run the receiver until SIGTERM/SIGINT (then exit 0 once everything received is
/// stored).
pub async fn run(ctx: &Ctx, args: WalReceiveArgs) -> Result<()> {
    let c = ctx.config();
    let mut settings = c.wal.clone();
    if let Some(slot) = args.slot {
        walreceive::check_slot_name(&slot).map_err(backup_core::Error::usage)?;
        settings.slot = slot;
    }
    let interval = settings.flush_interval()?;
    let opts = ReceiveOptions {
        settings,
        create_slot: args.create_slot,
        push: ctx.wal_push_options()?,
    };
    let mut stores = Stores::default();
    for t in ctx.wal_targets()? {
        if t.optional {
            stores.optional.push(t.storage.clone());
        } else {
            stores.required.push(t.storage.clone());
        }
    }
    let status = Arc::new(Mutex::new(ReceiverStatus::default()));
    if let Some(addr) = args.metrics_listen {
        let labels = http::Labels {
            database: c.database.name.clone(),
            slot: opts.settings.slot.clone(),
        };
        // Unhealthy: not streaming, or not storing, for 3 flush intervals (30 s at least).
        let allowed = (interval * 3).max(std::time::Duration::from_secs(30));
        http::serve(addr, status.clone(), labels, allowed, ctx.cancel.clone()).await?;
    }
    let (gaps, mut gap_rx) = tokio::sync::mpsc::unbounded_channel();
    let targets: Vec<String> = ctx.wal_targets()?.iter().map(|t| t.storage.url()).collect();
    let slot = opts.settings.slot.clone();
    let receiver = walreceive::run(
        &c.database,
        &stores,
        &opts,
        status,
        gaps,
        ctx.cancel.clone(),
    );
    // Gaps are announced while the receiver goes on (the channel closes when it ends).
    let announce = async {
        while let Some(gap) = gap_rx.recv().await {
            ctx.reporter
                .wal_gap(&c.database.name, &slot, targets.clone(), &gap)
                .await;
        }
    };
    let (result, ()) = tokio::join!(receiver, announce);
    result
}
