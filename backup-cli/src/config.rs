//! Configuration: figment layers, lowest first — built-in defaults,
//! `/etc/kaizen-backup/config.toml`, `./kaizen-backup.toml` or `--config`, `.env` in the
//! working directory, the environment (old script variables and `KAIZEN_BACKUP_*`),
//! then command-line flags.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backup_core::{Error, PgConfig, Result};
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

use crate::cli::{GlobalArgs, LogFormat};

mod keys;
mod vars;

pub use vars::var_or_file;
use vars::*;

/// System-wide configuration file.
pub const SYSTEM_CONFIG: &str = "/etc/kaizen-backup/config.toml";
/// Per-directory configuration file.
pub const LOCAL_CONFIG: &str = "kaizen-backup.toml";
/// Prefix of this tool's own environment variables.
pub const ENV_PREFIX: &str = "KAIZEN_BACKUP_";

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub database: PgConfig,
    pub storage: StorageSection,
    pub backup: BackupSection,
    pub restore: RestoreSection,
    pub log: LogSection,
    pub lock: LockSection,
    pub retention: backup_core::retention::RetentionPolicy,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<backup_notify::NotifierConfig>,
    pub metrics: backup_notify::metrics::MetricsConfig,
    pub encryption: backup_core::codec::EncryptionConfig,
    pub audit: backup_core::audit::AuditConfig,
}

/// One storage target: a URL, or `{ url, optional }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TargetSpec {
    Url(String),
    Full {
        url: String,
        #[serde(default)]
        optional: bool,
    },
}

impl TargetSpec {
    pub fn url(&self) -> &str {
        match self {
            Self::Url(u) | Self::Full { url: u, .. } => u,
        }
    }
    pub fn optional(&self) -> bool {
        matches!(self, Self::Full { optional: true, .. })
    }
}

/// `[storage]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageSection {
    /// Where backups go; the first one is where `list`, `restore` and `verify` look.
    pub targets: Vec<TargetSpec>,
    /// Backend options (`[storage.s3]`, ...).
    #[serde(flatten)]
    pub options: backup_storage::StorageOptions,
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            targets: vec![TargetSpec::Url("./backups".into())],
            options: backup_storage::StorageOptions::default(),
        }
    }
}

/// `[backup]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupSection {
    /// `gzip` (pg_dump's own, as the old scripts), `zstd`, or `none`.
    pub compression: String,
    /// Compression level (gzip 0–9, zstd 1–22).
    pub level: Option<i32>,
    /// Parallel pg_dump jobs; more than 1 uses directory format, staged on local disk.
    pub jobs: u32,
    /// Where a parallel dump is staged (default: the system's temporary directory).
    pub staging_dir: Option<PathBuf>,
    /// Verify after each backup.
    pub verify: bool,
    /// Check free space on local targets first.
    pub space_check: bool,
    /// Expected stored size as a fraction of the database size, for the space check.
    pub space_ratio: f64,
    /// Record exact row counts in the manifest.
    pub row_counts: bool,
    /// Apply retention after each successful backup.
    pub prune: bool,
    /// Extra pg_dump arguments (no secrets), e.g. ["--exclude-table=tmp_*"].
    pub pg_dump_args: Vec<String>,
}

impl Default for BackupSection {
    fn default() -> Self {
        Self {
            compression: "gzip".into(),
            level: None,
            jobs: 1,
            staging_dir: None,
            verify: false,
            space_check: true,
            space_ratio: 0.5,
            row_counts: true,
            prune: true,
            pg_dump_args: Vec::new(),
        }
    }
}

impl BackupSection {
    pub fn compression(&self) -> Result<backup_core::backup::Compression> {
        use backup_core::backup::Compression;
        let bad = |msg: String| Error::Config {
            key: "backup.level".into(),
            message: msg,
        };
        match self.compression.as_str() {
            "gzip" => {
                let l = self.level.unwrap_or(6);
                if !(0..=9).contains(&l) {
                    return Err(bad(format!("gzip level must be 0–9, got {l}")));
                }
                Ok(Compression::Gzip(l))
            }
            "zstd" => {
                let l = self.level.unwrap_or(3);
                if !(1..=22).contains(&l) {
                    return Err(bad(format!("zstd level must be 1–22, got {l}")));
                }
                Ok(Compression::Zstd(l))
            }
            "none" => Ok(Compression::None),
            other => Err(Error::Config {
                key: "backup.compression".into(),
                message: format!("unknown compression {other:?} (use gzip, zstd or none)"),
            }),
        }
    }
}

/// `[restore]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestoreSection {
    /// `production` makes replacing a database ask for confirmation.
    pub environment: Option<String>,
    /// Back up an existing target before replacing it.
    pub safety_backup: bool,
    /// pg_restore --no-owner.
    pub no_owner: bool,
    /// pg_restore --role.
    pub role: Option<String>,
    /// Parallel pg_restore jobs.
    pub jobs: u32,
    /// Directory for temporary downloads.
    pub temp_dir: Option<PathBuf>,
}

impl Default for RestoreSection {
    fn default() -> Self {
        Self {
            environment: None,
            safety_backup: true,
            no_owner: false,
            role: None,
            jobs: 1,
            temp_dir: None,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    pub format: LogFormat,
    /// Also append log lines to this file (e.g. backups/backup.log).
    pub file: Option<PathBuf>,
    /// `debug` to see more (DEBUG=true sets it).
    pub level: Option<String>,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            file: None,
            level: None,
        }
    }
}

/// `[lock]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockSection {
    /// A lock not refreshed for this long is considered abandoned.
    pub stale_after_secs: u64,
    /// How long to wait for another run's lock.
    pub timeout_secs: u64,
}

impl Default for LockSection {
    fn default() -> Self {
        Self {
            stale_after_secs: 600,
            timeout_secs: 0,
        }
    }
}

impl LockSection {
    /// Lock options, with `--lock-timeout` overriding the configured wait.
    pub fn options(&self, timeout_override: Option<u64>) -> backup_core::lock::LockOptions {
        backup_core::lock::LockOptions {
            stale_after: std::time::Duration::from_secs(self.stale_after_secs.max(10)),
            timeout: std::time::Duration::from_secs(timeout_override.unwrap_or(self.timeout_secs)),
        }
    }
}

/// A loaded configuration with the figment it came from (for `config show`).
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub figment: Figment,
    /// Notifiers from the old scripts' variables (SLACK_WEBHOOK_URL, BACKUP_EMAIL_RECIPIENT, SMTP_*).
    pub legacy_notify: Vec<backup_notify::NotifierConfig>,
    /// The layer that said `production`, which wins over every other layer's environment.
    pub production_from: Option<String>,
}

/// Load the configuration for these flags.
pub fn load(global: &GlobalArgs) -> Result<Loaded> {
    let env = env_snapshot();
    let dotenv = read_dotenv(Path::new(".env"))?;
    // Variables from .env reach libraries that read the environment (cloud SDK
    // credentials), but never override the real environment.
    for (k, v) in &dotenv {
        if !env.contains_key(k) {
            // SAFETY-free: std::env::set_var is safe in edition 2021 but unsafe in 2024
            // only because of threads; this runs before any thread is started.
            set_env(k, v);
        }
    }

    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    // Production wins: the first layer that says so, whatever a later layer says.
    let mut production_from = None;
    let mut files = Vec::new();
    if Path::new(SYSTEM_CONFIG).is_file() {
        files.push(PathBuf::from(SYSTEM_CONFIG));
    }
    match &global.config {
        Some(path) => {
            if !path.is_file() {
                return Err(Error::Config {
                    key: "--config".into(),
                    message: format!("{} does not exist or is not a file", path.display()),
                });
            }
            files.push(path.clone());
        }
        None => {
            if Path::new(LOCAL_CONFIG).is_file() {
                files.push(PathBuf::from(LOCAL_CONFIG));
            }
        }
    }
    for path in files {
        let layer = Toml::file_exact(&path);
        if production_from.is_none() && layer_says_production(&layer) {
            production_from = Some(figment::Source::File(path.clone()).to_string());
        }
        fig = fig.merge(layer);
    }
    for layer in [
        var_layer(".env file", &dotenv)?,
        var_layer("environment", &env)?,
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

    // Command-line flags, highest.
    let mut flags = Dict::new();
    if !global.storage.is_empty() {
        insert_path(
            &mut flags,
            &["storage", "targets"],
            Value::from(
                global
                    .storage
                    .iter()
                    .map(|s| Value::from(s.clone()))
                    .collect::<Vec<_>>(),
            ),
        );
    }
    if let Some(f) = global.log_format {
        let s = match f {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        insert_path(&mut flags, &["log", "format"], Value::from(s.to_string()));
    }
    if !flags.is_empty() {
        fig = fig.merge(VarLayer {
            name: "command line",
            dict: flags,
            origin: Arc::new(HashMap::new()),
        });
    }

    let mut config = extract(&fig)?;
    if production_from.is_some() && !is_production(&config) {
        config.restore.environment = Some("production".into());
    }
    // The real environment wins over .env for these too.
    let legacy_notify =
        backup_notify::legacy_from_env(|k| env.get(k).or_else(|| dotenv.get(k)).cloned())?;
    Ok(Loaded {
        config,
        figment: fig,
        legacy_notify,
        production_from,
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
                Some(Value::String(_, s)) if says_production(s)
            )
        )
    })
}

/// `production` or `prod`, in any case.
fn says_production(s: &str) -> bool {
    matches!(
        s.trim().to_ascii_lowercase().as_str(),
        "production" | "prod"
    )
}

/// The configuration the merged layers describe: unknown keys, bad values and
/// inconsistent settings are configuration errors (exit 2).
fn extract(fig: &Figment) -> Result<Config> {
    keys::check(fig)?;
    let config: Config = fig.extract().map_err(figment_error)?;
    validate(&config)?;
    Ok(config)
}

#[allow(unsafe_code)]
fn set_env(k: &str, v: &str) {
    // SAFETY: called from `load`, before the async runtime or any other thread starts.
    unsafe { std::env::set_var(k, v) }
}

/// Turn a figment error into a configuration error naming the key and where it came from.
fn figment_error(e: figment::Error) -> Error {
    let key = if e.path.is_empty() {
        "configuration".to_string()
    } else {
        e.path.join(".")
    };
    let mut message = e.kind.to_string();
    if let Some(md) = &e.metadata {
        let src = match &e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
            Some(s) => s.to_string(),
            None => md.name.to_string(),
        };
        let keys: Vec<&str> = e.path.iter().map(String::as_str).collect();
        let origin = md.interpolate(&e.profile.clone().unwrap_or_default(), &keys);
        if md.name.as_ref() == "environment" || md.name.as_ref() == ".env file" {
            message.push_str(&format!(" (from {origin} in the {})", md.name));
        } else {
            message.push_str(&format!(" (in {src})"));
        }
    }
    Error::Config { key, message }
}

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
    c.backup.compression()?;
    c.encryption.validate()?;
    for n in &c.notify {
        n.common().events()?;
    }
    if c.backup.jobs == 0 {
        return cfg("backup.jobs", "must be at least 1".into());
    }
    if c.restore.jobs == 0 {
        return cfg("restore.jobs", "must be at least 1".into());
    }
    if c.backup.space_ratio.is_nan() || c.backup.space_ratio <= 0.0 {
        return cfg("backup.space_ratio", "must be greater than 0".into());
    }
    Ok(())
}

/// Whether restores into existing databases need confirmation.
pub fn is_production(c: &Config) -> bool {
    c.restore
        .environment
        .as_deref()
        .is_some_and(says_production)
}

/// Open every configured storage target.
pub fn open_targets(c: &Config) -> Result<Vec<backup_core::backup::Target>> {
    c.storage
        .targets
        .iter()
        .map(|t| {
            Ok(backup_core::backup::Target {
                storage: backup_storage::open(t.url(), &c.storage.options)?,
                optional: t.optional(),
            })
        })
        .collect()
}

/// Every leaf key of the merged configuration with its value (secrets redacted) and source.
pub fn describe(loaded: &Loaded) -> Result<Vec<(String, serde_json::Value, String)>> {
    let value = serde_json::to_value(&loaded.config)
        .map_err(|e| Error::other(format!("cannot show configuration: {e}")))?;
    let mut leaves = BTreeMap::new();
    flatten("", &value, &mut leaves);
    // One row per notifier, so those from the old variables can join them.
    let configured = match leaves.remove("notify") {
        Some(serde_json::Value::Array(list)) => list,
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    let notify_source = loaded
        .figment
        .find_metadata("notify")
        .map(|md| match &md.source {
            Some(s) => s.to_string(),
            None => md.name.to_string(),
        });
    for (i, v) in configured.into_iter().enumerate() {
        let src = notify_source.clone().unwrap_or_else(|| "default".into());
        out.push((format!("notify.{i}"), v, src));
    }
    for (key, v) in leaves {
        let source = match loaded.figment.find_metadata(&key) {
            Some(md) => {
                let keys: Vec<&str> = key.split('.').collect();
                let origin = md.interpolate(&Profile::Default, &keys);
                match (md.name.as_ref(), &md.source) {
                    ("environment" | ".env file", _) => format!("{} ({origin})", md.name),
                    // Built-in defaults carry the location of our own code: say "default".
                    (_, Some(figment::Source::Code(_))) | (_, None)
                        if md.name != "command line" =>
                    {
                        "default".to_string()
                    }
                    (_, Some(s)) => s.to_string(),
                    (name, None) => name.to_string(),
                }
            }
            None => "default".to_string(),
        };
        let source = match (&loaded.production_from, key.as_str()) {
            (Some(from), "restore.environment") => from.clone(),
            _ => source,
        };
        out.push((key, v, source));
    }
    // Notifiers made from the old scripts' variables (secrets redacted by their type).
    let first = loaded.config.notify.len();
    for (i, n) in loaded.legacy_notify.iter().enumerate() {
        let v = serde_json::to_value(n)
            .map_err(|e| Error::other(format!("cannot show configuration: {e}")))?;
        let var = match n {
            backup_notify::NotifierConfig::Slack(_) => "SLACK_WEBHOOK_URL",
            _ => "BACKUP_EMAIL_RECIPIENT",
        };
        out.push((
            format!("notify.{}", first + i),
            v,
            format!("environment ({var})"),
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

#[cfg(test)]
mod tests;
