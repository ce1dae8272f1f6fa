//! What is stored and how it is named: the manifest, the stream codecs, the tar
//! archive of parallel dumps, backup names, pg_dump's table of contents (and the rows in its data blocks), WAL names.

pub mod codec;
pub mod manifest;
pub mod name;
pub mod rows;
pub mod signing;
pub mod tar;
pub mod toc;
pub mod wal;
