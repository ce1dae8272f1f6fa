//! Backup names.

use chrono::Utc;

use crate::error::{Error, Result};

/// The default name, `backup_YYYYMMDD_HHMMSS` in UTC.
pub fn default_name() -> String {
    Utc::now().format("backup_%Y%m%d_%H%M%S").to_string()
}

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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate("backup_20240115_143000").is_ok());
        assert!(validate("pre_migration-backup.v2").is_ok());
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
        ] {
            assert!(validate(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate(&default_name()).is_ok());
    }
}
