//! `sftp://[user@]host[:port]/path` through opendal, with the SSH agent and `~/.ssh/config`.

use backup_core::Result;

use crate::StorageOptions;
use crate::dal;
use crate::guard::Backend;
use crate::location::{Location, Remote};

/// Open `sftp://[user@]host[:port]/path`.
pub fn open(location: &Location, opts: &StorageOptions) -> Result<Box<dyn Backend>> {
    let url = location.parse()?;
    let Remote {
        host,
        port,
        path,
        display,
    } = Remote::of(&url)?;
    let user = if url.username().is_empty() {
        String::new()
    } else {
        format!("{}@", url.username())
    };
    let b = opendal::services::Sftp::default()
        .endpoint(&format!("ssh://{user}{host}{port}"))
        .root(&format!("{path}/"));
    dal::open(b, &display, display.clone(), opts)
}
