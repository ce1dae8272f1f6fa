//! In-process stream codecs: zstd compression (all cores) and age encryption, as push
//! [`Transform`]s on the way to storage, and as streaming decoders on the way back.
//! [`encoders`] builds the chain a new backup's settings ask for, and [`decoder_for`]
//! the inverse that a stored backup's manifest asks for, so no caller assembles codecs.
//!
//! Encoders write into an in-memory sink that is drained after every push, so memory
//! stays bounded by the codec's own window. Decoders run the codec's `Read` API on a
//! blocking thread fed by the byte stream, with a bounded channel of output chunks.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Deserializer, Serialize};
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::error::{Error, Result};
use crate::manifest::Encryption;
use crate::secret::Secret;
use crate::storage::ByteStream;
use crate::transform::Transform;

mod chain;

pub use chain::{Decoder, check_key, decoder_for, encoders};

/// A `Write` whose bytes are collected for draining.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("sink poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn drain_into(&self, out: &mut Vec<u8>) {
        if let Ok(mut v) = self.0.lock() {
            out.append(&mut v);
        }
    }
}

// ---------------------------------------------------------------- zstd

/// Size of one zstd job (the input a worker compresses at once). zstd's default at
/// level 3 is 4 × its 2 MiB window = 8 MiB, and its multithreaded context keeps
/// (workers + 3) jobs of input in a ring buffer plus one compressed output buffer per
/// job in flight: about 60 MiB with 2 workers. 2 MiB jobs cost 0.2% of ratio on the
/// bench database (1 MiB: 0.8%); a zstd backup then peaks about 22 MiB above an
/// uncompressed one (bench, 2 workers).
pub const ZSTD_JOB_SIZE: u32 = 2 * 1024 * 1024;
/// Most zstd workers, whatever the core count: each one adds a job of input, a job of
/// output and its own match state (about 5 MiB at level 3), so memory stays bounded on
/// large machines; pg_dump's own throughput (one COPY at a time) needs no more.
pub const ZSTD_MAX_WORKERS: u32 = 4;

/// zstd compression on worker threads (`NbWorkers`, up to [`ZSTD_MAX_WORKERS`]) in jobs
/// of [`ZSTD_JOB_SIZE`].
pub struct ZstdEncoder {
    enc: Option<zstd::stream::write::Encoder<'static, Sink>>,
    sink: Sink,
}

impl std::fmt::Debug for ZstdEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZstdEncoder")
    }
}

impl ZstdEncoder {
    /// A new encoder at `level` (1–22). Memory is bounded as described at
    /// [`ZSTD_JOB_SIZE`] for the levels whose window is at most 2 MiB (up to 5 or so);
    /// higher levels need more for their windows and match tables, whatever the job size.
    pub fn new(level: i32) -> Result<Self> {
        let sink = Sink::default();
        let mut enc = zstd::stream::write::Encoder::new(sink.clone(), level)
            .map_err(|e| Error::other(format!("zstd: {e}")))?;
        let workers = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
            .min(ZSTD_MAX_WORKERS);
        if workers > 1 {
            // Multithreaded compression is a build option of libzstd; without it, one core
            // (and no job buffers).
            if enc.multithread(workers).is_ok() {
                enc.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))
                    .map_err(|e| Error::other(format!("zstd: {e}")))?;
            }
        }
        Ok(Self {
            enc: Some(enc),
            sink,
        })
    }
}

impl Transform for ZstdEncoder {
    fn name(&self) -> &'static str {
        "zstd"
    }
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let enc = self
            .enc
            .as_mut()
            .ok_or_else(|| Error::other("zstd encoder already finished"))?;
        enc.write_all(input)
            .map_err(|e| Error::other(format!("zstd: {e}")))?;
        self.sink.drain_into(out);
        Ok(())
    }
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<()> {
        if let Some(enc) = self.enc.take() {
            enc.finish()
                .map_err(|e| Error::other(format!("zstd: {e}")))?;
        }
        self.sink.drain_into(out);
        Ok(())
    }
}

// ---------------------------------------------------------------- age

/// `[encryption]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionConfig {
    /// `none` or `age`.
    #[serde(rename = "type")]
    pub kind: Encryption,
    /// X25519 public keys (`age1…`); a comma-separated string is accepted too.
    #[serde(deserialize_with = "list_or_csv")]
    pub recipients: Vec<String>,
    /// Passphrase (scrypt) instead of recipients.
    pub passphrase: Option<Secret>,
    /// Identity file for restore and verify (default `KAIZEN_BACKUP_AGE_IDENTITY_FILE`).
    pub identity_file: Option<PathBuf>,
}

fn list_or_csv<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        One(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(v) => v,
        Either::One(s) => s
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect(),
    })
}

fn cfg_err(key: &str, message: impl Into<String>) -> Error {
    Error::Config {
        key: format!("encryption.{key}"),
        message: message.into(),
    }
}

impl EncryptionConfig {
    /// Whether backups are encrypted.
    pub fn enabled(&self) -> bool {
        self.kind == Encryption::Age
    }

    /// Check the settings (recipients parse, exactly one of recipients/passphrase).
    pub fn validate(&self) -> Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        match (self.recipients.is_empty(), self.passphrase.is_some()) {
            (true, false) => {
                return Err(cfg_err(
                    "recipients",
                    "age encryption needs recipients (age1...) or a passphrase",
                ));
            }
            (false, true) => {
                return Err(cfg_err(
                    "passphrase",
                    "set either recipients or a passphrase, not both",
                ));
            }
            _ => {}
        }
        for r in &self.recipients {
            age::x25519::Recipient::from_str(r).map_err(|e| {
                cfg_err(
                    "recipients",
                    format!("{r:?} is not an age X25519 recipient: {e}"),
                )
            })?;
        }
        Ok(())
    }

    /// The public part recorded in manifests (recipients; `scrypt` for a passphrase;
    /// nothing when encryption is off).
    pub fn public_recipients(&self) -> Vec<String> {
        if !self.enabled() {
            Vec::new()
        } else if self.passphrase.is_some() {
            vec!["scrypt".into()]
        } else {
            self.recipients.clone()
        }
    }
}

/// age encryption as a push transform.
pub struct AgeEncryptor {
    w: Option<age::stream::StreamWriter<Sink>>,
    sink: Sink,
}

impl std::fmt::Debug for AgeEncryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgeEncryptor")
    }
}

impl AgeEncryptor {
    /// An encryptor for `cfg` (which must be enabled and valid).
    pub fn new(cfg: &EncryptionConfig) -> Result<Self> {
        cfg.validate()?;
        let enc = match &cfg.passphrase {
            Some(p) => age::Encryptor::with_user_passphrase(age::secrecy::SecretString::from(
                p.expose().to_string(),
            )),
            None => {
                let rs: Vec<age::x25519::Recipient> = cfg
                    .recipients
                    .iter()
                    .map(|r| {
                        age::x25519::Recipient::from_str(r)
                            .map_err(|e| cfg_err("recipients", e.to_string()))
                    })
                    .collect::<Result<_>>()?;
                age::Encryptor::with_recipients(rs.iter().map(|r| r as &dyn age::Recipient))
                    .map_err(|e| Error::other(format!("age: {e}")))?
            }
        };
        let sink = Sink::default();
        let w = enc
            .wrap_output(sink.clone())
            .map_err(|e| Error::other(format!("age: {e}")))?;
        Ok(Self { w: Some(w), sink })
    }
}

impl Transform for AgeEncryptor {
    fn name(&self) -> &'static str {
        "age"
    }
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let w = self
            .w
            .as_mut()
            .ok_or_else(|| Error::other("age encryptor already finished"))?;
        w.write_all(input)
            .map_err(|e| Error::other(format!("age: {e}")))?;
        self.sink.drain_into(out);
        Ok(())
    }
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<()> {
        if let Some(w) = self.w.take() {
            w.finish().map_err(|e| Error::other(format!("age: {e}")))?;
        }
        self.sink.drain_into(out);
        Ok(())
    }
}

/// What restore and verify need to read stored data: the keys that decrypt it, and the
/// public keys archived WAL must be signed with.
#[derive(Debug, Clone, Default)]
pub struct DecryptKeys {
    /// Identity file (X25519 `AGE-SECRET-KEY-1…` lines).
    pub identity_file: Option<PathBuf>,
    /// Passphrase.
    pub passphrase: Option<Secret>,
    /// `[integrity] verify_keys`: with any, `wal-fetch` serves only WAL files signed by
    /// one of them (see [`crate::signing`]).
    pub verify_keys: Vec<crate::signing::VerifyKey>,
}

// ---------------------------------------------------------------- decoding

/// Run a `Read`-based decoder on a blocking thread: `input` feeds it, its output comes
/// back as a stream of chunks (bounded channel: at most a few chunks in memory).
fn decode_stream<F>(input: ByteStream, what: &'static str, make: F) -> ByteStream
where
    F: FnOnce(Box<dyn Read + Send>) -> Result<Box<dyn Read + Send>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(4);
    // Upstream errors travel through the codec's `Read` as io errors carrying the original.
    let reader = StreamReader::new(input.map(|r| r.map_err(std::io::Error::other)));
    let bridge = SyncIoBridge::new(reader);
    tokio::task::spawn_blocking(move || {
        let mut dec = match make(Box::new(bridge)) {
            Ok(d) => d,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match dec.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx
                        .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let err = match e.into_inner().map(|inner| inner.downcast::<Error>()) {
                        Some(Ok(original)) => *original,
                        Some(Err(other)) => Error::Corrupt(format!("{what}: {other}")),
                        None => Error::Corrupt(format!("{what}: read failed")),
                    };
                    let _ = tx.blocking_send(Err(err));
                    return;
                }
            }
        }
    });
    tokio_stream_from(rx)
}

fn tokio_stream_from(mut rx: tokio::sync::mpsc::Receiver<Result<Bytes>>) -> ByteStream {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// Decompress a zstd stream.
pub fn zstd_decode(input: ByteStream) -> ByteStream {
    decode_stream(input, "zstd", |r| {
        let d = zstd::stream::read::Decoder::new(r)
            .map_err(|e| Error::Corrupt(format!("zstd: {e}")))?;
        Ok(Box::new(d))
    })
}

/// How an encrypted backup names its recipients in messages.
fn named(recipients: &[String]) -> String {
    if recipients.is_empty() {
        "age".to_string()
    } else {
        recipients.join(", ")
    }
}

/// Refuse keys that cannot possibly decrypt a backup encrypted for `recipients`: none
/// given, or an identity file that does not exist.
pub(crate) fn check_keys(keys: &DecryptKeys, recipients: &[String]) -> Result<()> {
    if keys.identity_file.is_none() && keys.passphrase.is_none() {
        return Err(Error::Refused(format!(
            "this backup is encrypted for {}; no key was given: set encryption.identity_file or KAIZEN_BACKUP_AGE_IDENTITY_FILE (or the passphrase)",
            named(recipients)
        )));
    }
    if let Some(path) = &keys.identity_file
        && !path.is_file()
    {
        return Err(Error::Config {
            key: "encryption.identity_file".into(),
            message: format!("identity file {} does not exist", path.display()),
        });
    }
    Ok(())
}

/// Decrypt an age stream with `keys`. A missing key is refused before anything is read;
/// a wrong key or tampered ciphertext fail the stream with a clear error.
pub fn age_decode(
    input: ByteStream,
    keys: &DecryptKeys,
    recipients: &[String],
) -> Result<ByteStream> {
    let named = named(recipients);
    check_keys(keys, recipients)?;
    let given = match &keys.identity_file {
        Some(path) => format!("the identity in {}", path.display()),
        None => "the passphrase".to_string(),
    };
    let keys = keys.clone();
    Ok(decode_stream(input, "age", move |r| {
        // Identities are built here, on the decoding thread (they are not Send).
        let identities: Vec<Box<dyn age::Identity>> = match (&keys.identity_file, &keys.passphrase)
        {
            (Some(path), _) => age::IdentityFile::from_file(path.display().to_string())
                .map_err(|e| {
                    Error::other(format!("cannot read identity file {}: {e}", path.display()))
                })?
                .into_identities()
                .map_err(|e| Error::other(format!("identity file {}: {e}", path.display())))?,
            (None, Some(p)) => vec![Box::new(age::scrypt::Identity::new(
                age::secrecy::SecretString::from(p.expose().to_string()),
            ))],
            (None, None) => Vec::new(),
        };
        let d = age::Decryptor::new_buffered(std::io::BufReader::new(r))
            .map_err(|e| Error::Corrupt(format!("age header: {e}")))?;
        let out =
            d.decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
                .map_err(|e| match e {
                    age::DecryptError::NoMatchingKeys => Error::Refused(format!(
                        "no matching identity: {given} does not match the recipients of this backup ({named}); use the key it was encrypted for"
                    )),
                    age::DecryptError::DecryptionFailed
                    | age::DecryptError::KeyDecryptionFailed => Error::Refused(format!(
                        "no matching identity: {given} does not decrypt this backup (encrypted for {named})"
                    )),
                    other => Error::Corrupt(format!("age: {other}")),
                })?;
        Ok(Box::new(out) as Box<dyn Read + Send>)
    }))
}

/// Write a new age X25519 identity to `path` (0600, never overwriting) and return its
/// public recipient (`age1…`).
pub fn keygen(path: &std::path::Path) -> Result<String> {
    use age::secrecy::ExposeSecret;
    use std::os::unix::fs::OpenOptionsExt;
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    let text = format!(
        "# created by kaizen-backup keygen\n# public key: {recipient}\n{}\n",
        id.to_string().expose_secret()
    );
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(recipient)
}
