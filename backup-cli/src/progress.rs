//! A progress bar (bytes, rate, elapsed) on a terminal; nothing otherwise.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use backup_core::util::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar on screen, if any: log lines are written around it.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Run `f` (which writes to stderr) with the bar hidden, so lines never mix with it.
pub fn suspended<R>(f: impl FnOnce() -> R) -> R {
    let bar = ACTIVE.lock().ok().and_then(|b| b.clone());
    match bar {
        Some(b) => b.suspend(f),
        None => f(),
    }
}

/// A bar that is drawn only when stderr is a terminal and text logs are on.
#[derive(Debug, Clone)]
pub struct Bar(Option<ProgressBar>);

impl Bar {
    /// Start a bar labelled `what` (e.g. `backup`), or a no-op when not interactive.
    pub fn start(what: &str, enabled: bool) -> Self {
        if !enabled || !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{prefix} {spinner} {bytes} ({bytes_per_sec}) {elapsed_precise}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_prefix(what.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        if let Ok(mut a) = ACTIVE.lock() {
            *a = Some(bar.clone());
        }
        Self(Some(bar))
    }

    /// The callback the pipelines call with the bytes done so far.
    pub fn callback(&self) -> Option<Progress> {
        let bar = self.0.clone()?;
        Some(Arc::new(move |n| bar.set_position(n)))
    }

    /// Remove the bar before the final log lines.
    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            if let Ok(mut a) = ACTIVE.lock() {
                *a = None;
            }
            b.finish_and_clear();
        }
    }
}
