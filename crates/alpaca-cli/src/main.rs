//! `alpaca`: the command line. Thin by design: it parses flags, resolves the config and calls
//! the library functions a Rust user would call the same way.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

mod convert;
mod generate;
mod instruct;
mod pretrain;

#[derive(Parser)]
#[command(
    name = "alpaca",
    version,
    about = "Train, evaluate and use transformer models. One binary, no Python."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune a model on a task.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Run a fine-tuned model on new input.
    #[command(subcommand)]
    Predict(PredictCommand),
    /// Re-evaluate a fine-tuned model on a labelled file of its task (NER: CoNLL; classification:
    /// .tab/.csv/.tsv/.jsonl), chosen from the checkpoint's config.json.
    Eval(EvalArgs),
    /// Measure speed on this machine.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Build tokenizers.
    #[command(subcommand)]
    Tokenizer(pretrain::TokenizerCommand),
    /// Fold a LoRA adapter into its base model and write full weights (HF layout).
    MergeLora(instruct::MergeLoraArgs),
    /// Convert checkpoints from other formats into the Hugging Face layout.
    #[command(subcommand)]
    Convert(convert::ConvertCommand),
    /// Continue a prompt with a LLaMA-family model, streaming the text to stdout.
    Generate(Box<generate::GenerateArgs>),
    /// Talk with a model through its chat template (one line per turn; /reset, /exit).
    Chat(Box<generate::ChatArgs>),
    /// Write new instruction data with a local model from seed tasks (Stanford's
    /// self-instruct loop), as Alpaca JSON.
    SelfInstruct(Box<generate::SelfInstructArgs>),
}

#[derive(Args)]
struct EvalArgs {
    /// A fine-tuned model directory (e.g. runs/<name>/best).
    #[arg(long)]
    model: String,
    /// The labelled file to evaluate on.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// NER: iob1, iob2 or bioes (default: detected from the file).
    #[arg(long)]
    tag_scheme: Option<String>,
    /// Classification: CSV/TSV column or JSON field with the text.
    #[arg(long, default_value = "text")]
    text_column: String,
    /// Classification: CSV/TSV column or JSON field with the label.
    #[arg(long, default_value = "label")]
    label_column: String,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Time the reference training step (MiniLM-shaped BERT, 9 labels, batch 16 x 128, AdamW).
    /// The last line printed is `median_s_per_step=<seconds>`.
    Step(BenchStepArgs),
    /// Time NER prediction (sentences/s) of a fine-tuned model on a CoNLL file.
    Predict(BenchPredictArgs),
}

#[derive(Args)]
struct BenchPredictArgs {
    /// A fine-tuned token-classification model (e.g. runs/<name>/best).
    #[arg(long)]
    model: String,
    /// CoNLL file whose sentences are tagged (the tags are ignored).
    #[arg(long)]
    file: PathBuf,
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// How many sentences from the start of the file.
    #[arg(long, default_value_t = 500)]
    sentences: usize,
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct BenchStepArgs {
    /// fp32 or bf16
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// Measured steps (after the warm-up).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum TrainCommand {
    /// Named-entity recognition on CoNLL column files.
    Ner(Box<NerArgs>),
    /// Text classification (one label per text) on .tab, .csv, .tsv or .jsonl files.
    Classify(Box<ClassifyArgs>),
    /// Masked-LM pre-training (optionally with next-sentence prediction) on raw text, of a
    /// new BERT or a checkpoint.
    Mlm(Box<pretrain::MlmArgs>),
    /// Instruction tuning of a LLaMA-family model (LoRA by default, --full for all weights)
    /// on Alpaca, ShareGPT or CSV data.
    Instruct(Box<instruct::InstructArgs>),
    /// Causal-LM (continued) pre-training of a LLaMA-family model on raw text.
    Clm(Box<instruct::ClmArgs>),
}

#[derive(Subcommand)]
enum PredictCommand {
    /// Print the entities found in text (arguments, --file, or stdin) as JSON lines.
    Ner(PredictNerArgs),
    /// Print the label and label probabilities of each text as JSON lines.
    Classify(PredictClassifyArgs),
    /// Print the top-k fills of every [MASK] in each text as JSON lines.
    Mlm(pretrain::PredictMlmArgs),
}

/// Every flag is also a key of the `--config` TOML file (flags win).
#[derive(Args, serde::Serialize)]
// A flag given twice takes its last value, so scripts/demo.sh's defaults can be overridden.
#[command(args_override_self = true)]
struct NerArgs {
    /// A TOML file with any of the keys below.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Model directory in Hugging Face layout, or a hub id in the local HF cache.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    /// Training file (CoNLL columns, tag in the last column).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    train: Option<PathBuf>,
    /// Dev file: evaluated after every epoch, picks the best checkpoint.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    dev: Option<PathBuf>,
    /// Test file: evaluated before and after fine-tuning.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    test: Option<PathBuf>,
    /// Run directory (runs/<name>).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<PathBuf>,
    /// iob1, iob2 or bioes (default: detected from the training file).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tag_scheme: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_train_sentences: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_eval_sentences: Option<usize>,
    /// Hyper-parameters and run options shared by every training task.
    #[command(flatten)]
    #[serde(flatten)]
    training: TrainingFlags,
}

#[derive(Args)]
struct PredictNerArgs {
    /// A fine-tuned model directory (e.g. runs/<name>/best).
    #[arg(long)]
    model: String,
    /// Read texts from this file, one per line.
    #[arg(long)]
    file: Option<PathBuf>,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long)]
    threads: Option<usize>,
    /// Instead of entities, write the input ids, mask and logits as JSON to this file (for
    /// comparing with transformers: scripts/check_hf_logits.py).
    #[arg(long)]
    logits_json: Option<PathBuf>,
    /// Texts to tag; without any (and without --file), lines are read from stdin.
    texts: Vec<String>,
}

/// Training flags shared by every `train` subcommand; each is also a config key.
#[derive(Args, serde::Serialize)]
pub(crate) struct TrainingFlags {
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    epochs: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lr: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_size: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_batch_size: Option<usize>,
    /// Maximum sub-tokens per sentence, [CLS] and [SEP] included.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_len: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    weight_decay: Option<f64>,
    /// Fraction of the optimiser steps used for linear warm-up.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    warmup_ratio: Option<f64>,
    /// constant, linear or cosine decay after warm-up.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    schedule: Option<String>,
    /// Micro-batches per optimiser step.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    gradient_accumulation: Option<usize>,
    /// Clip the global gradient norm to this (0: off).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_grad_norm: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    /// Stop after this many epochs without a better dev score (entity F1, accuracy).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    patience: Option<usize>,
    /// Log the training loss every N optimiser steps.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_every: Option<usize>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    threads: Option<usize>,
    /// fp32 (default) or bf16: matrix products with bf16 operands and f32 sums (weights,
    /// optimiser state and the other ops stay f32); needs AVX512-BF16, else fp32 with a notice.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    precision: Option<String>,
    /// Do not evaluate the fresh model before training.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    skip_baseline: bool,
    /// Continue an interrupted run from <output>/last (weights, optimiser and loop state).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    resume: bool,
    /// Replace a previous run in the output directory (its metrics, reports and checkpoints).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    overwrite: bool,
}

fn train_ner(args: NerArgs) -> Result<()> {
    let overrides = toml::Table::try_from(&args).context("flags")?;
    let config: alpaca_train::NerConfig =
        alpaca_train::config::resolve(args.config.as_deref(), overrides)
            .map_err(anyhow::Error::msg)?;
    let report = alpaca_train::ner::train(&config)?;
    println!("{}", report.to_markdown());
    eprintln!(
        "report: {0}/report.md, {0}/report.json; best model: {0}/best",
        config.output.display()
    );
    Ok(())
}

fn read_texts(args: &PredictNerArgs) -> Result<Vec<String>> {
    read_texts_from(args.file.as_deref(), &args.texts)
}

/// Texts from a file (one per line), else the arguments, else stdin lines.
pub(crate) fn read_texts_from(
    file: Option<&std::path::Path>,
    texts: &[String],
) -> Result<Vec<String>> {
    if let Some(path) = file {
        let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}: not valid UTF-8 (first bad byte at offset {})",
                path.display(),
                e.utf8_error().valid_up_to()
            )
        })?;
        return Ok(text
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .filter(|l| !l.trim().is_empty())
            .collect());
    }
    if !texts.is_empty() {
        return Ok(texts.to_vec());
    }
    let mut input = String::new();
    std::io::stdin()
        .lock()
        .read_to_string(&mut input)
        .context("reading stdin")?;
    Ok(input
        .lines()
        .map(str::to_string)
        .filter(|l| !l.trim().is_empty())
        .collect())
}

fn predict_ner(args: PredictNerArgs) -> Result<()> {
    alpaca_train::threads::set_threads(args.threads);
    let predictor = alpaca_train::ner_predict::NerPredictor::load(&args.model)?;
    let texts = read_texts(&args)?;
    if let Some(path) = &args.logits_json {
        let value = predictor.logits_json(&texts)?;
        alpaca_track::write_json_atomic(path, &value)?;
        return Ok(());
    }
    let results = predictor.predict(&texts, args.batch_size)?;
    for (line, entities) in results.iter().enumerate() {
        for entity in entities {
            let mut value = serde_json::to_value(entity)?;
            value["line"] = serde_json::json!(line + 1);
            println!("{value}");
        }
    }
    Ok(())
}

/// Every flag is also a key of the `--config` TOML file (flags win).
#[derive(Args, serde::Serialize)]
// A flag given twice takes its last value, so scripts/demo.sh's defaults can be overridden.
#[command(args_override_self = true)]
struct ClassifyArgs {
    /// A TOML file with any of the keys below.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Model directory in Hugging Face layout, or a hub id in the local HF cache.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    /// Training file: Orange .tab, .csv, .tsv or .jsonl (format by extension).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    train: Option<PathBuf>,
    /// Dev file: evaluated after every epoch, picks the best checkpoint.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    dev: Option<PathBuf>,
    /// Test file: evaluated before and after fine-tuning.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    test: Option<PathBuf>,
    /// Run directory (runs/<name>).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<PathBuf>,
    /// Column or JSON field holding the text (default "text").
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    text_column: Option<String>,
    /// Column or JSON field holding the label (default "label").
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    label_column: Option<String>,
    /// cls (pooler over [CLS]) or mean (mean of the token states); default: the checkpoint's
    /// classifier_pooling, else cls.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pooling: Option<String>,
    /// balanced: weight each label's loss by n / (labels × its count).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    class_weights: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_train_examples: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_eval_examples: Option<usize>,
    /// Hyper-parameters and run options shared by every training task.
    #[command(flatten)]
    #[serde(flatten)]
    training: TrainingFlags,
}

#[derive(Args)]
struct PredictClassifyArgs {
    /// A fine-tuned model directory (e.g. runs/<name>/best).
    #[arg(long)]
    model: String,
    /// Read texts from this file, one per line.
    #[arg(long)]
    file: Option<PathBuf>,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long)]
    threads: Option<usize>,
    /// Texts to classify; without any (and without --file), lines are read from stdin.
    texts: Vec<String>,
}

fn train_classify(args: ClassifyArgs) -> Result<()> {
    let overrides = toml::Table::try_from(&args).context("flags")?;
    let config: alpaca_train::ClassifyConfig =
        alpaca_train::config::resolve(args.config.as_deref(), overrides)
            .map_err(anyhow::Error::msg)?;
    let report = alpaca_train::classify::train(&config)?;
    println!("{}", report.to_markdown());
    eprintln!(
        "report: {0}/report.md, {0}/report.json; best model: {0}/best",
        config.output.display()
    );
    Ok(())
}

fn predict_classify(args: PredictClassifyArgs) -> Result<()> {
    alpaca_train::threads::set_threads(args.threads);
    let predictor = alpaca_train::classify_predict::ClassifyPredictor::load(&args.model)?;
    let texts = read_texts_from(args.file.as_deref(), &args.texts)?;
    for (line, prediction) in predictor
        .predict(&texts, args.batch_size)?
        .iter()
        .enumerate()
    {
        // Written by hand so the keys keep this order (serde_json maps sort them).
        println!(
            "{{\"line\":{},\"label\":{},\"probabilities\":{}}}",
            line + 1,
            serde_json::to_string(&prediction.label)?,
            serde_json::to_string(&prediction.probabilities)?
        );
    }
    Ok(())
}

fn bench_step(args: BenchStepArgs) -> Result<()> {
    let result = alpaca_train::bench::run_step_bench(&alpaca_train::bench::StepBenchOptions {
        steps: args.steps,
        warmup: args.warmup,
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        threads: args.threads,
        precision: args.precision,
    })?;
    println!("{}", serde_json::to_string(&result)?);
    println!("median_s_per_step={:.4}", result.median_s);
    Ok(())
}

fn bench_predict(args: BenchPredictArgs) -> Result<()> {
    let result = alpaca_train::bench::run_predict_bench(
        &args.model,
        &args.file,
        args.batch_size,
        args.sentences,
        args.threads,
    )?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

fn evaluate(args: EvalArgs) -> Result<()> {
    alpaca_train::threads::set_threads(args.threads);
    let tag_scheme = args
        .tag_scheme
        .as_deref()
        .map(str::parse::<alpaca_eval::scheme::Scheme>)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--tag-scheme: {e}"))?;
    let output = alpaca_train::evaluate::evaluate_saved(&alpaca_train::evaluate::EvalOptions {
        model: args.model,
        data: args.data,
        batch_size: args.batch_size.max(1),
        max_len: args.max_len,
        tag_scheme,
        text_column: args.text_column,
        label_column: args.label_column,
    })?;
    println!("{}", output.text);
    if let Some(path) = &args.json {
        alpaca_track::write_json_atomic(path, &output.json)?;
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    // Every command calls set_threads from this thread.
    alpaca_train::threads::caller_joins_pool();
    let result = match cli.command {
        Command::Train(TrainCommand::Ner(args)) => train_ner(*args),
        Command::Predict(PredictCommand::Ner(args)) => predict_ner(args),
        Command::Train(TrainCommand::Classify(args)) => train_classify(*args),
        Command::Predict(PredictCommand::Classify(args)) => predict_classify(args),
        Command::Train(TrainCommand::Mlm(args)) => pretrain::train_mlm(*args),
        Command::Predict(PredictCommand::Mlm(args)) => pretrain::predict_mlm(args),
        Command::Tokenizer(pretrain::TokenizerCommand::Train(args)) => {
            pretrain::tokenizer_train(args)
        }
        Command::Train(TrainCommand::Instruct(args)) => instruct::train_instruct(*args),
        Command::Train(TrainCommand::Clm(args)) => instruct::train_clm(*args),
        Command::MergeLora(args) => instruct::merge_lora(args),
        Command::Eval(args) => evaluate(args),
        Command::Convert(command) => convert::run(command),
        Command::Generate(args) => generate::generate(*args),
        Command::Chat(args) => generate::chat(*args),
        Command::SelfInstruct(args) => generate::self_instruct(*args),
        Command::Bench(BenchCommand::Step(args)) => bench_step(args),
        Command::Bench(BenchCommand::Predict(args)) => bench_predict(args),
    };
    if let Err(error) = result {
        eprintln!("alpaca: error: {error:#}");
        std::process::exit(1);
    }
}
