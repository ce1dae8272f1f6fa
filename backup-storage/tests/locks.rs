//! The run lock under contention, against a local directory and S3 (moto): 3–8 runs try
//! to take the same lock at the same instant, hundreds of times, and at no moment do two
//! of them hold it. Half of the trials start from an abandoned lock, so that several runs
//! find it stale at once and race to take it over. S3 needs `cargo xtask test`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use backup_core::Storage;
use backup_core::lock::{self, LockInfo, LockOptions};
use backup_storage::{StorageOptions, open};
use bytes::Bytes;
use chrono::{TimeZone, Utc};

fn unique(p: &str) -> String {
    use rand::Rng;
    format!("{p}-{:x}", rand::rng().random::<u64>())
}

/// A lock left by a run on another host that stopped refreshing it in 2020.
fn abandoned_lock() -> Bytes {
    let then = Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap();
    let info = LockInfo {
        owner: unique("dead"),
        operation: "backup".into(),
        pid: 1,
        host: "another-host".into(),
        user: "nobody".into(),
        started_at: then,
        refreshed_at: then,
    };
    Bytes::from(serde_json::to_vec(&info).unwrap())
}

#[derive(Default)]
struct Trial {
    /// Runs holding the lock right now.
    holding: AtomicUsize,
    /// Times a run took the lock while another held it.
    overlaps: AtomicUsize,
    /// Runs whose `acquire` returned (either way).
    returned: AtomicUsize,
    /// Runs that got the lock.
    won: AtomicUsize,
}

/// One trial: `n` runs, each with its own handle on the storage (as separate processes
/// would have), call `acquire` at the same moment without waiting. A winner holds the
/// lock until every run's `acquire` has returned, so any second holder is seen.
async fn trial(open_storage: &(dyn Fn() -> Arc<dyn Storage> + Sync), n: usize, stale: bool) {
    let name = unique("db");
    if stale {
        let s = open_storage();
        assert!(
            s.put_if_absent(&lock::lock_key(&name), abandoned_lock())
                .await
                .unwrap()
        );
    }
    let t = Arc::new(Trial::default());
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (t, start, storage, name) = (t.clone(), start.clone(), open_storage(), name.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let opts = LockOptions {
                stale_after: Duration::from_secs(600),
                timeout: Duration::ZERO,
            };
            let res = lock::acquire(storage, &name, "backup", opts).await;
            t.returned.fetch_add(1, Ordering::SeqCst);
            let guard = match res {
                Ok(g) => g,
                Err(backup_core::Error::Refused(_)) => return,
                Err(e) => panic!("acquire failed: {e}"),
            };
            if t.holding.fetch_add(1, Ordering::SeqCst) > 0 {
                t.overlaps.fetch_add(1, Ordering::SeqCst);
            }
            t.won.fetch_add(1, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(60);
            while t.returned.load(Ordering::SeqCst) < n {
                assert!(Instant::now() < deadline, "contenders never returned");
                tokio::task::yield_now().await;
            }
            t.holding.fetch_sub(1, Ordering::SeqCst);
            guard.release().await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        t.overlaps.load(Ordering::SeqCst),
        0,
        "two of {n} runs held the lock at once (stale start: {stale})"
    );
    assert!(t.won.load(Ordering::SeqCst) >= 1, "nobody got the lock");
    // Released: nothing is left (no lock, no claim).
    let left: Vec<String> = backup_core::storage::list_all(open_storage().as_ref(), &name)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

async fn hammer(open_storage: &(dyn Fn() -> Arc<dyn Storage> + Sync), trials: usize) {
    for i in 0..trials {
        trial(open_storage, 3 + i % 6, i % 2 == 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_lock_is_never_held_twice() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().to_str().unwrap().to_string();
    hammer(&|| open(&url, &StorageOptions::default()).unwrap(), 400).await;
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A moto of our own that handles one request at a time. The shared moto is threaded,
/// and its conditional create (`If-None-Match: *`) checks, then writes: two creates in
/// flight can both succeed there (seen in this test), which real S3 never allows. One
/// request at a time gives moto the atomic create that S3, MinIO and R2 have, so what
/// is tested here is our protocol, not moto's threading.
struct SerialMoto {
    child: std::process::Child,
    endpoint: String,
}

impl SerialMoto {
    fn start() -> Self {
        let bin = std::env::var("KAIZEN_TEST_VENV_BIN")
            .expect("KAIZEN_TEST_VENV_BIN is not set: run the tests with `cargo xtask test`");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = format!(
            "from werkzeug.serving import run_simple\n\
             from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app\n\
             run_simple('127.0.0.1', {port}, DomainDispatcherApplication(create_backend_app), threaded=False)\n"
        );
        let child = std::process::Command::new(std::path::Path::new(&bin).join("python"))
            .args(["-c", &script])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        // Ready when it answers: create the bucket (moto checks no signature).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            use std::io::{Read, Write};
            if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let req = format!(
                    "PUT /locks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let mut resp = String::new();
                if c.write_all(req.as_bytes()).is_ok() && c.read_to_string(&mut resp).is_ok() {
                    assert!(
                        resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200"),
                        "{resp}"
                    );
                    return moto;
                }
            }
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SerialMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_lock_is_never_held_twice() {
    let moto = SerialMoto::start();
    let url = format!("s3://locks/{}", unique("locks"));
    let mut o = StorageOptions::default();
    o.s3.endpoint = Some(moto.endpoint.clone());
    o.s3.allow_http = Some(true);
    o.s3.access_key_id = Some("test".into());
    o.s3.secret_access_key = Some(backup_core::Secret::new("test-secret"));
    hammer(&|| open(&url, &o).unwrap(), 100).await;
}
