//! The codec chain of one backup, derived in one place: from a new backup's settings on
//! the way to storage ([`encoders`]), and from a stored backup's manifest on the way back
//! ([`decoder_for`]).
//!
//! ```text
//! backup:  pg_dump ──▶ zstd (compression = zstd) ──▶ age (encryption = age) ──▶ storage
//! restore: storage ──▶ age decrypt ──▶ zstd decompress ──▶ pg_restore / table of contents
//! ```
//! gzip is pg_dump's own compression inside the archive, so it needs no codec here.

use futures::StreamExt;

use super::{
    AgeEncryptor, DecryptKeys, EncryptionConfig, ZstdEncoder, age_decode, check_keys, zstd_decode,
};
use crate::backup;
use crate::catalog::Resolved;
use crate::error::{Error, Result};
use crate::manifest::{Compression, Encryption, Manifest};
use crate::storage::ByteStream;
use crate::transform::Transform;

/// Turns the stored byte stream into the plain archive (decrypt, decompress).
pub type Decoder = Box<dyn FnOnce(ByteStream) -> Result<ByteStream> + Send + Sync>;

/// The transforms that turn pg_dump's output into what a backup with these settings
/// stores: zstd when the compression is zstd, then age when encryption is on.
pub fn encoders(
    compression: backup::Compression,
    encryption: &EncryptionConfig,
) -> Result<Vec<Box<dyn Transform>>> {
    let mut chain: Vec<Box<dyn Transform>> = Vec::new();
    match compression {
        backup::Compression::Zstd(level) => chain.push(Box::new(ZstdEncoder::new(level)?)),
        backup::Compression::Gzip(_) | backup::Compression::None => {}
    }
    match encryption.kind {
        Encryption::Age => chain.push(Box::new(AgeEncryptor::new(encryption)?)),
        Encryption::None => {}
    }
    Ok(chain)
}

/// The decoder for the stored object `manifest` describes: age decryption with `keys`,
/// then zstd decompression; `None` when the object is a plain pg_dump archive.
///
/// Keys that cannot decrypt at all (none given, a missing identity file) are refused
/// here, before anything is read; a key that does not match fails the decoded stream
/// ([`check_key`] finds that out up front). `keys` are not looked at for a backup that
/// is not encrypted.
pub fn decoder_for(manifest: &Manifest, keys: &DecryptKeys) -> Result<Option<Decoder>> {
    let keys = match manifest.encryption {
        Encryption::Age => {
            check_keys(keys, &manifest.recipients)?;
            Some(keys.clone())
        }
        Encryption::None => None,
    };
    let zstd = match manifest.compression {
        Compression::Zstd => true,
        Compression::Gzip | Compression::None => false,
    };
    if keys.is_none() && !zstd {
        return Ok(None);
    }
    let recipients = manifest.recipients.clone();
    Ok(Some(Box::new(move |stream| {
        let stream = match &keys {
            Some(k) => age_decode(stream, k, &recipients)?,
            None => stream,
        };
        Ok(if zstd { zstd_decode(stream) } else { stream })
    })))
}

impl Resolved {
    /// The decoder for this backup's stored object (see [`decoder_for`]); `None` for a
    /// bare file, which is a plain pg_dump archive.
    pub fn decoder(&self, keys: &DecryptKeys) -> Result<Option<Decoder>> {
        match &self.manifest {
            Some(m) => decoder_for(m, keys),
            None => Ok(None),
        }
    }
}

/// Check, before anything is touched or recorded, that `keys` open an encrypted backup:
/// a key that does not match is "no matching identity", never mistaken for a truncated
/// or corrupt file. Only the age header and the first chunk are read; other read
/// problems are left for the checksum to explain. Backups that are not encrypted, and
/// bare files, pass.
pub async fn check_key(resolved: &Resolved, keys: &DecryptKeys) -> Result<()> {
    let Some(m) = &resolved.manifest else {
        return Ok(());
    };
    match m.encryption {
        Encryption::Age => {}
        Encryption::None => return Ok(()),
    }
    let Ok(stream) = resolved.storage.get(&resolved.data_key).await else {
        return Ok(());
    };
    let mut plain = age_decode(stream, keys, &m.recipients)?;
    match plain.next().await {
        Some(Err(Error::Refused(why))) => Err(Error::Refused(format!(
            "cannot decrypt backup {}: {why}",
            resolved.name
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::transform::finish_chain;

    fn manifest(compression: Compression, encryption: Encryption) -> Manifest {
        let json = include_str!("../../../testdata/manifest-gzip-custom.json");
        let mut m = Manifest::from_json(json.as_bytes()).unwrap();
        m.compression = compression;
        m.encryption = encryption;
        m
    }

    /// A new X25519 identity: the settings that encrypt for it and the keys that open it.
    /// (Passphrases would cost a calibrated second of scrypt each.)
    fn identity(dir: &tempfile::TempDir, name: &str) -> (EncryptionConfig, DecryptKeys) {
        let path = dir.path().join(name);
        let recipient = crate::codec::keygen(&path).unwrap();
        let encrypt = EncryptionConfig {
            kind: Encryption::Age,
            recipients: vec![recipient],
            ..EncryptionConfig::default()
        };
        let keys = DecryptKeys {
            identity_file: Some(path),
            passphrase: None,
            verify_keys: Vec::new(),
        };
        (encrypt, keys)
    }

    fn encode(chain: &mut [Box<dyn Transform>], input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for part in input.chunks(1000) {
            let mut carry = part.to_vec();
            for t in chain.iter_mut() {
                let mut next = Vec::new();
                t.push(&carry, &mut next).unwrap();
                carry = next;
            }
            out.extend(carry);
        }
        out.extend(finish_chain(chain).unwrap());
        out
    }

    async fn decode(decoder: Decoder, stored: Vec<u8>) -> Result<Vec<u8>> {
        let input = futures::stream::iter([Ok(Bytes::from(stored))]).boxed();
        let mut plain = decoder(input)?;
        let mut out = Vec::new();
        while let Some(chunk) = plain.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn what_the_encoders_write_the_decoder_reads() {
        let dir = tempfile::tempdir().unwrap();
        let (encrypt, keys) = identity(&dir, "id");
        let data: Vec<u8> = (0..50_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for (setting, recorded) in [
            (backup::Compression::Zstd(3), Compression::Zstd),
            (backup::Compression::None, Compression::None),
        ] {
            let mut chain = encoders(setting, &encrypt).unwrap();
            assert_eq!(
                chain.len(),
                if recorded == Compression::Zstd { 2 } else { 1 }
            );
            let stored = encode(&mut chain, &data);
            let m = manifest(recorded, Encryption::Age);
            let decoder = decoder_for(&m, &keys).unwrap().unwrap();
            assert_eq!(decode(decoder, stored).await.unwrap(), data);
        }
        let mut chain =
            encoders(backup::Compression::Zstd(1), &EncryptionConfig::default()).unwrap();
        let stored = encode(&mut chain, &data);
        let m = manifest(Compression::Zstd, Encryption::None);
        let decoder = decoder_for(&m, &DecryptKeys::default()).unwrap().unwrap();
        assert_eq!(decode(decoder, stored).await.unwrap(), data);
    }

    #[test]
    fn plain_archives_need_no_decoder_and_no_key() {
        assert!(
            encoders(backup::Compression::Gzip(6), &EncryptionConfig::default())
                .unwrap()
                .is_empty()
        );
        for c in [Compression::Gzip, Compression::None] {
            let m = manifest(c, Encryption::None);
            assert!(decoder_for(&m, &DecryptKeys::default()).unwrap().is_none());
        }
    }

    #[test]
    fn an_encrypted_backup_without_a_key_is_refused_before_reading() {
        let m = manifest(Compression::Gzip, Encryption::Age);
        let err = decoder_for(&m, &DecryptKeys::default()).err().unwrap();
        assert!(matches!(err, Error::Refused(_)), "{err:?}");
        assert!(err.to_string().contains("no key was given"), "{err}");
        let missing = DecryptKeys {
            identity_file: Some("/nonexistent/kaizen.agekey".into()),
            passphrase: None,
            verify_keys: Vec::new(),
        };
        let err = decoder_for(&m, &missing).err().unwrap();
        assert!(matches!(err, Error::Config { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_wrong_key_fails_the_stream_as_no_matching_identity() {
        let dir = tempfile::tempdir().unwrap();
        let (encrypt, _) = identity(&dir, "right");
        let (_, wrong) = identity(&dir, "wrong");
        let data = b"PGDMP and then some".to_vec();
        let stored = encode(
            &mut encoders(backup::Compression::None, &encrypt).unwrap(),
            &data,
        );
        let m = manifest(Compression::None, Encryption::Age);
        let decoder = decoder_for(&m, &wrong).unwrap().unwrap();
        let err = decode(decoder, stored).await.unwrap_err();
        assert!(err.to_string().contains("no matching identity"), "{err}");
    }
}
