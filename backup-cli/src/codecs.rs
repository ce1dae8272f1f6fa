//! The keys for decrypting backups, from the configuration. Which codecs a backup needs
//! is core's business (`backup_core::codec::{encoders, decoder_for}`).

use backup_core::codec::DecryptKeys;
use backup_core::manifest::Manifest;
use backup_core::{Result, Secret};

use crate::config::{Config, var_or_file};

/// The keys for decrypting: configuration first, then `KAIZEN_BACKUP_AGE_IDENTITY_FILE`
/// and `KAIZEN_BACKUP_AGE_PASSPHRASE` (or `_FILE`).
pub fn keys(c: &Config) -> Result<DecryptKeys> {
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let identity_file = c.encryption.identity_file.clone().or_else(|| {
        env.get("KAIZEN_BACKUP_AGE_IDENTITY_FILE")
            .filter(|v| !v.is_empty())
            .map(Into::into)
    });
    let passphrase = match &c.encryption.passphrase {
        Some(p) => Some(p.clone()),
        None => var_or_file(&env, "KAIZEN_BACKUP_AGE_PASSPHRASE")?.map(|(v, _)| Secret::new(v)),
    };
    Ok(DecryptKeys {
        identity_file,
        passphrase,
    })
}

/// The keys a stored backup needs: read only when its manifest says it is encrypted, so
/// a key setting that cannot be read does not stand in the way of other backups.
pub fn keys_for(c: &Config, manifest: Option<&Manifest>) -> Result<DecryptKeys> {
    match manifest {
        Some(m) if m.encryption.is_encrypted() => keys(c),
        _ => Ok(DecryptKeys::default()),
    }
}
