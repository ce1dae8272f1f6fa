//! Runs that must not collide, and what killed runs leave: run locks in storage,
//! leases on backups being read, advisory-lock claims on temporary databases, and the
//! cleanup of leftovers.

pub mod claim;
pub mod lease;
pub mod leftovers;
pub mod lock;
