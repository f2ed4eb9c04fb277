//! Masked-LM pre-training (with next-sentence prediction on request) of a new BERT or of a
//! checkpoint, on raw text. The loop is the one every task shares (`train_epoch`); this module
//! supplies the data (blocks or NSP pairs, masked anew every epoch), the loss and the
//! held-out evaluation: masked-LM loss, perplexity, masked-token accuracy, NSP accuracy.

use std::path::{Path, PathBuf};

use alpaca_data::align::{Encoded, IGNORE_INDEX};
use alpaca_data::batch::{collate, length_grouped_order, sequential_order, Batch};
use alpaca_data::corpus::{read_corpus, Corpus, Document};
use alpaca_data::pretraining::{
    mask_tokens, nsp_pairs, pack_blocks, tokenize_documents, Instance, MaskingSpec, SpecialIds,
    TokenizedDocument,
};
use alpaca_models::masked_lm::PreTrainingOutput;
use alpaca_models::{BertConfig, BertForPreTraining, Mode, ModelDir};
use alpaca_track::{progress_bar, write_atomic, write_json_atomic, MetricsLog};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{json, Value};
use tokenizers::Tokenizer;

use crate::config::MlmConfig;
use crate::epoch::{train_epoch, EpochSettings};
use crate::inputs::{batch_tensors, load_tokenizer, pad_id};
use crate::mlm_report::{CorpusSummary, MlmEpochRecord, MlmEvaluation, MlmReport};
use crate::optimizer::AdamW;
use crate::resume::{check_run_dir, open_run_dir, starting_state, EpochEnd};
use crate::schedule::Schedule;

/// Masked examples ready to batch, with their NSP labels.
struct Examples {
    encoded: Vec<Encoded>,
    next_sentence: Vec<Option<i64>>,
}

impl Examples {
    fn mask(instances: &[Instance], spec: &MaskingSpec, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        Examples {
            encoded: instances
                .iter()
                .map(|i| mask_tokens(i, spec, &mut rng))
                .collect(),
            next_sentence: instances.iter().map(|i| i.next_sentence).collect(),
        }
    }

    fn lengths(&self) -> Vec<usize> {
        self.encoded.iter().map(Encoded::len).collect()
    }
}

/// Mixes the run seed with a purpose and a number, so that each epoch's pairs and masks
/// differ and a resumed run redraws exactly what the uninterrupted one would have.
fn derived_seed(seed: u64, purpose: u64, number: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ purpose.wrapping_mul(0xD1B5_4A32_D192_ED03)
        ^ number.wrapping_mul(0x94D0_49BB_1331_11EB)
}

const PAIRS: u64 = 1;
const MASKS: u64 = 2;
const HELD_OUT: u64 = 3;

/// The batch's tensors plus the masked-LM target positions (into the flattened [b·t]
/// tokens), their target ids, and the NSP labels.
struct PreTrainingBatch {
    ids: Tensor,
    types: Tensor,
    mask: Tensor,
    positions: Tensor,
    targets: Tensor,
    next_sentence: Option<Tensor>,
    real_tokens: u64,
}

fn pretraining_batch(batch: &Batch, next_sentence: &[Option<i64>]) -> Result<PreTrainingBatch> {
    let (ids, types, mask, _) = batch_tensors(batch)?;
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    for (position, &label) in batch.labels.iter().enumerate() {
        if label != IGNORE_INDEX {
            positions.push(position as u32);
            targets.push(label);
        }
    }
    let labels: Option<Vec<i64>> = batch.indices.iter().map(|&i| next_sentence[i]).collect();
    let count = positions.len();
    Ok(PreTrainingBatch {
        ids,
        types,
        mask,
        positions: Tensor::from_vec(positions, count, &Device::Cpu)?,
        targets: Tensor::from_vec(targets, count, &Device::Cpu)?,
        next_sentence: labels
            .map(|l| Tensor::from_vec(l, batch.batch_size, &Device::Cpu))
            .transpose()?,
        real_tokens: batch.attention_mask.iter().map(|&m| m as u64).sum(),
    })
}

/// The loss BertForPreTraining trains on: masked-LM cross-entropy plus NSP cross-entropy.
fn pretraining_loss(output: &PreTrainingOutput, batch: &PreTrainingBatch) -> Result<Tensor> {
    let masked_lm =
        alpaca_kernels::cross_entropy(&output.masked_lm_logits, &batch.targets, IGNORE_INDEX)?;
    Ok(match (&output.next_sentence_logits, &batch.next_sentence) {
        (Some(logits), Some(labels)) => {
            (masked_lm + alpaca_kernels::cross_entropy(logits, labels, IGNORE_INDEX)?)?
        }
        _ => masked_lm,
    })
}

fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(1)?.to_vec1::<u32>()?)
}

/// Held-out loss (token-weighted over masked tokens), perplexity and accuracies.
fn evaluate(
    model: &BertForPreTraining,
    examples: &Examples,
    batch_size: usize,
    pad: u32,
    title: &str,
) -> Result<MlmEvaluation> {
    let order = sequential_order(examples.encoded.len(), batch_size);
    let bar = progress_bar(order.len() as u64, title);
    let (mut loss_sum, mut correct, mut tokens) = (0.0f64, 0usize, 0usize);
    let (mut nsp_loss_sum, mut nsp_correct, mut pairs) = (0.0f64, 0usize, 0usize);
    for indices in &order {
        let rows: Vec<&Encoded> = indices.iter().map(|&i| &examples.encoded[i]).collect();
        let batch = pretraining_batch(&collate(&rows, indices, pad), &examples.next_sentence)?;
        let output = model.forward(
            &batch.ids,
            &batch.types,
            &batch.mask,
            &batch.positions,
            Mode::EVAL,
        )?;
        let count = batch.targets.dim(0)?;
        let loss =
            alpaca_kernels::cross_entropy(&output.masked_lm_logits, &batch.targets, IGNORE_INDEX)?
                .to_scalar::<f32>()?;
        loss_sum += loss as f64 * count as f64;
        tokens += count;
        let predicted = argmax_rows(&output.masked_lm_logits)?;
        let gold = batch.targets.to_vec1::<i64>()?;
        correct += predicted
            .iter()
            .zip(&gold)
            .filter(|(p, g)| **p as i64 == **g)
            .count();
        if let (Some(logits), Some(labels)) = (&output.next_sentence_logits, &batch.next_sentence) {
            let loss =
                alpaca_kernels::cross_entropy(logits, labels, IGNORE_INDEX)?.to_scalar::<f32>()?;
            let rows = labels.dim(0)?;
            nsp_loss_sum += loss as f64 * rows as f64;
            pairs += rows;
            let predicted = argmax_rows(logits)?;
            nsp_correct += predicted
                .iter()
                .zip(labels.to_vec1::<i64>()?)
                .filter(|(p, g)| **p as i64 == *g)
                .count();
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let loss = loss_sum / tokens.max(1) as f64;
    Ok(MlmEvaluation {
        loss,
        perplexity: loss.exp(),
        accuracy: correct as f64 / tokens.max(1) as f64,
        masked_tokens: tokens,
        examples: examples.encoded.len(),
        next_sentence_loss: (pairs > 0).then(|| nsp_loss_sum / pairs as f64),
        next_sentence_accuracy: (pairs > 0).then(|| nsp_correct as f64 / pairs as f64),
    })
}

/// The model to train and where its tokenizer files live.
fn model_and_tokenizer(
    config: &MlmConfig,
) -> Result<(BertForPreTraining, Tokenizer, PathBuf, String, String)> {
    if let Some(model) = &config.model {
        let dir = ModelDir::open(model)?;
        let (model, report) = BertForPreTraining::load(&dir, config.nsp, config.seed)?;
        let tokenizer = load_tokenizer(&dir, model.bert.config.vocab_size)?;
        return Ok((
            model,
            tokenizer,
            dir.path.clone(),
            dir.path.display().to_string(),
            report.summary(),
        ));
    }
    let (Some(tokenizer_dir), Some(size)) = (&config.tokenizer, &config.bert) else {
        unreachable!("check_config requires a tokenizer and [bert] without a model");
    };
    let path = tokenizer_dir.join("tokenizer.json");
    let mut tokenizer = Tokenizer::from_file(&path)
        .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
    alpaca_data::align::prepare_tokenizer(&mut tokenizer)?;
    if size.max_position_embeddings < config.max_len {
        bail!(
            "[bert] max_position_embeddings {} is below max_len {}",
            size.max_position_embeddings,
            config.max_len
        );
    }
    let mut bert = serde_json::to_value(size).expect("sizes serialise");
    bert["vocab_size"] = json!(tokenizer.get_vocab_size(true));
    bert["pad_token_id"] = json!(pad_id(&tokenizer));
    let bert: BertConfig = serde_json::from_value(bert).context("[bert]")?;
    bert.validate()
        .map_err(|message| anyhow!("[bert]: {message}"))?;
    let description = format!(
        "new BERT: {} layers, hidden {}, {} heads, ffn {}, vocab {}",
        bert.num_hidden_layers,
        bert.hidden_size,
        bert.num_attention_heads,
        bert.intermediate_size,
        bert.vocab_size
    );
    let model = BertForPreTraining::new_random(bert, config.nsp, config.seed)?;
    Ok((
        model,
        tokenizer,
        tokenizer_dir.clone(),
        description,
        String::new(),
    ))
}

/// Reads the corpus (and the held-out text) and holds out documents: the `dev` files when
/// given, else a seeded `validation_split` share of the corpus documents.
fn read_documents(config: &MlmConfig) -> Result<(Corpus, Vec<Document>, Vec<Document>)> {
    if config.corpus.is_empty() {
        bail!("no corpus: give one or more files or directories of text");
    }
    let mut corpus = read_corpus(&config.corpus, &config.text_field).context("corpus")?;
    if let Some(limit) = config.max_documents {
        corpus.documents.truncate(limit);
    }
    let mut documents = corpus.documents.clone();
    if !config.dev.is_empty() {
        let dev = read_corpus(&config.dev, &config.text_field).context("dev corpus")?;
        return Ok((corpus, documents, dev.documents));
    }
    if config.validation_split <= 0.0 {
        return Ok((corpus, documents, Vec::new()));
    }
    let held = ((documents.len() as f64 * config.validation_split).ceil() as usize).max(1);
    if held >= documents.len() {
        bail!(
            "the corpus has {} document(s): too few to hold out {:.0}% for evaluation; pass \
             --dev FILES or --validation-split 0",
            documents.len(),
            config.validation_split * 100.0
        );
    }
    documents.shuffle(&mut StdRng::seed_from_u64(derived_seed(
        config.seed,
        HELD_OUT,
        0,
    )));
    let held_out = documents.split_off(documents.len() - held);
    Ok((corpus, documents, held_out))
}

fn instances(
    documents: &[TokenizedDocument],
    config: &MlmConfig,
    special: SpecialIds,
    seed: u64,
) -> Vec<Instance> {
    if config.nsp {
        nsp_pairs(
            documents,
            config.max_len,
            special,
            &mut StdRng::seed_from_u64(seed),
        )
    } else {
        pack_blocks(documents, config.max_len, special)
    }
}

fn check_config(config: &MlmConfig) -> Result<()> {
    if config.batch_size == 0 || config.gradient_accumulation == 0 || config.epochs == 0 {
        bail!("batch_size, gradient_accumulation and epochs must be at least 1");
    }
    if !(config.mlm_probability > 0.0 && config.mlm_probability < 1.0) {
        bail!(
            "mlm_probability must be between 0 and 1, not {}",
            config.mlm_probability
        );
    }
    if !(0.0..1.0).contains(&config.validation_split) {
        bail!(
            "validation_split must be in [0, 1), not {}",
            config.validation_split
        );
    }
    if config.max_len < 8 {
        bail!("max_len must be at least 8");
    }
    if config.max_steps == Some(0) {
        bail!("max_steps must be at least 1");
    }
    match (&config.model, &config.tokenizer, &config.bert) {
        (Some(model), _, Some(_)) => {
            bail!("[bert] sizes a new model; it cannot apply to --model {model}")
        }
        (Some(_), _, _) | (None, Some(_), Some(_)) => Ok(()),
        _ => bail!(
            "say what to pre-train: --model DIR to continue a checkpoint, or a [bert] table \
             (hidden_size, num_hidden_layers, num_attention_heads, intermediate_size) in \
             --config plus --tokenizer DIR (from `alpaca tokenizer train`) for a new BERT"
        ),
    }
}

/// Pre-trains, evaluates on held-out text and writes the run directory. Returns the report
/// (also printed by the CLI).
pub fn train(config: &MlmConfig) -> Result<MlmReport> {
    let threads = crate::threads::set_threads(config.threads);
    let precision = crate::precision::apply(&config.precision)?;
    check_config(config)?;
    let run = &config.output;
    check_run_dir(run, config.resume, config.overwrite)?;

    let (corpus, train_documents, held_out_documents) = read_documents(config)?;
    let (mut model, tokenizer, tokenizer_dir, description, load_summary) =
        model_and_tokenizer(config)?;
    if config.max_len > model.bert.config.max_position_embeddings {
        bail!(
            "max_len {} exceeds the model's max_position_embeddings {}",
            config.max_len,
            model.bert.config.max_position_embeddings
        );
    }
    let special = SpecialIds::of(&tokenizer)?;
    let pad = pad_id(&tokenizer);
    let masking = MaskingSpec {
        probability: config.mlm_probability,
        whole_word: config.whole_word_mask,
        mask_id: special.mask,
        vocab_size: tokenizer.get_vocab_size(true) as u32,
    };
    eprintln!(
        "alpaca: {description} ({} parameters, {}), {precision}, {threads} threads, {}",
        model.parameters.count(),
        model.architecture(),
        alpaca_kernels::cpu_features()
    );
    if !load_summary.is_empty() {
        eprintln!("{load_summary}");
    }

    let train_tokens = tokenize_documents(&tokenizer, &train_documents)?;
    let held_out_tokens = tokenize_documents(&tokenizer, &held_out_documents)?;
    let token_count: usize = train_tokens.iter().flatten().map(|s| s.len()).sum();
    let first_instances = instances(
        &train_tokens,
        config,
        special,
        derived_seed(config.seed, PAIRS, 1),
    );
    if first_instances.is_empty() {
        bail!("the corpus gives no training examples (no tokens after tokenization)");
    }
    // Held-out pairs and masks are drawn once, so every epoch is scored on the same targets.
    let held_out = Examples::mask(
        &instances(
            &held_out_tokens,
            config,
            special,
            derived_seed(config.seed, HELD_OUT, 1),
        ),
        &masking,
        derived_seed(config.seed, HELD_OUT, 2),
    );
    let summary = CorpusSummary {
        files: corpus.files,
        documents: corpus.documents.len(),
        empty_documents: corpus.empty_documents,
        held_out_documents: held_out_documents.len(),
        train_tokens: token_count,
        train_examples: first_instances.len(),
        held_out_examples: held_out.encoded.len(),
    };
    eprintln!(
        "corpus: {} documents ({} held out), {} training tokens in {} examples of up to {} tokens",
        summary.documents,
        summary.held_out_documents,
        summary.train_tokens,
        summary.train_examples,
        config.max_len
    );

    let mut metrics = open_run_dir(run, config, config.resume, config.overwrite)?;
    metrics.log(
        "load",
        json!({"model": description, "architecture": model.architecture(), "corpus": summary}),
    )?;

    let has_held_out = !held_out.encoded.is_empty();
    let before = if has_held_out && !config.skip_baseline {
        let evaluation = evaluate(
            &model,
            &held_out,
            config.eval_batch_size,
            pad,
            "held-out before",
        )?;
        log_evaluation(&mut metrics, "before", 0, &evaluation)?;
        Some(evaluation)
    } else {
        None
    };

    // The schedule spans `max_steps`, or every epoch's steps (NSP epochs differ slightly in
    // size; the first epoch's count stands for all).
    let (schedule, epochs) = Schedule::for_steps(
        config.schedule,
        config.lr,
        config.warmup_ratio,
        first_instances.len().div_ceil(config.batch_size),
        config.gradient_accumulation,
        config.epochs,
        config.max_steps,
    );
    let total_steps = schedule.total_steps;
    let mut optimizer = AdamW::new(&model.parameters, config.weight_decay);
    let best_dir = run.join("best");
    let mut stopped_early = false;
    let mut state = starting_state::<MlmEpochRecord>(
        config.resume,
        run,
        &model.parameters,
        &mut optimizer,
        &mut metrics,
        config.patience,
    )?;

    for epoch in state.epoch + 1..=epochs {
        let epoch_instances = if epoch == 1 || !config.nsp {
            first_instances.clone()
        } else {
            instances(
                &train_tokens,
                config,
                special,
                derived_seed(config.seed, PAIRS, epoch as u64),
            )
        };
        let examples = Examples::mask(
            &epoch_instances,
            &masking,
            derived_seed(config.seed, MASKS, epoch as u64),
        );
        let mut order = length_grouped_order(
            &examples.lengths(),
            config.batch_size,
            config.seed + epoch as u64,
        );
        let steps_left = total_steps.saturating_sub(optimizer.steps() as usize);
        order.truncate(steps_left * config.gradient_accumulation);
        if order.is_empty() {
            break;
        }
        let settings = EpochSettings {
            epoch,
            gradient_accumulation: config.gradient_accumulation,
            max_grad_norm: config.max_grad_norm,
            log_every: config.log_every,
            seed: config.seed,
        };
        let outcome = train_epoch(
            &mut optimizer,
            &schedule,
            settings,
            &order,
            &mut state.micro_batch,
            &mut metrics,
            |indices, mode| {
                let rows: Vec<&Encoded> = indices.iter().map(|&i| &examples.encoded[i]).collect();
                let batch =
                    pretraining_batch(&collate(&rows, indices, pad), &examples.next_sentence)?;
                let output = model.forward(
                    &batch.ids,
                    &batch.types,
                    &batch.mask,
                    &batch.positions,
                    mode,
                )?;
                Ok((pretraining_loss(&output, &batch)?, batch.real_tokens))
            },
        )?;
        let held_out_evaluation = if has_held_out {
            let evaluation = evaluate(
                &model,
                &held_out,
                config.eval_batch_size,
                pad,
                &format!("held-out {epoch}"),
            )?;
            log_evaluation(&mut metrics, "epoch", epoch, &evaluation)?;
            Some(evaluation)
        } else {
            None
        };
        eprintln!(
            "epoch {epoch}: train loss {:.4}{} in {:.1}s ({:.0} tokens/s)",
            outcome.train_loss,
            held_out_evaluation
                .as_ref()
                .map(|e| format!(
                    ", held-out loss {:.4}, perplexity {:.2}, accuracy {:.4}",
                    e.loss, e.perplexity, e.accuracy
                ))
                .unwrap_or_default(),
            outcome.seconds,
            outcome.tokens_per_second
        );
        // Lower held-out loss is better; without held-out text the last epoch is kept.
        let score = held_out_evaluation
            .as_ref()
            .map(|e| -e.loss)
            .unwrap_or(epoch as f64);
        let record = MlmEpochRecord {
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
        let save_best = |best: &Path| -> Result<()> { Ok(model.save(best, &tokenizer_dir)?) };
        if state.end_epoch(
            end,
            run,
            &model.parameters,
            &optimizer,
            &mut metrics,
            save_best,
        )? {
            stopped_early = true;
            break;
        }
    }

    // After: reload the best checkpoint from disk (this also proves it loads).
    let best_model_dir = ModelDir::open(best_dir.to_str().context("run path is not UTF-8")?)?;
    let (best, _) = BertForPreTraining::load(&best_model_dir, config.nsp, config.seed)?;
    model = best;
    let after = if has_held_out {
        let evaluation = evaluate(
            &model,
            &held_out,
            config.eval_batch_size,
            pad,
            "held-out after",
        )?;
        log_evaluation(&mut metrics, "after", 0, &evaluation)?;
        Some(evaluation)
    } else {
        None
    };
    let report = MlmReport {
        model: config.model.clone().unwrap_or(description),
        architecture: model.architecture().to_string(),
        output: run.display().to_string(),
        parameters: model.parameters.count(),
        threads,
        corpus: summary,
        epochs: state.records,
        best_epoch: state.tracker.best_epoch,
        stopped_early,
        before,
        after,
    };
    write_json_atomic(&run.join("report.json"), &report)?;
    write_atomic(&run.join("report.md"), report.to_markdown().as_bytes())?;
    Ok(report)
}

fn log_evaluation(
    metrics: &mut MetricsLog,
    stage: &str,
    epoch: usize,
    evaluation: &MlmEvaluation,
) -> Result<()> {
    metrics.log(
        "eval",
        json!({"split": "held_out", "stage": stage, "epoch": epoch, "loss": evaluation.loss,
               "perplexity": evaluation.perplexity, "accuracy": evaluation.accuracy,
               "nsp_accuracy": evaluation.next_sentence_accuracy}),
    )?;
    Ok(())
}
