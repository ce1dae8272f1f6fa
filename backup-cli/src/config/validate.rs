//! From merged layers to a checked [`Config`]: unknown keys, bad values and inconsistent
//! settings are configuration errors (exit 2) that name the key and where it came from.

use backup_core::{Error, Result};
use figment::value::Value;
use figment::{Figment, Profile};
use serde::de::DeserializeOwned;

use super::{BackupSection, Config, RestoreSection, keys};

/// The configuration the merged layers describe.
pub(super) fn extract(fig: &Figment) -> Result<Config> {
    keys::check(fig)?;
    let mut config: Config = fig.extract().map_err(figment_error)?;
    // Core's settings and the command's own keys share these sections; each part reads
    // its keys directly, so an error names the key (serde's `flatten` would lose it).
    config.backup = BackupSection {
        settings: part(fig, "backup")?,
        after: part(fig, "backup")?,
    };
    config.restore = RestoreSection {
        settings: part(fig, "restore")?,
        safety: part(fig, "restore")?,
    };
    validate(&config)?;
    Ok(config)
}

/// One part of a `section` (the keys it does not know are another part's).
fn part<T: DeserializeOwned>(fig: &Figment, section: &str) -> Result<T> {
    if let Ok(v) = fig.find_value(section)
        && !matches!(v, Value::Dict(..))
    {
        return Err(Error::Config {
            key: section.into(),
            message: format!("must be a section ([{section}]), not a single value"),
        });
    }
    fig.focus(section).extract().map_err(|mut e| {
        e.path.insert(0, section.to_string());
        figment_error(e)
    })
}

/// Turn a figment error into a configuration error naming the key and where it came from.
pub(super) fn figment_error(e: figment::Error) -> Error {
    let key = if e.path.is_empty() {
        "configuration".to_string()
    } else {
        e.path.join(".")
    };
    let mut message = e.kind.to_string();
    if let Some(md) = &e.metadata {
        let src = match &md.source {
            Some(s) => s.to_string(),
            None => md.name.to_string(),
        };
        let keys: Vec<&str> = e.path.iter().map(String::as_str).collect();
        let origin = md.interpolate(&e.profile.clone().unwrap_or(Profile::Default), &keys);
        if md.name.as_ref() == "environment" || md.name.as_ref() == ".env file" {
            message.push_str(&format!(" (from {origin} in the {})", md.name));
        } else {
            message.push_str(&format!(" (in {src})"));
        }
    }
    Error::Config { key, message }
}

/// Checks across keys and of values serde accepts.
fn validate(c: &Config) -> Result<()> {
    let cfg = |key: &str, message: String| {
        Err(Error::Config {
            key: key.into(),
            message,
        })
    };
    if c.database.name.is_empty() {
        return cfg("database.name", "must not be empty".into());
    }
    if let Err(e) = backup_core::pg::check_database_name(&c.database.name) {
        return cfg("database.name", e.to_string());
    }
    if c.database.port == 0 {
        return cfg("database.port", "must be 1–65535".into());
    }
    if let Some(m) = &c.database.sslmode
        && ![
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ]
        .contains(&m.as_str())
    {
        return cfg("database.sslmode", format!("unknown sslmode {m:?}"));
    }
    if c.storage.targets.is_empty() {
        return cfg(
            "storage.targets",
            "at least one storage target is needed".into(),
        );
    }
    c.backup.settings.validate()?;
    c.restore.settings.validate()?;
    c.encryption.validate()?;
    c.integrity.validate()?;
    c.wal.validate()?;
    for n in &c.notify {
        n.common().events()?;
    }
    Ok(())
}

/// `production` or `prod`, in any case.
pub(super) fn says_production(s: &str) -> bool {
    matches!(
        s.trim().to_ascii_lowercase().as_str(),
        "production" | "prod"
    )
}

/// Whether restores into existing databases need confirmation.
pub fn is_production(c: &Config) -> bool {
    c.restore
        .safety
        .environment
        .as_deref()
        .is_some_and(says_production)
}
