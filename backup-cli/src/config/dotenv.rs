//! `.env` in the working directory: read as a layer of its own (below the real
//! environment), and exported to the process for the libraries that read the
//! environment themselves (cloud SDK credentials).

use std::collections::HashMap;
use std::path::Path;

use backup_core::{Error, Result};

/// The variables of a `.env` file (none when there is no file).
pub(super) fn read(path: &Path) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    let iter = match dotenvy::from_path_iter(path) {
        Ok(it) => it,
        Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(Error::Config {
                key: ".env".into(),
                message: e.to_string(),
            });
        }
    };
    for item in iter {
        let (k, v) = item.map_err(|e| Error::Config {
            key: ".env".into(),
            message: e.to_string(),
        })?;
        out.insert(k, v);
    }
    Ok(out)
}

/// Set the `.env` variables the real environment does not set: they reach libraries
/// that read the environment, but never override it. Call before any thread starts.
pub(super) fn export(dotenv: &HashMap<String, String>, env: &HashMap<String, String>) {
    for (k, v) in dotenv {
        if !env.contains_key(k) {
            set_env(k, v);
        }
    }
}

#[allow(unsafe_code)]
fn set_env(k: &str, v: &str) {
    // SAFETY: setting a variable races with threads reading the environment; `load`
    // runs before the async runtime or any other thread starts.
    unsafe { std::env::set_var(k, v) }
}

/// The process environment (variables that are not UTF-8 are left out).
pub(super) fn snapshot() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}
