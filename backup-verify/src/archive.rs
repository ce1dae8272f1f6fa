//! Check 2, `archive`: pg_restore reads the table of contents, which lists every table
//! the manifest recorded.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Instant;

use async_trait::async_trait;
use backup_core::backup::collect_stderr;
use backup_core::pg::find_tool;
use backup_core::{CheckResult, Error, Result, Verifier, VerifyContext};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::result;

/// Lists the archive's table of contents with `pg_restore --list`, streaming the object to
/// it (custom format), or unpacking only `toc.dat` from the tar archive (directory format).
#[derive(Debug, Clone, Copy, Default)]
pub struct ArchiveCheck {
    /// The object is a tar archive of a directory-format dump.
    pub directory: bool,
}

/// `(schema, table)` of every `TABLE` entry in a `pg_restore --list` output.
pub fn tables_in_toc(toc: &str) -> HashSet<(String, String)> {
    toc.lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| {
            // "215; 1259 16390 TABLE public users postgres"
            let rest = l.split_once(';')?.1.trim();
            let mut parts = rest.split_whitespace();
            let (_, _) = (parts.next()?, parts.next()?);
            if parts.next()? != "TABLE" {
                return None;
            }
            // "TABLE DATA ..." and "TABLE ATTACH ..." are other entry types.
            let schema = parts.next().filter(|w| !matches!(*w, "DATA" | "ATTACH"))?;
            let name = parts.next()?;
            Some((schema.to_string(), name.to_string()))
        })
        .collect()
}

#[async_trait]
impl Verifier for ArchiveCheck {
    fn name(&self) -> &'static str {
        "archive"
    }

    async fn verify(&self, ctx: &VerifyContext) -> Result<Vec<CheckResult>> {
        let started = Instant::now();
        let fail = |why: String| Ok(vec![result("archive", false, why, started)]);
        let bin_dir = ctx.pg.as_ref().and_then(|p| p.bin_dir.clone());
        let tool = find_tool("pg_restore", bin_dir.as_deref()).await?;
        let (status, toc, err) = if self.directory {
            match list_directory(&tool.path, ctx).await? {
                Ok(v) => v,
                Err(why) => return fail(why),
            }
        } else {
            list_custom(&tool.path, ctx).await?
        };
        if !status.success() {
            return fail(format!(
                "pg_restore cannot read the table of contents: {err}"
            ));
        }
        let entries = toc
            .lines()
            .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
            .count();
        let tables = tables_in_toc(&toc);
        if let Some(m) = &ctx.manifest {
            let missing: Vec<String> = m
                .tables
                .iter()
                .filter(|t| !tables.contains(&(t.schema.clone(), t.name.clone())))
                .map(|t| format!("{}.{}", t.schema, t.name))
                .collect();
            if !missing.is_empty() {
                return fail(format!(
                    "the table of contents lacks {} table(s) the manifest recorded: {}",
                    missing.len(),
                    missing
                        .iter()
                        .take(10)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        Ok(vec![result(
            "archive",
            true,
            format!("{entries} entries, {} tables", tables.len()),
            started,
        )])
    }
}

type Listing = (std::process::ExitStatus, String, String);

/// `pg_restore --list` reading the object on its standard input.
async fn list_custom(tool: &std::path::Path, ctx: &VerifyContext) -> Result<Listing> {
    let mut child = tokio::process::Command::new(tool)
        .arg("--list")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Tool(format!("cannot start pg_restore: {e}")))?;
    let stderr = collect_stderr(&mut child);
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Tool("pg_restore has no stdout".into()))?;
    let reader = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s).await;
        s
    });
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| Error::Tool("pg_restore has no stdin".into()))?;
    let mut stream = ctx.storage.get(&ctx.data_key).await?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        // pg_restore stops reading once it has the table of contents.
        if stdin.write_all(&chunk).await.is_err() {
            break;
        }
    }
    drop(stdin);
    let status = child
        .wait()
        .await
        .map_err(|e| Error::Tool(format!("waiting for pg_restore: {e}")))?;
    let toc = reader.await.unwrap_or_default();
    let err = stderr.await.unwrap_or_default();
    Ok((status, toc, err))
}

/// Unpack only `toc.dat` from the tar archive (the whole stream is read and checked),
/// then `pg_restore --list` the directory. The inner error is a failed check.
async fn list_directory(
    tool: &std::path::Path,
    ctx: &VerifyContext,
) -> Result<std::result::Result<Listing, String>> {
    let tmp = tempfile::Builder::new()
        .prefix("kaizen-verify-toc-")
        .tempdir()
        .map_err(|e| Error::io("creating a temporary directory", e))?;
    let stream = ctx.storage.get(&ctx.data_key).await?;
    match backup_core::tar::unpack(stream, tmp.path(), |n| n == "toc.dat").await {
        Ok(names) if names.is_empty() => {
            return Ok(Err("the archive has no toc.dat".into()));
        }
        Ok(_) => {}
        Err(Error::Corrupt(why)) => return Ok(Err(why)),
        Err(e) => return Err(e),
    }
    let out = tokio::process::Command::new(tool)
        .arg("--list")
        .arg("--format=directory")
        .arg(tmp.path())
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| Error::Tool(format!("cannot run pg_restore: {e}")))?;
    Ok(Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_toc() {
        let toc = ";\n; Archive created at 2024-01-15\n215; 1259 16390 TABLE public users postgres\n3401; 0 16390 TABLE DATA public users postgres\n216; 1259 16400 TABLE trust eatp_delegations kaizen\n4000; 0 0 TABLE ATTACH public audit_logs_2024_01 postgres\n";
        let t = tables_in_toc(toc);
        assert!(t.contains(&("public".into(), "users".into())));
        assert!(t.contains(&("trust".into(), "eatp_delegations".into())));
        assert_eq!(t.len(), 2);
    }
}
