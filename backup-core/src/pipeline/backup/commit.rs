//! The commit protocol of one backup on its targets, whatever produces the bytes:
//!
//! ```text
//! Upload::start ──▶ sink: bytes to every target (nothing visible yet)
//!      │ any failure before the commit: abort ──▶ nothing visible anywhere
//!      ▼
//! commit_data ──▶ the data object becomes visible on each target
//!      │ a required target failed: remove the data where it was committed
//!      ▼
//! write_side ──▶ small objects beside the data (the roles), same rules
//!      ▼
//! write_manifest ──▶ the manifest (signed when a key is configured), last: only now is it a backup
//!        a required target failed: remove manifest and data everywhere
//! ```
//!
//! An optional target that fails drops out (what it got is removed) and is reported; the
//! backup succeeds on the others. Every cleanup has the deadline of [`Cleanup::budget`].

use super::*;

/// The writes of one data object to every target, from the first byte to its commit.
pub(crate) struct Upload {
    targets: Vec<Target>,
    data_key: String,
    /// One per target, in the order of `targets`.
    tasks: Vec<TargetTask>,
    cleanup: Cleanup,
    failed_optional: Vec<(String, String)>,
}

impl Upload {
    /// Start writing `data_key` to every target. `failed_optional` lists optional
    /// targets already left out (reported with the outcome). A signal on `cancel` stops
    /// the uploads and shortens the cleanup to [`SIGNAL_CLEANUP`].
    pub(crate) fn start(
        targets: &[Target],
        data_key: &str,
        failed_optional: Vec<(String, String)>,
        cleanup_timeout: Duration,
        cancel: &CancellationToken,
    ) -> Self {
        let cleanup = Cleanup {
            timeout: cleanup_timeout,
            signal: cancel.clone(),
        };
        let tasks = targets
            .iter()
            .map(|t| {
                spawn_target(
                    t.storage.clone(),
                    data_key.to_string(),
                    t.optional,
                    cleanup.clone(),
                )
            })
            .collect();
        Self {
            targets: targets.to_vec(),
            data_key: data_key.to_string(),
            tasks,
            cleanup,
            failed_optional,
        }
    }

    /// Where the bytes go: `transforms`, then SHA-256, then every target.
    pub(crate) fn sink<'a>(
        &'a mut self,
        transforms: &'a mut [Box<dyn Transform>],
        progress: Option<crate::util::Progress>,
    ) -> Sink<'a> {
        Sink {
            transforms,
            tasks: &mut self.tasks,
            hasher: Sha256::new(),
            size: 0,
            progress,
            rows: None,
        }
    }

    /// Stop every upload: nothing becomes visible.
    pub(crate) async fn abort(&mut self) {
        abort_all(&mut self.tasks, self.cleanup.budget()).await;
    }

    /// Commit the data object on every target that received all of it. If a required
    /// target fails (or a signal came), the data is removed where it was committed.
    pub(crate) async fn commit_data(mut self) -> Result<Committed> {
        for t in self.tasks.iter_mut() {
            if let Some(tx) = t.tx.take() {
                let _ = tx.send(Msg::Commit).await;
            }
        }
        let mut committed: Vec<Target> = Vec::new();
        let mut failure: Option<Error> = None;
        let tasks = std::mem::take(&mut self.tasks);
        for (t, target) in tasks.into_iter().zip(&self.targets) {
            let res = t
                .handle
                .await
                .map_err(|e| Error::other(format!("upload task failed: {e}")));
            match res.and_then(|r| r) {
                Ok(Some(_)) => committed.push(target.clone()),
                Ok(None) => {
                    let msg = "upload stopped before the end of the stream".to_string();
                    if t.optional {
                        self.failed_optional.push((t.url.clone(), msg));
                    } else if failure.is_none() {
                        failure = Some(Error::other(format!("{}: {msg}", t.url)));
                    }
                }
                Err(e) => {
                    if t.optional {
                        warn!("Optional target {} failed: {e}", t.url);
                        self.failed_optional.push((t.url.clone(), e.to_string()));
                    } else if failure.is_none() {
                        failure = Some(e);
                    }
                }
            }
        }
        if failure.is_none() && self.cleanup.signal.is_cancelled() {
            failure = Some(Error::Interrupted("a signal".into()));
        }
        let committed = Committed {
            targets: committed,
            data_key: self.data_key,
            side_keys: Vec::new(),
            cleanup: self.cleanup,
            failed_optional: self.failed_optional,
        };
        if let Some(e) = failure {
            committed.rollback(&[&committed.data_key]).await;
            return Err(e);
        }
        if committed.targets.is_empty() {
            return Err(Error::other("no storage target committed the backup"));
        }
        Ok(committed)
    }
}

/// The data object is visible on these targets; the manifest is not written yet.
pub(crate) struct Committed {
    targets: Vec<Target>,
    data_key: String,
    /// Objects written beside the data ([`Committed::write_side`]), removed with it.
    side_keys: Vec<String>,
    cleanup: Cleanup,
    failed_optional: Vec<(String, String)>,
}

/// Where a backup was stored.
#[derive(Debug)]
pub(crate) struct Stored {
    /// Targets that hold the backup (redacted URLs).
    pub(crate) committed: Vec<String>,
    /// Optional targets that failed, with the reason.
    pub(crate) failed_optional: Vec<(String, String)>,
}

impl Committed {
    /// Put `key` on every target that holds the data; returns where it was stored. An
    /// optional target that fails drops out (the data and side objects it got are
    /// removed); a required one, or a signal, stops with the error and leaves the
    /// rollback to the caller (every target still listed holds the data).
    async fn put_everywhere(&mut self, key: &str, bytes: Bytes) -> Result<Vec<String>> {
        let mut stored = Vec::new();
        let mut i = 0;
        while i < self.targets.len() {
            let t = self.targets[i].clone();
            let written = tokio::select! {
                r = put_bytes(t.storage.as_ref(), key, bytes.clone()) => r,
                _ = self.cleanup.signal.cancelled() => Err(Error::Interrupted("a signal".into())),
            };
            match written {
                Ok(_) => {
                    stored.push(t.storage.url());
                    i += 1;
                }
                Err(e @ Error::Interrupted(_)) => return Err(e),
                Err(e) if t.optional => {
                    warn!(
                        "Optional target {} failed writing {key}: {e}",
                        t.storage.url()
                    );
                    let mut keys: Vec<&String> = self.side_keys.iter().collect();
                    keys.push(&self.data_key);
                    remove_all(&[&t.storage], &keys, &self.cleanup).await;
                    self.failed_optional.push((t.storage.url(), e.to_string()));
                    self.targets.remove(i);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(stored)
    }

    /// Write a small object beside the data on every target that holds it (before the
    /// manifest, so it is never missing from a listed backup). A required target that
    /// fails removes everything written; an optional one drops out.
    pub(crate) async fn write_side(&mut self, key: &str, bytes: Bytes) -> Result<()> {
        self.side_keys.push(key.to_string());
        if let Err(e) = self.put_everywhere(key, bytes).await {
            self.rollback_all().await;
            return Err(e);
        }
        if self.targets.is_empty() {
            return Err(Error::other("no storage target committed the backup"));
        }
        Ok(())
    }

    /// Remove the side objects and the data from every target.
    async fn rollback_all(&self) {
        let mut keys: Vec<&String> = self.side_keys.iter().collect();
        keys.push(&self.data_key);
        self.rollback(&keys).await;
    }

    /// Write the manifest, signed with `signing` when given, to every target that holds
    /// the data: the last step, after which the backup exists. If a required target fails
    /// (or a signal came), the manifest and the data are removed from every target.
    pub(crate) async fn write_manifest(
        mut self,
        manifest: &mut Manifest,
        signing: Option<&crate::signing::SigningKey>,
    ) -> Result<Stored> {
        let manifest_key = Manifest::key_for(&manifest.name);
        let signed = match signing {
            Some(key) => key.sign(manifest),
            None => Ok(()),
        };
        let json = match signed.and_then(|()| manifest.to_json()) {
            Ok(j) => Bytes::from(j),
            Err(e) => {
                self.rollback_all().await;
                return Err(e);
            }
        };
        match self.put_everywhere(&manifest_key, json).await {
            Ok(committed) => Ok(Stored {
                committed,
                failed_optional: self.failed_optional,
            }),
            Err(e) => {
                // The manifest first: without it, nothing is visible as a backup.
                let mut keys: Vec<&String> = vec![&manifest_key];
                keys.extend(self.side_keys.iter());
                keys.push(&self.data_key);
                self.rollback(&keys).await;
                Err(e)
            }
        }
    }

    /// Remove `keys`, in that order, from every target that committed the data.
    async fn rollback(&self, keys: &[&String]) {
        let stores: Vec<_> = self.targets.iter().map(|t| &t.storage).collect();
        remove_all(&stores, keys, &self.cleanup).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testing::{Change, MemoryStorage, Op, manifest};

    fn target(store: &MemoryStorage, optional: bool) -> Target {
        Target {
            storage: Arc::new(store.clone()),
            optional,
        }
    }

    fn sample() -> Manifest {
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        manifest("b1", "db", at)
    }

    /// What `run` does once pg_dump streams: send `data`, commit it, write the manifest,
    /// aborting the uploads if the stream fails.
    async fn store(targets: &[Target], data: &[u8], cancel: &CancellationToken) -> Result<Stored> {
        store_with(targets, data, None, cancel).await
    }

    /// [`store`], with a side object (the roles) written between the data and the manifest.
    async fn store_with(
        targets: &[Target],
        data: &[u8],
        side: Option<&str>,
        cancel: &CancellationToken,
    ) -> Result<Stored> {
        let mut m = sample();
        let mut upload = Upload::start(
            targets,
            &m.object,
            Vec::new(),
            Duration::from_secs(5),
            cancel,
        );
        let mut transforms: Vec<Box<dyn Transform>> = Vec::new();
        let mut sink = upload.sink(&mut transforms, None);
        let streamed = match sink.push(Bytes::copy_from_slice(data)).await {
            Ok(()) => sink.finish().await,
            Err(e) => Err(e),
        };
        let (sha256, size) = match streamed {
            Ok(v) => v,
            Err(e) => {
                upload.abort().await;
                return Err(e);
            }
        };
        assert_eq!(sha256, hex::encode(Sha256::digest(data)));
        assert_eq!(size, data.len() as u64);
        let mut committed = upload.commit_data().await?;
        if let Some(key) = side {
            committed
                .write_side(key, Bytes::from_static(b"roles"))
                .await?;
        }
        committed.write_manifest(&mut m, None).await
    }

    #[tokio::test]
    async fn a_side_object_goes_before_the_manifest_and_with_the_data() {
        let (a, b, c) = (
            MemoryStorage::new("a"),
            MemoryStorage::new("b"),
            MemoryStorage::new("c"),
        );
        let cancel = CancellationToken::new();
        // Optional `b` fails the side object: it drops out, with nothing left on it.
        b.fail(Op::Finish, ".roles.json");
        let stored = store_with(
            &[target(&a, false), target(&b, true), target(&c, false)],
            b"dump bytes",
            Some("b1.roles.json"),
            &cancel,
        )
        .await
        .unwrap();
        assert_eq!(stored.committed, ["memory://a", "memory://c"]);
        assert_eq!(stored.failed_optional.len(), 1);
        for s in [&a, &c] {
            assert_eq!(
                s.history(),
                [
                    created("b1.dump"),
                    created("b1.roles.json"),
                    created("b1.manifest.json")
                ]
            );
        }
        assert!(b.keys().is_empty(), "{:?}", b.keys());

        // A required target that fails it: no backup anywhere, data and side object removed.
        let (a, b) = (MemoryStorage::new("a"), MemoryStorage::new("b"));
        b.fail(Op::Finish, ".roles.json");
        let err = store_with(
            &[target(&a, false), target(&b, false)],
            b"dump bytes",
            Some("b1.roles.json"),
            &cancel,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("injected failure"), "{err}");
        assert!(a.keys().is_empty() && b.keys().is_empty());
        assert!(a.history().contains(&deleted("b1.roles.json")));

        // A manifest that fails on a required target takes the side object with it.
        let a = MemoryStorage::new("a");
        a.fail(Op::Finish, ".manifest.json");
        store_with(
            &[target(&a, false)],
            b"dump bytes",
            Some("b1.roles.json"),
            &cancel,
        )
        .await
        .unwrap_err();
        assert!(a.keys().is_empty(), "{:?}", a.keys());
    }

    fn created(key: &str) -> Change {
        Change::Created(key.to_string())
    }

    fn deleted(key: &str) -> Change {
        Change::Deleted(key.to_string())
    }

    #[tokio::test]
    async fn data_first_then_the_manifest_on_every_target() {
        let (a, b) = (MemoryStorage::new("a"), MemoryStorage::new("b"));
        let stored = store(
            &[target(&a, false), target(&b, false)],
            b"dump bytes",
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(stored.committed, ["memory://a", "memory://b"]);
        assert!(stored.failed_optional.is_empty());
        for s in [&a, &b] {
            assert_eq!(
                s.history(),
                [created("b1.dump"), created("b1.manifest.json")]
            );
            assert_eq!(&s.object("b1.dump").unwrap()[..], b"dump bytes");
            let m = Manifest::from_json(&s.object("b1.manifest.json").unwrap()).unwrap();
            assert_eq!(m, sample());
        }
    }

    #[tokio::test]
    async fn nothing_is_visible_before_the_commit() {
        let a = MemoryStorage::new("a");
        let m = sample();
        let cancel = CancellationToken::new();
        let mut upload = Upload::start(
            &[target(&a, false)],
            &m.object,
            Vec::new(),
            Duration::from_secs(5),
            &cancel,
        );
        let mut transforms: Vec<Box<dyn Transform>> = Vec::new();
        let mut sink = upload.sink(&mut transforms, None);
        sink.push(Bytes::from_static(b"part")).await.unwrap();
        sink.finish().await.unwrap();
        assert!(a.keys().is_empty());
        upload.abort().await;
        assert!(a.keys().is_empty());
        assert!(a.history().is_empty());
        assert_eq!(a.list_incomplete().await.unwrap(), []);
    }

    #[tokio::test]
    async fn a_required_target_that_fails_to_commit_leaves_no_backup_anywhere() {
        let (a, b) = (MemoryStorage::new("a"), MemoryStorage::new("b"));
        b.fail(Op::Finish, ".dump");
        let err = store(
            &[target(&a, false), target(&b, false)],
            b"dump bytes",
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("injected failure"), "{err}");
        // The data committed on `a` is removed again; no manifest was ever written.
        assert_eq!(a.history(), [created("b1.dump"), deleted("b1.dump")]);
        assert!(b.history().is_empty());
        assert_eq!(b.list_incomplete().await.unwrap(), []);
    }

    #[tokio::test]
    async fn a_required_target_that_fails_to_write_leaves_nothing_anywhere() {
        let (a, b) = (MemoryStorage::new("a"), MemoryStorage::new("b"));
        b.fail(Op::Write, ".dump");
        let err = store(
            &[target(&a, false), target(&b, false)],
            b"dump bytes",
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("injected failure"), "{err}");
        for s in [&a, &b] {
            assert!(s.keys().is_empty(), "{:?}", s.history());
            assert!(!s.history().contains(&created("b1.manifest.json")));
            assert_eq!(s.list_incomplete().await.unwrap(), []);
        }
    }

    #[tokio::test]
    async fn a_failed_manifest_rolls_back_manifest_then_data_on_every_target() {
        let (a, b) = (MemoryStorage::new("a"), MemoryStorage::new("b"));
        b.fail(Op::Finish, ".manifest.json");
        let err = store(
            &[target(&a, false), target(&b, false)],
            b"dump bytes",
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("injected failure"), "{err}");
        assert_eq!(
            a.history(),
            [
                created("b1.dump"),
                created("b1.manifest.json"),
                deleted("b1.manifest.json"),
                deleted("b1.dump"),
            ]
        );
        assert_eq!(b.history(), [created("b1.dump"), deleted("b1.dump")]);
    }

    #[tokio::test]
    async fn an_optional_target_that_fails_is_reported_and_keeps_nothing() {
        for (op, key) in [
            (Op::Put, ".dump"),
            (Op::Write, ".dump"),
            (Op::Finish, ".dump"),
            (Op::Finish, ".manifest.json"),
        ] {
            let (a, b) = (MemoryStorage::new("a"), MemoryStorage::new("b"));
            b.fail(op, key);
            let stored = store(
                &[target(&a, false), target(&b, true)],
                b"dump bytes",
                &CancellationToken::new(),
            )
            .await
            .unwrap();
            assert_eq!(stored.committed, ["memory://a"], "{op:?} {key}");
            assert_eq!(stored.failed_optional.len(), 1, "{op:?} {key}");
            assert_eq!(stored.failed_optional[0].0, "memory://b");
            assert_eq!(a.keys(), ["b1.dump", "b1.manifest.json"]);
            assert!(b.keys().is_empty(), "{op:?} {key}: {:?}", b.history());
            assert_eq!(b.list_incomplete().await.unwrap(), []);
        }
    }

    #[tokio::test]
    async fn no_backup_when_every_target_failed() {
        let (a, b) = (MemoryStorage::new("a"), MemoryStorage::new("b"));
        a.fail(Op::Put, "");
        b.fail(Op::Finish, ".dump");
        let err = store(
            &[target(&a, true), target(&b, true)],
            b"dump bytes",
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "no storage target committed the backup");
        assert!(a.history().is_empty() && b.history().is_empty());
    }

    #[tokio::test]
    async fn a_signal_before_the_commit_leaves_nothing() {
        let a = MemoryStorage::new("a");
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(
            store(&[target(&a, false)], b"dump bytes", &cancel)
                .await
                .is_err()
        );
        // The upload may or may not have been committed before it saw the signal; either
        // way nothing is left, and no manifest was written.
        assert!(a.keys().is_empty(), "{:?}", a.history());
        assert!(!a.history().contains(&created("b1.manifest.json")));
        assert_eq!(a.list_incomplete().await.unwrap(), []);
    }
}
