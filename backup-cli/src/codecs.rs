//! The stream codecs a configuration asks for: zstd and age on the way to storage,
//! and the matching decoders for restore and verify.

use backup_core::backup::{BackupOptions, Compression};
use backup_core::catalog::Resolved;
use backup_core::codec::{self, DecryptKeys};
use backup_core::manifest::Manifest;
use backup_core::restore::Decoder;
use backup_core::{Error, Result};

use crate::config::Config;

/// Add the encoders to a backup's options.
pub fn add_encoders(c: &Config, opts: &mut BackupOptions) -> Result<()> {
    if let Compression::Zstd(level) = opts.compression {
        opts.transforms
            .push(Box::new(codec::ZstdEncoder::new(level)?));
    }
    if c.encryption.enabled() {
        opts.transforms
            .push(Box::new(codec::AgeEncryptor::new(&c.encryption)?));
        opts.encryption = "age".into();
        opts.recipients = c.encryption.public_recipients();
    }
    Ok(())
}

/// The keys for decrypting, from `[encryption]` (where `KAIZEN_BACKUP_AGE_IDENTITY_FILE`
/// and `KAIZEN_BACKUP_AGE_PASSPHRASE` land too).
pub fn keys(c: &Config) -> Result<DecryptKeys> {
    Ok(DecryptKeys {
        identity_file: c.encryption.identity_file.clone(),
        passphrase: c.encryption.passphrase.clone(),
    })
}

/// The decoder for a stored object (None for plain custom-format archives).
pub fn decoder(c: &Config, manifest: Option<&Manifest>) -> Result<Option<Decoder>> {
    let Some(m) = manifest else { return Ok(None) };
    let encrypted = m.encryption == "age";
    let zstd = m.compression == "zstd";
    if !encrypted && !zstd {
        return Ok(None);
    }
    let keys = if encrypted { Some(keys(c)?) } else { None };
    let recipients = m.recipients.clone();
    Ok(Some(Box::new(move |stream| {
        let stream = match &keys {
            Some(k) => codec::age_decode(stream, k, &recipients)?,
            None => stream,
        };
        Ok(if zstd {
            codec::zstd_decode(stream)
        } else {
            stream
        })
    })))
}

/// Before anything is touched or recorded, check that the configured key opens an
/// encrypted backup: a key that does not match is "no matching identity", never
/// mistaken for a truncated or corrupt file. Only the age header and the first chunk
/// are read. Other read problems are left for the checksum to explain.
pub async fn check_key(c: &Config, resolved: &Resolved) -> Result<()> {
    use futures::StreamExt;
    let Some(m) = &resolved.manifest else {
        return Ok(());
    };
    if m.encryption != "age" {
        return Ok(());
    }
    let keys = keys(c)?;
    let Ok(stream) = resolved.storage.get(&resolved.data_key).await else {
        return Ok(());
    };
    let mut plain = codec::age_decode(stream, &keys, &m.recipients)?;
    match plain.next().await {
        Some(Err(Error::Refused(why))) => Err(Error::Refused(format!(
            "cannot decrypt backup {}: {why}",
            resolved.name
        ))),
        _ => Ok(()),
    }
}
