//! backup-verify as a library: the check list is extensible, and a compressed and
//! encrypted backup is decoded from its manifest with nothing but the keys.
#![allow(clippy::unwrap_used)] // tests may unwrap (team rules)

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use backup_core::backup::Compression as Setting;
use backup_core::codec::{self, DecryptKeys, EncryptionConfig};
use backup_core::manifest::{Compression, Encryption, Format, Kind, Manifest, ObjectCounts};
use backup_core::storage::{ByteStream, ObjectMeta, ObjectWriter};
use backup_core::transform::finish_chain;
use backup_core::{CheckResult, Error, Result, Storage, Verifier, VerifyContext};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// A storage holding one object, read-only: enough for checks that only read.
#[derive(Debug)]
struct OneObject {
    key: String,
    data: Bytes,
}

#[async_trait]
impl Storage for OneObject {
    fn url(&self) -> String {
        "memory://one".into()
    }
    async fn put(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        Err(Error::other(format!("read-only test storage: put {key}")))
    }
    async fn get(&self, key: &str) -> Result<ByteStream> {
        if key != self.key {
            return Err(Error::NotFound(key.into()));
        }
        let data = self.data.clone();
        // Several chunks, as a real store delivers them.
        let chunks: Vec<Result<Bytes>> = (0..data.len())
            .step_by(1000)
            .map(|i| Ok(data.slice(i..(i + 1000).min(data.len()))))
            .collect();
        Ok(futures::stream::iter(chunks).boxed())
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        Err(Error::other(format!("read-only test storage: head {key}")))
    }
    async fn list(&self, prefix: &str) -> Result<BoxStream<'static, Result<ObjectMeta>>> {
        Err(Error::other(format!(
            "read-only test storage: list {prefix}"
        )))
    }
    async fn delete(&self, key: &str) -> Result<()> {
        Err(Error::other(format!(
            "read-only test storage: delete {key}"
        )))
    }
    async fn check(&self) -> Result<()> {
        Ok(())
    }
}

/// The plain archive stand-in, zstd-compressed and age-encrypted as `backup` would store
/// it, with its manifest and the keys that open it.
struct Stored {
    plain: Vec<u8>,
    ctx: VerifyContext,
    keys: DecryptKeys,
    _dir: tempfile::TempDir,
}

fn stored(kind: Kind) -> Stored {
    let dir = tempfile::tempdir().unwrap();
    let identity = dir.path().join("id.agekey");
    let recipient = codec::keygen(&identity).unwrap();
    let encryption = EncryptionConfig {
        kind: Encryption::Age,
        recipients: vec![recipient.clone()],
        ..EncryptionConfig::default()
    };
    let plain: Vec<u8> = b"PGDMP\x01\x0e\x00"
        .iter()
        .copied()
        .chain((0..40_000u32).flat_map(|i| (i % 97).to_le_bytes()))
        .collect();
    let mut chain = codec::encoders(Setting::Zstd(3), &encryption).unwrap();
    let mut data = Vec::new();
    for part in plain.chunks(4096) {
        let mut carry = part.to_vec();
        for t in chain.iter_mut() {
            let mut out = Vec::new();
            t.push(&carry, &mut out).unwrap();
            carry = out;
        }
        data.extend(carry);
    }
    data.extend(finish_chain(&mut chain).unwrap());
    let now = chrono::Utc::now();
    let manifest = Manifest {
        format_version: 1,
        name: "enc".into(),
        object: "enc.dump.zst.age".into(),
        database: "db".into(),
        server_version: "16".into(),
        pg_dump_version: "pg_dump (PostgreSQL) 16".into(),
        format: Format::Custom,
        compression: Compression::Zstd,
        compression_level: Some(3),
        encryption: Encryption::Age,
        recipients: vec![recipient],
        started_at: now,
        finished_at: now,
        size_bytes: data.len() as u64,
        sha256: hex::encode(Sha256::digest(&data)),
        tool_version: backup_core::TOOL_VERSION.into(),
        pinned: false,
        database_size_bytes: 1,
        encoding: None,
        lc_collate: None,
        lc_ctype: None,
        locale_provider: None,
        locale: None,
        tables: Vec::new(),
        counts: ObjectCounts::default(),
        row_count_source: None,
        host: None,
        kind: Some(kind),
        physical: None,
        sequences: Vec::new(),
        roles: None,
        signature: None,
    };
    let storage = Arc::new(OneObject {
        key: manifest.object.clone(),
        data: data.into(),
    });
    Stored {
        plain,
        ctx: VerifyContext {
            name: manifest.name.clone(),
            storage,
            data_key: manifest.object.clone(),
            manifest: Some(manifest),
            pg: None,
            wal: None,
        },
        keys: DecryptKeys {
            identity_file: Some(identity),
            passphrase: None,
            verify_keys: Vec::new(),
        },
        _dir: dir,
    }
}

fn options(quick: bool, keys: DecryptKeys) -> backup_verify::VerifyOptions {
    backup_verify::VerifyOptions {
        quick,
        cancel: CancellationToken::new(),
        keys,
        jobs: 1,
        temp_dir: None,
    }
}

/// A library user's own check: decodes the object with the keys alone and compares it
/// with what was stored.
#[derive(Debug)]
struct Decodes {
    keys: DecryptKeys,
    want: Vec<u8>,
    ran: Arc<Mutex<Vec<&'static str>>>,
}

#[async_trait]
impl Verifier for Decodes {
    fn name(&self) -> &'static str {
        "decodes"
    }
    async fn verify(&self, ctx: &VerifyContext) -> Result<Vec<CheckResult>> {
        self.ran.lock().unwrap().push("decodes");
        let m = ctx.manifest.as_ref().unwrap();
        let decoder = codec::decoder_for(m, &self.keys)?.unwrap();
        let mut plain = decoder(ctx.storage.get(&ctx.data_key).await?)?;
        let mut got = Vec::new();
        while let Some(chunk) = plain.next().await {
            got.extend_from_slice(&chunk?);
        }
        Ok(vec![CheckResult {
            name: "decodes".into(),
            passed: got == self.want,
            detail: format!("{} bytes", got.len()),
            duration_seconds: 0.0,
        }])
    }
}

/// Fails, and records that it ran.
#[derive(Debug)]
struct Fails(Arc<Mutex<Vec<&'static str>>>);

#[async_trait]
impl Verifier for Fails {
    fn name(&self) -> &'static str {
        "fails"
    }
    async fn verify(&self, _: &VerifyContext) -> Result<Vec<CheckResult>> {
        self.0.lock().unwrap().push("fails");
        Ok(vec![CheckResult {
            name: "fails".into(),
            passed: false,
            detail: "always".into(),
            duration_seconds: 0.0,
        }])
    }
}

#[tokio::test]
async fn own_checks_run_after_the_standard_ones_and_decode_with_only_the_keys() {
    let s = stored(Kind::Logical);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let mut checks =
        backup_verify::standard_checks(&s.ctx, &options(true, s.keys.clone())).unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c.name()).collect();
    assert_eq!(names, ["file", "archive", "roles"]);
    checks.push(Box::new(Decodes {
        keys: s.keys.clone(),
        want: s.plain.clone(),
        ran: ran.clone(),
    }));
    checks.push(Box::new(Fails(ran.clone())));
    checks.push(Box::new(Fails(ran.clone())));
    let record = backup_verify::run_checks(&s.ctx, &checks, true)
        .await
        .unwrap();
    let results: Vec<(&str, bool)> = record
        .checks
        .iter()
        .map(|c| (c.name.as_str(), c.passed))
        .collect();
    // In order; the first failure stops the checks after it.
    assert_eq!(
        results,
        [
            ("file", true),
            ("archive", true),
            ("decodes", true),
            ("fails", false)
        ]
    );
    assert_eq!(*ran.lock().unwrap(), ["decodes", "fails"]);
    assert!(!record.passed && record.quick);
    assert_eq!(
        backup_verify::failure_error(&record).unwrap().to_string(),
        "verification failed at check `fails`: always"
    );
    // The compressed and encrypted object's archive check is left to the test restore.
    assert_eq!(
        record.checks[1].detail,
        "checked during the test restore (the object is compressed or encrypted by kaizen-backup)"
    );
}

#[tokio::test]
async fn the_full_list_ends_with_the_test_restore() {
    let s = stored(Kind::Safety);
    let checks = backup_verify::standard_checks(&s.ctx, &options(false, s.keys.clone())).unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c.name()).collect();
    assert_eq!(names, ["file", "archive", "roles", "test_restore"]);
    // Without connection settings the test restore says what it needs.
    let err = backup_verify::run_checks(&s.ctx, &checks, false)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Usage(_)), "{err:?}");
}

#[tokio::test]
async fn a_physical_backup_gets_its_own_checks_and_logical_checks_refuse_it() {
    let mut s = stored(Kind::Physical);
    // A manifest that says physical but records no WAL positions is not guessed at.
    let err = backup_verify::run(&s.ctx, &options(true, s.keys.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
    assert!(
        err.to_string().contains("records no WAL positions"),
        "{err}"
    );
    if let Some(m) = s.ctx.manifest.as_mut() {
        m.physical = Some(backup_core::manifest::PhysicalInfo {
            timeline: 1,
            start_lsn: "0/2000028".parse().unwrap(),
            end_lsn: "0/2000100".parse().unwrap(),
            system_identifier: "7000000000000000001".into(),
            wal_segment_size: 16 << 20,
        });
    }
    let checks = backup_verify::standard_checks(&s.ctx, &options(true, s.keys.clone())).unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c.name()).collect();
    assert_eq!(names, ["file", "physical"]);
    // Each check that assumes a logical backup refuses it on its own.
    let archive = backup_verify::ArchiveCheck { directory: false };
    assert!(matches!(archive.verify(&s.ctx).await, Err(Error::Usage(_))));
}
