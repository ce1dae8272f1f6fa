//! The keys for decrypting backups, from the configuration. Which codecs a backup needs
//! is core's business (`backup_core::codec::{encoders, decoder_for}`).

use backup_core::Result;
use backup_core::codec::DecryptKeys;
use backup_core::manifest::Manifest;

use crate::config::Config;

/// The keys for decrypting, from `[encryption]` (where `KAIZEN_BACKUP_AGE_IDENTITY_FILE`
/// and `KAIZEN_BACKUP_AGE_PASSPHRASE` land too).
pub fn keys(c: &Config) -> Result<DecryptKeys> {
    Ok(DecryptKeys {
        identity_file: c.encryption.identity_file.clone(),
        passphrase: c.encryption.passphrase.clone(),
        verify_keys: c.integrity.verify_keys()?,
    })
}

/// The keys a stored backup needs: read only when its manifest says it is encrypted, so
/// a key setting that cannot be read does not stand in the way of other backups.
pub fn keys_for(c: &Config, manifest: Option<&Manifest>) -> Result<DecryptKeys> {
    match manifest {
        Some(m) if m.encryption.is_encrypted() => keys(c),
        _ => Ok(DecryptKeys {
            verify_keys: c.integrity.verify_keys()?,
            ..DecryptKeys::default()
        }),
    }
}
