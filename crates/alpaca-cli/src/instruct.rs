//! The decoder side of the command line: `train instruct`, `train clm` and `merge-lora`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::TrainingFlags;

/// Every flag is also a key of the `--config` TOML file (flags win).
#[derive(Args, serde::Serialize)]
#[command(args_override_self = true)]
pub struct InstructArgs {
    /// A TOML file with any of the keys below.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// A LLaMA-family model: HF directory or .gguf file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    /// Alpaca JSON/JSONL, ShareGPT JSON/JSONL, or CSV (instruction,input,output or two
    /// columns: prompt, response).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<PathBuf>,
    /// Held-out examples (default: --validation-split of --data).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    dev: Option<PathBuf>,
    /// Share of --data held out when there is no --dev (default 0.05).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    validation_split: Option<f64>,
    /// alpaca (Stanford's prompts, default) or chat (the model's chat template).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    template: Option<String>,
    /// Two-column CSV: this instruction for every row, the first column as its input.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    csv_instruction: Option<String>,
    /// skip (default: load what parses and report the rest) or fail.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    on_error: Option<String>,
    /// Compute the loss on prompts too.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    train_on_inputs: bool,
    /// Pack short examples into sequences of up to --max-len tokens.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    packing: bool,
    /// Train all weights instead of LoRA adapters.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    full: bool,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lora_r: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lora_alpha: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lora_dropout: Option<f64>,
    /// Comma-separated projections (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)
    /// or all-linear (default q_proj,v_proj).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lora_targets: Option<String>,
    /// Run directory (runs/<name>).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<PathBuf>,
    /// Stop after N optimiser steps (the schedule spans them); overrides --epochs.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_steps: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_train_examples: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_eval_examples: Option<usize>,
    /// Prompts (one per line) the report answers before and after tuning.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    report_prompts: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    report_max_new_tokens: Option<usize>,
    #[command(flatten)]
    #[serde(flatten)]
    training: TrainingFlags,
}

pub fn train_instruct(args: InstructArgs) -> Result<()> {
    let overrides = toml::Table::try_from(&args).context("flags")?;
    let config: alpaca_train::InstructConfig =
        alpaca_train::config::resolve(args.config.as_deref(), overrides)
            .map_err(anyhow::Error::msg)?;
    let report = alpaca_train::instruct::train(&config)?;
    println!("{}", report.to_markdown());
    eprintln!(
        "report: {0}/report.md, {0}/report.json; best {1}: {0}/best",
        config.output.display(),
        if config.full { "model" } else { "adapter" }
    );
    Ok(())
}

#[derive(Args)]
pub struct MergeLoraArgs {
    /// The base model the adapter was trained on (HF directory or .gguf).
    #[arg(long)]
    model: String,
    /// The adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    adapter: PathBuf,
    /// Where to write the merged model (HF layout).
    #[arg(long)]
    output: PathBuf,
    /// Replace an existing output directory.
    #[arg(long)]
    overwrite: bool,
}

pub fn merge_lora(args: MergeLoraArgs) -> Result<()> {
    if args.output.exists() && !args.overwrite {
        bail!(
            "{} already exists; pass --overwrite to replace it",
            args.output.display()
        );
    }
    let setup = alpaca_train::causal::CausalSetup::open(&args.model, 0)?;
    let mut model = setup.load_model()?;
    let (config, _) = alpaca_models::lora::load_adapter(&mut model, &args.adapter)?;
    alpaca_models::lora::merge_adapters(&mut model)?;
    model.save(&args.output, &setup.tokenizer_dir)?;
    println!(
        "merged {} (LoRA r {} on {}) into {}: wrote {}",
        args.adapter.display(),
        config.r,
        config.target_modules.join(","),
        args.model,
        args.output.display()
    );
    Ok(())
}

/// Every flag is also a key of the `--config` TOML file (flags win).
#[derive(Args, serde::Serialize)]
#[command(args_override_self = true)]
pub struct ClmArgs {
    /// A TOML file with any of the keys below.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// A LLaMA-family model: HF directory or .gguf file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    /// Plain text, JSON or JSONL files, or directories of them.
    #[arg(long, num_args = 1..)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    corpus: Vec<PathBuf>,
    /// Held-out text (default: --validation-split of the corpus documents).
    #[arg(long, num_args = 1..)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dev: Vec<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    validation_split: Option<f64>,
    /// JSON field holding a document's text (default "text").
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    text_field: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_documents: Option<usize>,
    /// Train all weights instead of LoRA adapters.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    full: bool,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lora_r: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lora_alpha: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lora_dropout: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lora_targets: Option<String>,
    /// Run directory (runs/<name>).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_steps: Option<usize>,
    #[command(flatten)]
    #[serde(flatten)]
    training: TrainingFlags,
}

pub fn train_clm(args: ClmArgs) -> Result<()> {
    let overrides = toml::Table::try_from(&args).context("flags")?;
    let config: alpaca_train::ClmConfig =
        alpaca_train::config::resolve(args.config.as_deref(), overrides)
            .map_err(anyhow::Error::msg)?;
    let run = alpaca_train::clm::train(&config)?;
    println!("{}", run.to_markdown("Causal-LM training report"));
    eprintln!(
        "report: {0}/report.md, {0}/report.json; best {1}: {0}/best",
        config.output.display(),
        if config.full { "model" } else { "adapter" }
    );
    Ok(())
}
