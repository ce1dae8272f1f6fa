//! Configuration: figment layers, lowest first —
//!
//! ```text
//! built-in defaults
//! KAIZEN_BACKUP_AGE_* (.env, then environment)   below the files: configuration wins
//! /etc/kaizen-backup/config.toml
//! ./kaizen-backup.toml or --config
//! .env in the working directory                  old script variables, KAIZEN_BACKUP_*
//! the environment                                the same
//! command-line flags
//! old notifier variables (SLACK_WEBHOOK_URL, …)  appended to [[notify]]
//! ```
//!
//! `schema` is the shape, `vars` turns variables into keys (secrets included), `dotenv`
//! reads `.env`, `validate` extracts and checks, `keys` refuses unknown keys, `show` is
//! the `config show` listing, `targets` opens the storage targets.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backup_core::{Error, Result};
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::{Figment, Provider};

use crate::cli::{GlobalArgs, LogFormat};

mod dotenv;
mod keys;
mod schema;
mod show;
mod targets;
mod validate;
mod vars;

pub use schema::*;
pub use show::describe;
pub use targets::TargetSpec;
pub use validate::is_production;

use vars::{VarLayer, insert_path};

/// System-wide configuration file.
pub const SYSTEM_CONFIG: &str = "/etc/kaizen-backup/config.toml";
/// Per-directory configuration file.
pub const LOCAL_CONFIG: &str = "kaizen-backup.toml";
/// Prefix of this tool's own environment variables.
pub const ENV_PREFIX: &str = "KAIZEN_BACKUP_";

/// A loaded configuration with the figment it came from (for `config show`).
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub figment: Figment,
    /// The layer that said `production`, which wins over every other layer's environment.
    pub production_from: Option<String>,
    /// The configuration files that were read, lowest first, as absolute paths (a
    /// `restore_command` written for the server names them).
    pub files: Vec<PathBuf>,
    /// `--storage` flags.
    pub storage_flags: Vec<String>,
}

/// Load the configuration for these flags.
pub fn load(global: &GlobalArgs) -> Result<Loaded> {
    let env = dotenv::snapshot();
    let dotenv = dotenv::read(Path::new(".env"))?;
    dotenv::export(&dotenv, &env);
    from_layers(global, &env, &dotenv)
}

/// The configuration these flags, variables (of the environment and of `.env`) and the
/// files they name describe.
fn from_layers(
    global: &GlobalArgs,
    env: &HashMap<String, String>,
    dotenv: &HashMap<String, String>,
) -> Result<Loaded> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    for layer in [
        vars::age_layer(".env file", dotenv)?,
        vars::age_layer("environment", env)?,
    ] {
        fig = fig.merge(layer);
    }
    // Production wins: the first layer that says so, whatever a later layer says.
    let mut production_from = None;
    let files = config_files(global)?;
    for path in &files {
        let layer = Toml::file_exact(path);
        if production_from.is_none() && layer_says_production(&layer) {
            production_from = Some(figment::Source::File(path.clone()).to_string());
        }
        fig = fig.merge(layer);
    }
    for layer in [
        vars::var_layer(".env file", dotenv)?,
        vars::var_layer("environment", env)?,
    ] {
        if production_from.is_none() && layer_says_production(&layer) {
            let var = layer
                .origin
                .get("restore.environment")
                .cloned()
                .unwrap_or_default();
            production_from = Some(format!("{} ({var})", layer.name));
        }
        fig = fig.merge(layer);
    }
    if let Some(flags) = flag_layer(global) {
        fig = fig.merge(flags);
    }
    // Appended to the configured list; a `notify` that is no list is left for extraction
    // to report (appending would replace it).
    let listed = fig
        .find_value("notify")
        .map_or(true, |v| matches!(v, Value::Array(..)));
    if listed {
        for layer in vars::notify_layers(env, dotenv)? {
            fig = fig.admerge(layer);
        }
    }

    let mut config = validate::extract(&fig)?;
    if production_from.is_some() && !is_production(&config) {
        config.restore.safety.environment = Some("production".into());
    }
    Ok(Loaded {
        config,
        figment: fig,
        production_from,
        files: files
            .iter()
            .map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone()))
            .collect(),
        storage_flags: global.storage.clone(),
    })
}

/// The configuration files that exist, lowest first (`--config` must exist).
fn config_files(global: &GlobalArgs) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if Path::new(SYSTEM_CONFIG).is_file() {
        files.push(PathBuf::from(SYSTEM_CONFIG));
    }
    match &global.config {
        Some(path) if !path.is_file() => {
            return Err(Error::Config {
                key: "--config".into(),
                message: format!("{} does not exist or is not a file", path.display()),
            });
        }
        Some(path) => files.push(path.clone()),
        None if Path::new(LOCAL_CONFIG).is_file() => files.push(PathBuf::from(LOCAL_CONFIG)),
        None => {}
    }
    Ok(files)
}

/// Command-line flags, the highest layer (None when no flag sets a key).
fn flag_layer(global: &GlobalArgs) -> Option<VarLayer> {
    let mut flags = Dict::new();
    if !global.storage.is_empty() {
        let urls = global.storage.iter().map(|s| Value::from(s.clone()));
        insert_path(
            &mut flags,
            &["storage", "targets"],
            Value::from(urls.collect::<Vec<_>>()),
        );
    }
    if let Some(f) = global.log_format {
        let s = match f {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        insert_path(&mut flags, &["log", "format"], Value::from(s.to_string()));
    }
    (!flags.is_empty()).then(|| VarLayer {
        name: "command line",
        dict: flags,
        origin: Arc::new(HashMap::new()),
    })
}

/// Whether a layer sets `restore.environment` to production (a layer that cannot be
/// read says nothing here; loading reports it).
fn layer_says_production(layer: &dyn Provider) -> bool {
    let Ok(data) = layer.data() else {
        return false;
    };
    data.values().any(|dict| {
        matches!(
            dict.get("restore"),
            Some(Value::Dict(_, r)) if matches!(
                r.get("environment"),
                Some(Value::String(_, s)) if validate::says_production(s)
            )
        )
    })
}

#[cfg(test)]
mod tests;
