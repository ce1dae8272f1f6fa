//! The `config show` listing: every leaf key of the merged configuration with its value
//! (secrets redacted by their type) and where it came from.

use std::collections::BTreeMap;

use backup_core::{Error, Result};
use figment::{Metadata, Profile};

use super::Loaded;

/// One row: key, value, source.
pub type Row = (String, serde_json::Value, String);

/// Every leaf key with its value and source, sorted by key; one row per notifier.
pub fn describe(loaded: &Loaded) -> Result<Vec<Row>> {
    let value = serde_json::to_value(&loaded.config)
        .map_err(|e| Error::other(format!("cannot show configuration: {e}")))?;
    let mut leaves = BTreeMap::new();
    flatten("", &value, &mut leaves);
    let mut out = Vec::new();
    // One row per notifier, each with its own source (a file, or the old variables).
    let notifiers = match leaves.remove("notify") {
        Some(serde_json::Value::Array(list)) => list,
        _ => Vec::new(),
    };
    let sources = notifier_sources(loaded);
    for (i, v) in notifiers.into_iter().enumerate() {
        let src = sources.get(i).cloned().unwrap_or_else(|| "default".into());
        out.push((format!("notify.{i}"), v, src));
    }
    for (key, v) in leaves {
        let source = match (&loaded.production_from, key.as_str()) {
            (Some(from), "restore.environment") => from.clone(),
            _ => match loaded.figment.find_metadata(&key) {
                Some(md) => source(md, &key.split('.').collect::<Vec<_>>()),
                None => "default".to_string(),
            },
        };
        out.push((key, v, source));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Where each entry of the merged `[[notify]]` list came from.
fn notifier_sources(loaded: &Loaded) -> Vec<String> {
    let Ok(figment::value::Value::Array(_, items)) = loaded.figment.find_value("notify") else {
        return Vec::new();
    };
    items
        .iter()
        .map(|item| match loaded.figment.get_metadata(item.tag()) {
            Some(md) => source(md, &["notify"]),
            None => "default".to_string(),
        })
        .collect()
}

/// How a source reads: `environment (VAR)`, a file's path, `command line` or `default`.
fn source(md: &Metadata, keys: &[&str]) -> String {
    match (md.name.as_ref(), &md.source) {
        ("environment" | ".env file", _) => {
            format!("{} ({})", md.name, md.interpolate(&Profile::Default, keys))
        }
        // Built-in defaults carry the location of our own code: say "default".
        (_, Some(figment::Source::Code(_))) | (_, None) if md.name != "command line" => {
            "default".to_string()
        }
        (_, Some(s)) => s.to_string(),
        (name, None) => name.to_string(),
    }
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
