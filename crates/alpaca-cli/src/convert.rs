//! `alpaca convert gguf`: a llama.cpp GGUF checkpoint into the Hugging Face layout.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum ConvertCommand {
    /// Convert a llama-architecture GGUF (F32/F16/Q4_0/Q4_1/Q8_0 tensors, byte-level BPE
    /// tokenizer) into an HF LlamaForCausalLM directory: config.json, model.safetensors (f32),
    /// tokenizer.json, tokenizer_config.json (with the chat template), generation_config.json.
    Gguf(ConvertGgufArgs),
}

#[derive(Args)]
pub struct ConvertGgufArgs {
    /// The .gguf file.
    file: PathBuf,
    /// Directory to write the HF checkpoint into.
    #[arg(long)]
    output: PathBuf,
    /// Replace the contents of a non-empty output directory.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(command: ConvertCommand) -> Result<()> {
    match command {
        ConvertCommand::Gguf(args) => convert_gguf(args),
    }
}

fn convert_gguf(args: ConvertGgufArgs) -> Result<()> {
    refuse_non_empty(&args.output, args.overwrite)?;
    let started = std::time::Instant::now();
    let summary = alpaca_models::gguf::convert_to_hf_dir(&args.file, &args.output)?;
    let types: Vec<String> = summary
        .source_types
        .iter()
        .map(|(name, count)| format!("{count} {name}"))
        .collect();
    println!(
        "converted {} -> {}: {} tensors ({}), {:.1}M parameters as f32, vocabulary {}, {} \
         embeddings, in {:.1} s",
        args.file.display(),
        summary.output.display(),
        summary.tensors,
        types.join(", "),
        summary.parameters as f64 / 1e6,
        summary.vocab_size,
        if summary.tied_embeddings {
            "tied"
        } else {
            "separate output"
        },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The output is replaced as a whole, so a directory with anything in it is only taken with
/// `--overwrite` (nothing of the user's is lost by a mistyped path).
fn refuse_non_empty(output: &Path, overwrite: bool) -> Result<()> {
    if !output.exists() {
        return Ok(());
    }
    if !output.is_dir() {
        bail!(
            "--output {} exists and is not a directory",
            output.display()
        );
    }
    let mut entries = std::fs::read_dir(output)
        .with_context(|| format!("cannot read --output {}", output.display()))?;
    if entries.next().is_some() && !overwrite {
        bail!(
            "--output {} is not empty; pass --overwrite to replace its contents, or choose \
             another directory",
            output.display()
        );
    }
    Ok(())
}
