//! `webdav://host[:port]/path` (`webdavs://` for HTTPS) through opendal.
//!
//! Credentials from `[storage.webdav]` (`user`, `password`). WebDAV has no multi-part
//! writes: each object is sent in one PUT (see [`crate::dal::ONE_SHOT_LIMIT`]).

use backup_core::Result;

use crate::StorageOptions;
use crate::dal;
use crate::guard::Backend;
use crate::location::{Location, Remote};

/// Open `webdav://host[:port]/path` or `webdavs://…`.
pub fn open(location: &Location, opts: &StorageOptions) -> Result<Box<dyn Backend>> {
    let url = location.parse()?;
    let Remote {
        host,
        port,
        path,
        display,
    } = Remote::of(&url)?;
    let http = if url.scheme() == "webdavs" {
        "https"
    } else {
        "http"
    };
    let mut b = opendal::services::Webdav::default()
        .endpoint(&format!("{http}://{host}{port}"))
        .root(&format!("{path}/"));
    if let Some(u) = &opts.webdav.user {
        b = b.username(u);
    }
    if let Some(p) = &opts.webdav.password {
        b = b.password(p.expose());
    }
    dal::open(b, &display, display.clone(), opts)
}
