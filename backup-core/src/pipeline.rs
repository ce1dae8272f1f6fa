//! What the commands run: each pipeline reads or writes backups through the
//! [`Storage`](crate::Storage) trait and drives PostgreSQL's tools.

pub mod backup;
pub mod catalog;
pub mod contents;
pub mod drill;
pub mod overview;
pub mod pitr;
pub mod prune;
pub mod restore;
pub mod retention;
pub mod selective;
pub mod walarchive;
pub mod walreceive;
