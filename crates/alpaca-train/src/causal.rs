//! What causal-LM training shares, for instruction tuning (`train instruct`) and plain
//! language modelling (`train clm`): opening a LLaMA-family model (HF directory or .gguf),
//! batches of (ids, labels), the next-token loss on labelled positions only, held-out loss
//! and perplexity, the epoch loop with full or LoRA training, checkpoints and the report.

use std::path::{Path, PathBuf};

use alpaca_data::batch::{length_grouped_order, sorted_by_length_order};
use alpaca_data::prompt::{ChatTemplate, SpecialTokens};
use alpaca_kernels::Precision;
use alpaca_models::causal_lm::{LlamaForCausalLM, IGNORE_INDEX};
use alpaca_models::lora::{save_adapter, LoraConfig};
use alpaca_models::{Mode, ModelDir, Parameters};
use alpaca_track::progress_bar;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

use crate::epoch::{train_epoch, EpochSettings};
use crate::optimizer::AdamW;
use crate::report::training_section;
use crate::resume::{open_run_dir, starting_state, EpochEnd};
use crate::schedule::{Schedule, ScheduleKind};

/// One training sequence: token ids and, at each position, the id to predict there or −100
/// (labels are not shifted; the loss shifts them, as transformers does).
#[derive(Debug, Clone, PartialEq)]
pub struct CausalExample {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
}

/// A model directory and its tokenizer, opened once; the model is loaded on demand (the
/// report loads it twice: base and tuned).
pub struct CausalSetup {
    /// What the user named (a directory, a hub id or a .gguf file).
    pub name: String,
    pub dir: ModelDir,
    pub tokenizer: Tokenizer,
    /// Where the tokenizer files, chat template and generation config are.
    pub tokenizer_dir: PathBuf,
    pub pad_id: u32,
    pub bos: Option<u32>,
    pub eos: u32,
    seed: u64,
}

/// A .gguf file is converted once into HF layout under ~/.cache/alpaca/gguf and used from
/// there; the cache entry is named by `gguf_cache_name`.
pub fn model_directory(model: &str) -> Result<String> {
    let path = Path::new(model);
    if path.extension().is_none_or(|e| e != "gguf") {
        return Ok(model.to_string());
    }
    let cache = std::env::var_os("ALPACA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/alpaca")
        })
        .join("gguf")
        .join(gguf_cache_name(path)?);
    if !cache.join("model.safetensors").is_file() {
        eprintln!("converting {model} to {}", cache.display());
        alpaca_models::gguf::llama::convert_to_hf_dir(path, &cache)?;
    }
    Ok(cache
        .to_str()
        .context("cache path is not UTF-8")?
        .to_string())
}

/// The cache entry of a .gguf file: its stem and size, then a hash of its absolute path and
/// modification time. Name and size alone are shared by different files (two fine-tunes of
/// one base in the same quantisation, or a file downloaded again over an older one), which
/// would then silently load the other one's conversion; hashing the content instead would
/// read gigabytes at every start. A file changed in place gets a new mtime, so a new entry.
fn gguf_cache_name(path: &Path) -> Result<String> {
    let metadata = std::fs::metadata(path).with_context(|| path.display().to_string())?;
    let absolute = std::fs::canonicalize(path).with_context(|| path.display().to_string())?;
    let modified = metadata
        .modified()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |since| since.as_nanos());
    let mut identity = absolute.to_string_lossy().into_owned().into_bytes();
    identity.extend_from_slice(&modified.to_le_bytes());
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    Ok(format!(
        "{stem}-{}-{:016x}",
        metadata.len(),
        fnv1a(&identity)
    ))
}

/// 64-bit FNV-1a: a stable hash (std's `DefaultHasher` may change between Rust releases,
/// which would orphan every cache entry).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// The special-token strings of tokenizer_config.json (`"<s>"` or `{"content": "<s>"}`).
fn token_text(config: &Value, key: &str) -> Option<String> {
    match &config[key] {
        Value::String(text) => Some(text.clone()),
        Value::Object(map) => map.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// The model's chat template: tokenizer_config.json's `chat_template` or chat_template.jinja.
pub fn chat_template(dir: &Path) -> Result<Option<ChatTemplate>> {
    let config = read_json(&dir.join("tokenizer_config.json")).unwrap_or(Value::Null);
    let source = match config.get("chat_template") {
        Some(Value::String(source)) => Some(source.clone()),
        _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
    };
    Ok(source.map(|source| ChatTemplate {
        source,
        bos_token: token_text(&config, "bos_token").unwrap_or_default(),
        eos_token: token_text(&config, "eos_token").unwrap_or_default(),
    }))
}

impl CausalSetup {
    pub fn open(model: &str, seed: u64) -> Result<Self> {
        let dir = ModelDir::open(&model_directory(model)?)?;
        let path = dir.require("tokenizer.json")?;
        let tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
        let config = dir.config_value()?;
        let tokenizer_config = read_json(&dir.file("tokenizer_config.json")).unwrap_or(Value::Null);
        let id_of = |key: &str| -> Option<u32> {
            config[key]
                .as_u64()
                .map(|id| id as u32)
                .or_else(|| tokenizer.token_to_id(&token_text(&tokenizer_config, key)?))
        };
        let eos = match &config["eos_token_id"] {
            Value::Array(ids) => ids.first().and_then(Value::as_u64).map(|id| id as u32),
            _ => id_of("eos_token_id"),
        }
        .or_else(|| tokenizer.token_to_id(&token_text(&tokenizer_config, "eos_token")?))
        .ok_or_else(|| {
            anyhow!(
                "{}: no eos_token_id in config.json or tokenizer_config.json; the model \
                 cannot be taught where a response ends",
                dir.path.display()
            )
        })?;
        // LLaMA tokenizers that want <s> say so (add_bos_token); SmolLM2's do not.
        let bos = if tokenizer_config["add_bos_token"].as_bool() == Some(true) {
            id_of("bos_token_id")
        } else {
            None
        };
        let pad_id = id_of("pad_token_id").unwrap_or(eos);
        Ok(Self {
            name: model.to_string(),
            tokenizer_dir: dir.path.clone(),
            dir,
            tokenizer,
            pad_id,
            bos,
            eos,
            seed,
        })
    }

    pub fn special_tokens(&self) -> SpecialTokens {
        SpecialTokens {
            bos: self.bos,
            eos: self.eos,
        }
    }

    pub fn load_model(&self) -> Result<LlamaForCausalLM> {
        let (model, report) = LlamaForCausalLM::load(&self.dir, self.seed)?;
        let summary = report.summary();
        if !summary.is_empty() {
            eprintln!("{summary}");
        }
        Ok(model)
    }
}

/// Packs examples greedily, in order, into sequences of at most `max_len` tokens (examples
/// attend to the ones before them in the same sequence, as TRL's packing does).
pub fn pack_examples(examples: Vec<CausalExample>, max_len: usize) -> Vec<CausalExample> {
    let mut packed: Vec<CausalExample> = Vec::new();
    for example in examples {
        match packed.last_mut() {
            Some(last) if last.input_ids.len() + example.input_ids.len() <= max_len => {
                last.input_ids.extend(example.input_ids);
                last.labels.extend(example.labels);
            }
            _ => packed.push(example),
        }
    }
    packed
}

/// A padded batch: ids and mask [b, t], and the flattened positions whose next token has a
/// label, with those labels.
struct CausalBatch {
    ids: Tensor,
    mask: Tensor,
    positions: Tensor,
    targets: Tensor,
    real_tokens: u64,
}

fn causal_batch(examples: &[&CausalExample], pad: u32) -> Result<CausalBatch> {
    let batch = examples.len();
    let length = examples
        .iter()
        .map(|e| e.input_ids.len())
        .max()
        .unwrap_or(0);
    let mut ids = Vec::with_capacity(batch * length);
    let mut mask = Vec::with_capacity(batch * length);
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    for (row, example) in examples.iter().enumerate() {
        let len = example.input_ids.len();
        ids.extend_from_slice(&example.input_ids);
        ids.extend(std::iter::repeat_n(pad, length - len));
        mask.extend(std::iter::repeat_n(1f32, len));
        mask.extend(std::iter::repeat_n(0f32, length - len));
        // Position p predicts token p + 1.
        for p in 0..len.saturating_sub(1) {
            let label = example.labels[p + 1];
            if label != IGNORE_INDEX {
                positions.push((row * length + p) as u32);
                targets.push(label);
            }
        }
    }
    let device = Device::Cpu;
    let count = positions.len();
    Ok(CausalBatch {
        ids: Tensor::from_vec(ids, (batch, length), &device)?,
        mask: Tensor::from_vec(mask, (batch, length), &device)?,
        positions: Tensor::from_vec(positions, count, &device)?,
        targets: Tensor::from_vec(targets, count, &device)?,
        real_tokens: examples.iter().map(|e| e.input_ids.len() as u64).sum(),
    })
}

/// Mean next-token cross-entropy over the labelled positions. The vocabulary projection runs
/// only on those rows: the same loss as transformers' over all positions with −100 elsewhere,
/// without the [b, t, vocab] logits that dominate a small model's step.
fn batch_loss(model: &LlamaForCausalLM, batch: &CausalBatch, mode: Mode) -> Result<Tensor> {
    let hidden = model.model.forward(&batch.ids, Some(&batch.mask), mode)?;
    let (rows, length, size) = hidden.dims3()?;
    let picked = hidden
        .reshape((rows * length, size))?
        .index_select(&batch.positions, 0)?;
    Ok(model.head_loss(&picked, &batch.targets, mode)?)
}

/// Token-weighted mean loss over the examples' labelled tokens, and their count.
pub fn evaluate(
    model: &LlamaForCausalLM,
    examples: &[CausalExample],
    batch_size: usize,
    pad: u32,
) -> Result<(f64, usize)> {
    let lengths: Vec<usize> = examples.iter().map(|e| e.input_ids.len()).collect();
    let order = sorted_by_length_order(&lengths, batch_size);
    let bar = progress_bar(order.len() as u64, "held-out");
    let (mut sum, mut tokens) = (0.0f64, 0usize);
    for indices in &order {
        let rows: Vec<&CausalExample> = indices.iter().map(|&i| &examples[i]).collect();
        let batch = causal_batch(&rows, pad)?;
        let count = batch.targets.dim(0)?;
        if count > 0 {
            let loss = batch_loss(model, &batch, Mode::EVAL)?.to_scalar::<f32>()?;
            sum += loss as f64 * count as f64;
            tokens += count;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((sum / tokens.max(1) as f64, tokens))
}

/// What trains: every weight, or LoRA adapters (their config and parameters).
pub enum Trainable {
    Full,
    Lora(LoraConfig, Parameters),
}

impl Trainable {
    pub fn describe(&self) -> String {
        match self {
            Trainable::Full => "full fine-tuning".into(),
            Trainable::Lora(config, _) => format!(
                "LoRA r {} alpha {} dropout {} on {}",
                config.r,
                config.lora_alpha,
                config.lora_dropout,
                config.target_modules.join(",")
            ),
        }
    }
}

/// Held-out loss and perplexity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LossEvaluation {
    pub loss: f64,
    pub perplexity: f64,
}

impl LossEvaluation {
    pub fn of(loss: f64) -> Self {
        Self {
            loss,
            perplexity: loss.exp(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CausalEpochRecord {
    pub epoch: usize,
    pub steps: u64,
    pub train_loss: f64,
    pub held_out: Option<LossEvaluation>,
    pub seconds: f64,
    pub tokens_per_second: f64,
}

/// The training half of a causal-LM report.
#[derive(Debug, Clone, Serialize)]
pub struct CausalRun {
    pub model: String,
    pub output: String,
    pub training: String,
    pub parameters: usize,
    pub trainable_parameters: usize,
    /// fp32 or bf16 (the frozen weights' products).
    pub precision: String,
    pub threads: usize,
    pub epochs: Vec<CausalEpochRecord>,
    pub best_epoch: Option<usize>,
    pub stopped_early: bool,
    pub held_out_tokens: usize,
    pub before: Option<LossEvaluation>,
    pub after: Option<LossEvaluation>,
    /// Peak resident memory of the process, MB.
    pub peak_rss_mb: f64,
}

impl CausalRun {
    pub fn to_markdown(&self, title: &str) -> String {
        let mut md = format!("# {title}: {}\n\n", self.output);
        md.push_str(&format!(
            "model `{}`, {}: {} of {} parameters trained, {} products, {} threads, peak RSS {:.0} MB\n\n",
            self.model,
            self.training,
            self.trainable_parameters,
            self.parameters,
            self.precision,
            self.threads,
            self.peak_rss_mb
        ));
        let cell = |e: &Option<LossEvaluation>, f: fn(&LossEvaluation) -> f64| {
            e.as_ref()
                .map(|e| format!("{:.4}", f(e)))
                .unwrap_or_else(|| "-".into())
        };
        md.push_str(&format!(
            "## Held-out evaluation ({} tokens)\n\n| metric | before | after |\n|---|---|---|\n\
             | loss | {} | {} |\n| perplexity | {} | {} |\n",
            self.held_out_tokens,
            cell(&self.before, |e| e.loss),
            cell(&self.after, |e| e.loss),
            cell(&self.before, |e| e.perplexity),
            cell(&self.after, |e| e.perplexity),
        ));
        md.push_str(&training_section(
            "held-out loss",
            self.epochs.iter().map(|e| {
                (
                    e.epoch,
                    e.train_loss,
                    e.held_out.as_ref().map(|h| h.loss),
                    e.seconds,
                    e.tokens_per_second,
                )
            }),
            self.best_epoch,
            self.stopped_early,
        ));
        md
    }
}

/// The loop's settings: the keys `train instruct` and `train clm` share, read from either
/// config by name (so the two configs cannot drift apart here).
#[derive(Debug, Clone, Deserialize)]
pub struct LoopSettings {
    pub output: PathBuf,
    pub epochs: usize,
    pub max_steps: Option<usize>,
    /// Peak learning rate; none: 2e-4 for LoRA, 2e-5 for full fine-tuning.
    pub lr: Option<f64>,
    pub full: bool,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub weight_decay: f64,
    pub warmup_ratio: f64,
    pub schedule: ScheduleKind,
    pub gradient_accumulation: usize,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub patience: Option<usize>,
    pub log_every: usize,
    pub skip_baseline: bool,
    pub resume: bool,
    pub overwrite: bool,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub lora_targets: String,
    /// fp32 or bf16 (see [`crate::precision`]).
    pub precision: String,
}

impl LoopSettings {
    pub fn of(config: &impl Serialize) -> Result<Self> {
        let value = serde_json::to_value(config).context("config serialises")?;
        serde_json::from_value(value).context("config lacks a training key")
    }

    pub fn learning_rate(&self) -> f64 {
        self.lr.unwrap_or(if self.full { 2e-5 } else { 2e-4 })
    }

    /// The adapter asked for (`lora_targets` comma-separated), checked.
    pub fn lora(&self) -> Result<LoraConfig> {
        let lora = LoraConfig {
            r: self.lora_r,
            lora_alpha: self.lora_alpha,
            lora_dropout: self.lora_dropout,
            target_modules: self
                .lora_targets
                .split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect(),
        };
        lora.kinds().map_err(anyhow::Error::msg)?;
        Ok(lora)
    }
}

/// Trains `model` (all of it, or the attached adapters) on `train`, evaluating on `held_out`
/// every epoch; keeps the best checkpoint (`best/`: full weights, or the adapter in PEFT's
/// format) and the resumable `last/`. `config` is written to the run directory.
#[allow(clippy::too_many_arguments)]
pub fn train_causal(
    settings: &LoopSettings,
    config: &impl Serialize,
    threads: usize,
    setup: &CausalSetup,
    model: &mut LlamaForCausalLM,
    trainable: &Trainable,
    train: &[CausalExample],
    held_out: &[CausalExample],
) -> Result<CausalRun> {
    if settings.batch_size == 0 || settings.gradient_accumulation == 0 || settings.epochs == 0 {
        bail!("batch_size, gradient_accumulation and epochs must be at least 1");
    }
    let run_dir = &settings.output;
    let precision = crate::precision::apply(&settings.precision)?;
    if matches!(trainable, Trainable::Lora(..)) {
        // The adapters run fused with their frozen base; in bf16 the base converts once
        // instead of at every product.
        let bytes = model.pack_frozen(precision)?;
        if precision == Precision::Bf16 {
            eprintln!(
                "alpaca: frozen weights packed in bf16 for their products ({:.0} MiB)",
                bytes as f64 / (1 << 20) as f64
            );
        }
    }
    let parameters = match trainable {
        Trainable::Full => model.parameters.clone(),
        Trainable::Lora(_, adapters) => adapters.clone(),
    };
    let total_parameters = model.parameters.count()
        + match trainable {
            Trainable::Full => 0,
            Trainable::Lora(_, adapters) => adapters.count(),
        };
    eprintln!(
        "alpaca: {} ({}: {} of {total_parameters} parameters), {precision}, {threads} threads, {}",
        setup.name,
        trainable.describe(),
        parameters.count(),
        alpaca_kernels::cpu_features()
    );
    let mut metrics = open_run_dir(run_dir, config, settings.resume, settings.overwrite)?;
    metrics.log(
        "load",
        json!({"model": setup.name, "training": trainable.describe(),
               "precision": precision.to_string(),
               "trainable_parameters": parameters.count(), "train_examples": train.len(),
               "held_out_examples": held_out.len()}),
    )?;
    let held_out_tokens = held_out
        .iter()
        .map(|e| {
            e.labels
                .iter()
                .skip(1)
                .filter(|&&l| l != IGNORE_INDEX)
                .count()
        })
        .sum();
    let before = if !held_out.is_empty() && !settings.skip_baseline {
        let (loss, _) = evaluate(model, held_out, settings.eval_batch_size, setup.pad_id)?;
        metrics.log(
            "eval",
            json!({"split": "held_out", "stage": "before", "loss": loss,
                                   "perplexity": loss.exp()}),
        )?;
        eprintln!(
            "held-out loss before training {loss:.4} (perplexity {:.2})",
            loss.exp()
        );
        Some(LossEvaluation::of(loss))
    } else {
        None
    };

    let lengths: Vec<usize> = train.iter().map(|e| e.input_ids.len()).collect();
    if settings.max_steps == Some(0) {
        bail!("max_steps must be at least 1");
    }
    let (schedule, epochs) = Schedule::for_steps(
        settings.schedule,
        settings.learning_rate(),
        settings.warmup_ratio,
        train.len().div_ceil(settings.batch_size),
        settings.gradient_accumulation,
        settings.epochs,
        settings.max_steps,
    );
    let total_steps = schedule.total_steps;
    let mut optimizer = AdamW::new(&parameters, settings.weight_decay);
    let mut stopped_early = false;
    let mut state = starting_state::<CausalEpochRecord>(
        settings.resume,
        run_dir,
        &parameters,
        &mut optimizer,
        &mut metrics,
        settings.patience,
    )?;
    let pad = setup.pad_id;
    for epoch in state.epoch + 1..=epochs {
        let mut order =
            length_grouped_order(&lengths, settings.batch_size, settings.seed + epoch as u64);
        let steps_left = total_steps.saturating_sub(optimizer.steps() as usize);
        order.truncate(steps_left * settings.gradient_accumulation);
        if order.is_empty() {
            break;
        }
        let epoch_settings = EpochSettings {
            epoch,
            gradient_accumulation: settings.gradient_accumulation,
            max_grad_norm: settings.max_grad_norm,
            log_every: settings.log_every,
            seed: settings.seed,
        };
        let outcome = train_epoch(
            &mut optimizer,
            &schedule,
            epoch_settings,
            &order,
            &mut state.micro_batch,
            &mut metrics,
            |indices, mode| {
                let rows: Vec<&CausalExample> = indices.iter().map(|&i| &train[i]).collect();
                let batch = causal_batch(&rows, pad)?;
                if batch.targets.dim(0)? == 0 {
                    bail!("a batch without any labelled token (examples {indices:?})");
                }
                Ok((batch_loss(model, &batch, mode)?, batch.real_tokens))
            },
        )?;
        let held_out_evaluation = if held_out.is_empty() {
            None
        } else {
            let (loss, _) = evaluate(model, held_out, settings.eval_batch_size, pad)?;
            metrics.log(
                "eval",
                json!({"split": "held_out", "stage": "epoch", "epoch": epoch,
                                       "loss": loss, "perplexity": loss.exp()}),
            )?;
            Some(LossEvaluation::of(loss))
        };
        eprintln!(
            "epoch {epoch}: train loss {:.4}{} in {:.1}s ({:.0} tokens/s)",
            outcome.train_loss,
            held_out_evaluation
                .as_ref()
                .map(|e| format!(
                    ", held-out loss {:.4} (perplexity {:.2})",
                    e.loss, e.perplexity
                ))
                .unwrap_or_default(),
            outcome.seconds,
            outcome.tokens_per_second
        );
        let score = held_out_evaluation
            .as_ref()
            .map(|e| -e.loss)
            .unwrap_or(epoch as f64);
        let record = CausalEpochRecord {
            epoch,
            steps: optimizer.steps(),
            train_loss: outcome.train_loss,
            held_out: held_out_evaluation,
            seconds: outcome.seconds,
            tokens_per_second: outcome.tokens_per_second,
        };
        let end = EpochEnd {
            epoch,
            record,
            score,
            no_gain: "no lower held-out loss",
            checkpoint: Value::Null,
        };
        let save_best = |best: &Path| -> Result<()> {
            match trainable {
                Trainable::Full => model.save(best, &setup.tokenizer_dir)?,
                Trainable::Lora(config, adapters) => {
                    save_adapter(best, adapters, config, &setup.name)?
                }
            }
            Ok(())
        };
        if state.end_epoch(
            end,
            run_dir,
            &parameters,
            &optimizer,
            &mut metrics,
            save_best,
        )? {
            stopped_early = true;
            break;
        }
    }
    Ok(CausalRun {
        model: setup.name.clone(),
        output: run_dir.display().to_string(),
        training: trainable.describe(),
        parameters: total_parameters,
        trainable_parameters: parameters.count(),
        precision: precision.to_string(),
        threads,
        epochs: state.records,
        best_epoch: state.tracker.best_epoch,
        stopped_early,
        held_out_tokens,
        before,
        after: None,
        peak_rss_mb: crate::bench::peak_rss_mb(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(ids: &[u32], labels: &[i64]) -> CausalExample {
        CausalExample {
            input_ids: ids.to_vec(),
            labels: labels.to_vec(),
        }
    }

    #[test]
    fn gguf_cache_names_tell_apart_files_of_the_same_name_and_size() {
        let root = tempfile::tempdir().unwrap();
        let write = |dir: &str, bytes: &[u8]| {
            let path = root.path().join(dir).join("model.Q4_0.gguf");
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let first = write("a", b"GGUF one");
        let second = write("b", b"GGUF two");
        let name = gguf_cache_name(&first).unwrap();
        assert!(name.starts_with("model.Q4_0-8-"), "{name}");
        assert_eq!(name, gguf_cache_name(&first).unwrap());
        assert_ne!(name, gguf_cache_name(&second).unwrap());
        // The same path written again (a new download) is a new entry.
        let file = std::fs::File::options().write(true).open(&first).unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        file.set_modified(later).unwrap();
        assert_ne!(name, gguf_cache_name(&first).unwrap());
        let missing = gguf_cache_name(&root.path().join("none.gguf")).unwrap_err();
        assert!(format!("{missing:#}").contains("none.gguf"), "{missing:#}");
    }

    #[test]
    fn batch_positions_point_at_tokens_whose_next_token_is_labelled() {
        let a = example(&[5, 6, 7, 8], &[-100, -100, 7, 8]);
        let b = example(&[9, 10], &[-100, 10]);
        let batch = causal_batch(&[&a, &b], 0).unwrap();
        assert_eq!(
            batch.ids.to_vec2::<u32>().unwrap(),
            [[5, 6, 7, 8], [9, 10, 0, 0]]
        );
        // Row 0: positions 1 → 7 and 2 → 8; row 1 (offset 4): position 0 → 10.
        assert_eq!(batch.positions.to_vec1::<u32>().unwrap(), [1, 2, 4]);
        assert_eq!(batch.targets.to_vec1::<i64>().unwrap(), [7, 8, 10]);
        assert_eq!(batch.real_tokens, 6);
    }

    #[test]
    fn packing_fills_sequences_in_order() {
        let examples = vec![
            example(&[1, 2], &[1, 2]),
            example(&[3, 4, 5], &[3, 4, 5]),
            example(&[6, 7, 8], &[6, 7, 8]),
        ];
        let packed = pack_examples(examples, 5);
        assert_eq!(packed.len(), 2);
        assert_eq!(packed[0].input_ids, [1, 2, 3, 4, 5]);
        assert_eq!(packed[1].labels, [6, 7, 8]);
    }
}
