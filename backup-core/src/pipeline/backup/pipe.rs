//! A child's output pipe (pg_dump, pg_basebackup) read on a thread of its own, in
//! blocking reads that each fill a whole [`PIPE_CHUNK`].
//!
//! Read through the runtime, a pipe that pg_dump fills a few KiB at a time woke the
//! reader for nearly every write: for a 565 MB dump about 66,000 epoll waits and 97,000
//! futex calls (thread wakeups), a tenth of the process's CPU samples. A blocking read
//! sleeps in the kernel until data arrives, as `zstd` in a shell pipeline does, and the
//! runtime sees one message per [`PIPE_CHUNK`] (about 1,000 epoll waits and 10,500 futex
//! calls for the same dump). Memory: the chunk being filled, [`PIPE_QUEUE`] full ones
//! and the one being processed, allocated once and reused.

use std::io::Read;

use bytes::Bytes;
use tokio::process::ChildStdout;
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// Bytes per message from the reading thread.
pub(super) const PIPE_CHUNK: usize = 256 * 1024;
/// Full chunks waiting for the pipeline before the reading thread waits too.
const PIPE_QUEUE: usize = 2;

/// The chunks of one child's output, in order; the pipe closes when this is dropped
/// (after the chunk in progress).
pub(super) struct PipeChunks {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    /// Chunks the pipeline is done with go back to the reading thread, which then
    /// neither allocates nor faults in a new 256 KiB buffer per chunk.
    spare: std::sync::mpsc::Sender<Vec<u8>>,
    what: &'static str,
}

impl PipeChunks {
    /// Start reading `stdout` (widened to `util::PIPE_SIZE` first) on a new thread.
    pub(super) fn spawn(stdout: ChildStdout, what: &'static str) -> Result<Self> {
        crate::util::widen_pipe(&stdout);
        let fd = stdout
            .into_owned_fd()
            .map_err(|e| Error::io(format!("reading {what}"), e))?;
        let mut pipe = std::fs::File::from(fd);
        let (tx, rx) = mpsc::channel(PIPE_QUEUE);
        let (spare, returned) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::Builder::new()
            .name("pipe-reader".into())
            .spawn(move || {
                loop {
                    let mut chunk = returned
                        .try_recv()
                        .unwrap_or_else(|_| Vec::with_capacity(PIPE_CHUNK));
                    // `take` + `read_to_end` fills the chunk without zeroing it first.
                    let read = (&mut pipe)
                        .take(PIPE_CHUNK as u64)
                        .read_to_end(&mut chunk)
                        .map(|_| Bytes::from(chunk));
                    let end = matches!(&read, Ok(b) if b.is_empty()) || read.is_err();
                    // The pipeline stopped listening: it failed elsewhere or finished.
                    if tx.blocking_send(read).is_err() || end {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io(format!("starting a thread to read {what}"), e))?;
        Ok(Self { rx, spare, what })
    }

    /// The next chunk; an empty one at the end of the output.
    pub(super) async fn next(&mut self) -> Result<Bytes> {
        match self.rx.recv().await {
            Some(Ok(chunk)) => Ok(chunk),
            Some(Err(e)) => Err(Error::io(format!("reading {}", self.what), e)),
            None => Err(Error::other(format!(
                "the thread reading {} stopped",
                self.what
            ))),
        }
    }

    /// Give a chunk back for the next read, unless something still holds it (a chunk
    /// stored as it is, without compression, is on its way to the targets).
    pub(super) fn recycle(&self, chunk: Bytes) {
        if let Ok(chunk) = chunk.try_into_mut() {
            let mut chunk = Vec::from(chunk);
            if chunk.capacity() == PIPE_CHUNK {
                chunk.clear();
                let _ = self.spare.send(chunk);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::process::Stdio;
    use std::time::Duration;

    use tokio::process::Command;

    use super::*;

    fn spawn(script: &str) -> (tokio::process::Child, PipeChunks) {
        let mut child = Command::new("sh")
            .args(["-c", script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let chunks = PipeChunks::spawn(child.stdout.take().unwrap(), "test output").unwrap();
        (child, chunks)
    }

    #[tokio::test]
    async fn whole_chunks_in_order_then_an_empty_one() {
        let script = "seq 1 300000";
        let want = std::process::Command::new("sh")
            .args(["-c", script])
            .output()
            .unwrap()
            .stdout;
        assert!(want.len() > 4 * PIPE_CHUNK);
        let (mut child, mut chunks) = spawn(script);
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        loop {
            let chunk = chunks.next().await.unwrap();
            if chunk.is_empty() {
                break;
            }
            got.extend_from_slice(&chunk);
            sizes.push(chunk.len());
            chunks.recycle(chunk);
        }
        assert_eq!(got, want);
        let (last, full) = sizes.split_last().unwrap();
        assert!(full.iter().all(|&n| n == PIPE_CHUNK), "{sizes:?}");
        assert!(*last <= PIPE_CHUNK);
        assert!(child.wait().await.unwrap().success());
    }

    #[tokio::test]
    async fn no_output_is_one_empty_chunk() {
        let (mut child, mut chunks) = spawn("true");
        assert!(chunks.next().await.unwrap().is_empty());
        assert!(child.wait().await.unwrap().success());
    }

    #[tokio::test]
    async fn dropping_the_reader_closes_the_pipe() {
        // `yes` writes until its pipe closes: it must end once the chunks are dropped.
        let (mut child, mut chunks) = spawn("exec yes");
        assert_eq!(chunks.next().await.unwrap().len(), PIPE_CHUNK);
        drop(chunks);
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("the writer did not stop after the reader went away")
            .unwrap();
        assert!(!status.success());
    }
}
