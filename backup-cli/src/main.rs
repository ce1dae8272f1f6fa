//! `kaizen-backup`: parse, build, run, map the error to an exit code.

mod app;
mod cli;
mod codecs;
mod commands;
mod config;
mod ctx;
mod events;
mod logging;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser;

/// `--version` text: the version and the compiled-in features.
pub static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    // The CLI's `metrics` feature is backup-notify's metrics and pushgateway together.
    let features: Vec<&str> = backup_storage::features()
        .iter()
        .copied()
        .chain(
            backup_notify::features()
                .into_iter()
                .filter(|f| *f != "pushgateway"),
        )
        .collect();
    format!(
        "{} (features: {})",
        env!("CARGO_PKG_VERSION"),
        features.join(", ")
    )
});

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    ExitCode::from(app::run(cli))
}
