//! Codec round trips: what the backup pipeline's transforms write, the restore side's
//! decoders give back byte for byte; a wrong or missing key and damaged bytes are
//! refused, never decoded into something else.
#![allow(clippy::unwrap_used)]

use backup_core::Secret;
use backup_core::codec::{
    AgeEncryptor, DecryptKeys, EncryptionConfig, ZstdEncoder, age_decode, keygen, zstd_decode,
};
use backup_core::storage::ByteStream;
use backup_core::transform::{Transform, finish_chain};
use backup_core::{Error, Result};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

/// 3 MiB that compress somewhat (repeats) but not trivially (noise).
fn sample() -> Vec<u8> {
    let mut seed: u64 = 7;
    (0..3 * 1024 * 1024)
        .map(|i| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            if i % 3 == 0 { b'k' } else { seed as u8 % 16 }
        })
        .collect()
}

/// Push `data` through `chain` in odd-sized chunks, as the pipeline does.
fn encode(mut chain: Vec<Box<dyn Transform>>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in data.chunks(100_003) {
        let mut carry = chunk.to_vec();
        for t in chain.iter_mut() {
            let mut next = Vec::new();
            t.push(&carry, &mut next).unwrap();
            carry = next;
        }
        out.extend_from_slice(&carry);
    }
    out.extend_from_slice(&finish_chain(&mut chain).unwrap());
    out
}

/// The stored bytes as storage would stream them (odd-sized chunks).
fn stream(data: Vec<u8>) -> ByteStream {
    let chunks: Vec<Result<Bytes>> = data
        .chunks(65_537)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks).boxed()
}

async fn collect(s: ByteStream) -> Result<Vec<u8>> {
    let chunks: Vec<Bytes> = s.try_collect().await?;
    Ok(chunks.concat())
}

fn age_config(recipients: Vec<String>, passphrase: Option<&str>) -> EncryptionConfig {
    EncryptionConfig {
        kind: backup_core::manifest::Encryption::Age,
        recipients,
        passphrase: passphrase.map(Secret::new),
        identity_file: None,
    }
}

#[tokio::test]
async fn zstd_round_trips_and_compresses() {
    let data = sample();
    let stored = encode(vec![Box::new(ZstdEncoder::new(3).unwrap())], &data);
    assert!(stored.len() < data.len() / 2, "{} bytes", stored.len());
    assert_eq!(collect(zstd_decode(stream(stored))).await.unwrap(), data);
}

#[tokio::test]
async fn zstd_then_age_round_trips_with_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    let identity = dir.path().join("key.txt");
    let recipient = keygen(&identity).unwrap();
    let cfg = age_config(vec![recipient.clone()], None);
    let data = sample();
    let stored = encode(
        vec![
            Box::new(ZstdEncoder::new(3).unwrap()),
            Box::new(AgeEncryptor::new(&cfg).unwrap()),
        ],
        &data,
    );
    assert!(stored.starts_with(b"age-encryption.org/v1"));
    let keys = DecryptKeys {
        identity_file: Some(identity),
        passphrase: None,
        verify_keys: Vec::new(),
    };
    let plain = age_decode(stream(stored), &keys, &[recipient]).unwrap();
    assert_eq!(collect(zstd_decode(plain)).await.unwrap(), data);
}

/// Slow in debug builds (scrypt), so one small object.
#[tokio::test]
async fn age_round_trips_with_a_passphrase() {
    let data = b"a small dump".to_vec();
    let cfg = age_config(Vec::new(), Some("correct horse"));
    let stored = encode(vec![Box::new(AgeEncryptor::new(&cfg).unwrap())], &data);
    let keys = DecryptKeys {
        identity_file: None,
        passphrase: Some(Secret::new("correct horse")),
        verify_keys: Vec::new(),
    };
    let plain = age_decode(stream(stored), &keys, &cfg.public_recipients()).unwrap();
    assert_eq!(collect(plain).await.unwrap(), data);
}

#[tokio::test]
async fn a_wrong_or_missing_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (right, wrong) = (dir.path().join("right"), dir.path().join("wrong"));
    let recipient = keygen(&right).unwrap();
    keygen(&wrong).unwrap();
    let cfg = age_config(vec![recipient.clone()], None);
    let stored = encode(
        vec![Box::new(AgeEncryptor::new(&cfg).unwrap())],
        b"secret rows",
    );
    let err = match age_decode(stream(stored.clone()), &DecryptKeys::default(), &[]) {
        Err(e) => e,
        Ok(_) => panic!("decoding without a key was started"),
    };
    assert!(matches!(err, Error::Refused(_)), "{err}");
    assert!(err.to_string().contains("no key was given"), "{err}");
    let keys = DecryptKeys {
        identity_file: Some(wrong),
        passphrase: None,
        verify_keys: Vec::new(),
    };
    let plain = age_decode(stream(stored), &keys, &[recipient]).unwrap();
    let err = collect(plain).await.unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");
    assert!(err.to_string().contains("no matching identity"), "{err}");
}

#[tokio::test]
async fn damaged_bytes_are_refused() {
    let data = sample();
    let mut stored = encode(vec![Box::new(ZstdEncoder::new(3).unwrap())], &data);
    let mid = stored.len() / 2;
    stored[mid] ^= 0xff;
    match collect(zstd_decode(stream(stored.clone()))).await {
        Err(e) => assert!(matches!(e, Error::Corrupt(_)), "{e}"),
        Ok(out) => assert_ne!(out, data, "a flipped byte decoded to the original"),
    }
    stored.truncate(mid);
    stored[mid - 1] ^= 0xff;
    let err = collect(zstd_decode(stream(stored))).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let identity = dir.path().join("key.txt");
    let cfg = age_config(vec![keygen(&identity).unwrap()], None);
    let mut sealed = encode(vec![Box::new(AgeEncryptor::new(&cfg).unwrap())], &data);
    let last = sealed.len() - 10;
    sealed[last] ^= 0x01;
    let keys = DecryptKeys {
        identity_file: Some(identity),
        passphrase: None,
        verify_keys: Vec::new(),
    };
    let plain = age_decode(stream(sealed), &keys, &cfg.recipients).unwrap();
    assert!(collect(plain).await.is_err(), "tampered ciphertext decoded");
}
