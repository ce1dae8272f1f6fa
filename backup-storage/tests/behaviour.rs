//! One behaviour suite, run unchanged against every backend: local directory, S3 (moto),
//! Azure (Azurite), GCS (gcp-storage-emulator) and WebDAV (wsgidav) through opendal, and
//! backup-core's in-memory test storage (so unit tests that use it prove something).
//! Cloud servers come from `cargo xtask test`.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use backup_core::storage::{get_bytes, list_all, put_bytes};
use backup_core::{Error, Storage};
use backup_storage::{StorageOptions, open};
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests with `cargo xtask test`"))
}

fn unique(p: &str) -> String {
    use rand::Rng;
    format!("{p}-{:x}", rand::rng().random::<u64>())
}

/// The part size of the default options (`storage.upload.part_size`).
const PART: usize = 8 * 1024 * 1024;

/// Writing `key` again with `len` bytes is refused (at `put`, or at `finish` where the
/// commit is a conditional create) and leaves the object as it was.
async fn overwrite_is_refused(s: &dyn Storage, key: &str, len: usize) {
    let before = get_bytes(s, key).await.unwrap();
    let err = match s.put(key).await {
        Err(e) => e,
        Ok(mut w) => match w.write(Bytes::from(vec![9u8; len])).await {
            Err(e) => {
                w.abort().await.unwrap();
                e
            }
            Ok(()) => match w.finish().await {
                Ok(_) => panic!("{key} was overwritten"),
                Err(e) => e,
            },
        },
    };
    assert!(matches!(err, Error::AlreadyExists(_)), "{key}: {err}");
    assert!(get_bytes(s, key).await.unwrap() == before, "{key} changed");
    assert_eq!(s.list_incomplete().await.unwrap(), [], "{key}");
}

/// `lists_incomplete`: whether the backend keeps unfinished writes that it can list
/// (local partial files, S3 multipart uploads); the others report none.
async fn suite(s: Arc<dyn Storage>, lists_incomplete: bool) {
    s.check().await.unwrap();
    assert_eq!(s.list_incomplete().await.unwrap(), []);
    // put / finish / head / get / list
    put_bytes(s.as_ref(), "a.dump", Bytes::from_static(b"hello world"))
        .await
        .unwrap();
    let m = s.head("a.dump").await.unwrap().unwrap();
    assert_eq!(m.size, 11);
    assert_eq!(
        &get_bytes(s.as_ref(), "a.dump").await.unwrap()[..],
        b"hello world"
    );
    let keys: Vec<String> = list_all(s.as_ref(), "")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["a.dump"]);

    // existing key refused, original intact
    overwrite_is_refused(s.as_ref(), "a.dump", 5).await;

    // abort leaves nothing visible
    let mut w = s.put("aborted.dump").await.unwrap();
    w.write(Bytes::from(vec![7u8; 1024])).await.unwrap();
    w.abort().await.unwrap();
    assert!(s.head("aborted.dump").await.unwrap().is_none());
    // dropping without finish leaves nothing visible either
    {
        let mut w = s.put("dropped.dump").await.unwrap();
        w.write(Bytes::from(vec![1u8; 1024])).await.unwrap();
    }
    assert!(s.head("dropped.dump").await.unwrap().is_none());
    // The abort of a dropped writer runs in the background: wait (with a deadline) until
    // the listing shows nothing but the finished object.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let keys: Vec<String> = list_all(s.as_ref(), "")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .filter(|k| !k.starts_with('.'))
            .collect();
        if keys == ["a.dump"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "leftovers listed: {keys:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // A write whose run died (no finish, no abort, no drop) is listed as unfinished,
    // never as an object, until it is aborted. (More than a part: an object store starts
    // its upload only then.)
    {
        let mut w = s.put("killed.dump").await.unwrap();
        w.write(Bytes::from(vec![3u8; PART + 1024])).await.unwrap();
        std::mem::forget(w);
    }
    assert!(s.head("killed.dump").await.unwrap().is_none());
    let open = s.list_incomplete().await.unwrap();
    if lists_incomplete {
        assert_eq!(
            open.iter().map(|u| u.key.as_str()).collect::<Vec<_>>(),
            ["killed.dump"],
            "{open:?}"
        );
    }
    for u in &open {
        s.abort_incomplete(u).await.unwrap();
        // Aborting twice is not an error.
        s.abort_incomplete(u).await.unwrap();
    }
    assert_eq!(s.list_incomplete().await.unwrap(), []);

    // missing keys
    assert!(s.head("nope").await.unwrap().is_none());
    match s.get("nope").await {
        Err(Error::NotFound(_)) => {}
        Err(e) => panic!("get of a missing key: {e}"),
        Ok(_) => panic!("get of a missing key succeeded"),
    }
    s.delete("nope").await.unwrap();

    // prefix listing
    put_bytes(s.as_ref(), "b.manifest.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let keys: Vec<String> = list_all(s.as_ref(), "b.")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["b.manifest.json"]);

    // put_replace and put_if_absent
    s.put_replace("b.manifest.json", Bytes::from_static(b"{\"v\":2}"))
        .await
        .unwrap();
    assert_eq!(
        &get_bytes(s.as_ref(), "b.manifest.json").await.unwrap()[..],
        b"{\"v\":2}"
    );
    assert!(
        s.put_if_absent("x.lock", Bytes::from_static(b"1"))
            .await
            .unwrap()
    );
    assert!(
        !s.put_if_absent("x.lock", Bytes::from_static(b"2"))
            .await
            .unwrap()
    );
    assert_eq!(&get_bytes(s.as_ref(), "x.lock").await.unwrap()[..], b"1");

    // delete is idempotent
    s.delete("x.lock").await.unwrap();
    s.delete("x.lock").await.unwrap();
    assert!(s.head("x.lock").await.unwrap().is_none());

    // a 50 MiB object in odd-sized chunks round-trips byte-exact (several parts)
    let mut w = s.put("big.dump").await.unwrap();
    let mut want = Sha256::new();
    let mut seed: u64 = 42;
    let mut total = 0usize;
    while total < 50 * 1024 * 1024 {
        let n = 700_001.min(50 * 1024 * 1024 - total);
        let chunk: Vec<u8> = (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        want.update(&chunk);
        total += n;
        w.write(Bytes::from(chunk)).await.unwrap();
    }
    w.finish().await.unwrap();
    assert_eq!(
        s.head("big.dump").await.unwrap().unwrap().size,
        total as u64
    );
    let mut got = Sha256::new();
    let mut n = 0usize;
    let mut stream = s.get("big.dump").await.unwrap();
    while let Some(c) = stream.next().await {
        let c = c.unwrap();
        n += c.len();
        got.update(&c);
    }
    assert_eq!(n, total);
    assert_eq!(got.finalize(), want.finalize());
    // A large object is not overwritten either.
    overwrite_is_refused(s.as_ref(), "big.dump", PART + 1024).await;
    for k in ["a.dump", "b.manifest.json", "big.dump"] {
        s.delete(k).await.unwrap();
    }
}

#[tokio::test]
async fn local_directory() {
    let dir = tempfile::tempdir().unwrap();
    suite(
        open(dir.path().to_str().unwrap(), &StorageOptions::default()).unwrap(),
        true,
    )
    .await;
    // Nothing is left in the directory, hidden files included.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn in_memory() {
    let store = backup_core::testing::MemoryStorage::new("suite");
    suite(Arc::new(store.clone()), true).await;
    assert_eq!(store.keys(), Vec::<String>::new());
}

fn s3_opts() -> StorageOptions {
    let mut o = StorageOptions::default();
    o.s3.endpoint = Some(env("KAIZEN_TEST_S3_ENDPOINT"));
    o.s3.allow_http = Some(true);
    o.s3.access_key_id = Some("test".into());
    o.s3.secret_access_key = Some(backup_core::Secret::new("test-secret"));
    o
}

#[tokio::test]
async fn s3_moto() {
    let url = format!("s3://{}/{}", env("KAIZEN_TEST_S3_BUCKET"), unique("suite"));
    suite(open(&url, &s3_opts()).unwrap(), true).await;
}

fn azure_opts() -> StorageOptions {
    let mut o = StorageOptions::default();
    o.azure.endpoint = Some(env("KAIZEN_TEST_AZURE_ENDPOINT"));
    o.azure.allow_http = Some(true);
    o.azure.account = Some(env("KAIZEN_TEST_AZURE_ACCOUNT"));
    o.azure.access_key = Some(backup_core::Secret::new(env("KAIZEN_TEST_AZURE_KEY")));
    o
}

#[tokio::test]
async fn azure_azurite() {
    let url = format!(
        "az://{}/{}",
        env("KAIZEN_TEST_AZURE_CONTAINER"),
        unique("suite")
    );
    suite(open(&url, &azure_opts()).unwrap(), false).await;
}

#[tokio::test]
async fn gcs_emulator() {
    let mut o = StorageOptions::default();
    o.gcs.endpoint = Some(env("KAIZEN_TEST_GCS_ENDPOINT"));
    o.gcs.anonymous = true;
    let url = format!("gs://{}/{}", env("KAIZEN_TEST_GCS_BUCKET"), unique("suite"));
    suite(open(&url, &o).unwrap(), false).await;
}

#[tokio::test]
async fn webdav_wsgidav() {
    let ep = env("KAIZEN_TEST_WEBDAV_ENDPOINT");
    let host = ep.trim_start_matches("http://").trim_end_matches('/');
    let url = format!("webdav://{host}/{}", unique("suite"));
    suite(open(&url, &StorageOptions::default()).unwrap(), false).await;
}

#[tokio::test]
async fn unreachable_endpoint_and_missing_feature_errors_are_clear() {
    let mut o = s3_opts();
    o.s3.endpoint = Some(format!(
        "http://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    ));
    let s = open("s3://bucket/p", &o).unwrap();
    let err = s.check().await.unwrap_err().to_string();
    assert!(err.contains("s3://bucket/p"), "{err}");
    assert!(!err.contains("test-secret"), "{err}");
    let err = open("ftp://x/y", &StorageOptions::default())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown storage scheme"), "{err}");
}

#[tokio::test]
async fn wrong_azure_key_is_refused_without_the_key() {
    let mut o = azure_opts();
    o.azure.access_key = Some(backup_core::Secret::new(
        "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=",
    ));
    let s = open(
        &format!(
            "az://{}/{}",
            env("KAIZEN_TEST_AZURE_CONTAINER"),
            unique("badkey")
        ),
        &o,
    )
    .unwrap();
    let err = s.check().await.unwrap_err().to_string();
    assert!(err.contains("az://"), "{err}");
    assert!(!err.contains("d3Jvbmcta2V5"), "{err}");
}
