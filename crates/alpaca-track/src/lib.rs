//! alpaca-track: everything a run leaves on disk and on the terminal.
//!
//! A run directory (`runs/<name>/`) holds the resolved config, `metrics.jsonl` (one JSON object
//! per logged event, appended and flushed as it happens so a killed run keeps its history),
//! reports, and checkpoints. Files the user keeps are written atomically (temporary file, then
//! rename) so an interrupted run never leaves one half-written.

pub mod fs;
pub mod metrics;
pub mod progress;

pub use fs::{write_atomic, write_json_atomic};
pub use metrics::MetricsLog;
pub use progress::{progress_bar, report_without_terminal, Throughput};
