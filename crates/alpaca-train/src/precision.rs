//! The run's matrix-product precision, chosen once per command.

use alpaca_kernels::Precision;
use anyhow::{anyhow, Result};

/// Parses `text` (the `precision` key: fp32 or bf16), tells the user when this CPU cannot run
/// bf16 (then fp32), and switches every linear layer's products to it for this process.
/// Returns what runs.
pub fn apply(text: &str) -> Result<Precision> {
    let (running, notice) = parse(text)?;
    if let Some(notice) = notice {
        eprintln!("alpaca: {notice}");
    }
    alpaca_kernels::linear::set_precision(running);
    Ok(running)
}

/// What `text` asks for on this CPU, and the notice when that differs; nothing is switched.
pub fn parse(text: &str) -> Result<(Precision, Option<&'static str>)> {
    let asked: Precision = text
        .parse()
        .map_err(|m: String| anyhow!("precision: {m}"))?;
    Ok(asked.on_this_cpu())
}
