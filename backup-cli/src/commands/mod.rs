//! One module per command. A command depends on [`crate::ctx::Ctx`] (and its own
//! output), never on another command: what two commands share is on `Ctx`.

pub mod backup;
pub mod config_cmd;
pub mod contents;
pub mod drill;
pub mod list;
pub mod pitr;
pub mod prune;
pub mod report;
pub mod restore;
pub mod status;
pub mod verify;
pub mod wal;
pub mod wal_receive;
