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

/// A provider built from environment-like variables, remembering which variable set each key.
struct VarLayer {
    name: &'static str,
    dict: Dict,
    origin: Arc<HashMap<String, String>>,
}

impl Provider for VarLayer {
    fn metadata(&self) -> Metadata {
        let origin = self.origin.clone();
        let name = self.name;
        Metadata::named(name).interpolater(move |_profile, keys| {
            let key = keys.join(".");
            match origin.get(&key) {
                Some(var) => var.clone(),
                None => key,
            }
        })
    }

    fn data(&self) -> std::result::Result<Map<Profile, Dict>, figment::Error> {
        let mut m = Map::new();
        m.insert(Profile::Default, self.dict.clone());
        Ok(m)
    }
}

fn insert_path(dict: &mut Dict, path: &[&str], value: Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        dict.insert((*first).to_string(), value);
        return;
    }
    let entry = dict
        .entry((*first).to_string())
        .or_insert_with(|| Value::from(Dict::new()));
    if !matches!(entry, Value::Dict(..)) {
        *entry = Value::from(Dict::new());
    }
    if let Value::Dict(_, inner) = entry {
        insert_path(inner, rest, value);
    }
}

/// Parse a variable's text the way figment's Env provider does (numbers, booleans, strings).
fn parse_value(s: &str) -> Value {
    s.parse::<Value>()
        .unwrap_or_else(|_| Value::from(s.to_string()))
}

/// Read `NAME` or the file named by `NAME_FILE` (Docker/Kubernetes secrets).
pub fn var_or_file(vars: &HashMap<String, String>, name: &str) -> Result<Option<(String, String)>> {
    let file_var = format!("{name}_FILE");
    match (vars.get(name), vars.get(&file_var)) {
        (Some(_), Some(_)) => Err(Error::Config {
            key: name.to_string(),
            message: format!("both {name} and {file_var} are set; set only one"),
        }),
        (Some(v), None) => Ok(Some((v.clone(), name.to_string()))),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
                key: file_var.clone(),
                message: format!("cannot read {path}: {e}"),
            })?;
            Ok(Some((
                text.trim_end_matches(['\n', '\r']).to_string(),
                file_var,
            )))
        }
        (None, None) => Ok(None),
    }
}

/// Build the layer for a set of variables (the real environment or `.env`).
fn var_layer(name: &'static str, vars: &HashMap<String, String>) -> Result<VarLayer> {
    let mut dict = Dict::new();
    let mut origin = HashMap::new();
    let mut set = |key: &str, value: Value, var: &str, dict: &mut Dict| {
        let path: Vec<&str> = key.split('.').collect();
        insert_path(dict, &path, value);
        origin.insert(key.to_string(), var.to_string());
    };

    // libpq variables (lowest), then DATABASE_URL, then the old scripts' POSTGRES_*.
    for (var, key) in [
        ("PGHOST", "database.host"),
        ("PGPORT", "database.port"),
        ("PGDATABASE", "database.name"),
        ("PGUSER", "database.user"),
        ("PGSSLMODE", "database.sslmode"),
        ("PGSSLROOTCERT", "database.sslrootcert"),
        ("PGSSLCERT", "database.sslcert"),
        ("PGSSLKEY", "database.sslkey"),
        ("PGCONNECT_TIMEOUT", "database.connect_timeout"),
    ] {
        if let Some(v) = vars.get(var) {
            set(key, parse_value(v), var, &mut dict);
        }
    }
    if let Some((v, var)) = var_or_file(vars, "PGPASSWORD")? {
        set("database.password", Value::from(v), &var, &mut dict);
    }
    if let Some((url, var)) = var_or_file(vars, "DATABASE_URL")? {
        for (key, value) in parse_database_url(&url)? {
            set(&format!("database.{key}"), value, &var, &mut dict);
        }
    }
    for (var, key) in [
        ("POSTGRES_HOST", "database.host"),
        ("POSTGRES_PORT", "database.port"),
        ("POSTGRES_DB", "database.name"),
        ("POSTGRES_USER", "database.user"),
        ("BACKUP_RETENTION_DAYS", "retention.max_age_days"),
        ("BACKUP_RETENTION_COUNT", "retention.keep_last"),
        ("ENVIRONMENT", "restore.environment"),
        ("APP_ENV", "restore.environment"),
    ] {
        if let Some(v) = vars.get(var)
            && !v.is_empty()
        {
            set(key, parse_value(v), var, &mut dict);
        }
    }
    if let Some((v, var)) = var_or_file(vars, "POSTGRES_PASSWORD")? {
        set("database.password", Value::from(v), &var, &mut dict);
    }
    if matches!(
        vars.get("DEBUG").map(String::as_str),
        Some("true" | "1" | "yes")
    ) {
        set(
            "log.level",
            Value::from("debug".to_string()),
            "DEBUG",
            &mut dict,
        );
    }

    // Storage targets: BACKUP_DIR plus the old optional cloud uploads.
    let mut targets: Vec<Value> = Vec::new();
    let mut target_vars: Vec<&str> = Vec::new();
    if let Some(dir) = vars.get("BACKUP_DIR").filter(|d| !d.is_empty()) {
        targets.push(Value::from(dir.clone()));
        target_vars.push("BACKUP_DIR");
    }
    for (var, scheme) in [
        ("S3_BACKUP_BUCKET", "s3"),
        ("GCS_BACKUP_BUCKET", "gs"),
        ("AZURE_BACKUP_CONTAINER", "az"),
    ] {
        if let Some(b) = vars.get(var).filter(|b| !b.is_empty()) {
            if targets.is_empty() {
                targets.push(Value::from("./backups".to_string()));
            }
            targets.push(Value::from(format!("{scheme}://{b}/backups")));
            target_vars.push(var);
        }
    }
    if !targets.is_empty() {
        set(
            "storage.targets",
            Value::from(targets),
            &target_vars.join(", "),
            &mut dict,
        );
    }

    // KAIZEN_BACKUP_SECTION__KEY, highest within this layer.
    let mut own: Vec<(&String, &String)> = vars
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    own.sort();
    for (var, v) in own {
        let rest = &var[ENV_PREFIX.len()..];
        if !rest.contains("__") {
            // e.g. KAIZEN_BACKUP_AGE_IDENTITY_FILE, read where it is used.
            keys::check_standalone(var, name)?;
            continue;
        }
        let mut key = rest.to_ascii_lowercase().replace("__", ".");
        // Any key can be read from a file (Docker/Kubernetes secrets): KEY_FILE=/path.
        if let Some(base) = key.strip_suffix("_file")
            && !key.ends_with("identity_file")
            && base.contains('.')
        {
            let text = std::fs::read_to_string(v).map_err(|e| Error::Config {
                key: var.clone(),
                message: format!("cannot read {v}: {e}"),
            })?;
            key = base.to_string();
            set(
                &key,
                Value::from(text.trim_end_matches(['\n', '\r']).to_string()),
                var,
                &mut dict,
            );
            continue;
        }
        let value = if key == "storage.targets" {
            Value::from(
                v.split(',')
                    .map(|s| Value::from(s.trim().to_string()))
                    .collect::<Vec<_>>(),
            )
        } else {
            parse_value(v)
        };
        set(&key, value, var, &mut dict);
    }

    Ok(VarLayer {
        name,
        dict,
        origin: Arc::new(origin),
    })
}

/// `postgres://user:password@host:port/db?sslmode=...` into `[database]` keys.
fn parse_database_url(raw: &str) -> Result<Vec<(String, Value)>> {
    let bad = |why: &str| Error::Config {
        key: "DATABASE_URL".into(),
        message: format!("not a usable postgres:// URL: {why}"),
    };
    let url = url::Url::parse(raw).map_err(|_| bad("cannot parse it"))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(bad("the scheme must be postgres:// or postgresql://"));
    }
    let dec = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    if let Some(h) = url.host_str().filter(|h| !h.is_empty()) {
        out.push((
            "host".to_string(),
            Value::from(h.trim_matches(['[', ']']).to_string()),
        ));
    }
    if let Some(p) = url.port() {
        out.push(("port".to_string(), Value::from(p)));
    }
    if !url.username().is_empty() {
        out.push(("user".to_string(), Value::from(dec(url.username()))));
    }
    if let Some(p) = url.password() {
        out.push(("password".to_string(), Value::from(dec(p))));
    }
    let db = url.path().trim_start_matches('/');
    if !db.is_empty() {
        out.push(("name".to_string(), Value::from(dec(db))));
    }
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "sslmode" | "sslrootcert" | "sslcert" | "sslkey" => {
                out.push((k.into_owned(), Value::from(v.into_owned())))
            }
            "host" => out.push(("host".into(), Value::from(v.into_owned()))),
            _ => {}
        }
    }
    Ok(out)
}

fn env_snapshot() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

fn read_dotenv(path: &Path) -> Result<HashMap<String, String>> {
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
            backup_notify::NotifierConfig::Slack { .. } => "SLACK_WEBHOOK_URL",
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
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn extract(env: &HashMap<String, String>) -> Result<Config> {
        let fig = Figment::from(Serialized::defaults(Config::default()))
            .merge(var_layer("environment", env)?);
        super::extract(&fig)
    }

    fn from_toml(text: &str) -> Result<Config> {
        let fig = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text));
        super::extract(&fig)
    }

    #[test]
    fn unknown_sections_and_keys_name_the_closest_valid_one() {
        let err = from_toml("[encryptoin]\ntype = \"age\"\n").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let msg = err.to_string();
        assert!(msg.contains("unknown section `encryptoin`"), "{msg}");
        assert!(msg.contains("did you mean `encryption`"), "{msg}");
        for (toml, key, hint) in [
            (
                "[backup]\ncompresion = \"zstd\"\n",
                "backup.compresion",
                "compression",
            ),
            (
                "[storage.s3]\nendpiont = \"http://x\"\n",
                "storage.s3.endpiont",
                "endpoint",
            ),
            (
                "[storage]\ntargets = [{ url = \"/b\", optonal = true }]\n",
                "storage.targets.optonal",
                "optional",
            ),
            (
                "[[notify]]\ntype = \"webhook\"\nurl = \"http://h\"\nretires = 2\n",
                "notify.retires",
                "retries",
            ),
            (
                "[[notify]]\ntype = \"slack\"\nwebhook_url = \"http://h\"\nsmtp_host = \"x\"\n",
                "notify.smtp_host",
                "",
            ),
            (
                "[retention]\nkeep_dialy = 3\n",
                "retention.keep_dialy",
                "keep_daily",
            ),
            ("databse = 1\n", "databse", "database"),
        ] {
            let msg = from_toml(toml).unwrap_err().to_string();
            assert!(msg.contains(&format!("`{key}`")), "{toml}: {msg}");
            assert!(msg.contains(hint), "{toml}: {msg}");
        }
        // Webhook headers are free-form; every documented notifier key is accepted.
        from_toml(
            "[[notify]]\ntype = \"webhook\"\nurl = \"http://h\"\nheaders = { X-Anything = \"v\" }\non = [\"restore.failed\"]\n\n[[notify]]\ntype = \"email\"\nrecipients = [\"a@b\"]\nsmtp_host = \"h\"\nsmtp_port = 25\nsmtp_user = \"u\"\nsmtp_password = \"p\"\nfrom = \"f@b\"\ntls = \"none\"\nname = \"n\"\ntimeout_secs = 3\nretries = 1\n",
        )
        .unwrap();
    }

    #[test]
    fn an_over_long_database_name_is_a_config_error() {
        let err = extract(&vars(&[("POSTGRES_DB", &"d".repeat(64))])).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("at most 63 bytes"), "{err}");
        extract(&vars(&[("POSTGRES_DB", &"d".repeat(63))])).unwrap();
    }

    #[test]
    fn unknown_variables_are_refused_and_legacy_ones_kept() {
        let err = extract(&vars(&[("KAIZEN_BACKUP_ENCRYPTOIN__TYPE", "age")])).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.exit_code(), 2);
        assert!(msg.contains("KAIZEN_BACKUP_ENCRYPTOIN__TYPE"), "{msg}");
        assert!(msg.contains("KAIZEN_BACKUP_ENCRYPTION__TYPE"), "{msg}");
        let msg = extract(&vars(&[("KAIZEN_BACKUP_ENCRYPTION_TYPE", "age")]))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("did you mean KAIZEN_BACKUP_ENCRYPTION__TYPE"),
            "{msg}"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "pw\n").unwrap();
        extract(&vars(&[
            ("POSTGRES_PASSWORD_FILE", f.to_str().unwrap()),
            ("KAIZEN_BACKUP_DATABASE__PASSWORD_FILE", f.to_str().unwrap()),
            ("KAIZEN_BACKUP_AGE_IDENTITY_FILE", "/k"),
            ("KAIZEN_BACKUP_AGE_PASSPHRASE_FILE", "/k"),
            ("BACKUP_DIR", "/b"),
            ("SLACK_WEBHOOK_URL", "https://hooks.slack.com/x"),
            ("ENVIRONMENT", "staging"),
            (
                "KAIZEN_BACKUP_STORAGE__S3__SECRET_ACCESS_KEY_FILE",
                f.to_str().unwrap(),
            ),
        ]))
        .unwrap();
    }

    proptest::proptest! {
        /// No configuration text panics: it loads, or is a configuration error (exit 2).
        #[test]
        fn any_toml_loads_or_is_a_config_error(
            text in "\\PC{0,60}",
            lines in proptest::collection::vec(
                ("(database|storage|storage\\.s3|backup|restore|log|lock|retention|notify|metrics|encryption|audit|[a-z_]{1,10})",
                 "(name|port|targets|type|compression|level|jobs|keep_daily|environment|on|url|[a-z_]{1,10})",
                 "(-?[0-9]{1,25}|\"[^\"\\\\]{0,10}\"|true|\\[\\]|\\[\"x\", 1\\]|\\{ a = 1 \\}|1e400|nan|-inf)"),
                0..5,
            ),
        ) {
            let check = |r: Result<Config>| match r {
                Ok(c) => { let _ = open_targets(&c); Ok(()) }
                Err(e) if e.exit_code() == 2 => Ok(()),
                Err(e) => Err(proptest::test_runner::TestCaseError::fail(format!("exit {}: {e}", e.exit_code()))),
            };
            check(from_toml(&text))?;
            let mut doc = String::new();
            for (section, key, value) in &lines {
                if section == "notify" {
                    doc.push_str(&format!("[[notify]]\ntype = \"webhook\"\n{key} = {value}\n"));
                } else {
                    doc.push_str(&format!("[{section}]\n{key} = {value}\n"));
                }
            }
            check(from_toml(&doc))?;
        }

        /// No environment panics either.
        #[test]
        fn any_variables_load_or_are_a_config_error(
            pairs in proptest::collection::vec(
                ("(KAIZEN_BACKUP_[A-Z_]{0,20}|POSTGRES_PORT|PGPORT|DATABASE_URL|BACKUP_DIR|ENVIRONMENT|BACKUP_RETENTION_DAYS|KAIZEN_BACKUP_STORAGE__TARGETS)", "\\PC{0,20}"),
                0..4,
            ),
        ) {
            let env: HashMap<String, String> = pairs.into_iter().collect();
            if let Err(e) = extract(&env) {
                proptest::prop_assert_eq!(e.exit_code(), 2, "{}", e);
            }
        }
    }

    #[test]
    fn old_variables_and_precedence() {
        let c = extract(&vars(&[
            ("PGHOST", "pg-host"),
            ("PGPORT", "6000"),
            (
                "DATABASE_URL",
                "postgres://url_user:p%40ss@url-host:7000/url_db?sslmode=require",
            ),
            ("POSTGRES_HOST", "old-host"),
            ("POSTGRES_DB", "kaizen_studio_dev"),
            ("BACKUP_DIR", "/var/backups/kaizen"),
            ("S3_BACKUP_BUCKET", "kaizen-studio-backups"),
            ("KAIZEN_BACKUP_DATABASE__PORT", "5433"),
            ("KAIZEN_BACKUP_BACKUP__COMPRESSION", "none"),
        ]))
        .unwrap();
        assert_eq!(c.database.host, "old-host");
        assert_eq!(c.database.port, 5433);
        assert_eq!(c.database.name, "kaizen_studio_dev");
        assert_eq!(c.database.user, "url_user");
        assert_eq!(
            c.database.password.as_ref().map(|p| p.expose().to_string()),
            Some("p@ss".into())
        );
        assert_eq!(c.database.sslmode.as_deref(), Some("require"));
        assert_eq!(c.backup.compression, "none");
        let urls: Vec<&str> = c.storage.targets.iter().map(TargetSpec::url).collect();
        assert_eq!(
            urls,
            ["/var/backups/kaizen", "s3://kaizen-studio-backups/backups"]
        );
    }

    #[test]
    fn invalid_value_names_key_and_variable() {
        let err = extract(&vars(&[("POSTGRES_PORT", "abc")])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("database.port") && msg.contains("POSTGRES_PORT"),
            "{msg}"
        );
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn password_file_and_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "from-file\n").unwrap();
        let c = extract(&vars(&[("POSTGRES_PASSWORD_FILE", f.to_str().unwrap())])).unwrap();
        assert_eq!(c.database.password.unwrap().expose(), "from-file");
        let err = extract(&vars(&[
            ("POSTGRES_PASSWORD", "x"),
            ("POSTGRES_PASSWORD_FILE", f.to_str().unwrap()),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("set only one"));
        assert!(!err.to_string().contains("from-file"));
    }

    #[test]
    fn any_key_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s3key");
        std::fs::write(&f, "aws-secret-from-file\n").unwrap();
        let c = extract(&vars(&[(
            "KAIZEN_BACKUP_STORAGE__S3__SECRET_ACCESS_KEY_FILE",
            f.to_str().unwrap(),
        )]))
        .unwrap();
        assert_eq!(
            c.storage.options.s3.secret_access_key.unwrap().expose(),
            "aws-secret-from-file"
        );
        let err = extract(&vars(&[(
            "KAIZEN_BACKUP_DATABASE__PASSWORD_FILE",
            "/nonexistent/pw",
        )]))
        .unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn bad_database_url_is_config_error_without_secret() {
        let err = extract(&vars(&[("DATABASE_URL", "mysql://u:topsecret@h/db")])).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(!err.to_string().contains("topsecret"));
    }
}
