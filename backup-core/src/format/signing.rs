//! Signed manifests: who wrote a backup, and that nothing in it changed since.
//!
//! ```text
//! backup host: manifest ─▶ canonical document (no `signature`, no `pinned`) ─▶ Ed25519 ─▶ `signature`
//! reader:      manifest ─▶ same document ─▶ one of `verify_keys` named by `signature.key`? ─▶ valid?
//! ```
//!
//! The manifest names every object of the backup with its size and SHA-256 (the data
//! object, the roles object; a physical backup's data object holds the WAL from its start
//! to its end), so a valid signature covers every byte a restore reads: readers check each
//! object's SHA-256 against the manifest before anything is touched. `pinned` is left out
//! because `prune --pin` rewrites it on hosts that hold no signing key; the verification
//! record is a separate object and not signed either.
//!
//! The signed document is the manifest as this version writes it, as JSON with keys in
//! sorted order: a manifest holding a field this version does not know fails to
//! authenticate (refused, never guessed at); upgrade readers before writers.
//!
//! Keys: the private key file holds `kaizen-ed25519-secret:HEX` (32 bytes, `#` lines are
//! comments), a public key is `ed25519:HEX` on one line.

use std::io::Write;
use std::path::Path;

use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::secret::Secret;

/// How a public key is written (`ed25519:` and 64 hex digits).
pub const PUBLIC_PREFIX: &str = "ed25519:";
/// How the private key is written in its file.
const SECRET_PREFIX: &str = "kaizen-ed25519-secret:";
/// Domain separation: a manifest signature is never valid as anything else.
const CONTEXT: &[u8] = b"kaizen-backup manifest signature v1\0";
/// The same for a WAL file's signature.
const WAL_CONTEXT: &[u8] = b"kaizen-backup wal signature v1\0";
/// Suffix of a WAL file's signature object.
pub const WAL_SIGNATURE_SUFFIX: &str = ".sig";

/// The private key that signs manifests (`[integrity] signing_key`). Never printed.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

impl SigningKey {
    /// Read a key as `keygen --signing` writes it; `origin` names where it came from.
    pub fn parse(text: &Secret, origin: &str) -> Result<Self> {
        let bad = |why: &str| Error::Config {
            key: "integrity.signing_key".into(),
            message: format!(
                "{origin}: {why} (create one with `kaizen-backup keygen --signing --output FILE`)"
            ),
        };
        let line = text
            .expose()
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| bad("no key found"))?;
        let hex_key = line
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| bad("not a kaizen-backup signing key"))?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(hex_key, &mut seed).map_err(|_| bad("the key is damaged"))?;
        Ok(Self(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// A new random key.
    pub fn generate() -> Self {
        let seed: [u8; 32] = rand::random();
        Self(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// Its public key.
    pub fn public(&self) -> VerifyKey {
        VerifyKey(self.0.verifying_key())
    }

    /// Sign `manifest`: its `signature` names this key's public key.
    pub fn sign(&self, manifest: &mut Manifest) -> Result<()> {
        manifest.signature = None;
        let document = signed_document(manifest)?;
        let signature = self.0.sign(&document);
        manifest.signature = Some(ManifestSignature {
            algorithm: SignatureAlgorithm::Ed25519,
            key: self.public().to_string(),
            value: hex::encode(signature.to_bytes()),
        });
        Ok(())
    }
}

/// The key of the signature object of WAL file `name` with content `sha256`:
/// `NAME-SHA256.sig`, beside `NAME-SHA256[.zst][.age]` (which the archive's listing
/// does not mistake it for).
pub fn wal_signature_key(name: &str, sha256: &str) -> String {
    format!("{name}-{sha256}{WAL_SIGNATURE_SUFFIX}")
}

fn wal_message(name: &str, sha256: &str) -> Vec<u8> {
    let mut m = WAL_CONTEXT.to_vec();
    m.extend_from_slice(name.as_bytes());
    m.push(0);
    m.extend_from_slice(sha256.as_bytes());
    m
}

impl SigningKey {
    /// The signature object of WAL file `name` with content `sha256`: one line, the
    /// public key and the signature.
    pub fn sign_wal(&self, name: &str, sha256: &str) -> Vec<u8> {
        let sig = self.0.sign(&wal_message(name, sha256));
        format!("{} {}\n", self.public(), hex::encode(sig.to_bytes())).into_bytes()
    }
}

/// Check a WAL file's signature object (`None`: there is none) against `keys`.
pub fn wal_authenticity(
    object: Option<&[u8]>,
    name: &str,
    sha256: &str,
    keys: &[VerifyKey],
) -> Authenticity {
    let Some(object) = object else {
        return Authenticity::Unsigned;
    };
    let text = String::from_utf8_lossy(object);
    let mut parts = text.split_whitespace();
    let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
        return Authenticity::Mismatch { key: String::new() };
    };
    let key = key.to_string();
    let Some(trusted) = keys.iter().find(|k| k.to_string() == key) else {
        return Authenticity::UnknownKey { key };
    };
    let mut bytes = [0u8; 64];
    if hex::decode_to_slice(value, &mut bytes).is_err() {
        return Authenticity::Mismatch { key };
    }
    let signature = ed25519_dalek::Signature::from_bytes(&bytes);
    match trusted
        .0
        .verify_strict(&wal_message(name, sha256), &signature)
    {
        Ok(()) => Authenticity::Valid { key },
        Err(_) => Authenticity::Mismatch { key },
    }
}

/// A public key that backups may be signed with (`[integrity] verify_keys`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VerifyKey(ed25519_dalek::VerifyingKey);

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyKey({self})")
    }
}

impl std::fmt::Display for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", hex::encode(self.0.as_bytes()))
    }
}

impl std::str::FromStr for VerifyKey {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || {
            format!(
                "{s:?} is not a public signing key (`ed25519:` and 64 hex digits, as in the `.pub` file `kaizen-backup keygen --signing` writes)"
            )
        };
        let hex_key = s.trim().strip_prefix(PUBLIC_PREFIX).ok_or_else(bad)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_key, &mut bytes).map_err(|_| bad())?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|_| bad())
    }
}

/// The signature algorithm (`signature.algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignatureAlgorithm {
    /// Ed25519 (RFC 8032).
    #[serde(rename = "ed25519")]
    Ed25519,
}

/// The manifest's `signature` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSignature {
    /// How it was made.
    pub algorithm: SignatureAlgorithm,
    /// The public key of the key that signed (`ed25519:HEX`): which key, for rotation.
    pub key: String,
    /// The signature (hex).
    pub value: String,
}

/// What a manifest's signature says, given the keys a reader trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authenticity {
    /// Signed by one of the keys, and nothing changed since.
    Valid {
        /// The key that signed.
        key: String,
    },
    /// No signature.
    Unsigned,
    /// Signed by a key that is not trusted.
    UnknownKey {
        /// The key that signed.
        key: String,
    },
    /// Signed by a trusted key, but the manifest changed since (or the signature is damaged).
    Mismatch {
        /// The key it names.
        key: String,
    },
}

impl Authenticity {
    /// The word `list` shows: `signed`, `UNSIGNED`, `UNKNOWN KEY`, `FORGED`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Valid { .. } => "signed",
            Self::Unsigned => "UNSIGNED",
            Self::UnknownKey { .. } => "UNKNOWN KEY",
            Self::Mismatch { .. } => "FORGED",
        }
    }

    /// Whether the backup may be read.
    pub fn is_valid(&self) -> bool {
        matches!(self, Self::Valid { .. })
    }
}

/// Check `manifest`'s signature against `keys`.
pub fn authenticity(manifest: &Manifest, keys: &[VerifyKey]) -> Authenticity {
    let Some(sig) = &manifest.signature else {
        return Authenticity::Unsigned;
    };
    let key = sig.key.clone();
    let Some(trusted) = keys.iter().find(|k| k.to_string() == sig.key.trim()) else {
        return Authenticity::UnknownKey { key };
    };
    let mut bytes = [0u8; 64];
    if hex::decode_to_slice(&sig.value, &mut bytes).is_err() {
        return Authenticity::Mismatch { key };
    }
    let signature = ed25519_dalek::Signature::from_bytes(&bytes);
    let mut unsigned = manifest.clone();
    unsigned.signature = None;
    match signed_document(&unsigned) {
        Ok(doc) if trusted.0.verify_strict(&doc, &signature).is_ok() => Authenticity::Valid { key },
        _ => Authenticity::Mismatch { key },
    }
}

/// Refuse a backup whose manifest is not validly signed by one of `keys` (no keys: every
/// backup is accepted, as without `[integrity]`).
pub fn authenticate(manifest: &Manifest, keys: &[VerifyKey]) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let name = &manifest.name;
    match authenticity(manifest, keys) {
        Authenticity::Valid { key } => {
            tracing::info!("Backup {name}: signature verified (key {key})");
            Ok(())
        }
        Authenticity::Unsigned => Err(Error::Refused(format!(
            "backup {name:?} is not signed, and integrity.verify_keys requires a signature: refusing to read it (nothing was touched)"
        ))),
        Authenticity::UnknownKey { key } => Err(Error::Refused(format!(
            "backup {name:?} is signed by {key}, which is not in integrity.verify_keys: refusing to read it (nothing was touched); add the key if it is yours"
        ))),
        Authenticity::Mismatch { key } => Err(Error::Refused(format!(
            "backup {name:?}: its manifest does not match its signature by {key}: it was changed after it was signed; refusing to read it (nothing was touched)"
        ))),
    }
}

/// The bytes that are signed: the context, then the manifest without `signature` and
/// `pinned` as JSON with sorted keys.
fn signed_document(manifest: &Manifest) -> Result<Vec<u8>> {
    let mut value = serde_json::to_value(manifest)
        .map_err(|e| Error::other(format!("cannot serialize manifest: {e}")))?;
    if let Some(map) = value.as_object_mut() {
        map.remove("signature");
        map.remove("pinned");
    }
    let mut out = CONTEXT.to_vec();
    canonical(&value, &mut out)?;
    Ok(out)
}

/// JSON with object keys sorted at every level, whatever serde_json's map keeps.
fn canonical(value: &serde_json::Value, out: &mut Vec<u8>) -> Result<()> {
    let json_err = |e: serde_json::Error| Error::other(format!("cannot serialize manifest: {e}"));
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k).map_err(json_err)?;
                out.push(b':');
                if let Some(v) = map.get(k) {
                    canonical(v, out)?;
                }
            }
            out.push(b'}');
        }
        serde_json::Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(v, out)?;
            }
            out.push(b']');
        }
        other => serde_json::to_writer(&mut *out, other).map_err(json_err)?,
    }
    Ok(())
}

/// Write a new signing key to `path` (0600) and its public key to `path.pub`, refusing
/// to overwrite either; returns the public key.
pub fn keygen(path: &Path) -> Result<VerifyKey> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    let pub_path = std::path::PathBuf::from(pub_path);
    if pub_path.exists() {
        return Err(Error::AlreadyExists(format!(
            "{} (refusing to overwrite a key)",
            pub_path.display()
        )));
    }
    let key = SigningKey::generate();
    let public = key.public();
    let create = |p: &Path, mode: u32| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(p)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    Error::AlreadyExists(format!("{} (refusing to overwrite a key)", p.display()))
                }
                _ => Error::io(format!("creating {}", p.display()), e),
            })
    };
    let mut f = create(path, 0o600)?;
    let text = format!(
        "# created by kaizen-backup keygen --signing\n# public key: {public}\n{SECRET_PREFIX}{}\n",
        hex::encode(key.0.to_bytes())
    );
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    let mut p = create(&pub_path, 0o644)?;
    p.write_all(format!("{public}\n").as_bytes())
        .and_then(|_| p.sync_all())
        .map_err(|e| Error::io(format!("writing {}", pub_path.display()), e))?;
    Ok(public)
}

/// `[integrity]`: the key that signs (backup host) and the keys that are trusted
/// (wherever backups are read).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntegrityConfig {
    /// The private key, normally `{ file = "…" }` (as `keygen --signing` writes it).
    pub signing_key: Option<Secret>,
    /// Public keys (`ed25519:…`) whose signatures are accepted; several during a key
    /// rotation. With none, backups are read unauthenticated, as without `[integrity]`.
    pub verify_keys: Vec<String>,
}

impl IntegrityConfig {
    /// The signing key, if one is configured.
    pub fn signing_key(&self) -> Result<Option<SigningKey>> {
        self.signing_key
            .as_ref()
            .map(|s| SigningKey::parse(s, "integrity.signing_key"))
            .transpose()
    }

    /// The trusted public keys.
    pub fn verify_keys(&self) -> Result<Vec<VerifyKey>> {
        self.verify_keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                k.parse().map_err(|message| Error::Config {
                    key: format!("integrity.verify_keys[{i}]"),
                    message,
                })
            })
            .collect()
    }

    /// Refuse keys that cannot be read (at configuration time).
    pub fn validate(&self) -> Result<()> {
        self.signing_key()?;
        self.verify_keys()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testing::manifest;

    fn sample() -> Manifest {
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        manifest("b1", "db", at)
    }

    #[test]
    fn signed_manifests_verify_and_changes_do_not() {
        let (old, new) = (SigningKey::generate(), SigningKey::generate());
        let mut m = sample();
        new.sign(&mut m).unwrap();
        // Through JSON, as readers see it.
        let m = Manifest::from_json(&m.to_json().unwrap()).unwrap();
        let both = [old.public(), new.public()];
        assert!(authenticity(&m, &both).is_valid());
        assert!(authenticate(&m, &both).is_ok());
        assert_eq!(
            authenticity(&m, &[old.public()]),
            Authenticity::UnknownKey {
                key: new.public().to_string()
            }
        );
        // Pinning changes nothing that is signed.
        let mut pinned = m.clone();
        pinned.pinned = true;
        assert!(authenticity(&pinned, &both).is_valid());
        // Any other change does.
        let mut forged = m.clone();
        forged.sha256 = "ab".repeat(32);
        assert!(matches!(
            authenticity(&forged, &both),
            Authenticity::Mismatch { .. }
        ));
        let mut forged = m.clone();
        forged.size_bytes += 1;
        assert!(authenticate(&forged, &both).is_err());
        // A signature moved from another manifest.
        let mut other = sample();
        other.database = "other".into();
        new.sign(&mut other).unwrap();
        let mut moved = m.clone();
        moved.signature = other.signature.clone();
        assert!(!authenticity(&moved, &both).is_valid());
        // Unsigned; and without keys, everything is accepted.
        assert_eq!(authenticity(&sample(), &both), Authenticity::Unsigned);
        assert!(authenticate(&sample(), &[]).is_ok());
    }

    #[test]
    fn wal_signatures_bind_name_and_content() {
        let key = SigningKey::generate();
        let keys = [key.public()];
        let (seg, sha) = ("000000010000000000000003", "ab".repeat(32));
        let sig = key.sign_wal(seg, &sha);
        assert!(wal_authenticity(Some(&sig), seg, &sha, &keys).is_valid());
        let other = "000000010000000000000004";
        assert!(!wal_authenticity(Some(&sig), other, &sha, &keys).is_valid());
        assert!(!wal_authenticity(Some(&sig), seg, &"cd".repeat(32), &keys).is_valid());
        assert_eq!(
            wal_authenticity(None, seg, &sha, &keys),
            Authenticity::Unsigned
        );
        let stranger = [SigningKey::generate().public()];
        assert!(matches!(
            wal_authenticity(Some(&sig), seg, &sha, &stranger),
            Authenticity::UnknownKey { .. }
        ));
        assert!(!wal_authenticity(Some(b"junk"), seg, &sha, &keys).is_valid());
    }

    #[test]
    fn keys_round_trip_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sign.key");
        let public = keygen(&path).unwrap();
        let text = std::fs::read_to_string(dir.path().join("sign.key.pub")).unwrap();
        assert_eq!(text.trim().parse::<VerifyKey>().unwrap(), public);
        let key = SigningKey::parse(&Secret::from_file(&path).unwrap(), "test").unwrap();
        assert_eq!(key.public(), public);
        assert_eq!(format!("{key:?}"), "SigningKey(***)");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(keygen(&path), Err(Error::AlreadyExists(_))));
        assert!("ed25519:zz".parse::<VerifyKey>().is_err());
        assert!(SigningKey::parse(&Secret::new("age-secret"), "x").is_err());
    }
}
