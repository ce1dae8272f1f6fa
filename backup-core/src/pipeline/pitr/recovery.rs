//! A data directory made ready for point-in-time recovery: the target, the checks on
//! the directory, unpacking a base backup, and the PostgreSQL 12+ recovery settings
//! (`recovery.signal` and `postgresql.auto.conf`, never `recovery.conf`).

use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, Utc};
use futures::StreamExt;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::error::{Error, Result};
use crate::storage::ByteStream;
use crate::wal::Lsn;

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// The end of the archived WAL (the latest point).
    Latest,
    /// Just after the last transaction committed at or before this time.
    Time(DateTime<Utc>),
    /// Just after this WAL position.
    Lsn(Lsn),
    /// A restore point made with `pg_create_restore_point`.
    Name(String),
    /// The end of the base backup: the earliest consistent point.
    BackupEnd,
}

impl fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryTarget::Latest => f.write_str("the end of the archived WAL"),
            RecoveryTarget::Time(t) => write!(f, "time {}", format_time(t)),
            RecoveryTarget::Lsn(l) => write!(f, "LSN {l}"),
            RecoveryTarget::Name(n) => write!(f, "restore point {n:?}"),
            RecoveryTarget::BackupEnd => f.write_str("the end of the base backup"),
        }
    }
}

/// A time as recovery settings and messages write it (UTC, microseconds).
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

/// Parse `YYYY-MM-DD HH:MM:SS[.ffffff][+TZ]` (`T` may replace the space; `Z`, `+HH`,
/// `+HHMM` or `+HH:MM` as the zone); UTC when no zone is given.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>> {
    let t = s.trim();
    let bad = || {
        Error::usage(format!(
            "invalid time {s:?}: expected YYYY-MM-DD HH:MM:SS[.ffffff][+TZ], e.g. \"2026-01-15 14:30:00+01\" (UTC when no zone is given)"
        ))
    };
    let normal = t.replacen('T', " ", 1);
    let (body, zone) = match normal
        .strip_suffix('Z')
        .or_else(|| normal.strip_suffix(" UTC"))
    {
        Some(b) => (b.to_string(), "+00:00".to_string()),
        None => {
            // The zone starts at the last '+' or at a '-' after the time of day.
            match normal.rfind(['+', '-']).filter(|&i| i > 10) {
                Some(i) => (normal[..i].to_string(), normal[i..].to_string()),
                None => (normal.clone(), "+00:00".to_string()),
            }
        }
    };
    let naive =
        NaiveDateTime::parse_from_str(body.trim(), "%Y-%m-%d %H:%M:%S%.f").map_err(|_| bad())?;
    let zone = zone.trim();
    let (sign, digits) = zone.split_at(1);
    let digits: String = digits.chars().filter(|c| *c != ':').collect();
    let (h, m) = match digits.len() {
        2 => (&digits[..2], "00"),
        4 => (&digits[..2], &digits[2..]),
        _ => return Err(bad()),
    };
    let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 15 || m > 59 {
        return Err(bad());
    }
    let offset = (h * 3600 + m * 60) * if sign == "-" { -1 } else { 1 };
    Ok(DateTime::<Utc>::from_naive_utc_and_offset(naive, Utc) - chrono::Duration::seconds(offset))
}

/// Quote a value for `postgresql.conf`.
fn conf_quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// The recovery settings for `target`, appended to `postgresql.auto.conf`.
pub fn settings(restore_command: &str, target: &RecoveryTarget) -> String {
    let mut s = String::from("\n# Added by kaizen-backup restore: point-in-time recovery.\n");
    s.push_str(&format!(
        "restore_command = {}\n",
        conf_quote(restore_command)
    ));
    s.push_str("recovery_target_timeline = 'latest'\n");
    match target {
        RecoveryTarget::Latest => {}
        RecoveryTarget::Time(t) => {
            s.push_str(&format!(
                "recovery_target_time = {}\n",
                conf_quote(&format_time(t))
            ));
        }
        RecoveryTarget::Lsn(l) => {
            s.push_str(&format!(
                "recovery_target_lsn = {}\n",
                conf_quote(&l.to_string())
            ));
        }
        RecoveryTarget::Name(n) => {
            s.push_str(&format!("recovery_target_name = {}\n", conf_quote(n)));
        }
        RecoveryTarget::BackupEnd => s.push_str("recovery_target = 'immediate'\n"),
    }
    if *target != RecoveryTarget::Latest {
        s.push_str("recovery_target_action = 'promote'\n");
    }
    s
}

/// The settings a recovery reads; a backup of a cluster that was itself restored still
/// has its old ones in `postgresql.auto.conf`.
const RECOVERY_KEYS: &[&str] = &[
    "restore_command",
    "recovery_end_command",
    "archive_cleanup_command",
    "recovery_target",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_lsn",
    "recovery_target_inclusive",
    "recovery_target_timeline",
    "recovery_target_action",
];

/// `postgresql.auto.conf` with earlier recovery settings commented out (two targets
/// would stop the server: "multiple recovery targets specified").
pub fn without_recovery_settings(conf: &str) -> String {
    let mut out = String::with_capacity(conf.len());
    for line in conf.lines() {
        let key: String = line
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect::<String>()
            .to_ascii_lowercase();
        if RECOVERY_KEYS.contains(&key.as_str()) {
            out.push_str("# Replaced by kaizen-backup restore: ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Check that `dir` may be filled: missing, or an empty directory. Never a running
/// cluster's directory, never one with anything in it.
pub fn check_target_dir(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if let Some(first) = entries.next() {
                let first = first
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .unwrap_or_default();
                return Err(Error::Refused(format!(
                    "{} is not empty (it holds {first:?}{}); restore fills only an empty or missing directory and never touches an existing cluster",
                    dir.display(),
                    if dir.join("postmaster.pid").exists() {
                        ", and a server may be running there"
                    } else {
                        ""
                    }
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
            if let Some(p) = parent
                && !p.is_dir()
            {
                return Err(Error::Refused(format!(
                    "cannot create {}: {} does not exist",
                    dir.display(),
                    p.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(Error::Refused(format!(
            "{} exists and is not a directory",
            dir.display()
        ))),
        Err(e) => Err(Error::io(format!("cannot read {}", dir.display()), e)),
    }
}

/// Create `dir` (0700) if it is missing.
pub fn create_target_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    }
    set_mode(dir, 0o700)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("cannot set the mode of {}", path.display()), e))
}

/// Unpack a base backup's tar stream into `dir`. Entries that would land outside `dir`
/// are refused; the stream is read to its end, so a hash tap upstream sees every byte.
pub async fn unpack_tar(stream: ByteStream, dir: &Path) -> Result<u64> {
    let reader = StreamReader::new(stream.map(|r| r.map_err(std::io::Error::other)));
    let bridge = SyncIoBridge::new(reader);
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<u64> {
        let mut bridge = bridge;
        let mut archive = tar::Archive::new(&mut bridge);
        archive.set_preserve_permissions(true);
        archive.set_overwrite(false);
        let mut files = 0u64;
        let entries = archive.entries().map_err(tar_err)?;
        for entry in entries {
            let mut entry = entry.map_err(tar_err)?;
            if !entry.unpack_in(&dir).map_err(tar_err)? {
                return Err(Error::Corrupt(format!(
                    "base backup: entry {:?} would be written outside the data directory",
                    entry
                        .path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                )));
            }
            files += 1;
        }
        // Read whatever follows the end-of-archive marker, so every byte is hashed.
        std::io::copy(&mut bridge, &mut std::io::sink())
            .map_err(|e| Error::Corrupt(format!("base backup: {e}")))?;
        Ok(files)
    })
    .await
    .map_err(|e| Error::other(format!("unpack task: {e}")))?
}

fn tar_err(e: std::io::Error) -> Error {
    match e.into_inner().map(|inner| inner.downcast::<Error>()) {
        Some(Ok(original)) => *original,
        Some(Err(other)) => Error::Corrupt(format!("base backup archive: {other}")),
        None => Error::Corrupt("base backup archive: read failed".into()),
    }
}

/// Give every file under `dir` to `uid:gid` (a restore run as root for a server that
/// runs as its own user).
pub fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
            .map_err(|e| Error::io(format!("cannot change the owner of {}", p.display()), e))?;
        let md = std::fs::symlink_metadata(&p)
            .map_err(|e| Error::io(format!("cannot read {}", p.display()), e))?;
        if md.is_dir() {
            for entry in std::fs::read_dir(&p)
                .map_err(|e| Error::io(format!("cannot read {}", p.display()), e))?
            {
                let entry =
                    entry.map_err(|e| Error::io(format!("cannot read {}", p.display()), e))?;
                stack.push(entry.path());
            }
        }
    }
    Ok(())
}

/// Make `dir` start as a recovering server: `recovery.signal`, the settings appended to
/// `postgresql.auto.conf`, and a `backup_label` check (a base backup always has one).
pub fn write_recovery(dir: &Path, restore_command: &str, target: &RecoveryTarget) -> Result<()> {
    use std::io::Write;
    if !dir.join("backup_label").is_file() {
        return Err(Error::Corrupt(
            "the base backup has no backup_label: it is not a pg_basebackup archive".into(),
        ));
    }
    let auto = dir.join("postgresql.auto.conf");
    let before = match std::fs::read_to_string(&auto) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(format!("cannot read {}", auto.display()), e)),
    };
    let text = without_recovery_settings(&before) + &settings(restore_command, target);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .open(&auto)
        .map_err(|e| Error::io(format!("cannot open {}", auto.display()), e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(format!("cannot write {}", auto.display()), e))?;
    let signal = dir.join("recovery.signal");
    std::fs::write(&signal, b"")
        .map_err(|e| Error::io(format!("cannot write {}", signal.display()), e))?;
    set_mode(&signal, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_documented_form() {
        let utc = |s: &str| parse_time(s).unwrap().to_rfc3339();
        assert_eq!(utc("2026-01-15 14:30:00"), "2026-01-15T14:30:00+00:00");
        assert_eq!(
            utc("2026-01-15 14:30:00.123456"),
            "2026-01-15T14:30:00.123456+00:00"
        );
        assert_eq!(utc("2026-01-15 14:30:00+01"), "2026-01-15T13:30:00+00:00");
        assert_eq!(
            utc("2026-01-15 14:30:00-02:30"),
            "2026-01-15T17:00:00+00:00"
        );
        assert_eq!(utc("2026-01-15T14:30:00Z"), "2026-01-15T14:30:00+00:00");
        assert_eq!(
            utc("2026-01-15 14:30:00.5+0100"),
            "2026-01-15T13:30:00.500+00:00"
        );
        for bad in [
            "",
            "yesterday",
            "2026-01-15",
            "2026-13-01 00:00:00",
            "2026-01-15 14:30:00+1",
            "2026-01-15 14:30:00+99",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn settings_quote_values_and_promote() {
        let s = settings(
            "/usr/bin/kaizen-backup wal-fetch '%f' %p",
            &RecoveryTarget::Name("it's".into()),
        );
        assert!(
            s.contains("restore_command = '/usr/bin/kaizen-backup wal-fetch ''%f'' %p'\n"),
            "{s}"
        );
        assert!(s.contains("recovery_target_name = 'it''s'\n"));
        assert!(s.contains("recovery_target_action = 'promote'\n"));
        let s = settings("x", &RecoveryTarget::Latest);
        assert!(!s.contains("recovery_target_action") && !s.contains("recovery_target_time ="));
        let t = parse_time("2026-01-15 14:30:00.000001").unwrap();
        assert!(
            settings("x", &RecoveryTarget::Time(t))
                .contains("recovery_target_time = '2026-01-15 14:30:00.000001+00'")
        );
    }

    #[test]
    fn earlier_recovery_settings_are_commented_out() {
        let conf = "# Do not edit this file manually!\nwork_mem = '8MB'\nrestore_command = 'cp /x/%f %p'\n  Recovery_Target_Time = '2026-01-01 00:00:00+00'\nrecovery_target_timeline='latest'\nrecovery_targets_are_not_a_setting = 1\n";
        let out = without_recovery_settings(conf);
        assert_eq!(
            out,
            "# Do not edit this file manually!\nwork_mem = '8MB'\n# Replaced by kaizen-backup restore: restore_command = 'cp /x/%f %p'\n# Replaced by kaizen-backup restore:   Recovery_Target_Time = '2026-01-01 00:00:00+00'\n# Replaced by kaizen-backup restore: recovery_target_timeline='latest'\nrecovery_targets_are_not_a_setting = 1\n"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("backup_label"), "x").unwrap();
        std::fs::write(dir.path().join("postgresql.auto.conf"), conf).unwrap();
        write_recovery(dir.path(), "true", &RecoveryTarget::BackupEnd).unwrap();
        let written = std::fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap();
        let active: Vec<&str> = written
            .lines()
            .filter(|l| l.trim_start().to_lowercase().starts_with("re"))
            .collect();
        assert_eq!(
            active,
            [
                "recovery_targets_are_not_a_setting = 1",
                "restore_command = 'true'",
                "recovery_target_timeline = 'latest'",
                "recovery_target = 'immediate'",
                "recovery_target_action = 'promote'"
            ]
        );
        assert!(dir.path().join("recovery.signal").is_file());
    }

    #[test]
    fn target_directory_checks() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("new");
        check_target_dir(&missing).unwrap();
        create_target_dir(&missing).unwrap();
        check_target_dir(&missing).unwrap();
        std::fs::write(missing.join("PG_VERSION"), "15").unwrap();
        let e = check_target_dir(&missing).unwrap_err().to_string();
        assert!(e.contains("not empty"), "{e}");
        assert!(check_target_dir(&tmp.path().join("no/such/dir")).is_err());
    }
}
