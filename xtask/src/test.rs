//! `cargo xtask test` and `cargo xtask env`: provision what the tests need, run them.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};

use crate::pg::Cluster;
use crate::{build_binary, root, target_dir};

/// The running test services and the environment that describes them.
pub struct Services {
    _pg: Cluster,
    pub env: Vec<(String, String)>,
}

/// Start every service the tests use.
pub fn start() -> Result<Services> {
    let base = target_dir().join("test-env");
    std::fs::create_dir_all(&base)?;
    let pg = Cluster::start(&base.join(format!("pg-{}", std::process::id())))?;
    eprintln!(
        "xtask: PostgreSQL {} on 127.0.0.1:{}",
        pg.bin.display(),
        pg.port
    );
    let env = pg.test_env();
    Ok(Services { _pg: pg, env })
}

pub fn run(args: &[String]) -> Result<()> {
    let passthrough: Vec<String> = match args.iter().position(|a| a == "--") {
        Some(i) => args[i + 1..].to_vec(),
        None => args.to_vec(),
    };
    let bin = build_binary(false, &["--all-features"])?;
    // Ctrl-C reaches the test runner too; we stay alive to stop the services.
    let _ = ctrlc::set_handler(|| {});
    let services = start()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let has_nextest = Command::new(&cargo)
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(root());
    if has_nextest {
        cmd.args([
            "nextest",
            "run",
            "--workspace",
            "--all-features",
            "--no-fail-fast",
        ]);
    } else {
        cmd.args(["test", "--workspace", "--all-features", "--no-fail-fast"]);
    }
    cmd.args(&passthrough);
    cmd.env("KAIZEN_BACKUP_BIN", &bin);
    for (k, v) in &services.env {
        cmd.env(k, v);
    }
    let status = cmd.status()?;
    drop(services);
    if !status.success() {
        bail!("tests failed ({status})");
    }
    Ok(())
}

pub fn env(_args: &[String]) -> Result<()> {
    let bin = build_binary(false, &["--all-features"])?;
    let services = start()?;
    let file: PathBuf = target_dir().join("test-env").join("env.sh");
    let mut text = format!("export KAIZEN_BACKUP_BIN={}\n", bin.display());
    for (k, v) in &services.env {
        text.push_str(&format!("export {k}='{v}'\n"));
    }
    std::fs::write(&file, text)?;
    eprintln!(
        "xtask: services running; `source {}`; Ctrl-C to stop",
        file.display()
    );
    let (tx, rx) = std::sync::mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })?;
    let _ = rx.recv();
    drop(services);
    let _ = std::fs::remove_file(&file);
    Ok(())
}
