//! Dumps a LLaMA checkpoint's logits for one sequence of token ids as JSON, for comparison
//! with transformers (scripts/check_llama_logits.py).
//!
//!   cargo run --release -p alpaca-models --example llama_logits -- MODEL_DIR --ids 1,2,3 \
//!       --output logits.json [--save DIR] [--adapter LORA_DIR]
//!
//! Writes {"shape": [t, vocab], "logits": [t·vocab floats], "cached_last": [vocab floats]}:
//! the full forward's logits and the last position's logits from the KV-cache path (prompt
//! minus one token, then the last token). With --save, also writes the model to DIR in HF
//! layout (what transformers should load with the same logits). With --adapter, a LoRA adapter
//! (PEFT layout) is attached first (scripts/check_lora_peft.py compares with PEFT).

use std::path::PathBuf;
use std::process::ExitCode;

use alpaca_models::{KvCache, LlamaForCausalLM, Mode, ModelDir};
use candle_core::{Device, Tensor};

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mut model = None;
    let mut ids: Option<Vec<u32>> = None;
    let mut output = None;
    let mut save = None;
    let mut adapter = None;
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "--ids" => {
                let text = value("--ids")?;
                ids = Some(
                    text.split(',')
                        .map(|s| s.trim().parse::<u32>())
                        .collect::<Result<_, _>>()
                        .map_err(|e| {
                            format!("--ids {text:?}: expected comma-separated token ids ({e})")
                        })?,
                )
            }
            "--output" => output = Some(PathBuf::from(value("--output")?)),
            "--save" => save = Some(PathBuf::from(value("--save")?)),
            "--adapter" => adapter = Some(PathBuf::from(value("--adapter")?)),
            flag if flag.starts_with("--") => return Err(format!("unknown flag {flag}")),
            path => model = Some(path.to_string()),
        }
    }
    let usage =
        "usage: llama_logits MODEL_DIR --ids 1,2,3 --output FILE [--save DIR] [--adapter DIR]";
    let (model, ids, output) = match (model, ids, output) {
        (Some(m), Some(i), Some(o)) if !i.is_empty() => (m, i, o),
        _ => return Err(usage.into()),
    };
    let dir = ModelDir::open(&model).map_err(|e| e.to_string())?;
    let (mut llama, report) = LlamaForCausalLM::load(&dir, 0).map_err(|e| e.to_string())?;
    if let Some(adapter) = &adapter {
        alpaca_models::lora::load_adapter(&mut llama, adapter).map_err(|e| e.to_string())?;
    }
    if !report.summary().is_empty() {
        return Err(format!(
            "{model}: checkpoint incomplete:\n{}",
            report.summary()
        ));
    }
    let length = ids.len();
    let input = Tensor::from_vec(ids, (1, length), &Device::Cpu).map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let logits = llama
        .forward(&input, None, Mode::EVAL)
        .map_err(|e| e.to_string())?;
    let forward_seconds = started.elapsed().as_secs_f64();
    let mut cache = KvCache::new();
    let cached_last = (|| {
        if length > 1 {
            llama.forward_with_cache(&input.narrow(1, 0, length - 1)?, &mut cache)?;
        }
        llama.forward_with_cache(&input.narrow(1, length - 1, 1)?, &mut cache)
    })()
    .map_err(|e| e.to_string())?;
    let flat = |t: &Tensor| -> Result<Vec<f32>, String> {
        t.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| e.to_string())
    };
    let vocab = llama.config().vocab_size;
    let json = serde_json::json!({
        "shape": [length, vocab],
        "logits": flat(&logits)?,
        "cached_last": flat(&cached_last)?,
        "forward_seconds": forward_seconds,
    });
    std::fs::write(&output, json.to_string()).map_err(|e| format!("{}: {e}", output.display()))?;
    if let Some(target) = save {
        llama.save(&target, &dir.path).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("llama_logits: {message}");
            ExitCode::FAILURE
        }
    }
}
