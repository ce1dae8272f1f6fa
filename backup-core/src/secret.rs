//! A string that never prints.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret value (password, key, token). `Debug` and `Display` print `***`;
/// serializing also writes `***` so a secret cannot reach a manifest, a log or `config show`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The real value, for handing to a library or a child's environment.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Read a secret from a file (Docker/Kubernetes secrets; a trailing newline is
    /// dropped). The one way a secret is read from a file: `{ file = "..." }` in
    /// configuration and the `*_FILE` variables both come here.
    pub fn from_file(path: &std::path::Path) -> std::io::Result<Self> {
        std::fs::read_to_string(path).map(|t| Self(t.trim_end_matches(['\n', '\r']).to_string()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// A secret in configuration: the value itself, or `{ file = "/run/secrets/name" }`
/// to read it from a file (Docker/Kubernetes secrets; a trailing newline is dropped).
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Value(String),
            File { file: std::path::PathBuf },
        }
        match Raw::deserialize(d)? {
            Raw::Value(v) => Ok(Secret(v)),
            Raw::File { file } => Secret::from_file(&file).map_err(|e| {
                serde::de::Error::custom(format!("cannot read secret file {}: {e}", file.display()))
            }),
        }
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(serde_json::to_string(&s).ok().as_deref(), Some("\"***\""));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "from-file\n").unwrap();
        let s: Secret = serde_json::from_value(serde_json::json!({ "file": f })).unwrap();
        assert_eq!(s.expose(), "from-file");
        let e = serde_json::from_value::<Secret>(serde_json::json!({ "file": "/nonexistent/x" }))
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x"));
    }
}
