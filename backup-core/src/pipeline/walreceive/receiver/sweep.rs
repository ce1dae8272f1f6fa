//! Storing what the spool holds: history files and complete segments, and the partial
//! segment every flush interval (never a version holding less WAL than the stored one).

use super::*;

impl Receiver<'_> {
    /// Store what the spool holds: history files and complete segments always, the
    /// partial segment when `partial_due`. Failures are counted and retried next time.
    pub(super) async fn sweep(&mut self, partial_due: bool) {
        let started = Utc::now();
        let result = self.sweep_once(partial_due).await;
        let server = self.server_lsn().await;
        self.set(|s| {
            s.last_sweep = Some(Utc::now());
            if let Some(l) = server {
                s.server_lsn = Some(l);
            }
        });
        match result {
            Ok(all) => {
                if all {
                    self.set(|s| s.synced_at = Some(started));
                }
            }
            Err(e) => self.failed(&e),
        }
    }

    /// One sweep; returns whether the archive now holds everything received.
    async fn sweep_once(&mut self, partial_due: bool) -> Result<bool> {
        let listing = self.spool.list(self.segment_size)?;
        for name in &listing.history {
            self.store(&self.spool.stream().join(name), None).await?;
            self.spool.remove(name)?;
            info!("Stored timeline history file {name}");
        }
        for (file, name) in &listing.segments {
            self.follow(*file);
            self.store(&self.spool.stream().join(name), None).await?;
            for store in self.stores.required.iter().chain(&self.stores.optional) {
                if let Err(e) = walarchive::drop_partials(store.as_ref(), name).await {
                    warn!(
                        "{}: could not remove the partial copy of {name}: {e}",
                        store.url()
                    );
                }
            }
            self.spool.remove(name)?;
            if self
                .stored_partial
                .as_ref()
                .is_some_and(|(p, _)| segment_of(p) == name)
            {
                self.stored_partial = None;
            }
            let now = Utc::now();
            let end = self.end_of(*file, self.segment_size);
            self.set(|s| {
                s.last_segment = Some((name.clone(), now));
                s.last_upload = Some(now);
                s.archived_lsn = Some(s.archived_lsn.map_or(end, |a| a.max(end)));
            });
            info!("Stored WAL segment {name}");
        }
        let Some(((current_file, current), older)) = listing.partials.split_last() else {
            return Ok(true);
        };
        // Old timelines' last segments: final, stored as partial segments for good.
        for (file, name) in older {
            self.follow(*file);
            let (copy, len, sha) = self.spool.snapshot(name).await?;
            self.store(&copy, Some(&sha)).await?;
            let _ = std::fs::remove_file(&copy);
            self.spool.remove(name)?;
            info!(
                "Stored the last, partial segment of an old timeline: {name} ({len} bytes of WAL)"
            );
        }
        self.follow(*current_file);
        if !partial_due {
            return Ok(false);
        }
        let (copy, len, sha) = self.spool.snapshot(current).await?;
        let stored = self.stored_len(current).await?;
        if len > stored {
            self.store(&copy, Some(&sha)).await?;
            self.stored_partial = Some((current.clone(), len));
            let now = Utc::now();
            let end = Lsn(self.start_of(*current_file) + len);
            self.set(|s| {
                s.last_upload = Some(now);
                s.archived_lsn = Some(s.archived_lsn.map_or(end, |a| a.max(end)));
            });
            debug!("Stored partial segment {current} ({len} bytes of WAL)");
        }
        let _ = std::fs::remove_file(&copy);
        Ok(len >= stored)
    }

    fn start_of(&self, file: WalFile) -> u64 {
        match file {
            WalFile::Segment { segno, .. } | WalFile::Partial { segno, .. } => {
                segno * self.segment_size
            }
            _ => 0,
        }
    }

    fn end_of(&self, file: WalFile, size: u64) -> Lsn {
        Lsn(self.start_of(file) + size)
    }

    /// How much WAL the archive's version of partial `name` holds (0 without one). Read
    /// once per segment: this run's own pushes are remembered.
    async fn stored_len(&mut self, name: &str) -> Result<u64> {
        if let Some((n, len)) = &self.stored_partial
            && n == name
        {
            return Ok(*len);
        }
        let store = &self.stores.required[0];
        let len = if walarchive::find(store.as_ref(), name).await?.is_empty() {
            0
        } else {
            let dest = self.spool.upload().join(format!("{name}.stored"));
            let keys = crate::codec::DecryptKeys::default();
            match walarchive::fetch(std::slice::from_ref(store), name, &dest, &keys).await {
                Ok(_) => {
                    let len = written_len(&dest).await?;
                    let _ = std::fs::remove_file(&dest);
                    len
                }
                // Encrypted without the identity here: the receiver cannot compare, so
                // it stores its own version (which holds what the spool received).
                Err(e) => {
                    debug!("cannot read the stored {name} ({e}); storing this receiver's");
                    0
                }
            }
        };
        self.stored_partial = Some((name.to_string(), len));
        Ok(len)
    }

    /// Store one file on every required store (an error is returned) and every optional
    /// one (a failure is a warning). `partial_sha`: a partial segment's copy, hashed.
    async fn store(&self, path: &Path, partial_sha: Option<&str>) -> Result<()> {
        let push = |stores: Vec<Arc<dyn Storage>>| async move {
            match partial_sha {
                Some(sha) => {
                    walarchive::push_partial_hashed(&stores, path, sha, &self.opts.push).await
                }
                None => walarchive::push(&stores, path, &self.opts.push).await,
            }
        };
        push(self.stores.required.clone()).await?;
        for store in &self.stores.optional {
            if let Err(e) = push(vec![store.clone()]).await {
                warn!(
                    "Optional target {} did not store {}: {e}",
                    store.url(),
                    path.display()
                );
            }
        }
        self.set(|s| s.last_upload = Some(Utc::now()));
        Ok(())
    }

    /// The server's flushed WAL position (None when it cannot be read now).
    async fn server_lsn(&mut self) -> Option<Lsn> {
        let client = self.client().await.ok()?;
        let row = client
            .query_one(
                "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
                 ELSE pg_current_wal_flush_lsn() END)::text",
                &[],
            )
            .await;
        match row {
            Ok(r) => r.get::<_, Option<String>>(0)?.parse().ok(),
            Err(_) => {
                self.client = None;
                None
            }
        }
    }
}
