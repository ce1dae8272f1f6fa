//! `kaizen-backup report --html FILE`: one self-contained page (inline CSS and SVG, no
//! script, nothing fetched) of what every target holds, read through
//! [`backup_core::overview`] like `status`.
//!
//! ```text
//! Ctx::overviews ─▶ html::render: newest backups, then per target history.rs (per database),
//!                  recovery.rs (window, WAL, drills); svg.rs draws, fmt.rs escapes and words
//!                ─▶ FILE.tmp in FILE's directory ─▶ fsync ─▶ rename onto FILE
//! ```

use std::io::Write;
use std::path::Path;

use backup_core::util::human_size;
use backup_core::{Error, Result};
use tracing::info;

use crate::ctx::Ctx;

mod fmt;
mod history;
mod html;
mod recovery;
mod svg;

pub async fn run(ctx: &Ctx, file: &Path) -> Result<()> {
    let overviews = ctx.overviews().await?;
    let page = html::render(&overviews);
    write_atomically(file, page.as_bytes())?;
    let backups: usize = overviews
        .iter()
        .filter_map(|o| o.catalog.as_ref().ok())
        .map(|c| c.backups.len())
        .sum();
    info!(
        "Report written to {} ({}, {backups} backup(s) in {} target(s))",
        file.display(),
        human_size(page.len() as u64),
        overviews.len()
    );
    Ok(())
}

/// Write `bytes` to a temporary file beside `file`, then rename it over `file`: a reader
/// (a web server, a CI artifact upload) sees the old page or the new one, never half.
fn write_atomically(file: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let cannot = |what: &str, e: std::io::Error| {
        Error::io(format!("cannot {what} the report {}", file.display()), e)
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".kaizen-report-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| cannot("create a temporary file for", e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| cannot("write", e))?;
    // A page others read (the temporary file is created 0600).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(|e| cannot("write", e))?;
    }
    tmp.persist(file).map_err(|e| cannot("replace", e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_replaced_whole_and_no_temporary_file_stays() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("r.html");
        write_atomically(&file, b"one").unwrap_or_else(|e| panic!("{e}"));
        write_atomically(&file, b"two").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read(&file).ok().as_deref(), Some(&b"two"[..]));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["r.html"]);
        let missing = dir.path().join("no/such/dir/r.html");
        let err = write_atomically(&missing, b"x").map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("no/such/dir/r.html"), "{err}");
    }
}
