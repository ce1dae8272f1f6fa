//! Unknown keys are errors: a misspelled `[encryptoin]` must not silently produce an
//! unencrypted backup. The merged configuration is walked against the shape of
//! [`Config`] (its serialized defaults, plus every notifier type), and the first key
//! that nothing reads is reported with where it came from and the closest valid key.

use backup_core::{Error, Result};
use figment::value::{Dict, Value};
use figment::{Figment, Profile, Provider, Source};
use serde_json::{Map as JsonMap, Value as Json};

use super::{Config, ENV_PREFIX};

/// `KAIZEN_BACKUP_*` variables without `__`: the age keys (mapped to `[encryption]` keys
/// by `vars::age_layer`), and others read where they are used.
pub const STANDALONE_VARS: &[&str] = &[
    "KAIZEN_BACKUP_AGE_IDENTITY_FILE",
    "KAIZEN_BACKUP_AGE_PASSPHRASE",
    "KAIZEN_BACKUP_AGE_PASSPHRASE_FILE",
    "KAIZEN_BACKUP_WEBDAV_USER",
    "KAIZEN_BACKUP_WEBDAV_PASSWORD",
    // The binary's own path, for the test harness and `cargo xtask bench`.
    "KAIZEN_BACKUP_BIN",
    // Test hook: stop at a named step (`backup_core::util::pause_point`).
    "KAIZEN_BACKUP_TEST_PAUSE",
];

/// The shape of the configuration: every section and key, with `{}` for free-form maps.
fn schema() -> Result<Json> {
    let mut root = to_json(&Config::default())?;
    let notifiers = backup_notify::NotifierConfig::all_types();
    let mut by_type = JsonMap::new();
    for n in &notifiers {
        by_type.insert(n.kind().to_string(), to_json(n)?);
    }
    let target = to_json(&super::TargetSpec::Full {
        url: String::new(),
        optional: false,
    })?;
    if let Json::Object(m) = &mut root {
        m.insert("notify".into(), Json::Array(vec![Json::Object(by_type)]));
        if let Some(Json::Object(storage)) = m.get_mut("storage") {
            storage.insert("targets".into(), Json::Array(vec![target]));
        }
    }
    Ok(root)
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Json> {
    serde_json::to_value(v)
        .map_err(|e| Error::other(format!("cannot describe the configuration: {e}")))
}

/// Refuse any key of the merged configuration that no setting reads.
pub fn check(fig: &Figment) -> Result<()> {
    let schema = schema()?;
    let data = fig.data().map_err(super::validate::figment_error)?;
    let Some(dict) = data.get(&Profile::Default) else {
        return Ok(());
    };
    walk_dict(fig, dict, &schema, &mut Vec::new())
}

fn walk_dict(fig: &Figment, dict: &Dict, schema: &Json, path: &mut Vec<String>) -> Result<()> {
    let Json::Object(known) = schema else {
        return Ok(());
    };
    if known.is_empty() {
        return Ok(()); // a free-form map (webhook headers)
    }
    // `[[notify]]` entries are checked against the keys of their own `type` (a missing
    // or unknown type is for deserialization to report).
    let known = if path.last().is_some_and(|p| p == "notify") {
        match dict.get("type") {
            Some(Value::String(_, kind)) => match known.get(kind.as_str()) {
                Some(Json::Object(k)) => k,
                _ => return Ok(()),
            },
            _ => return Ok(()),
        }
    } else {
        known
    };
    for (key, value) in dict {
        let Some(sub) = known.get(key) else {
            return Err(unknown(fig, path, key, value, known.keys()));
        };
        path.push(key.clone());
        walk(fig, value, sub, path)?;
        path.pop();
    }
    Ok(())
}

fn walk(fig: &Figment, value: &Value, schema: &Json, path: &mut Vec<String>) -> Result<()> {
    match (value, schema) {
        (Value::Dict(_, d), Json::Object(_)) => walk_dict(fig, d, schema, path),
        (Value::Array(_, items), Json::Array(shape)) => {
            let Some(item_schema) = shape.first() else {
                return Ok(());
            };
            for item in items {
                if let Value::Dict(_, d) = item {
                    walk_dict(fig, d, item_schema, path)?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn unknown<'a>(
    fig: &Figment,
    path: &[String],
    key: &str,
    value: &Value,
    candidates: impl Iterator<Item = &'a String>,
) -> Error {
    let mut full: Vec<&str> = path.iter().map(String::as_str).collect();
    full.push(key);
    let dotted = full.join(".");
    let what = if matches!(value, Value::Dict(..)) {
        "section"
    } else {
        "key"
    };
    let suggestion = closest(key, candidates.map(String::as_str));
    let mut message = format!("unknown {what} `{dotted}`");
    let md = fig.get_metadata(value.tag());
    match md {
        Some(md) if md.name == "environment" || md.name == ".env file" => {
            // A section comes from a `KAIZEN_BACKUP_SECTION__KEY`: name its first leaf's variable.
            let mut leaf: Vec<&str> = full.clone();
            let mut v = value;
            while let Value::Dict(_, d) = v {
                let Some((k, inner)) = d.iter().next() else {
                    break;
                };
                leaf.push(k);
                v = inner;
            }
            let var = md.interpolate(&Profile::Default, &leaf);
            message.push_str(&format!(" (from {var} in the {})", md.name));
            if let Some(s) = &suggestion {
                let mut fixed = leaf.clone();
                fixed[full.len() - 1] = s;
                message.push_str(&format!(
                    "; did you mean `{}` ({ENV_PREFIX}{})?",
                    full[..full.len() - 1]
                        .iter()
                        .chain([&s.as_str()])
                        .copied()
                        .collect::<Vec<_>>()
                        .join("."),
                    fixed.join("__").to_ascii_uppercase()
                ));
            }
        }
        _ => {
            if let Some(md) = md {
                let src = match &md.source {
                    Some(Source::File(p)) => std::path::absolute(p)
                        .unwrap_or_else(|_| p.clone())
                        .display()
                        .to_string(),
                    Some(other) => other.to_string(),
                    None => md.name.to_string(),
                };
                message.push_str(&format!(" in {src}"));
            }
            if let Some(s) = &suggestion {
                message.push_str(&format!("; did you mean `{s}`?"));
            }
        }
    }
    if suggestion.is_none() {
        message.push_str(" (see `kaizen-backup config show` for every key)");
    }
    Error::Config {
        key: dotted,
        message,
    }
}

/// The candidate nearest to `word` (edit distance at most a third of its length, at least 2).
pub fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<String> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .map(|c| (distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c.to_string())
}

/// Levenshtein distance, with a swap of neighbours counted as one edit.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// A `KAIZEN_BACKUP_*` variable without `__` that nothing reads is an error.
pub fn check_standalone(var: &str, layer: &str) -> Result<()> {
    if STANDALONE_VARS.contains(&var) {
        return Ok(());
    }
    let rest = &var[ENV_PREFIX.len().min(var.len())..];
    let mut message = format!("unknown variable {var} in the {layer}");
    // KAIZEN_BACKUP_ENCRYPTION_TYPE: a section and key joined by one underscore.
    let sections = schema()?
        .as_object()
        .map(|m| m.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default();
    let lower = rest.to_ascii_lowercase();
    let split = sections
        .iter()
        .find_map(|s| lower.strip_prefix(&format!("{s}_")).map(|k| (s, k)));
    let hint = match split {
        Some((s, k)) => Some(format!(
            "{ENV_PREFIX}{}__{}",
            s.to_ascii_uppercase(),
            k.to_ascii_uppercase()
        )),
        None => closest(var, STANDALONE_VARS.iter().copied()),
    };
    match hint {
        Some(h) => message.push_str(&format!("; did you mean {h}?")),
        None => message.push_str(&format!(
            " (settings are {ENV_PREFIX}SECTION__KEY, e.g. {ENV_PREFIX}RETENTION__KEEP_DAILY; other variables: {})",
            STANDALONE_VARS.join(", ")
        )),
    }
    Err(Error::Config {
        key: var.to_string(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_names_the_misspelling() {
        let keys = ["encryption", "database", "storage", "notify"];
        assert_eq!(
            closest("encryptoin", keys.iter().copied()).as_deref(),
            Some("encryption")
        );
        assert_eq!(closest("zzzzzz", keys.iter().copied()), None);
        assert_eq!(distance("ab", "ba"), 1);
        assert_eq!(distance("", "abc"), 3);
    }
}
