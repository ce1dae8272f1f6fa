//! Fan-out: one upload task per storage target fed from the dump stream with
//! backpressure (a bounded queue each), the hashing sink in front of them, and the
//! bounded cleanup (abort uploads, remove committed objects) when a run fails.

use super::*;

pub(super) enum Msg {
    Data(Bytes),
    Commit,
}

pub(super) struct TargetTask {
    pub(super) url: String,
    pub(super) optional: bool,
    pub(super) tx: Option<mpsc::Sender<Msg>>,
    /// Stops the upload wherever it is waiting (a write to a store that stopped answering).
    pub(super) stop: CancellationToken,
    pub(super) handle: JoinHandle<Result<Option<ObjectMeta>>>,
}

/// How a target task cleans up.
#[derive(Clone)]
pub(super) struct Cleanup {
    pub(super) timeout: Duration,
    pub(super) signal: CancellationToken,
}

impl Cleanup {
    pub(super) fn budget(&self) -> Duration {
        cleanup_budget(self.timeout, &self.signal)
    }
}

/// Abort an upload within the cleanup deadline. Its error is only logged: the cause of
/// the failure is what the caller reports, never the cleanup request that failed after it.
pub(super) async fn abort_within(
    writer: Box<dyn ObjectWriter>,
    url: &str,
    key: &str,
    cleanup: &Cleanup,
) {
    let what = format!("aborting the upload of {key} to {url}");
    if let Some(Err(e)) = within(&what, UPLOAD_LEFT, cleanup.budget(), writer.abort()).await {
        warn!("Could not abort the upload of {key} to {url}: {e}");
    }
}

pub(super) fn spawn_target(
    storage: Arc<dyn Storage>,
    key: String,
    optional: bool,
    cleanup: Cleanup,
) -> TargetTask {
    let url = storage.url();
    let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE_DEPTH);
    let stop = cleanup.signal.child_token();
    let stopped = stop.clone();
    let task_url = url.clone();
    let handle = tokio::spawn(async move {
        let url = task_url;
        let mut writer = tokio::select! {
            w = storage.put(&key) => w?,
            _ = stopped.cancelled() => return Ok(None),
        };
        loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = stopped.cancelled() => None,
            };
            match msg {
                Some(Msg::Data(b)) => {
                    let written = tokio::select! {
                        r = writer.write(b) => Some(r),
                        _ = stopped.cancelled() => None,
                    };
                    match written {
                        Some(Ok(())) => {}
                        Some(Err(e)) => {
                            abort_within(writer, &url, &key, &cleanup).await;
                            return Err(e);
                        }
                        None => break,
                    }
                }
                Some(Msg::Commit) => {
                    return tokio::select! {
                        r = writer.finish() => r.map(Some),
                        _ = stopped.cancelled() => Err(Error::Interrupted("a signal".into())),
                    };
                }
                // Sender dropped without Commit, or stopped: the backup failed elsewhere.
                None => break,
            }
        }
        abort_within(writer, &url, &key, &cleanup).await;
        Ok(None)
    });
    TargetTask {
        url,
        optional,
        tx: Some(tx),
        stop,
        handle,
    }
}

/// Where the dump's bytes go: transforms, then SHA-256, then every target.
pub(super) struct Sink<'a> {
    pub(super) transforms: &'a mut [Box<dyn Transform>],
    pub(super) tasks: &'a mut [TargetTask],
    pub(super) hasher: Sha256,
    pub(super) size: u64,
    pub(super) progress: Option<crate::util::Progress>,
    /// Counts the rows of pg_dump's uncompressed archive on the way (see `crate::rows`).
    pub(super) rows: Option<&'a mut crate::rows::CopyRowCounter>,
}

impl Sink<'_> {
    pub(super) async fn push(&mut self, chunk: Bytes) -> Result<()> {
        if let Some(rows) = self.rows.as_deref_mut() {
            rows.feed(&chunk);
        }
        let out = if self.transforms.is_empty() {
            chunk
        } else {
            // The first stage reads the chunk in place; each stage's output (usually
            // much smaller than its input when compressing) feeds the next.
            let mut data = Vec::new();
            for (i, t) in self.transforms.iter_mut().enumerate() {
                let mut next = Vec::new();
                t.push(if i == 0 { &chunk[..] } else { &data[..] }, &mut next)?;
                data = next;
            }
            Bytes::from(data)
        };
        self.emit(out).await
    }

    /// Hash, count and send bytes that are already in their stored form.
    pub(super) async fn emit(&mut self, out: Bytes) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        self.hasher.update(&out);
        self.size += out.len() as u64;
        fan_out(self.tasks, out).await?;
        if let Some(p) = &self.progress {
            p(self.size);
        }
        Ok(())
    }

    /// Send everything `reader` yields; returns the number of bytes read.
    pub(super) async fn copy_from(
        &mut self,
        mut reader: impl tokio::io::AsyncRead + Unpin,
        what: &str,
    ) -> Result<u64> {
        let mut read: u64 = 0;
        let mut buf = BytesMut::with_capacity(CHUNK);
        loop {
            buf.reserve(CHUNK);
            let n = reader
                .read_buf(&mut buf)
                .await
                .map_err(|e| Error::io(format!("reading {what}"), e))?;
            if n == 0 {
                return Ok(read);
            }
            read += n as u64;
            self.push(buf.split().freeze()).await?;
        }
    }

    /// Send the next chunk of a child's output; `false` once the output has ended.
    pub(super) async fn push_from_pipe(&mut self, pipe: &mut PipeChunks) -> Result<bool> {
        let chunk = pipe.next().await?;
        if chunk.is_empty() {
            return Ok(false);
        }
        self.push(chunk.clone()).await?;
        pipe.recycle(chunk);
        Ok(true)
    }

    /// Send the chunks of a child's output until it ends.
    pub(super) async fn copy_from_pipe(&mut self, pipe: &mut PipeChunks) -> Result<()> {
        while self.push_from_pipe(pipe).await? {}
        Ok(())
    }

    /// Flush the transforms. Returns (sha256 hex, stored size).
    pub(super) async fn finish(mut self) -> Result<(String, u64)> {
        if !self.transforms.is_empty() {
            let tail = crate::transform::finish_chain(self.transforms)?;
            self.emit(Bytes::from(tail)).await?;
        }
        Ok((hex::encode(self.hasher.finalize()), self.size))
    }
}

/// Read pg_dump's output (custom format) into the sink. Returns (sha256 hex, stored size).
pub(super) async fn pump(child: &mut Child, mut sink: Sink<'_>) -> Result<(String, u64)> {
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Tool("pg_dump has no stdout pipe".into()))?;
    let mut pipe = PipeChunks::spawn(stdout, "pg_dump output")?;
    sink.copy_from_pipe(&mut pipe).await?;
    sink.finish().await
}

/// Send a chunk to every live target. A required target that stopped fails the backup;
/// an optional one is dropped from the fan-out.
pub(super) async fn fan_out(tasks: &mut [TargetTask], data: Bytes) -> Result<()> {
    for t in tasks.iter_mut() {
        let Some(tx) = &t.tx else { continue };
        if tx.send(Msg::Data(data.clone())).await.is_err() {
            t.tx = None;
            if !t.optional {
                // The task ended early: its error is reported when joined.
                return Err(target_error(t).await);
            }
            warn!("Optional target {} stopped; continuing without it", t.url);
        }
    }
    Ok(())
}

pub(super) async fn target_error(t: &mut TargetTask) -> Error {
    match (&mut t.handle).await {
        Ok(Err(e)) => e,
        Ok(Ok(_)) => Error::other(format!("{}: upload ended early", t.url)),
        Err(e) => Error::other(format!("{}: upload task failed: {e}", t.url)),
    }
}

/// Stop every upload and wait for their aborts, all within `budget`; a task still
/// running after it is dropped (its multipart upload stays invisible, for `prune`).
pub(super) async fn abort_all(tasks: &mut [TargetTask], budget: Duration) {
    for t in tasks.iter_mut() {
        t.tx = None;
        t.stop.cancel();
    }
    let wait = futures::future::join_all(
        tasks
            .iter_mut()
            .filter(|t| !t.handle.is_finished())
            .map(|t| &mut t.handle),
    );
    // The tasks bound their own aborts by the budget; the margin lets them say so.
    let margin = Duration::from_millis(500);
    let _ = within("stopping the uploads", UPLOAD_LEFT, budget + margin, wait).await;
    for t in tasks.iter() {
        t.handle.abort();
    }
}

/// Delete `keys` (in order) from every store in `stores`, all within the cleanup deadline.
pub(super) async fn remove_all(stores: &[&Arc<dyn Storage>], keys: &[&String], cleanup: &Cleanup) {
    let work = futures::future::join_all(stores.iter().map(|s| async move {
        for key in keys {
            if let Err(e) = s.delete(key).await {
                warn!("Could not remove {key} from {}: {e}", s.url());
            }
        }
    }));
    let _ = within(
        "removing the objects of the failed backup",
        "without a manifest they are not a backup, and `prune` removes them",
        cleanup.budget(),
        work,
    )
    .await;
}
