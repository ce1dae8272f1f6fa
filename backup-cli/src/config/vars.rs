//! The environment layers: the old scripts' variables (`POSTGRES_*`, `DATABASE_URL`,
//! `BACKUP_DIR`, `SLACK_WEBHOOK_URL`, …), `KAIZEN_BACKUP_SECTION__KEY` variables and their
//! `_FILE` forms, and `.env` files — each a figment provider that remembers which variable
//! set each key (for `config show` and error messages).
//!
//! Every variable becomes a configuration key here, secrets included: a secret is a
//! [`Secret`] in the configuration, set inline or by a `*_FILE` variable (read by
//! [`Secret::from_file`], as `{ file = "…" }` in a configuration file is), so nothing
//! reads a secret from the environment behind the configuration's back and `config show`
//! lists every one (redacted) with the variable it came from.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use backup_core::{Error, Result, Secret};
use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

use super::{ENV_PREFIX, keys};

/// A provider built from environment-like variables, remembering which variable set each key.
pub(super) struct VarLayer {
    pub(super) name: &'static str,
    pub(super) dict: Dict,
    pub(super) origin: Arc<HashMap<String, String>>,
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

pub(super) fn insert_path(dict: &mut Dict, path: &[&str], value: Value) {
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
pub(super) fn parse_value(s: &str) -> Value {
    s.parse::<Value>()
        .unwrap_or_else(|_| Value::from(s.to_string()))
}

/// Read `NAME` or the file named by `NAME_FILE` (Docker/Kubernetes secrets); also says
/// which of the two was set.
pub(super) fn var_or_file(
    vars: &HashMap<String, String>,
    name: &str,
) -> Result<Option<(String, String)>> {
    let file_var = format!("{name}_FILE");
    match (vars.get(name), vars.get(&file_var)) {
        (Some(_), Some(_)) => Err(Error::Config {
            key: name.to_string(),
            message: format!("both {name} and {file_var} are set; set only one"),
        }),
        (Some(v), None) => Ok(Some((v.clone(), name.to_string()))),
        (None, Some(path)) => Ok(Some((file_text(&file_var, path)?, file_var))),
        (None, None) => Ok(None),
    }
}

/// The text of the file a `*_FILE` variable names, read the way every secret file is.
fn file_text(var: &str, path: &str) -> Result<String> {
    Secret::from_file(Path::new(path))
        .map(|s| s.expose().to_string())
        .map_err(|e| Error::Config {
            key: var.to_string(),
            message: format!("cannot read {path}: {e}"),
        })
}

/// Build the layer for a set of variables (the real environment or `.env`).
pub(super) fn var_layer(name: &'static str, vars: &HashMap<String, String>) -> Result<VarLayer> {
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

    // The WebDAV credentials' own variables, aliases of `[storage.webdav]`.
    for (var, key) in [
        ("KAIZEN_BACKUP_WEBDAV_USER", "storage.webdav.user"),
        ("KAIZEN_BACKUP_WEBDAV_PASSWORD", "storage.webdav.password"),
    ] {
        if let Some(v) = vars.get(var).filter(|v| !v.is_empty()) {
            set(key, Value::from(v.clone()), var, &mut dict);
        }
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
            // e.g. KAIZEN_BACKUP_AGE_IDENTITY_FILE: a layer of its own (`age_layer`).
            keys::check_standalone(var, name)?;
            continue;
        }
        let mut key = rest.to_ascii_lowercase().replace("__", ".");
        // Any key can be read from a file (Docker/Kubernetes secrets): KEY_FILE=/path.
        if let Some(base) = key.strip_suffix("_file")
            && !key.ends_with("identity_file")
            && base.contains('.')
        {
            key = base.to_string();
            set(&key, Value::from(file_text(var, v)?), var, &mut dict);
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
pub(super) fn parse_database_url(raw: &str) -> Result<Vec<(String, Value)>> {
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

/// The age keys of restore and verify: `KAIZEN_BACKUP_AGE_IDENTITY_FILE` (a path) is
/// `encryption.identity_file`, `KAIZEN_BACKUP_AGE_PASSPHRASE` (or `_FILE`) is
/// `encryption.passphrase`. This layer sits below every configuration file: a key the
/// configuration sets wins, as it did when these variables were read only as a fallback.
pub(super) fn age_layer(name: &'static str, vars: &HashMap<String, String>) -> Result<VarLayer> {
    let mut dict = Dict::new();
    let mut origin = HashMap::new();
    let identity = "KAIZEN_BACKUP_AGE_IDENTITY_FILE";
    if let Some(path) = vars.get(identity).filter(|p| !p.is_empty()) {
        insert_path(
            &mut dict,
            &["encryption", "identity_file"],
            Value::from(path.clone()),
        );
        origin.insert("encryption.identity_file".to_string(), identity.to_string());
    }
    if let Some((passphrase, var)) = var_or_file(vars, "KAIZEN_BACKUP_AGE_PASSPHRASE")? {
        insert_path(
            &mut dict,
            &["encryption", "passphrase"],
            Value::from(passphrase),
        );
        origin.insert("encryption.passphrase".to_string(), var);
    }
    Ok(VarLayer {
        name,
        dict,
        origin: Arc::new(origin),
    })
}

/// The old scripts' notifiers, one layer each holding one `[[notify]]` entry (appended
/// to the configured ones): `SLACK_WEBHOOK_URL` (or `_FILE`), and
/// `BACKUP_EMAIL_RECIPIENT` (comma or space separated) with `SMTP_HOST`, `SMTP_PORT`,
/// `SMTP_USER`, `SMTP_PASSWORD` (or `_FILE`), `SMTP_FROM` and `SMTP_TLS`. A variable of
/// the environment wins over the same one in `.env`.
pub(super) fn notify_layers(
    env: &HashMap<String, String>,
    dotenv: &HashMap<String, String>,
) -> Result<Vec<VarLayer>> {
    let mut vars = dotenv.clone();
    vars.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let layer_of = |var: &str| {
        if env.contains_key(var) {
            "environment"
        } else {
            ".env file"
        }
    };
    let mut out = Vec::new();
    if let Some((url, var)) = var_or_file(&vars, "SLACK_WEBHOOK_URL")?
        && !url.trim().is_empty()
    {
        let mut d = Dict::new();
        d.insert("type".into(), Value::from("slack".to_string()));
        d.insert("webhook_url".into(), Value::from(url.trim().to_string()));
        out.push(notify_layer(layer_of(&var), d, vec![var]));
    }
    if let Some(rcpt) = vars
        .get("BACKUP_EMAIL_RECIPIENT")
        .filter(|r| !r.trim().is_empty())
    {
        let mut used = vec!["BACKUP_EMAIL_RECIPIENT".to_string()];
        let mut d = Dict::new();
        d.insert("type".into(), Value::from("email".to_string()));
        let recipients: Vec<Value> = rcpt
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(|s| Value::from(s.to_string()))
            .collect();
        d.insert("recipients".into(), Value::from(recipients));
        let host = vars.get("SMTP_HOST").cloned();
        if host.is_some() {
            used.push("SMTP_HOST".into());
        }
        d.insert(
            "smtp_host".into(),
            Value::from(host.unwrap_or_else(|| "localhost".into())),
        );
        if let Some(p) = vars.get("SMTP_PORT") {
            let port = p.trim().parse::<u16>().map_err(|_| Error::Config {
                key: "SMTP_PORT".into(),
                message: format!("not a port number: {p:?}"),
            })?;
            d.insert("smtp_port".into(), Value::from(port));
            used.push("SMTP_PORT".into());
        }
        for (var, key) in [("SMTP_USER", "smtp_user"), ("SMTP_FROM", "from")] {
            if let Some(v) = vars.get(var) {
                d.insert(key.into(), Value::from(v.clone()));
                used.push(var.into());
            }
        }
        if let Some((password, var)) = var_or_file(&vars, "SMTP_PASSWORD")? {
            d.insert("smtp_password".into(), Value::from(password));
            used.push(var);
        }
        let tls = vars.get("SMTP_TLS");
        let mode = match tls.map(|t| t.to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("starttls") => "starttls",
            Some("tls") | Some("ssl") => "tls",
            Some("none") | Some("off") | Some("false") => "none",
            Some(other) => {
                return Err(Error::Config {
                    key: "SMTP_TLS".into(),
                    message: format!("unknown mode {other:?} (starttls, tls or none)"),
                });
            }
        };
        if tls.is_some() {
            used.push("SMTP_TLS".into());
        }
        d.insert("tls".into(), Value::from(mode.to_string()));
        out.push(notify_layer(layer_of("BACKUP_EMAIL_RECIPIENT"), d, used));
    }
    Ok(out)
}

/// A layer holding one notifier, which says it came from `vars`.
fn notify_layer(name: &'static str, notifier: Dict, vars: Vec<String>) -> VarLayer {
    let mut dict = Dict::new();
    dict.insert("notify".into(), Value::from(vec![Value::from(notifier)]));
    let origin = HashMap::from([("notify".to_string(), vars.join(", "))]);
    VarLayer {
        name,
        dict,
        origin: Arc::new(origin),
    }
}
