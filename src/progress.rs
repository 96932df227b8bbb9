//! Progress on stderr: an indicatif bar on a terminal, periodic plain lines otherwise.

use indicatif::{HumanDuration, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Set in the processes of a data-parallel run other than rank 0: they draw no bar and write no log line,
/// only their errors.
static QUIET: AtomicBool = AtomicBool::new(false);

/// From now on, no progress bar and no log line from this process ([`error_line`] still writes).
pub fn set_quiet() {
    QUIET.store(true, Ordering::SeqCst);
}

/// Writes one line to stderr and ignores a failure: a broken or closed stderr (`nmt train 2>&1 | head -1`)
/// must not stop the work, and `eprintln!` would panic on it. Use it through [`crate::log!`].
pub fn log_line(args: std::fmt::Arguments) {
    if !QUIET.load(Ordering::Relaxed) {
        error_line(args);
    }
}

/// [`log_line`] even in a quiet process: the one error line `main` reports.
pub fn error_line(args: std::fmt::Arguments) {
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// `eprintln!` that ignores a broken stderr: every log line of `nmt` goes through it.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::progress::log_line(format_args!($($arg)*))
    };
}

pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar of `total` units with `unit` in its template; plain lines when stderr is not a terminal.
    pub fn new(total: u64, unit: &str) -> Self {
        Self::with_deadline(total, unit, None)
    }

    /// The same, with a deadline (a time budget): the ETA shown is the sooner of the units' ETA and the
    /// time left until the deadline.
    pub fn with_deadline(total: u64, unit: &str, deadline: Option<Instant>) -> Self {
        if !std::io::stderr().is_terminal() || QUIET.load(Ordering::Relaxed) {
            return Self { bar: None };
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let template =
            format!("{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} {{msg}} (ETA {{eta}})");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            let style = style.with_key("eta", move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let by_units = state.eta();
                let eta = match deadline {
                    Some(d) => by_units.min(d.saturating_duration_since(Instant::now())),
                    None => by_units,
                };
                let _ = write!(w, "{:#}", HumanDuration(eta));
            });
            bar.set_style(style);
        }
        Self { bar: Some(bar) }
    }

    /// Whether a bar is drawn (stderr is a terminal).
    pub fn is_bar(&self) -> bool {
        self.bar.is_some()
    }

    pub fn set_position(&self, pos: u64, msg: String) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
            bar.set_message(msg);
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// A log line: above the bar on a terminal, on its own line otherwise.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => crate::log!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
