//! Progress bars for long loops (training epochs, evaluation passes).

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar with a position, rate and ETA, plus a free-form message for loss/lr/tokens per second.
/// Drawn on stderr only when it is a terminal, so logs and CI output stay clean.
pub fn progress_bar(length: u64, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} eta {eta} {msg}",
        )
        .expect("the template is a constant")
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    bar
}

/// Writes `line` to stderr when the bars are not drawn (stderr is not a terminal: a log file,
/// `nohup`, CI), so that such runs still show how training goes, as the bar's message does
/// on a terminal.
pub fn report_without_terminal(line: &str) {
    if !std::io::stderr().is_terminal() {
        eprintln!("{line}");
    }
}

/// Counts tokens over wall time for the tokens/s figure shown on the bar and logged.
pub struct Throughput {
    started: Instant,
    tokens: u64,
}

impl Default for Throughput {
    fn default() -> Self {
        Self::new()
    }
}

impl Throughput {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            tokens: 0,
        }
    }

    pub fn add(&mut self, tokens: u64) {
        self.tokens += tokens;
    }

    pub fn tokens_per_second(&self) -> f64 {
        let seconds = self.started.elapsed().as_secs_f64();
        if seconds > 0.0 {
            self.tokens as f64 / seconds
        } else {
            0.0
        }
    }

    pub fn elapsed_seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}
