//! Point-in-time restore into a data directory.
//!
//! ```text
//! physical backups + WAL archive listing ──▶ the recoverable window (window.rs)
//!        │ target outside it, a gap before it, a non-empty directory: refuse, nothing written
//!        ▼
//! base backup ─▶ SHA-256 ─▶ age ─▶ zstd ─▶ untar into DIR (marked incomplete)
//!        ▼
//! recovery.signal + restore_command/recovery_target_* in postgresql.auto.conf ─▶ unmark
//! ```
//!
//! Every check that can refuse runs before the directory is created. A restore killed
//! half-way leaves its marker file in the directory; the next restore into it removes
//! what the killed one wrote and starts again (any other non-empty directory is refused).

pub mod recovery;
pub mod window;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::catalog::{self, BackupEntry};
use crate::codec::{self, DecryptKeys};
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::wal::{self, Lsn, TimelineSwitch, segment_name};
use crate::walarchive::{self, ArchivedFile};
use recovery::{RecoveryTarget, format_time};
use window::{BaseBackup, Coverage, WalScan};

/// Marks a data directory that a restore is still filling.
pub const INCOMPLETE_MARKER: &str = ".kaizen-restore-incomplete";

/// How many segments a restore-point search reads at most.
const NAME_SCAN_LIMIT: u64 = 64;

/// What to restore and where.
#[derive(Debug, Clone)]
pub struct PitrOptions {
    /// The data directory to fill (missing or empty).
    pub pgdata: PathBuf,
    /// Where recovery stops.
    pub target: RecoveryTarget,
    /// A base backup by name; `None` picks the newest one before the target.
    pub backup: Option<String>,
    /// The `restore_command` the server will run (`… wal-fetch %f %p`).
    pub restore_command: String,
    /// Turn archiving off in the restored server (a look at the past must not add a
    /// timeline to the archive).
    pub no_archive: bool,
    /// Keys for encrypted backups and WAL.
    pub keys: DecryptKeys,
    /// Where `pg_waldump` is (the server's binaries).
    pub bin_dir: Option<PathBuf>,
    /// `[integrity] verify_keys`: the base backup must be signed by one of them (none:
    /// no signature is required).
    pub verify_keys: Vec<crate::signing::VerifyKey>,
}

/// The recoverable window of a WAL archive with its base backups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The earliest point: the end of the oldest usable base backup.
    pub from_time: DateTime<Utc>,
    /// Its LSN.
    pub from_lsn: Lsn,
    /// The last transaction in the gap-free archive after the chosen backup.
    pub to_time: Option<DateTime<Utc>>,
    /// The end of the gap-free archive (or of the backup, without archived WAL).
    pub to_lsn: Lsn,
    /// The first missing segment, when WAL after it exists.
    pub gap: Option<String>,
    /// The timeline recovery follows.
    pub timeline: u32,
    /// The window ends in a partial segment (stored by `wal-receive` while it was being
    /// written).
    pub partial: bool,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let to = self.to_time.map_or_else(
            || "the end of the base backup".to_string(),
            |t| format_time(&t),
        );
        write!(
            f,
            "recoverable window: {} (LSN {}) to {to} (LSN {}) on timeline {}",
            format_time(&self.from_time),
            self.from_lsn,
            self.to_lsn,
            self.timeline
        )?;
        if self.partial {
            write!(f, ", the end in a partial segment")?;
        }
        if let Some(g) = &self.gap {
            write!(
                f,
                "; WAL segment {g} is missing from the archive, later WAL cannot be used"
            )?;
        }
        Ok(())
    }
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct PitrOutcome {
    /// The base backup used.
    pub backup: String,
    /// The window it was checked against.
    pub window: Window,
    /// Files unpacked.
    pub files: u64,
}

/// Read a timeline's history from the archive (empty for timeline 1).
pub(crate) async fn history(
    wal_store: &Arc<dyn Storage>,
    timeline: u32,
    keys: &DecryptKeys,
    scratch: &Path,
) -> Result<Vec<TimelineSwitch>> {
    if timeline <= 1 {
        return Ok(Vec::new());
    }
    let name = format!("{timeline:08X}.history");
    let dest = scratch.join(&name);
    walarchive::fetch(std::slice::from_ref(wal_store), &name, &dest, keys).await?;
    let text = std::fs::read_to_string(&dest)
        .map_err(|e| Error::io(format!("cannot read {}", dest.display()), e))?;
    wal::parse_history(&text)
}

/// Fetch segments into `scratch` and run pg_waldump over them.
async fn scan(
    wal_store: &Arc<dyn Storage>,
    segments: &[String],
    opts: &PitrOptions,
    scratch: &Path,
) -> Result<WalScan> {
    let tool = crate::pg::find_tool("pg_waldump", opts.bin_dir.as_deref()).await?;
    // One segment at a time: the range may cross timelines, which pg_waldump cannot.
    let mut all = WalScan::default();
    for s in segments {
        let path = scratch.join(s);
        walarchive::fetch(std::slice::from_ref(wal_store), s, &path, &opts.keys).await?;
        let one = window::scan_wal(&tool.path, scratch, s, s).await?;
        let _ = std::fs::remove_file(&path);
        if one.last_xact_time.is_some() {
            all.last_xact_time = one.last_xact_time;
            all.last_xact_lsn = one.last_xact_lsn;
        }
        all.restore_points.extend(one.restore_points);
        if one.last_record_lsn.is_some() {
            all.last_record_lsn = one.last_record_lsn;
        }
    }
    Ok(all)
}

/// Decide the base backup and check the target against the window. Nothing is written
/// to the data directory.
pub async fn plan(
    backups: &dyn Storage,
    wal_store: &Arc<dyn Storage>,
    opts: &PitrOptions,
) -> Result<(BackupEntry, Window)> {
    let cat = catalog::scan(backups).await?;
    let physical: Vec<&BackupEntry> = cat
        .backups
        .iter()
        .filter(|b| b.manifest.physical.is_some())
        .collect();
    let Some(newest) = physical.first() else {
        return Err(Error::NotFound(format!(
            "no physical backup in {}: take one with `kaizen-backup backup --physical`",
            backups.url()
        )));
    };
    let segment_size = newest
        .manifest
        .physical
        .as_ref()
        .map_or(wal::DEFAULT_SEGMENT_SIZE, |p| p.wal_segment_size);
    let files: Vec<ArchivedFile> = walarchive::list(wal_store.as_ref()).await?;
    // Decrypted WAL lands here (0700); named like restore's scratch, so a killed run's
    // copy is removed by the next backup, restore, verify or prune on this host.
    let scratch = tempfile::Builder::new()
        .prefix(&crate::util::owned_prefix(crate::leftovers::RESTORE_PREFIX))
        .tempdir()
        .map_err(|e| Error::io("cannot create a temporary directory", e))?;
    let timeline = window::recovery_timeline(&files, segment_size, &physical);
    let hist = history(wal_store, timeline, &opts.keys, scratch.path()).await?;
    let on_path: Vec<(&BackupEntry, BaseBackup)> = physical
        .iter()
        .filter_map(|e| BaseBackup::of(e).map(|b| (*e, b)))
        .filter(|(_, b)| window::on_path(&hist, timeline, b))
        .collect();
    let Some(oldest) = on_path.last().map(|(_, b)| b.clone()) else {
        return Err(Error::NotFound(format!(
            "no physical backup in {} lies on timeline {timeline}'s history",
            backups.url()
        )));
    };

    // The backup: named, or the newest one that ends before the target.
    let chosen = match &opts.backup {
        Some(name) => on_path
            .iter()
            .find(|(e, _)| &e.manifest.name == name)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "physical backup {name:?} is not in {} or not on timeline {timeline}'s history (see `kaizen-backup list`)",
                    backups.url()
                ))
            })?,
        None => {
            let fits = |b: &BaseBackup| match &opts.target {
                RecoveryTarget::Time(t) => b.stop_time <= *t,
                RecoveryTarget::Lsn(l) => b.end_lsn <= *l,
                _ => true,
            };
            match on_path.iter().find(|(_, b)| fits(b)) {
                Some(c) => c,
                None => {
                    let w = Window {
                        from_time: oldest.stop_time,
                        from_lsn: oldest.end_lsn,
                        to_time: None,
                        to_lsn: oldest.end_lsn,
                        gap: None,
                        timeline,
                        partial: false,
                    };
                    return Err(Error::Refused(format!(
                        "{} is before the earliest point this archive can restore: {w}",
                        opts.target
                    )));
                }
            }
        }
    };
    let (entry, base) = (chosen.0.clone(), chosen.1.clone());
    // Before anything is written: the base backup names its own objects and, with
    // verify keys, carries a valid signature.
    entry.manifest.check_names(&entry.manifest.name)?;
    crate::signing::authenticate(&entry.manifest, &opts.verify_keys)?;
    let cov: Coverage = window::coverage(&files, &hist, timeline, base.start_lsn, segment_size);
    let to_lsn = cov.end_lsn.unwrap_or(base.end_lsn).max(base.end_lsn);
    let mut w = Window {
        from_time: oldest.stop_time,
        from_lsn: oldest.end_lsn,
        to_time: None,
        to_lsn,
        gap: cov.gap.clone(),
        timeline,
        partial: cov.partial,
    };
    let names_of = |from: u64, to: u64| -> Vec<String> {
        (from..=to)
            .map(|s| {
                segment_name(
                    window::timeline_of_segment(&hist, timeline, s, segment_size),
                    s,
                    segment_size,
                )
            })
            .collect()
    };
    let first_seg = base.start_lsn.segment(segment_size);
    let last_seg = cov.last.map(|(_, s)| s);
    let needs_time = matches!(
        opts.target,
        RecoveryTarget::Time(_) | RecoveryTarget::Latest
    );
    if (needs_time || cov.partial)
        && let Some(last) = last_seg
    {
        // The last transaction: the newest segments hold it (a quiet archive may end with
        // segments that hold none, so look back a few). A partial last segment (served
        // under the segment's name) reaches as far as its last record.
        let from = last.saturating_sub(3).max(first_seg);
        let s = scan(wal_store, &names_of(from, last), opts, scratch.path()).await?;
        w.to_time = s.last_xact_time;
        if cov.partial {
            let in_partial = s
                .last_record_lsn
                .filter(|l| l.segment(segment_size) == last)
                .unwrap_or(Lsn(last * segment_size));
            w.to_lsn = in_partial.max(base.end_lsn);
        }
    }
    let refuse =
        |why: &str, w: &Window| Err(Error::Refused(format!("{} is {why}: {w}", opts.target)));
    match &opts.target {
        RecoveryTarget::Time(t) => {
            if *t < base.stop_time {
                return refuse("before the end of the chosen base backup", &w);
            }
            match w.to_time {
                Some(end) if *t <= end => {}
                _ => return refuse("after the last transaction in the archive", &w),
            }
        }
        RecoveryTarget::Lsn(l) => {
            if *l < base.end_lsn {
                return refuse("before the end of the chosen base backup", &w);
            }
            if *l > w.to_lsn {
                return refuse("after the end of the archived WAL", &w);
            }
        }
        RecoveryTarget::Latest => {
            if w.gap.is_some() {
                return refuse("past a gap in the archive", &w);
            }
        }
        RecoveryTarget::Name(name) => {
            if let Some(last) = last_seg {
                if last - first_seg < NAME_SCAN_LIMIT {
                    let s =
                        scan(wal_store, &names_of(first_seg, last), opts, scratch.path()).await?;
                    if !s.restore_points.iter().any(|(n, _)| n == name) {
                        return refuse("not in the archived WAL after the chosen base backup", &w);
                    }
                } else {
                    warn!(
                        "restore point {name:?}: the archive is too long to search; PostgreSQL will stop with an error if it is not there"
                    );
                }
            } else {
                return refuse("not in the archived WAL (no WAL after the base backup)", &w);
            }
        }
        RecoveryTarget::BackupEnd => {}
    }
    Ok((entry, w))
}

/// Check the target, then fill `opts.pgdata` from the base backup and write the
/// recovery settings.
pub async fn restore(
    backups: &Arc<dyn Storage>,
    wal_store: &Arc<dyn Storage>,
    opts: &PitrOptions,
) -> Result<PitrOutcome> {
    clear_interrupted(&opts.pgdata)?;
    recovery::check_target_dir(&opts.pgdata)?;
    let (entry, window) = plan(backups.as_ref(), wal_store, opts).await?;
    info!(
        "Restoring physical backup {} into {} to {} ({window})",
        entry.manifest.name,
        opts.pgdata.display(),
        opts.target
    );
    let created = !opts.pgdata.exists();
    recovery::create_target_dir(&opts.pgdata)?;
    let marker = opts.pgdata.join(INCOMPLETE_MARKER);
    std::fs::write(&marker, b"")
        .map_err(|e| Error::io(format!("cannot write {}", marker.display()), e))?;
    match fill(backups.as_ref(), &entry, opts).await {
        Ok(files) => {
            std::fs::remove_file(&marker)
                .map_err(|e| Error::io(format!("cannot remove {}", marker.display()), e))?;
            Ok(PitrOutcome {
                backup: entry.manifest.name.clone(),
                window,
                files,
            })
        }
        Err(e) => {
            // Nothing half-done: what this run wrote goes.
            let cleaned = if created {
                std::fs::remove_dir_all(&opts.pgdata)
            } else {
                empty_dir(&opts.pgdata)
            };
            if let Err(c) = cleaned {
                warn!("could not remove {}: {c}", opts.pgdata.display());
            }
            Err(e)
        }
    }
}

/// A directory a killed restore left (its marker is there): empty it.
fn clear_interrupted(dir: &Path) -> Result<()> {
    if dir.join(INCOMPLETE_MARKER).is_file() && !dir.join("postmaster.pid").exists() {
        warn!(
            "{} was left by an interrupted restore; removing what it wrote",
            dir.display()
        );
        empty_dir(dir).map_err(|e| Error::io(format!("cannot empty {}", dir.display()), e))?;
    }
    Ok(())
}

fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

async fn fill(backups: &dyn Storage, entry: &BackupEntry, opts: &PitrOptions) -> Result<u64> {
    let m = &entry.manifest;
    let stored = backups.get(&m.object).await?;
    let (tapped, hash) = crate::util::hash_tap(stored, None);
    let plain = match codec::decoder_for(m, &opts.keys)? {
        Some(decode) => decode(tapped)?,
        None => tapped,
    };
    let unpacked = recovery::unpack_tar(plain, &opts.pgdata).await;
    let (sha, size) = crate::util::digest(&hash);
    if size != m.size_bytes || sha != m.sha256 {
        return Err(Error::Corrupt(format!(
            "checksum mismatch for {}: {size} bytes with SHA-256 {sha}, the manifest says {} bytes with {}",
            m.object, m.size_bytes, m.sha256
        )));
    }
    let files = unpacked?;
    recovery::write_recovery(&opts.pgdata, &opts.restore_command, &opts.target)?;
    if opts.no_archive {
        use std::io::Write;
        let auto = opts.pgdata.join("postgresql.auto.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&auto)
            .map_err(|e| Error::io(format!("cannot open {}", auto.display()), e))?;
        f.write_all(b"archive_mode = 'off'\n")
            .map_err(|e| Error::io(format!("cannot write {}", auto.display()), e))?;
    }
    own_like_parent(&opts.pgdata)?;
    Ok(files)
}

/// Run as root, give the directory to the owner of its parent (the server's OS user
/// must own its data directory).
fn own_like_parent(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let md = std::fs::metadata(&parent)
        .map_err(|e| Error::io(format!("cannot read {}", parent.display()), e))?;
    if md.uid() != 0 {
        recovery::chown_tree(dir, md.uid(), md.gid())?;
    }
    Ok(())
}
