//! The run of one command line: configuration, logging, runtime, signals, the audit
//! trail, and the error-to-exit-code edge. What commands share is in [`Ctx`].

use backup_core::Error;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::cli::{Cli, Command, ConfigCommand};
use crate::config::{self, Loaded};
use crate::ctx::Ctx;
use crate::output::emit;

/// Run the parsed command line; returns the exit status.
pub fn run(cli: Cli) -> u8 {
    // Commands that need no configuration.
    match &cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "kaizen-backup", &mut std::io::stdout());
            return 0;
        }
        Command::Man { dir } => return write_man(dir),
        Command::Keygen { output, signing } => {
            let made = if *signing {
                backup_core::signing::keygen(output).map(|k| k.to_string())
            } else {
                backup_core::codec::keygen(output)
            };
            return match made {
                Ok(recipient) => {
                    emit(recipient);
                    0
                }
                Err(e) => {
                    print_early_error(&e);
                    exit_code(&e)
                }
            };
        }
        _ => {}
    }
    // Names are checked before anything else runs.
    if let Command::Backup(args) = &cli.command
        && let Some(name) = &args.name
        && let Err(e) = backup_core::name::validate(name)
    {
        print_early_error(&e);
        return 2;
    }
    let loaded = match config::load(&cli.global) {
        Ok(l) => l,
        Err(e) => {
            print_early_error(&e);
            return exit_code(&e);
        }
    };
    let c = &loaded.config;
    let mut verbosity: i8 = if cli.global.quiet {
        -1
    } else {
        cli.global.verbose.min(3) as i8
    };
    if verbosity == 0 && matches!(c.log.level.as_deref(), Some("debug")) {
        verbosity = 1;
    }
    if let Err(e) = crate::logging::init(c.log.format, verbosity, c.log.file.as_deref()) {
        eprintln!("[ERROR] cannot set up logging: {e}");
        return 2;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return 1;
        }
    };
    let reporter = match build_reporter(&loaded) {
        Ok(r) => r,
        Err(e) => {
            error!("{e}");
            return exit_code(&e);
        }
    };
    let cancel = CancellationToken::new();
    let reporter = reporter.with_cancel(cancel.clone());
    let progress = verbosity >= 0 && loaded.config.log.format == crate::cli::LogFormat::Text;
    let ctx = Ctx::new(loaded, cancel.clone(), progress, reporter);
    let result = rt.block_on(async move {
        tokio::spawn(watch_signals(cancel));
        let audit = audit_subject(&ctx, &cli.command);
        if let Some((action, detail)) = &audit {
            audit_record(&ctx, action, "started", detail).await;
        }
        let result = dispatch(&ctx, cli.command).await;
        if let Some((action, detail)) = &audit {
            let outcome = match &result {
                Ok(()) => "succeeded",
                Err(Error::Refused(_)) => "refused",
                Err(_) => "failed",
            };
            let detail = match &result {
                Err(e) => format!("{detail}: {e}"),
                Ok(()) => detail.clone(),
            };
            audit_record(&ctx, action, outcome, &detail).await;
        }
        (result, ctx.reporter.failures())
    });
    // Background work still waiting on the network (an abort given up on, a blocked name
    // lookup) must not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    let (result, notify_failures) = result;
    for f in &notify_failures {
        tracing::warn!("Notification not delivered: {f}");
    }
    match result {
        Ok(()) => 0,
        Err(e) => {
            error!("{e}");
            exit_code(&e)
        }
    }
}

/// Notifiers from `[[notify]]` (the old variables' included), plus the metrics sink.
fn build_reporter(loaded: &Loaded) -> Result<crate::events::Reporter, Error> {
    let c = &loaded.config;
    let mut sinks = backup_notify::build_all(&c.notify)?;
    if let Some(m) = backup_notify::metrics::MetricsSink::from_config(&c.metrics)? {
        sinks.push(Box::new(m));
    }
    Ok(crate::events::Reporter::new(sinks))
}

fn print_early_error(e: &Error) {
    let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S");
    eprintln!("[{now}] [ERROR] {e}");
}

fn exit_code(e: &Error) -> u8 {
    e.exit_code().clamp(0, 255) as u8
}

/// After SIGINT or SIGTERM the process exits within this long, whatever the network
/// does (Kubernetes' default grace period is 30 s; we promise 10).
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(8);

/// Cancel the running operation on SIGINT or SIGTERM: it aborts its writes (within
/// [`backup_core::backup::SIGNAL_CLEANUP`]) and exits non-zero. Whatever is still running
/// [`SHUTDOWN_GRACE`] later (a store or notifier that stopped answering) does not hold
/// the exit; a second signal exits at once.
async fn watch_signals(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    let which = tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    };
    tracing::warn!(
        "Received {which}: stopping and cleaning up (exit within {}s)",
        SHUTDOWN_GRACE.as_secs()
    );
    cancel.cancel();
    // A thread, not a task: it fires even if every worker of the runtime is blocked.
    std::thread::spawn(move || {
        std::thread::sleep(SHUTDOWN_GRACE);
        error!(
            "Cleanup after {which} did not finish within {}s; exiting now (nothing was committed; \
             what is left is invisible and removed by the next run or `prune`)",
            SHUTDOWN_GRACE.as_secs()
        );
        std::process::exit(1);
    });
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    error!("Second signal: exiting now without cleaning up (nothing was committed)");
    std::process::exit(1);
}

async fn dispatch(ctx: &Ctx, command: Command) -> Result<(), Error> {
    use crate::commands::*;
    if matches!(
        command,
        Command::Backup(_)
            | Command::Restore(_)
            | Command::Verify { .. }
            | Command::Prune { .. }
            | Command::Drill { .. }
    ) {
        let c = ctx.config();
        backup_core::leftovers::clean_temp_dirs(&[
            c.backup.settings.staging_dir.as_deref(),
            c.restore.settings.temp_dir.as_deref(),
        ]);
    }
    match command {
        Command::Backup(args) => backup::run(ctx, args).await,
        Command::Restore(args) if args.pgdata.is_some() => pitr::run(ctx, args).await,
        Command::Restore(args) => restore::run(ctx, args).await,
        Command::WalPush { path } => wal::push(ctx, &path).await,
        Command::WalFetch { name, dest } => wal::fetch(ctx, &name, &dest).await,
        Command::WalReceive(args) => wal_receive::run(ctx, args).await,
        Command::List { json } => list::run(ctx, json).await,
        Command::Contents { backup, json } => contents::run(ctx, &backup, json).await,
        Command::Config(ConfigCommand::Show { json }) => config_cmd::show(ctx, json),
        Command::Config(ConfigCommand::Check { connect }) => config_cmd::check(ctx, connect).await,
        Command::Status {
            json,
            max_age,
            max_wal_age,
        } => status::run(ctx, json, max_age, max_wal_age).await,
        Command::Drill { to_time, json } => drill::run(ctx, to_time, json).await,
        Command::Report { html } => report::run(ctx, &html).await,
        Command::Verify {
            backup,
            quick,
            json,
        } => verify::run(ctx, &backup, quick, json).await,
        Command::Prune {
            dry_run,
            json,
            lock_timeout,
        } => prune::run(ctx, dry_run, json, lock_timeout).await,
        Command::Pin { name } => prune::pin(ctx, &name, true).await,
        Command::Unpin { name } => prune::pin(ctx, &name, false).await,
        Command::Completions { .. } | Command::Man { .. } | Command::Keygen { .. } => Ok(()),
    }
}

/// Write `kaizen-backup.1` and one page per subcommand into `dir`.
fn write_man(dir: &std::path::Path) -> u8 {
    let cmd = <Cli as clap::CommandFactory>::command();
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("[ERROR] cannot create {}: {e}", dir.display());
        return 1;
    }
    let mut pages = vec![("kaizen-backup".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages.push((format!("kaizen-backup-{}", sub.get_name()), sub.clone()));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        if let Err(e) = clap_mangen::Man::new(page)
            .title(name.clone())
            .render(&mut buf)
        {
            eprintln!("[ERROR] cannot render {name}: {e}");
            return 1;
        }
        if let Err(e) = std::fs::write(&path, buf) {
            eprintln!("[ERROR] cannot write {}: {e}", path.display());
            return 1;
        }
        emit(path.display());
    }
    0
}

/// The audited action of a command and its subject (None for read-only commands).
fn audit_subject(ctx: &Ctx, command: &Command) -> Option<(&'static str, String)> {
    match command {
        Command::Backup(a) => Some(("backup", a.name.clone().unwrap_or_default())),
        Command::Restore(a) => Some((
            "restore",
            match &a.pgdata {
                Some(dir) => format!(
                    "{} -> {}",
                    a.backup.as_deref().unwrap_or("physical"),
                    dir.display()
                ),
                None => format!(
                    "{} -> {}",
                    a.backup.as_deref().unwrap_or_default(),
                    a.target_db.as_deref().unwrap_or(ctx.database())
                ),
            },
        )),
        Command::Verify { backup, quick, .. } => Some((
            "verify",
            format!("{backup}{}", if *quick { " (quick)" } else { "" }),
        )),
        Command::Prune { dry_run, .. } => Some((
            "prune",
            if *dry_run {
                "dry run".into()
            } else {
                String::new()
            },
        )),
        Command::Pin { name } => Some(("pin", name.clone())),
        Command::Unpin { name } => Some(("unpin", name.clone())),
        Command::Config(ConfigCommand::Check { .. }) => Some(("config", "check".into())),
        _ => None,
    }
}

async fn audit_record(ctx: &Ctx, action: &str, outcome: &str, detail: &str) {
    let c = ctx.config();
    let storage = c
        .storage
        .targets
        .iter()
        .map(|t| redact_url(t.url()))
        .collect();
    let ev =
        backup_core::audit::AuditEvent::new(action, &c.database.name, storage, outcome, detail);
    if let Err(e) = backup_core::audit::record(&c.audit, &ev) {
        tracing::warn!("Could not write the audit record: {e}");
    }
    // Also to notifiers that asked for audit events (`on = ["audit"]`).
    let mut event = backup_core::Event::new(backup_core::EventKind::Audit, &c.database.name);
    event.targets = ev.storage.clone();
    event.details = serde_json::to_value(&ev).unwrap_or_default();
    ctx.reporter.send(&event).await;
}

/// A storage URL without user information (credentials never reach the audit trail).
fn redact_url(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        _ => u.to_string(),
    }
}
