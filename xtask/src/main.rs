//! Project tasks: `cargo xtask demo | test | env | dist | man | bench`.

mod bench;
mod demo;
mod install;
mod pg;
mod services;
mod test;

use std::path::PathBuf;

use anyhow::{Result, bail};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  demo                 start a throwaway PostgreSQL, load the Kaizen Studio sample database,
                       back it up, list, restore into a new database and compare
  test [--services LIST] [-- ARGS]
                       install (once, under target/test-env) and start the test services on free
                       ports, build the binary, run the whole test suite, stop everything;
                       LIST: any of pg,s3,azure,gcs,webdav,smtp,pushgateway (default: all);
                       ARGS go to cargo nextest (e.g. -- -E 'test(round_trip)')
  env [--services LIST]
                       start the same services, write target/test-env/env.sh, wait for Ctrl-C
  dist [SET...]        build release binaries for feature sets (local, default, all; default:
                       all three) into target/dist-SET and print their sizes
  man [DIR]            write man pages (default target/man)
  bench [--quick] [--scale N] [--runs N] [--pg-dump-zstd PROGRAM] [--pitr-only]
                       measure backup, restore and verify against pg_dump/pg_restore, and
                       point-in-time recovery against pg_basebackup and pgBackRest, in the same
                       run and write BENCHMARKS.md (--quick: small smoke run; PROGRAM: a
                       pg_dump 16+ (or a script running one) to compare its own zstd;
                       --pitr-only: just the PITR cases, into target/bench/BENCHMARKS.pitr.md)";

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

/// Set by SIGINT/SIGTERM/SIGHUP; long waits check it so cleanup (Drop) always runs.
pub static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a termination signal arrived.
pub fn stopped() -> bool {
    STOP.load(std::sync::atomic::Ordering::SeqCst)
}

fn run() -> Result<()> {
    // Ctrl-C also reaches child processes (same process group); we stay alive to clean up.
    ctrlc::set_handler(|| STOP.store(true, std::sync::atomic::Ordering::SeqCst))?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        println!("{USAGE}");
        return Ok(());
    };
    let rest = &args[1..];
    match cmd.as_str() {
        "demo" => demo::run(),
        "test" => {
            let code = test::run(rest)?;
            std::process::exit(code)
        }
        "env" => test::env(rest),
        "dist" => dist(rest),
        "man" => man(rest),
        "bench" => bench::run(rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The cargo target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Run a command, failing with its name if it fails.
pub fn run_cmd(cmd: &mut std::process::Command) -> Result<()> {
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run {cmd:?}: {e}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Build the kaizen-backup binary with these cargo arguments; returns its path.
pub fn build_binary(profile_release: bool, extra: &[&str]) -> Result<PathBuf> {
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root())
        .args(["build", "-p", "backup-cli", "--bin", "kaizen-backup"]);
    if profile_release {
        cmd.arg("--release");
    }
    cmd.args(extra);
    run_cmd(&mut cmd)?;
    let dir = if profile_release { "release" } else { "debug" };
    Ok(target_dir().join(dir).join("kaizen-backup"))
}

fn dist(rest: &[String]) -> Result<()> {
    // Separate target dirs: each feature set keeps its own cache, and the dev
    // target dir used by the tests is not rebuilt with other features.
    let sets: [(&str, &str, &[&str]); 3] = [
        (
            "local",
            "local only",
            &["--no-default-features", "--features", "local"],
        ),
        ("default", "default", &[]),
        ("all", "all features", &["--all-features"]),
    ];
    for r in rest {
        if !sets.iter().any(|(id, _, _)| id == r) {
            bail!("unknown feature set {r:?}; known: local, default, all");
        }
    }
    let mut rows = Vec::new();
    for (id, label, args) in sets.iter() {
        if !rest.is_empty() && !rest.iter().any(|r| r == id) {
            continue;
        }
        let target = target_dir().join(format!("dist-{id}"));
        let mut cmd =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(root())
            .args([
                "build",
                "--release",
                "-p",
                "backup-cli",
                "--bin",
                "kaizen-backup",
                "--target-dir",
            ])
            .arg(&target)
            .args(*args);
        if let Err(e) = run_cmd(&mut cmd) {
            rows.push(format!("{label:<22} build failed: {e}"));
            continue;
        }
        let bin = target.join("release").join("kaizen-backup");
        let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
        rows.push(format!(
            "{label:<22} {:>8.1} MiB  {}",
            size as f64 / 1048576.0,
            bin.display()
        ));
    }
    println!("\nkaizen-backup binary sizes (release):");
    for r in rows {
        println!("  {r}");
    }
    Ok(())
}

fn man(rest: &[String]) -> Result<()> {
    let dir = rest
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("man"));
    let bin = build_binary(false, &[])?;
    run_cmd(std::process::Command::new(bin).arg("man").arg(&dir))?;
    println!("man pages written to {}", dir.display());
    Ok(())
}
