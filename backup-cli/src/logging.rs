//! Log output: the old scripts' `[2024-01-15 14:30:00] [INFO] message` lines on stderr
//! (and optionally appended to a file), or one JSON object per line.
//!
//! The audit trail (target `kaizen_backup::audit`) is in the JSON log, the audit file and
//! the notifiers that ask for it; the text log is for a person and leaves it out (it
//! would repeat every start and end), unless `-v` asks for everything.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::cli::LogFormat;

/// Where [`backup_core::audit::record`] logs.
const AUDIT_TARGET: &str = "kaizen_backup::audit";

/// The old scripts' line format.
struct OldStyle;

impl<S, N> FormatEvent<S, N> for OldStyle
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let level = match (*meta.level(), meta.target()) {
            (_, "kaizen_backup::success") => "SUCCESS",
            (_, AUDIT_TARGET) => "AUDIT",
            (Level::ERROR, _) => "ERROR",
            (Level::WARN, _) => "WARNING",
            (Level::INFO, _) => "INFO",
            (Level::DEBUG, _) => "DEBUG",
            (Level::TRACE, _) => "TRACE",
        };
        let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S");
        write!(w, "[{now}] [{level}] ")?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Writes each line to stderr and, when configured, appends it to a file.
#[derive(Clone)]
struct Tee {
    file: Option<Arc<Mutex<std::fs::File>>>,
}

struct TeeWriter {
    file: Option<Arc<Mutex<std::fs::File>>>,
}

impl Write for TeeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        crate::progress::suspended(|| std::io::stderr().write_all(buf))?;
        if let Some(f) = &self.file
            && let Ok(mut f) = f.lock()
        {
            let _ = f.write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for Tee {
    type Writer = TeeWriter;
    fn make_writer(&'a self) -> Self::Writer {
        TeeWriter {
            file: self.file.clone(),
        }
    }
}

/// Install the global subscriber. `verbosity`: -1 quiet, 0 normal, 1 debug, 2+ trace.
pub fn init(format: LogFormat, verbosity: i8, file: Option<&Path>) -> Result<(), String> {
    let level = match verbosity {
        i8::MIN..=-1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let ours = [
        "backup_core",
        "backup_storage",
        "backup_notify",
        "backup_verify",
        "backup_cli",
        "kaizen_backup",
    ];
    let mut directives = String::from("warn");
    for c in ours {
        directives.push_str(&format!(",{c}={level}"));
    }
    if format == LogFormat::Text && verbosity < 1 {
        directives.push_str(&format!(",{AUDIT_TARGET}=off"));
    }
    let filter = EnvFilter::try_new(&directives).map_err(|e| e.to_string())?;
    let file = match file {
        Some(p) => {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(p)
                .map_err(|e| format!("cannot open log file {}: {e}", p.display()))?;
            Some(Arc::new(Mutex::new(f)))
        }
        None => None,
    };
    let tee = Tee { file };
    let res = match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(tee)
            .with_ansi(false)
            .event_format(OldStyle)
            .try_init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(tee)
            .json()
            .with_current_span(false)
            .try_init(),
    };
    res.map_err(|e| e.to_string())
}
