//! Small helpers shared by the pipelines.

/// Called with the number of bytes processed so far (drives progress bars).
pub type Progress = std::sync::Arc<dyn Fn(u64) + Send + Sync>;

/// The SHA-256 and size of every byte a stream yielded so far.
pub type HashState = std::sync::Arc<std::sync::Mutex<(sha2::Sha256, u64)>>;

/// Hash every chunk of `stream` as it is read (and tell `progress` the bytes so far):
/// what is checked against a manifest is what was read, whoever consumes the stream.
pub fn hash_tap(
    stream: crate::storage::ByteStream,
    progress: Option<Progress>,
) -> (crate::storage::ByteStream, HashState) {
    use futures::StreamExt;
    use sha2::Digest;
    let hash: HashState = std::sync::Arc::new(std::sync::Mutex::new((sha2::Sha256::new(), 0)));
    let tap = {
        let hash = hash.clone();
        stream
            .map(move |r| {
                if let Ok(b) = &r
                    && let Ok(mut h) = hash.lock()
                {
                    h.0.update(b);
                    h.1 += b.len() as u64;
                    if let Some(p) = &progress {
                        p(h.1);
                    }
                }
                r
            })
            .boxed()
    };
    (tap, hash)
}

/// `(sha256 hex, size)` of what a [`hash_tap`] saw.
pub fn digest(hash: &HashState) -> (String, u64) {
    use sha2::Digest;
    match hash.lock() {
        Ok(h) => (hex::encode(h.0.clone().finalize()), h.1),
        Err(_) => (String::new(), 0),
    }
}

/// This machine's host name, or `unknown`.
pub fn hostname() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".to_string())
}

/// A short tag for this host (hex of a hash of its name), for names of temporary files
/// and directories: with the process id it tells which run made them and whether that
/// run is gone ([`pid_alive`] on the same host).
pub fn host_tag() -> String {
    use sha2::{Digest, Sha256};
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| hex::encode(&Sha256::digest(hostname().as_bytes())[..4]))
        .clone()
}

/// Whether process `pid` exists on this host (signal 0; EPERM means it exists but is
/// not ours).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// SHA-256 (hex) and length of a buffer.
pub fn digest_bytes(data: &[u8]) -> (String, u64) {
    use sha2::Digest;
    (hex::encode(sha2::Sha256::digest(data)), data.len() as u64)
}

/// `PREFIX-<host tag>-<pid>-` for a temporary name made by this run
/// (see [`crate::leftovers`]).
pub fn owned_prefix(prefix: &str) -> String {
    format!("{prefix}-{}-{}-", host_tag(), std::process::id())
}

/// The OS user running the tool, or `unknown`.
pub fn os_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Size the way `du -h` / `ls -lh` print it (`2.3M`, `512K`, `17B`), as the old scripts did.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["K", "M", "G", "T", "P", "E"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if v < 10.0 {
        format!("{v:.1}{}", UNITS[i])
    } else {
        format!("{v:.0}{}", UNITS[i])
    }
}

/// A short random lowercase suffix for temporary names.
pub fn random_suffix(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// Log a `[SUCCESS]` line (the text formatter prints the target as the level).
#[macro_export]
macro_rules! success {
    ($($arg:tt)*) => {
        ::tracing::info!(target: "kaizen_backup::success", $($arg)*)
    };
}

/// Pipe capacity asked for between us and pg_dump/pg_restore. Linux's default (64 KiB)
/// makes the tool stall on a full pipe whenever we are briefly descheduled; 1 MiB is the
/// largest an unprivileged process may ask for by default. Failure is harmless.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const PIPE_SIZE: i32 = 1024 * 1024;

/// Widen a pipe to `PIPE_SIZE` where the platform allows it.
pub fn widen_pipe<F: std::os::fd::AsFd>(fd: &F) {
    #[cfg(target_os = "linux")]
    {
        use nix::fcntl::{FcntlArg, fcntl};
        if let Err(e) = fcntl(fd.as_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_SIZE)) {
            tracing::debug!("pipe kept at its default size: {e}");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = fd;
}

/// A private directory under `base` (created if missing) for `purpose`, after checking
/// that `base` has `required` bytes free. Removed with everything in it when dropped.
pub(crate) fn staging_dir(
    base: &std::path::Path,
    required: Option<u64>,
    purpose: &str,
) -> crate::Result<tempfile::TempDir> {
    use crate::Error;
    std::fs::create_dir_all(base)
        .map_err(|e| Error::io(format!("creating staging directory {}", base.display()), e))?;
    if let Some(required) = required {
        let avail = fs4::available_space(base)
            .map_err(|e| Error::io(format!("checking free space in {}", base.display()), e))?;
        if avail < required {
            return Err(Error::InsufficientSpace {
                available: human_size(avail),
                required: human_size(required),
                location: format!("{} ({purpose})", base.display()),
            });
        }
    }
    // Private from the start: it holds plaintext table data.
    #[cfg(unix)]
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::Permissions::from_mode(0o700)
    };
    let prefix = owned_prefix(crate::leftovers::STAGING_PREFIX);
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    #[cfg(unix)]
    builder.permissions(mode);
    builder.tempdir_in(base).map_err(|e| {
        Error::io(
            format!("creating a staging directory in {}", base.display()),
            e,
        )
    })
}

/// Test hook: when `KAIZEN_BACKUP_TEST_PAUSE` names `point`, stop there until the process
/// is killed, so that an end-to-end test can kill it at exactly that step.
pub async fn pause_point(point: &str) {
    if std::env::var("KAIZEN_BACKUP_TEST_PAUSE").is_ok_and(|v| v == point) {
        tracing::info!("Test pause point {point} reached; waiting to be killed");
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_size(17), "17B");
        assert_eq!(human_size(2_411_724), "2.3M");
        assert_eq!(human_size(512 * 1024), "512K");
        assert_eq!(human_size(3 * 1024 * 1024 * 1024), "3.0G");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn pipes_are_widened() {
        use nix::fcntl::{FcntlArg, fcntl};
        let (r, w) = nix::unistd::pipe().expect("pipe");
        widen_pipe(&w);
        let size = fcntl(&r, FcntlArg::F_GETPIPE_SZ).expect("F_GETPIPE_SZ");
        assert!(size >= PIPE_SIZE, "pipe is {size} bytes");
    }

    #[test]
    fn staging_is_refused_when_space_is_short() {
        let base = tempfile::tempdir().unwrap();
        let purpose = "staging of the parallel dump";
        let e = staging_dir(base.path(), Some(u64::MAX), purpose).unwrap_err();
        assert!(matches!(e, crate::Error::InsufficientSpace { .. }), "{e}");
        assert!(e.to_string().contains(purpose), "{e}");
        assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 0);
        let dir = staging_dir(base.path(), Some(1), purpose).unwrap();
        assert!(dir.path().starts_with(base.path()));
    }
}
