//! The parallel dump: pg_dump `--format=directory --jobs N` writes table files into the
//! staging directory, its verbose output says when each is finished, and each finished
//! file is streamed into the tar archive (and deleted) while the others are still dumped.

use super::*;

/// Follow pg_dump's `--verbose` stderr: the ids of finished items go to the receiver, the
/// last lines that are not progress messages are kept for error messages.
pub(super) fn follow_verbose_stderr(
    child: &mut Child,
) -> (JoinHandle<String>, mpsc::UnboundedReceiver<u32>) {
    use tokio::io::AsyncBufReadExt;
    let (tx, rx) = mpsc::unbounded_channel();
    let stderr = child.stderr.take();
    let task = tokio::spawn(async move {
        let Some(s) = stderr else {
            return String::new();
        };
        // Bytes, not UTF-8 lines: object names in the database's encoding must not stop
        // the reader (pg_dump would then block on a full pipe).
        let mut reader = tokio::io::BufReader::new(s);
        let mut raw = Vec::new();
        let mut kept: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&raw).trim_end().to_string();
            if let Some(rest) = line.strip_prefix("pg_dump: finished item ") {
                if let Some(id) = rest.split_whitespace().next().and_then(|w| w.parse().ok()) {
                    let _ = tx.send(id);
                }
                continue;
            }
            let progress = line.strip_prefix("pg_dump: ").is_some_and(|r| {
                !["error", "warning", "detail", "hint", "fatal"]
                    .iter()
                    .any(|p| r.starts_with(p))
            });
            if progress || line.trim().is_empty() {
                continue;
            }
            kept.push_back(line);
            if kept.len() > 10 {
                kept.pop_front();
            }
        }
        kept.into_iter().collect::<Vec<_>>().join("\n")
    });
    (task, rx)
}

/// Stream the directory pg_dump is writing as a tar archive into the sink: data files as
/// their items finish (each deleted once sent), everything else after pg_dump exited,
/// the table of contents last.
pub(super) async fn pump_directory(
    child: &mut Child,
    dir: &std::path::Path,
    mut items: mpsc::UnboundedReceiver<u32>,
    stderr: &mut JoinHandle<String>,
    mut sink: Sink<'_>,
) -> Result<(String, u64)> {
    let mut early = 0usize;
    let status = loop {
        tokio::select! {
            Some(id) = items.recv() => {
                for name in files_of_item(dir, id).await? {
                    send_file(dir, &name, &mut sink).await?;
                    early += 1;
                }
            }
            st = child.wait() => {
                break st.map_err(|e| Error::Tool(format!("waiting for pg_dump: {e}")))?;
            }
        }
    };
    if !status.success() {
        return Err(Error::ChildFailed {
            tool: "pg_dump".into(),
            status: status.to_string(),
            stderr: stderr.await.unwrap_or_default(),
        });
    }
    let mut rest = list_dir(dir).await?;
    if !rest.iter().any(|n| n == "toc.dat") {
        return Err(Error::Tool(
            "pg_dump finished without writing toc.dat".into(),
        ));
    }
    rest.sort_by_key(|n| (n == "toc.dat", n.clone()));
    info!(
        "Parallel dump: {early} of {} files streamed while pg_dump was still running",
        early + rest.len()
    );
    for name in rest {
        send_file(dir, &name, &mut sink).await?;
    }
    sink.push(Bytes::from_static(&crate::tar::END)).await?;
    sink.finish().await
}

pub(super) async fn list_dir(dir: &std::path::Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut rd = tokio::fs::read_dir(dir)
        .await
        .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    while let Some(e) = rd
        .next_entry()
        .await
        .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
    {
        match e.file_name().into_string() {
            Ok(n) => out.push(n),
            Err(n) => {
                return Err(Error::Tool(format!(
                    "unexpected file {n:?} in the dump directory"
                )));
            }
        }
    }
    Ok(out)
}

/// Data files of item `id`: `ID.dat`, or `ID.dat.gz` (`.lz4`, `.zst` on PostgreSQL 16+);
/// none for items without data.
pub(super) async fn files_of_item(dir: &std::path::Path, id: u32) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for suffix in [".dat", ".dat.gz", ".dat.lz4", ".dat.zst"] {
        let name = format!("{id}{suffix}");
        if tokio::fs::try_exists(dir.join(&name))
            .await
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
        {
            names.push(name);
        }
    }
    Ok(names)
}

/// Send one file as a tar entry, then delete it.
pub(super) async fn send_file(
    dir: &std::path::Path,
    name: &str,
    sink: &mut Sink<'_>,
) -> Result<()> {
    let path = dir.join(name);
    let f = tokio::fs::File::open(&path)
        .await
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let meta = f
        .metadata()
        .await
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let size = meta.len();
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    sink.push(Bytes::copy_from_slice(&crate::tar::header(
        name, size, mtime,
    )?))
    .await?;
    let sent = sink.copy_from(f, &path.display().to_string()).await?;
    if sent != size {
        return Err(Error::Tool(format!(
            "{} changed while it was archived ({sent} bytes read, {size} expected)",
            path.display()
        )));
    }
    let pad = crate::tar::padding(size);
    if pad > 0 {
        sink.push(Bytes::from_static(&crate::tar::END[..pad]))
            .await?;
    }
    tokio::fs::remove_file(&path)
        .await
        .map_err(|e| Error::io(format!("removing {}", path.display()), e))
}
