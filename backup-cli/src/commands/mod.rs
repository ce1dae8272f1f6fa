//! One module per command.

pub mod backup;
pub mod config_cmd;
pub mod contents;
pub mod list;
pub mod prune;
pub mod restore;
pub mod status;
pub mod verify;
