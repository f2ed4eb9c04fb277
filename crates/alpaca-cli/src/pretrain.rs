//! The self-supervised side of the command line: `tokenizer train`, `train mlm` and
//! `predict mlm`.

use std::path::PathBuf;

use alpaca_data::corpus::read_corpus;
use alpaca_data::tokenizer_training::{
    save_tokenizer, train_tokenizer, TokenizerKind, TokenizerSpec,
};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use crate::TrainingFlags;

#[derive(Subcommand)]
pub enum TokenizerCommand {
    /// Train a WordPiece (BERT) or byte-level BPE (RoBERTa/GPT-2) tokenizer on raw text and
    /// save tokenizer.json (+ tokenizer_config.json) that HF tokenizers/transformers load.
    Train(TokenizerTrainArgs),
}

#[derive(Args)]
pub struct TokenizerTrainArgs {
    /// wordpiece or bpe
    #[arg(long, default_value = "wordpiece")]
    kind: String,
    #[arg(long, default_value_t = 30_522)]
    vocab_size: usize,
    /// A piece must occur this often to enter the vocabulary.
    #[arg(long, default_value_t = 2)]
    min_frequency: u64,
    /// WordPiece: keep case and accents (default: lower-case, as uncased BERT).
    #[arg(long)]
    cased: bool,
    /// The JSON field holding a document's text (.json/.jsonl files).
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Directory to write the tokenizer files into.
    #[arg(long)]
    output: PathBuf,
    /// Replace a tokenizer already in the output directory.
    #[arg(long)]
    overwrite: bool,
    /// Plain text, JSON or JSONL files, or directories of them.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn tokenizer_train(args: TokenizerTrainArgs) -> Result<()> {
    let kind = match args.kind.as_str() {
        "wordpiece" => TokenizerKind::WordPiece,
        "bpe" => TokenizerKind::Bpe,
        other => bail!("--kind {other:?}: expected wordpiece or bpe"),
    };
    if args.output.join("tokenizer.json").exists() && !args.overwrite {
        bail!(
            "{} already holds a tokenizer.json; pass --overwrite to replace it",
            args.output.display()
        );
    }
    let corpus = read_corpus(&args.files, &args.text_field)?;
    let spec = TokenizerSpec {
        kind,
        vocab_size: args.vocab_size,
        min_frequency: args.min_frequency,
        lowercase: !args.cased,
    };
    let tokenizer = train_tokenizer(spec, corpus.documents.iter().map(|d| d.text.as_str()))?;
    save_tokenizer(&tokenizer, kind, spec.lowercase, &args.output)?;
    let size = tokenizer.get_vocab_size(true);
    println!(
        "trained a {} tokenizer on {} documents ({} files, {} words): {size} tokens",
        args.kind,
        corpus.documents.len(),
        corpus.files,
        corpus.words()
    );
    if size < args.vocab_size {
        println!(
            "note: the corpus supports only {size} tokens at min frequency {}; asked for {}",
            args.min_frequency, args.vocab_size
        );
    }
    println!("wrote {}", args.output.join("tokenizer.json").display());
    Ok(())
}

/// Every flag is also a key of the `--config` TOML file (flags win); the size of a new BERT
/// is the config's `[bert]` table.
#[derive(Args, serde::Serialize)]
#[command(args_override_self = true)]
pub struct MlmArgs {
    /// A TOML file with any of the keys below and, for a new model, a [bert] table
    /// (hidden_size, num_hidden_layers, num_attention_heads, intermediate_size).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Continue pre-training this checkpoint (HF layout) instead of building a new BERT.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    /// The tokenizer directory of a new BERT (from `alpaca tokenizer train`).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tokenizer: Option<PathBuf>,
    /// Plain text, JSON or JSONL files, or directories of them.
    #[arg(long, num_args = 1..)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    corpus: Vec<PathBuf>,
    /// Held-out text (default: --validation-split of the corpus documents).
    #[arg(long, num_args = 1..)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dev: Vec<PathBuf>,
    /// Share of the corpus documents held out for evaluation (default 0.05).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    validation_split: Option<f64>,
    /// JSON field holding a document's text (default "text").
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    text_field: Option<String>,
    /// Run directory (runs/<name>).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<PathBuf>,
    /// Add next-sentence prediction (BertForPreTraining).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    nsp: bool,
    /// Mask whole words instead of single sub-tokens.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    whole_word_mask: bool,
    /// Share of tokens selected for prediction (default 0.15).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    mlm_probability: Option<f64>,
    /// Use only the first N documents.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_documents: Option<usize>,
    /// Stop after N optimiser steps (the schedule spans them); overrides --epochs.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_steps: Option<usize>,
    #[command(flatten)]
    #[serde(flatten)]
    training: TrainingFlags,
}

pub fn train_mlm(args: MlmArgs) -> Result<()> {
    let overrides = toml::Table::try_from(&args).context("flags")?;
    let config: alpaca_train::MlmConfig =
        alpaca_train::config::resolve(args.config.as_deref(), overrides)
            .map_err(anyhow::Error::msg)?;
    let report = alpaca_train::mlm::train(&config)?;
    println!("{}", report.to_markdown());
    eprintln!(
        "report: {0}/report.md, {0}/report.json; best model: {0}/best",
        config.output.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct PredictMlmArgs {
    /// A checkpoint with a masked-LM head (e.g. runs/<name>/best of `train mlm`).
    #[arg(long)]
    model: String,
    /// Candidates per mask.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Read texts from this file, one per line.
    #[arg(long)]
    file: Option<PathBuf>,
    #[arg(long)]
    threads: Option<usize>,
    /// Texts with [MASK] (or <mask>) tokens; without any, lines are read from stdin.
    texts: Vec<String>,
}

pub fn predict_mlm(args: PredictMlmArgs) -> Result<()> {
    alpaca_train::threads::set_threads(args.threads);
    let filler = alpaca_train::mlm_predict::MaskFiller::load(&args.model)?;
    let texts = crate::read_texts_from(args.file.as_deref(), &args.texts)?;
    for (line, text) in texts.iter().enumerate() {
        let fills = filler
            .fill(text, args.top_k)
            .with_context(|| format!("text {}", line + 1))?;
        for fill in fills {
            let mut value = serde_json::to_value(&fill)?;
            value["line"] = serde_json::json!(line + 1);
            println!("{value}");
        }
    }
    Ok(())
}
