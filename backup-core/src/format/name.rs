//! Backup names.

use chrono::Utc;

use crate::error::{Error, Result};

/// The default name, `backup_YYYYMMDD_HHMMSS` in UTC.
pub fn default_name() -> String {
    Utc::now().format("backup_%Y%m%d_%H%M%S").to_string()
}

/// Suffixes of stored data objects. `restore` and `verify` take a spec ending in one of
/// them for a file path, so a backup name must not end in one.
pub const DATA_SUFFIXES: &[&str] = &[".dump", ".tar", ".zst", ".age"];

/// Check a backup name: 1–200 characters of letters, digits, `_`, `-`, `.`;
/// not starting with `.` or `-`, and not a reserved word.
pub fn validate(name: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::usage(format!("invalid backup name {name:?}: {why}")));
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 200 {
        return bad("it is longer than 200 characters");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return bad(&format!(
            "character {c:?} is not allowed (use letters, digits, `_`, `-`, `.`)"
        ));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad("it must not start with `.` or `-`");
    }
    if name == "latest" {
        return bad("`latest` is reserved (it means the newest backup)");
    }
    if name.ends_with(".manifest.json") || name.ends_with(".verify.json") || name.ends_with(".lock")
    {
        return bad("it must not end in a reserved suffix");
    }
    if let Some(suffix) = DATA_SUFFIXES.iter().find(|s| name.ends_with(*s)) {
        return Err(Error::usage(format!(
            "invalid backup name {name:?}: it must not end in `{suffix}`: restore and verify take a name ending in {} as a file path, so this backup could not be found by its name; the stored file gets its suffix by itself, so use {:?}",
            DATA_SUFFIXES.join(" "),
            name.strip_suffix(suffix).unwrap_or(name)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate("backup_20240115_143000").is_ok());
        assert!(validate("pre_migration-backup.v2").is_ok());
        assert!(validate("nightly.dump.v2").is_ok());
        for bad in [
            "",
            "../x",
            "/etc/passwd",
            "a b",
            "a/b",
            ".hidden",
            "-x",
            "latest",
            "x\n",
            "é",
            "nightly.dump",
            "nightly.tar",
            "nightly.dump.zst",
            "nightly.age",
        ] {
            assert!(validate(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate(&default_name()).is_ok());
    }

    proptest::proptest! {
        /// No name panics; an accepted one is safe as a storage key and resolves as a name.
        #[test]
        fn any_name_is_accepted_cleanly_or_refused_with_a_usage_error(name in "\\PC{0,40}|[a-z._-]{0,12}(\\.dump|\\.tar|\\.zst|\\.age)?") {
            match validate(&name) {
                Ok(()) => {
                    proptest::prop_assert!(!name.contains('/') && !name.starts_with('.'));
                    proptest::prop_assert!(!DATA_SUFFIXES.iter().any(|s| name.ends_with(s)));
                }
                Err(e) => {
                    proptest::prop_assert_eq!(e.exit_code(), 2);
                    proptest::prop_assert!(e.to_string().contains("invalid backup name"));
                }
            }
        }
    }
}
