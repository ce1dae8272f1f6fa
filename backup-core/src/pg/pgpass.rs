//! `.pgpass` lookup, so our own connections find the same password libpq would.

use std::path::PathBuf;

use crate::secret::Secret;

fn pgpass_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PGPASSFILE") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass"))
}

/// Split one `.pgpass` line into its five fields, honouring `\:` and `\\`.
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next()
                    && let Some(last) = out.last_mut()
                {
                    last.push(n);
                }
            }
            ':' => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out
}

/// Find the password for these connection settings in a `.pgpass`-format text.
pub fn lookup_in(text: &str, host: &str, port: u16, db: &str, user: &str) -> Option<Secret> {
    let port = port.to_string();
    let host_matches =
        |h: &str| h == "*" || h == host || (h == "localhost" && host.starts_with('/'));
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(fields)
        .filter(|f| f.len() == 5)
        .find(|f| {
            host_matches(&f[0])
                && (f[1] == "*" || f[1] == port)
                && (f[2] == "*" || f[2] == db)
                && (f[3] == "*" || f[3] == user)
        })
        .map(|f| Secret::new(f[4].clone()))
}

/// The password libpq would take from the password file, if any.
pub fn lookup(host: &str, port: u16, db: &str, user: &str) -> Option<Secret> {
    let path = pgpass_path()?;
    let text = std::fs::read_to_string(path).ok()?;
    lookup_in(&text, host, port, db, user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_like_libpq() {
        let t = "# comment\ndb.example:5432:kaizen:kaizen_user:s3cr\\:et\n*:*:*:postgres:pg\n";
        assert_eq!(
            lookup_in(t, "db.example", 5432, "kaizen", "kaizen_user")
                .map(|s| s.expose().to_string()),
            Some("s3cr:et".into())
        );
        assert_eq!(
            lookup_in(t, "other", 1, "x", "postgres").map(|s| s.expose().to_string()),
            Some("pg".into())
        );
        assert!(lookup_in(t, "other", 1, "x", "nobody").is_none());
    }
}
