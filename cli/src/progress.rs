//! Progress bars on a terminal, plain lines in logs.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use sideload_bundle::Progress;

/// Draws one bar per step on a terminal; prints one line per finished step otherwise.
pub struct TermProgress {
    bar: Mutex<Option<(ProgressBar, String)>>,
    terminal: bool,
    quiet: bool,
}

impl TermProgress {
    /// `quiet` suppresses everything (for `--json`).
    pub fn new(quiet: bool) -> Self {
        TermProgress {
            bar: Mutex::new(None),
            terminal: std::io::stderr().is_terminal(),
            quiet,
        }
    }
}

impl Progress for TermProgress {
    fn start(&self, what: &str, total: u64) {
        if self.quiet {
            return;
        }
        let bar = if self.terminal {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_message(what.to_owned());
            bar
        } else {
            ProgressBar::hidden()
        };
        *self.bar.lock().expect("progress lock") = Some((bar, what.to_owned()));
    }

    fn advance(&self, bytes: u64) {
        if let Some((bar, _)) = self.bar.lock().expect("progress lock").as_ref() {
            bar.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some((bar, what)) = self.bar.lock().expect("progress lock").take() {
            bar.finish_and_clear();
            if !self.terminal && !self.quiet {
                eprintln!("{what}: done");
            }
        }
    }
}
