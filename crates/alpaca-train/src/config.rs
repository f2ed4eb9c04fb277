//! Run configuration: defaults, overridden by a `--config run.toml`, overridden by flags.
//! The resolved config is saved in the run directory as `config.toml`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::schedule::ScheduleKind;

fn default_epochs() -> usize {
    3
}
fn default_lr() -> f64 {
    5e-5
}
fn default_batch() -> usize {
    16
}
fn default_max_len() -> usize {
    128
}
fn default_weight_decay() -> f64 {
    0.01
}
fn default_warmup() -> f64 {
    0.1
}
fn default_one() -> usize {
    1
}
fn default_clip() -> f64 {
    1.0
}
fn default_seed() -> u64 {
    42
}
fn default_eval_batch() -> usize {
    64
}
fn default_log_every() -> usize {
    20
}
fn default_schedule() -> ScheduleKind {
    ScheduleKind::Linear
}

/// Everything `alpaca train ner` needs. Field names are the config keys and the flag names
/// (`batch_size` ↔ `--batch-size`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NerConfig {
    /// A model directory in HF layout or a hub id in the local HF cache.
    pub model: String,
    pub train: PathBuf,
    pub dev: Option<PathBuf>,
    pub test: Option<PathBuf>,
    /// The run directory (`runs/<name>`).
    pub output: PathBuf,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Fraction of all optimiser steps spent warming up linearly from 0.
    #[serde(default = "default_warmup")]
    pub warmup_ratio: f64,
    #[serde(default = "default_schedule")]
    pub schedule: ScheduleKind,
    #[serde(default = "default_one")]
    pub gradient_accumulation: usize,
    /// Global-norm clipping; 0 turns it off.
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Stop after this many epochs without a better dev entity F1 (none: never stop early).
    #[serde(default)]
    pub patience: Option<usize>,
    /// iob1, iob2 or bioes; detected from the training file when absent.
    #[serde(default)]
    pub tag_scheme: Option<alpaca_eval::scheme::Scheme>,
    /// Use only the first N training sentences (quick experiments, tests).
    #[serde(default)]
    pub max_train_sentences: Option<usize>,
    /// Use only the first N dev/test sentences.
    #[serde(default)]
    pub max_eval_sentences: Option<usize>,
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Worker threads (default: all cores).
    #[serde(default)]
    pub threads: Option<usize>,
    /// fp32, or bf16: the linear layers' products in bf16 with f32 sums (weights, optimiser
    /// state and the other ops stay f32).
    #[serde(default = "default_precision")]
    pub precision: String,
    /// Skip the evaluation of the fresh model before training.
    #[serde(default)]
    pub skip_baseline: bool,
    /// Continue from `<output>/last` (weights, optimiser, loop state) when it exists.
    #[serde(default)]
    pub resume: bool,
    /// Replace a previous run in `output` (its metrics, reports and checkpoints).
    #[serde(default)]
    pub overwrite: bool,
}

fn default_text_column() -> String {
    "text".into()
}
fn default_label_column() -> String {
    "label".into()
}

/// Everything `alpaca train classify` needs; the keys shared with [`NerConfig`] mean the same.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyConfig {
    /// A model directory in HF layout or a hub id in the local HF cache.
    pub model: String,
    /// Orange .tab, .csv, .tsv or .jsonl files (format by extension).
    pub train: PathBuf,
    pub dev: Option<PathBuf>,
    pub test: Option<PathBuf>,
    /// The run directory (`runs/<name>`).
    pub output: PathBuf,
    /// The CSV/TSV column or JSON field holding the text (.tab: the named column, else the
    /// first string column).
    #[serde(default = "default_text_column")]
    pub text_column: String,
    /// The CSV/TSV column or JSON field holding the label (.tab: the named column, else the
    /// one flagged `class`).
    #[serde(default = "default_label_column")]
    pub label_column: String,
    /// cls (the pooler over [CLS]) or mean (mean of the token states); default: the
    /// checkpoint's `classifier_pooling`, else cls.
    #[serde(default)]
    pub pooling: Option<String>,
    /// "balanced": weight each label's loss by n / (labels × its count), as scikit-learn's
    /// class_weight="balanced" (for skewed label sets).
    #[serde(default)]
    pub class_weights: Option<String>,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    /// Sub-tokens per text incl. [CLS] and [SEP]; longer texts are cut at the end.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "default_warmup")]
    pub warmup_ratio: f64,
    #[serde(default = "default_schedule")]
    pub schedule: ScheduleKind,
    #[serde(default = "default_one")]
    pub gradient_accumulation: usize,
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Stop after this many epochs without a better dev accuracy (none: never stop early).
    #[serde(default)]
    pub patience: Option<usize>,
    /// Use only the first N training examples.
    #[serde(default)]
    pub max_train_examples: Option<usize>,
    /// Use only the first N dev/test examples.
    #[serde(default)]
    pub max_eval_examples: Option<usize>,
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    #[serde(default)]
    pub threads: Option<usize>,
    /// fp32, or bf16: the linear layers' products in bf16 with f32 sums (weights, optimiser
    /// state and the other ops stay f32).
    #[serde(default = "default_precision")]
    pub precision: String,
    #[serde(default)]
    pub skip_baseline: bool,
    /// Continue from `<output>/last` (weights, optimiser, loop state) when it exists.
    #[serde(default)]
    pub resume: bool,
    /// Replace a previous run in `output` (its metrics, reports and checkpoints).
    #[serde(default)]
    pub overwrite: bool,
}

fn default_pretraining_epochs() -> usize {
    1
}
fn default_pretraining_lr() -> f64 {
    1e-4
}
fn default_pretraining_batch() -> usize {
    32
}
fn default_mlm_probability() -> f64 {
    0.15
}
fn default_validation_split() -> f64 {
    0.05
}
fn default_positions() -> usize {
    512
}
fn default_dropout() -> f64 {
    0.1
}
fn default_type_vocab() -> usize {
    2
}

/// The size of a BERT built from scratch (the `[bert]` table of the run config); the
/// vocabulary size comes from the tokenizer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BertSize {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
}

/// Everything `alpaca train mlm` needs; the keys shared with [`NerConfig`] mean the same.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlmConfig {
    /// Continue pre-training this checkpoint (HF layout). Without it a new BERT is built from
    /// `[bert]` and `tokenizer`.
    #[serde(default)]
    pub model: Option<String>,
    /// A directory holding tokenizer.json (from `alpaca tokenizer train`), for a new BERT.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    #[serde(default)]
    pub bert: Option<BertSize>,
    /// Plain text, JSON or JSONL files, or directories of them.
    pub corpus: Vec<PathBuf>,
    /// Held-out text; without it `validation_split` of the corpus documents is held out.
    #[serde(default)]
    pub dev: Vec<PathBuf>,
    #[serde(default = "default_validation_split")]
    pub validation_split: f64,
    /// The JSON field holding a document's text.
    #[serde(default = "default_text_column")]
    pub text_field: String,
    pub output: PathBuf,
    /// Add next-sentence prediction (BertForPreTraining).
    #[serde(default)]
    pub nsp: bool,
    /// Mask whole words rather than single sub-tokens.
    #[serde(default)]
    pub whole_word_mask: bool,
    #[serde(default = "default_mlm_probability")]
    pub mlm_probability: f64,
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// Use only the first N documents (quick experiments, tests).
    #[serde(default)]
    pub max_documents: Option<usize>,
    #[serde(default = "default_pretraining_epochs")]
    pub epochs: usize,
    /// Stop after this many optimiser steps (the schedule spans them); overrides `epochs`.
    #[serde(default)]
    pub max_steps: Option<usize>,
    #[serde(default = "default_pretraining_lr")]
    pub lr: f64,
    #[serde(default = "default_pretraining_batch")]
    pub batch_size: usize,
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "default_warmup")]
    pub warmup_ratio: f64,
    #[serde(default = "default_schedule")]
    pub schedule: ScheduleKind,
    #[serde(default = "default_one")]
    pub gradient_accumulation: usize,
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Stop after this many epochs without a lower held-out loss.
    #[serde(default)]
    pub patience: Option<usize>,
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    #[serde(default)]
    pub threads: Option<usize>,
    /// fp32, or bf16: the linear layers' products in bf16 with f32 sums (weights, optimiser
    /// state and the other ops stay f32).
    #[serde(default = "default_precision")]
    pub precision: String,
    #[serde(default)]
    pub skip_baseline: bool,
    #[serde(default)]
    pub resume: bool,
    #[serde(default)]
    pub overwrite: bool,
}

fn default_instruct_max_len() -> usize {
    512
}
fn default_instruct_batch() -> usize {
    8
}
fn default_instruct_warmup() -> f64 {
    0.03
}
fn default_cosine() -> ScheduleKind {
    ScheduleKind::Cosine
}
fn default_template() -> String {
    "alpaca".into()
}
fn default_on_error() -> String {
    "skip".into()
}
fn default_lora_r() -> usize {
    8
}
fn default_lora_alpha() -> f64 {
    16.0
}
fn default_lora_dropout() -> f64 {
    0.05
}
fn default_lora_targets() -> String {
    "q_proj,v_proj".into()
}
fn default_precision() -> String {
    "fp32".into()
}
fn default_report_tokens() -> usize {
    64
}

/// Everything `alpaca train instruct` (and `train clm`) needs; the keys shared with
/// [`NerConfig`] mean the same.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstructConfig {
    /// A LLaMA-family model: a directory in HF layout or a .gguf file.
    pub model: String,
    /// Alpaca JSON/JSONL, ShareGPT JSON/JSONL or CSV pairs.
    pub data: PathBuf,
    /// Held-out examples; without it `validation_split` of `data` is held out.
    #[serde(default)]
    pub dev: Option<PathBuf>,
    #[serde(default = "default_validation_split")]
    pub validation_split: f64,
    /// alpaca (Stanford's prompts) or chat (the model's chat template).
    #[serde(default = "default_template")]
    pub template: String,
    /// With two-column CSV data: this instruction for every row, the first column its input.
    #[serde(default)]
    pub csv_instruction: Option<String>,
    /// What to do with records that cannot be used: skip (and report them) or fail.
    #[serde(default = "default_on_error")]
    pub on_error: String,
    /// Compute the loss on prompts too, not only on responses.
    #[serde(default)]
    pub train_on_inputs: bool,
    /// Pack several short examples into one sequence of up to max_len tokens.
    #[serde(default)]
    pub packing: bool,
    #[serde(default = "default_instruct_max_len")]
    pub max_len: usize,
    /// Train every weight instead of LoRA adapters.
    #[serde(default)]
    pub full: bool,
    #[serde(default = "default_lora_r")]
    pub lora_r: usize,
    #[serde(default = "default_lora_alpha")]
    pub lora_alpha: f64,
    #[serde(default = "default_lora_dropout")]
    pub lora_dropout: f64,
    /// Comma-separated projections (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
    /// down_proj) or all-linear.
    #[serde(default = "default_lora_targets")]
    pub lora_targets: String,
    /// fp32, or bf16: the frozen base weights' products (LoRA) in bf16 with f32 sums.
    #[serde(default = "default_precision")]
    pub precision: String,
    pub output: PathBuf,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Stop after this many optimiser steps (the schedule spans them); overrides `epochs`.
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Peak learning rate (default 2e-4 with LoRA, 2e-5 with --full).
    #[serde(default)]
    pub lr: Option<f64>,
    #[serde(default = "default_instruct_batch")]
    pub batch_size: usize,
    #[serde(default = "default_instruct_batch")]
    pub eval_batch_size: usize,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "default_instruct_warmup")]
    pub warmup_ratio: f64,
    #[serde(default = "default_cosine")]
    pub schedule: ScheduleKind,
    #[serde(default = "default_one")]
    pub gradient_accumulation: usize,
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Stop after this many epochs without a lower held-out loss.
    #[serde(default)]
    pub patience: Option<usize>,
    #[serde(default)]
    pub max_train_examples: Option<usize>,
    #[serde(default)]
    pub max_eval_examples: Option<usize>,
    /// Prompts (one per line) whose responses the report shows before and after; default:
    /// the first three held-out instructions.
    #[serde(default)]
    pub report_prompts: Option<PathBuf>,
    /// New tokens per report response (greedy).
    #[serde(default = "default_report_tokens")]
    pub report_max_new_tokens: usize,
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    #[serde(default)]
    pub threads: Option<usize>,
    #[serde(default)]
    pub skip_baseline: bool,
    #[serde(default)]
    pub resume: bool,
    #[serde(default)]
    pub overwrite: bool,
}

fn default_clm_max_len() -> usize {
    256
}

/// Everything `alpaca train clm` needs: causal-LM (continued) pre-training of a LLaMA-family
/// model on raw text; the keys shared with [`InstructConfig`] mean the same.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClmConfig {
    /// A LLaMA-family model: a directory in HF layout or a .gguf file.
    pub model: String,
    /// Plain text, JSON or JSONL files, or directories of them.
    pub corpus: Vec<PathBuf>,
    /// Held-out text; without it `validation_split` of the corpus documents is held out.
    #[serde(default)]
    pub dev: Vec<PathBuf>,
    #[serde(default = "default_validation_split")]
    pub validation_split: f64,
    #[serde(default = "default_text_column")]
    pub text_field: String,
    /// Tokens per training block (each document's tokens, EOS-terminated, cut into blocks).
    #[serde(default = "default_clm_max_len")]
    pub max_len: usize,
    #[serde(default)]
    pub max_documents: Option<usize>,
    #[serde(default)]
    pub full: bool,
    #[serde(default = "default_lora_r")]
    pub lora_r: usize,
    #[serde(default = "default_lora_alpha")]
    pub lora_alpha: f64,
    #[serde(default = "default_lora_dropout")]
    pub lora_dropout: f64,
    #[serde(default = "default_lora_targets")]
    pub lora_targets: String,
    /// fp32, or bf16: the frozen base weights' products (LoRA) in bf16 with f32 sums.
    #[serde(default = "default_precision")]
    pub precision: String,
    pub output: PathBuf,
    #[serde(default = "default_pretraining_epochs")]
    pub epochs: usize,
    #[serde(default)]
    pub max_steps: Option<usize>,
    #[serde(default)]
    pub lr: Option<f64>,
    #[serde(default = "default_instruct_batch")]
    pub batch_size: usize,
    #[serde(default = "default_instruct_batch")]
    pub eval_batch_size: usize,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "default_instruct_warmup")]
    pub warmup_ratio: f64,
    #[serde(default = "default_cosine")]
    pub schedule: ScheduleKind,
    #[serde(default = "default_one")]
    pub gradient_accumulation: usize,
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub patience: Option<usize>,
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    #[serde(default)]
    pub threads: Option<usize>,
    #[serde(default)]
    pub skip_baseline: bool,
    #[serde(default)]
    pub resume: bool,
    #[serde(default)]
    pub overwrite: bool,
}

/// Merges `overrides` (flag values) onto the TOML file at `config_file`, then reads the
/// result as a config. Errors name the file and the key.
pub fn resolve<T: for<'de> Deserialize<'de>>(
    config_file: Option<&Path>,
    overrides: toml::Table,
) -> Result<T, String> {
    let mut table = match config_file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            text.parse::<toml::Table>()
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => toml::Table::new(),
    };
    for (key, value) in overrides {
        table.insert(key, value);
    }
    let origin = config_file
        .map(|p| format!("{} and flags", p.display()))
        .unwrap_or_else(|| "flags".into());
    T::deserialize(toml::Value::Table(table)).map_err(|e| format!("config ({origin}): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run.toml");
        std::fs::write(
            &file,
            "model = \"m\"\ntrain = \"t.txt\"\noutput = \"runs/x\"\nepochs = 7\nlr = 1e-4\n",
        )
        .unwrap();
        let mut flags = toml::Table::new();
        flags.insert("epochs".into(), toml::Value::Integer(2));
        let config: NerConfig = resolve(Some(&file), flags).unwrap();
        assert_eq!(config.epochs, 2);
        assert_eq!(config.lr, 1e-4);
        assert_eq!(config.batch_size, 16);
    }

    #[test]
    fn unknown_and_missing_keys_are_named() {
        let mut flags = toml::Table::new();
        flags.insert("model".into(), "m".into());
        flags.insert("train".into(), "t".into());
        flags.insert("output".into(), "o".into());
        flags.insert("epochz".into(), toml::Value::Integer(2));
        let error = resolve::<NerConfig>(None, flags).unwrap_err();
        assert!(error.contains("epochz"), "{error}");
        let error = resolve::<NerConfig>(None, toml::Table::new()).unwrap_err();
        assert!(error.contains("model"), "{error}");
    }
}
