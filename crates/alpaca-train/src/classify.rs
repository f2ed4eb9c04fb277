//! Text classification: fine-tune a BERT sequence classifier (one label per text) on Orange
//! .tab, CSV/TSV or JSONL files. The loop mirrors `ner::train`: the same config keys,
//! optimiser, schedule, checkpointing and before/after report.

use std::path::{Path, PathBuf};

use alpaca_data::align::{Encoded, IGNORE_INDEX};
use alpaca_data::batch::{collate, length_grouped_order, sorted_by_length_order, Batch};
use alpaca_data::text_classification::{label_ids, label_list, read_labelled_texts, Columns};
use alpaca_data::LabelledText;
use alpaca_eval::classification::classification_report;
use alpaca_models::sequence_classification::Pooling;
use alpaca_models::{BertForSequenceClassification, Mode, ModelDir};
use alpaca_track::{progress_bar, write_atomic, write_json_atomic, MetricsLog};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use serde_json::json;
use tokenizers::{Tokenizer, TruncationParams};

use crate::classify_report::{
    ClassifyEpochRecord, ClassifyEvaluation, ClassifyReport, ClassifySplitReport,
};
use crate::config::ClassifyConfig;
use crate::epoch::{train_epoch, EpochSettings};
use crate::inputs::{batch_tensors, load_tokenizer, pad_id};
use crate::optimizer::AdamW;
use crate::resume::{check_run_dir, open_run_dir, starting_state, EpochEnd};
use crate::schedule::Schedule;

/// A labelled split, read and encoded.
pub struct TextSplit {
    pub name: String,
    pub path: PathBuf,
    pub examples: Vec<LabelledText>,
    /// Index into the label list of each example's gold label.
    pub label_ids: Vec<usize>,
    pub encoded: Vec<Encoded>,
}

/// Tokenizes texts as `[CLS] text [SEP]`, cut to `max_len` sub-tokens (the end of a long text
/// is dropped, as transformers' truncation does). Returns the encodings and how many texts
/// were cut.
pub fn encode_texts(
    tokenizer: &Tokenizer,
    texts: &[&str],
    max_len: usize,
) -> Result<(Vec<Encoded>, usize)> {
    if max_len < 3 {
        bail!("max_len must be at least 3 ([CLS], one token, [SEP])");
    }
    let mut tokenizer = tokenizer.clone();
    // A tokenizer.json may carry its own padding (to a fixed length); batches pad themselves.
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_len,
            ..Default::default()
        }))
        .map_err(|e| anyhow!("cannot set truncation: {e}"))?;
    let encodings = tokenizer
        .encode_batch(texts.to_vec(), true)
        .map_err(|e| anyhow!("tokenizer failed: {e}"))?;
    let mut truncated = 0;
    let encoded = encodings
        .into_iter()
        .map(|encoding| {
            if !encoding.get_overflowing().is_empty() {
                truncated += 1;
            }
            let len = encoding.get_ids().len();
            Encoded {
                input_ids: encoding.get_ids().to_vec(),
                type_ids: encoding.get_type_ids().to_vec(),
                // The label is per text, not per token: batches take it from `label_ids`.
                labels: vec![IGNORE_INDEX; len],
                word_ids: vec![None; len],
                words_kept: 0,
            }
        })
        .collect();
    Ok((encoded, truncated))
}

/// The gold label ids of a batch's rows as an i64 tensor.
fn batch_targets(batch: &Batch, label_ids: &[usize]) -> Result<Tensor> {
    let targets: Vec<i64> = batch.indices.iter().map(|&i| label_ids[i] as i64).collect();
    Ok(Tensor::from_vec(targets, batch.batch_size, &Device::Cpu)?)
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

/// scikit-learn's "balanced" weights: n / (labels × count of the label), from the training
/// labels; a label absent from training gets weight 0 (it cannot occur in a batch).
pub fn balanced_weights(label_ids: &[usize], labels: usize) -> Vec<f64> {
    let mut counts = vec![0usize; labels];
    for &label in label_ids {
        counts[label] += 1;
    }
    let total = label_ids.len() as f64;
    counts
        .iter()
        .map(|&count| {
            if count == 0 {
                0.0
            } else {
                total / (labels as f64 * count as f64)
            }
        })
        .collect()
}

/// Class-weighted mean cross-entropy, as torch's `CrossEntropyLoss(weight=w)`:
/// Σ_i w[y_i]·ce_i / Σ_i w[y_i]. Built from the fused kernel, one call per label present.
fn weighted_cross_entropy(logits: &Tensor, targets: &[usize], weights: &[f64]) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    let mut denominator = 0.0;
    let mut present: Vec<usize> = targets.to_vec();
    present.sort_unstable();
    present.dedup();
    for label in present {
        let rows: Vec<u32> = (0..targets.len())
            .filter(|&i| targets[i] == label)
            .map(|i| i as u32)
            .collect();
        let count = rows.len();
        let picked = logits.index_select(&Tensor::from_vec(rows, count, &Device::Cpu)?, 0)?;
        let gold = Tensor::from_vec(vec![label as i64; count], count, &Device::Cpu)?;
        let share = weights[label] * count as f64;
        let term =
            alpaca_kernels::cross_entropy(&picked, &gold, IGNORE_INDEX)?.affine(share, 0.0)?;
        denominator += share;
        total = Some(match total {
            Some(sum) => (sum + term)?,
            None => term,
        });
    }
    let total = total.ok_or_else(|| anyhow!("an empty batch"))?;
    Ok(total.affine(1.0 / denominator.max(f64::MIN_POSITIVE), 0.0)?)
}

/// Runs the model over a split: mean loss, the classification report, predicted label ids.
pub fn evaluate(
    model: &BertForSequenceClassification,
    split: &TextSplit,
    batch_size: usize,
    pad: u32,
    title: &str,
) -> Result<(ClassifyEvaluation, Vec<usize>)> {
    let lengths: Vec<usize> = split.encoded.iter().map(Encoded::len).collect();
    let order = sorted_by_length_order(&lengths, batch_size);
    let bar = progress_bar(order.len() as u64, title);
    let mut predictions = vec![0; split.examples.len()];
    let mut loss_sum = 0.0f64;
    for indices in &order {
        let examples: Vec<&Encoded> = indices.iter().map(|&i| &split.encoded[i]).collect();
        let batch = collate(&examples, indices, pad);
        let (ids, types, mask, _) = batch_tensors(&batch)?;
        let targets = batch_targets(&batch, &split.label_ids)?;
        let logits = model.forward(&ids, &types, &mask, Mode::EVAL)?;
        let loss =
            alpaca_kernels::cross_entropy(&logits, &targets, IGNORE_INDEX)?.to_scalar::<f32>()?;
        loss_sum += loss as f64 * batch.batch_size as f64;
        for (row, scores) in logits.to_vec2::<f32>()?.iter().enumerate() {
            predictions[batch.indices[row]] = argmax(scores);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let labels = &model.labels;
    let gold: Vec<&String> = split.label_ids.iter().map(|&i| &labels[i]).collect();
    let predicted: Vec<&String> = predictions.iter().map(|&i| &labels[i]).collect();
    let report = classification_report(&gold, &predicted, labels).map_err(anyhow::Error::msg)?;
    Ok((
        ClassifyEvaluation {
            loss: loss_sum / split.examples.len().max(1) as f64,
            examples: split.examples.len(),
            report,
        },
        predictions,
    ))
}

fn read_split(path: &Path, limit: Option<usize>, columns: Columns) -> Result<Vec<LabelledText>> {
    let mut examples = read_labelled_texts(path, columns)?;
    if let Some(limit) = limit {
        examples.truncate(limit);
    }
    Ok(examples)
}

pub(crate) fn encode_split(
    name: &str,
    path: &Path,
    examples: Vec<LabelledText>,
    labels: &[String],
    tokenizer: &Tokenizer,
    max_len: usize,
) -> Result<(TextSplit, usize)> {
    let ids = label_ids(&examples, labels, path)?;
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    let (encoded, truncated) = encode_texts(tokenizer, &texts, max_len)?;
    Ok((
        TextSplit {
            name: name.to_string(),
            path: path.to_path_buf(),
            examples,
            label_ids: ids,
            encoded,
        },
        truncated,
    ))
}

/// Fine-tunes, evaluates and writes the run directory. Returns the report (also printed by
/// the CLI).
pub fn train(config: &ClassifyConfig) -> Result<ClassifyReport> {
    let threads = crate::threads::set_threads(config.threads);
    let precision = crate::precision::apply(&config.precision)?;
    if config.batch_size == 0 || config.gradient_accumulation == 0 || config.epochs == 0 {
        bail!("batch_size, gradient_accumulation and epochs must be at least 1");
    }
    let run = &config.output;
    check_run_dir(run, config.resume, config.overwrite)?;

    // Data: the label set comes from the training file, sorted.
    let columns = Columns {
        text: &config.text_column,
        label: &config.label_column,
    };
    let train_examples =
        read_split(&config.train, config.max_train_examples, columns).context("training file")?;
    let labels = label_list(&train_examples);
    if labels.len() < 2 {
        bail!(
            "{}: the training data has {} label(s); classification needs at least 2",
            config.train.display(),
            labels.len()
        );
    }
    let mut eval_examples = Vec::new();
    for (name, path) in [("dev", &config.dev), ("test", &config.test)] {
        if let Some(path) = path {
            let examples = read_split(path, config.max_eval_examples, columns)
                .with_context(|| format!("{name} file"))?;
            // Checked before the model loads, so a bad label fails fast.
            label_ids(&examples, &labels, path).with_context(|| format!("{name} file"))?;
            eval_examples.push((name, path.clone(), examples));
        }
    }

    // Model and tokenizer.
    let dir = ModelDir::open(&config.model)?;
    let (mut model, load_report) =
        BertForSequenceClassification::load(&dir, Some(labels.clone()), config.seed)?;
    if let Some(pooling) = &config.pooling {
        model.set_pooling(match pooling.as_str() {
            "cls" => Pooling::Cls,
            "mean" => Pooling::Mean,
            other => bail!("pooling {other:?}: expected cls or mean"),
        });
    }
    let balanced = match config.class_weights.as_deref() {
        None => false,
        Some("balanced") => true,
        Some(other) => bail!("class_weights {other:?}: expected balanced"),
    };
    let tokenizer = load_tokenizer(&dir, model.bert.config.vocab_size)?;
    let max_len = config
        .max_len
        .min(model.bert.config.max_position_embeddings);
    let pad = pad_id(&tokenizer);
    eprintln!(
        "alpaca: {} ({} parameters), {} labels, {} pooling, {precision}, {threads} threads, {}",
        dir.path.display(),
        model.parameters.count(),
        labels.len(),
        model.pooling.name(),
        alpaca_kernels::cpu_features()
    );
    let summary = load_report.summary();
    if !summary.is_empty() {
        eprintln!("{summary}");
    }
    let mut metrics = open_run_dir(run, config, config.resume, config.overwrite)?;
    metrics.log(
        "load",
        json!({"model": config.model, "report": load_report}),
    )?;

    let (train_split, mut truncated) = encode_split(
        "train",
        &config.train,
        train_examples,
        &labels,
        &tokenizer,
        max_len,
    )?;
    let mut eval_splits = Vec::new();
    for (name, path, examples) in eval_examples {
        let (split, cut) = encode_split(name, &path, examples, &labels, &tokenizer, max_len)?;
        truncated += cut;
        eval_splits.push(split);
    }

    // Before fine-tuning: the fresh head, so the report shows what training bought.
    let mut before = Vec::new();
    for split in &eval_splits {
        let evaluation = if config.skip_baseline {
            None
        } else {
            let (evaluation, _) = evaluate(
                &model,
                split,
                config.eval_batch_size,
                pad,
                &format!("{} before", split.name),
            )?;
            log_evaluation(&mut metrics, &split.name, "before", 0, &evaluation)?;
            Some(evaluation)
        };
        before.push(evaluation);
    }

    // Training.
    let weights = balanced.then(|| balanced_weights(&train_split.label_ids, labels.len()));
    if let Some(weights) = &weights {
        metrics.log(
            "class_weights",
            json!({"labels": labels, "weights": weights}),
        )?;
    }
    let lengths: Vec<usize> = train_split.encoded.iter().map(Encoded::len).collect();
    let schedule = Schedule::for_run(
        config.schedule,
        config.lr,
        config.warmup_ratio,
        lengths.len().div_ceil(config.batch_size),
        config.gradient_accumulation,
        config.epochs,
    );
    let mut optimizer = AdamW::new(&model.parameters, config.weight_decay);
    let best_dir = run.join("best");
    let dev_index = eval_splits.iter().position(|s| s.name == "dev");
    let mut stopped_early = false;
    let mut state = starting_state(
        config.resume,
        run,
        &model.parameters,
        &mut optimizer,
        &mut metrics,
        config.patience,
    )?;

    for epoch in state.epoch + 1..=config.epochs {
        let order = length_grouped_order(&lengths, config.batch_size, config.seed + epoch as u64);
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
                let examples: Vec<&Encoded> =
                    indices.iter().map(|&i| &train_split.encoded[i]).collect();
                let batch = collate(&examples, indices, pad);
                let (ids, types, mask, _) = batch_tensors(&batch)?;
                let logits = model.forward(&ids, &types, &mask, mode)?;
                let loss = match &weights {
                    Some(weights) => {
                        let gold: Vec<usize> = batch
                            .indices
                            .iter()
                            .map(|&i| train_split.label_ids[i])
                            .collect();
                        weighted_cross_entropy(&logits, &gold, weights)?
                    }
                    None => {
                        let targets = batch_targets(&batch, &train_split.label_ids)?;
                        alpaca_kernels::cross_entropy(&logits, &targets, IGNORE_INDEX)?
                    }
                };
                Ok((loss, batch.attention_mask.iter().map(|&m| m as u64).sum()))
            },
        )?;
        let (seconds, train_loss) = (outcome.seconds, outcome.train_loss);

        let mut dev_accuracy = None;
        if let Some(index) = dev_index {
            let (evaluation, _) = evaluate(
                &model,
                &eval_splits[index],
                config.eval_batch_size,
                pad,
                &format!("dev {epoch}"),
            )?;
            log_evaluation(&mut metrics, "dev", "epoch", epoch, &evaluation)?;
            dev_accuracy = Some(evaluation.report.accuracy);
        }
        let record = ClassifyEpochRecord {
            epoch,
            train_loss,
            dev_accuracy,
            seconds,
            tokens_per_second: outcome.tokens_per_second,
        };
        eprintln!(
            "epoch {epoch}: train loss {train_loss:.4}{} in {seconds:.1}s ({:.0} tokens/s)",
            dev_accuracy
                .map(|a| format!(", dev accuracy {a:.4}"))
                .unwrap_or_default(),
            record.tokens_per_second
        );
        let end = EpochEnd {
            epoch,
            record,
            score: dev_accuracy.unwrap_or(epoch as f64),
            no_gain: "no better dev accuracy",
            checkpoint: json!({"dev_accuracy": dev_accuracy}),
        };
        let save_best = |best: &Path| -> Result<()> { Ok(model.save(best, &dir.path)?) };
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
    let (mut best_model, _) =
        BertForSequenceClassification::load(&best_model_dir, None, config.seed)?;
    // Only evaluated from here on (a bf16 run keeps its bf16 products: see pack_for_inference).
    best_model.pack_for_inference()?;
    model = best_model;
    let mut splits = Vec::new();
    for (split, before) in eval_splits.iter().zip(before) {
        let (after, predictions) = evaluate(
            &model,
            split,
            config.eval_batch_size,
            pad,
            &format!("{} after", split.name),
        )?;
        log_evaluation(&mut metrics, &split.name, "after", 0, &after)?;
        write_predictions(
            &run.join(format!("predictions-{}.tsv", split.name)),
            split,
            &predictions,
            &labels,
        )?;
        splits.push(ClassifySplitReport {
            split: split.name.clone(),
            before,
            after,
        });
    }
    let report = ClassifyReport {
        model: config.model.clone(),
        output: run.display().to_string(),
        labels,
        parameters: model.parameters.count(),
        threads,
        epochs: state.records,
        best_epoch: state.tracker.best_epoch,
        stopped_early,
        truncated_texts: truncated,
        splits,
    };
    write_json_atomic(&run.join("report.json"), &report)?;
    write_atomic(&run.join("report.md"), report.to_markdown().as_bytes())?;
    Ok(report)
}

fn log_evaluation(
    metrics: &mut MetricsLog,
    split: &str,
    stage: &str,
    epoch: usize,
    evaluation: &ClassifyEvaluation,
) -> Result<()> {
    let report = &evaluation.report;
    metrics.log(
        "eval",
        json!({"split": split, "stage": stage, "epoch": epoch, "loss": evaluation.loss,
               "accuracy": report.accuracy, "macro_f1": report.macro_avg.f1,
               "weighted_f1": report.weighted.f1}),
    )?;
    Ok(())
}

/// `line<TAB>gold<TAB>predicted` per example, for error analysis.
fn write_predictions(
    path: &Path,
    split: &TextSplit,
    predictions: &[usize],
    labels: &[String],
) -> Result<()> {
    let mut text = format!("# {}\nline\tgold\tpredicted\n", split.path.display());
    for ((example, &gold), &predicted) in
        split.examples.iter().zip(&split.label_ids).zip(predictions)
    {
        text.push_str(&format!(
            "{}\t{}\t{}\n",
            example.line, labels[gold], labels[predicted]
        ));
    }
    Ok(write_atomic(path, text.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_weights_follow_scikit_learn() {
        // 6 examples, 3 labels with counts 3, 2, 1: n / (3 · count).
        let weights = balanced_weights(&[0, 0, 0, 1, 1, 2], 4);
        assert_eq!(weights, [6.0 / 12.0, 6.0 / 8.0, 6.0 / 4.0, 0.0]);
    }

    #[test]
    fn weighted_cross_entropy_is_torch_s_weighted_mean() {
        let rows = [
            [2.0f32, 0.5, -1.0],
            [0.1, 0.2, 0.3],
            [-0.5, 1.5, 0.0],
            [1.0, 1.0, 1.0],
        ];
        let targets = [0usize, 2, 1, 2];
        let weights = [0.5, 2.0, 1.5];
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let logits = Tensor::from_vec(flat, (4, 3), &Device::Cpu).unwrap();
        let got = weighted_cross_entropy(&logits, &targets, &weights)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let (mut sum, mut norm) = (0.0f64, 0.0f64);
        for (row, &target) in rows.iter().zip(&targets) {
            let log_sum: f64 = row.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
            sum += weights[target] * (log_sum - row[target] as f64);
            norm += weights[target];
        }
        assert!((got - sum / norm).abs() < 1e-5, "{got} vs {}", sum / norm);
        // Equal weights give the plain mean.
        let plain = weighted_cross_entropy(&logits, &targets, &[1.0, 1.0, 1.0])
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let unweighted = alpaca_kernels::cross_entropy(
            &logits,
            &Tensor::from_vec(vec![0i64, 2, 1, 2], 4, &Device::Cpu).unwrap(),
            IGNORE_INDEX,
        )
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        assert!((plain - unweighted).abs() < 1e-6);
    }
}
