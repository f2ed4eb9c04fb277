//! Named-entity recognition: fine-tune a BERT token classifier on CoNLL files.

use std::path::Path;

use alpaca_data::align::{encode_sentences, word_starts, Encoded, IGNORE_INDEX};
use alpaca_data::batch::{collate, length_grouped_order, sorted_by_length_order, Batch};
use alpaca_data::conll::{read_conll, Sentence};
use alpaca_data::labels::{check_scheme, LabelSet};
use alpaca_eval::classification::classification_report;
use alpaca_eval::scheme::{detect_scheme_in_sentences, Scheme};
use alpaca_eval::seqeval::entity_report;
use alpaca_models::{BertForTokenClassification, Mode, ModelDir};
use alpaca_track::{progress_bar, write_atomic, write_json_atomic};
use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::config::NerConfig;
use crate::epoch::{train_epoch, EpochSettings};
pub use crate::inputs::{batch_tensors, load_tokenizer, pad_id};
use crate::optimizer::AdamW;
use crate::report::{EpochRecord, Evaluation, NerReport, SplitReport};
use crate::resume::{check_run_dir, open_run_dir, starting_state, EpochEnd};
use crate::schedule::Schedule;

/// A labelled split, read and encoded.
pub struct Split {
    pub name: String,
    pub sentences: Vec<Sentence>,
    pub encoded: Vec<Encoded>,
}

pub(crate) fn read_split(
    name: &str,
    path: &Path,
    limit: Option<usize>,
    scheme: Option<Scheme>,
) -> Result<(Vec<Sentence>, Scheme)> {
    let mut sentences = read_conll(path)?;
    if let Some(limit) = limit {
        sentences.truncate(limit);
    }
    let tags: Vec<Vec<String>> = sentences.iter().map(|s| s.tags.clone()).collect();
    let scheme = scheme.unwrap_or_else(|| detect_scheme_in_sentences(&tags));
    check_scheme(&sentences, scheme, path).with_context(|| format!("{name} file"))?;
    Ok((sentences, scheme))
}

/// Word-level predicted tags for each example (words past truncation or without tokens: O).
fn decode_predictions(
    logits: &[Vec<Vec<f32>>],
    batch: &Batch,
    encoded: &[Encoded],
    sentences: &[Sentence],
    labels: &LabelSet,
    predictions: &mut [Vec<String>],
) {
    for (row, &index) in batch.indices.iter().enumerate() {
        let starts = word_starts(&encoded[index]);
        let mut tags = vec!["O".to_string(); sentences[index].words.len()];
        for (word, start) in starts.iter().enumerate() {
            if let Some(position) = start {
                let scores = &logits[row][*position];
                let best = scores
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                tags[word] = labels.label(best).to_string();
            }
        }
        predictions[index] = tags;
    }
}

/// Runs the model over a split: loss, seqeval entity report, token-level report.
pub fn evaluate(
    model: &BertForTokenClassification,
    split: &Split,
    labels: &LabelSet,
    scheme: Scheme,
    batch_size: usize,
    pad: u32,
    title: &str,
) -> Result<(Evaluation, Vec<Vec<String>>)> {
    let lengths: Vec<usize> = split.encoded.iter().map(|e| e.input_ids.len()).collect();
    let order = sorted_by_length_order(&lengths, batch_size);
    let bar = progress_bar(order.len() as u64, title);
    let mut predictions = vec![Vec::new(); split.sentences.len()];
    let (mut loss_sum, mut loss_tokens) = (0.0f64, 0usize);
    for indices in &order {
        let examples: Vec<&Encoded> = indices.iter().map(|&i| &split.encoded[i]).collect();
        let batch = collate(&examples, indices, pad);
        let (ids, types, mask, targets) = batch_tensors(&batch)?;
        let logits = model.forward(&ids, &types, &mask, Mode::EVAL)?;
        let flat = logits.reshape((batch.batch_size * batch.seq_len, labels.len()))?;
        let counted = batch.labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
        let loss =
            alpaca_kernels::cross_entropy(&flat, &targets, IGNORE_INDEX)?.to_scalar::<f32>()?;
        loss_sum += loss as f64 * counted as f64;
        loss_tokens += counted;
        let logits = logits.to_vec3::<f32>()?;
        decode_predictions(
            &logits,
            &batch,
            &split.encoded,
            &split.sentences,
            labels,
            &mut predictions,
        );
        bar.inc(1);
    }
    bar.finish_and_clear();
    let gold: Vec<Vec<String>> = split.sentences.iter().map(|s| s.tags.clone()).collect();
    let entity = entity_report(&gold, &predictions, scheme).map_err(anyhow::Error::msg)?;
    let flat_gold: Vec<&String> = gold.iter().flatten().collect();
    let flat_predicted: Vec<&String> = predictions.iter().flatten().collect();
    let tokens = classification_report(&flat_gold, &flat_predicted, labels.labels())
        .map_err(anyhow::Error::msg)?;
    Ok((
        Evaluation {
            loss: if loss_tokens > 0 {
                loss_sum / loss_tokens as f64
            } else {
                0.0
            },
            sentences: split.sentences.len(),
            entity,
            tokens,
        },
        predictions,
    ))
}

/// Fine-tunes, evaluates and writes the run directory. Returns the report (also printed by
/// the CLI).
pub fn train(config: &NerConfig) -> Result<NerReport> {
    let threads = crate::threads::set_threads(config.threads);
    let precision = crate::precision::apply(&config.precision)?;
    if config.batch_size == 0 || config.gradient_accumulation == 0 || config.epochs == 0 {
        bail!("batch_size, gradient_accumulation and epochs must be at least 1");
    }
    let run = &config.output;
    check_run_dir(run, config.resume, config.overwrite)?;

    // Data: the label set and the tag scheme come from the training file.
    let (train_sentences, scheme) = read_split(
        "training",
        &config.train,
        config.max_train_sentences,
        config.tag_scheme,
    )?;
    let labels = LabelSet::from_sentences(&train_sentences);
    let mut labelled: Vec<(String, Vec<Sentence>)> = Vec::new();
    for (name, path) in [("dev", &config.dev), ("test", &config.test)] {
        if let Some(path) = path {
            let (sentences, _) = read_split(name, path, config.max_eval_sentences, Some(scheme))?;
            labels.check(&sentences, path)?;
            labelled.push((name.to_string(), sentences));
        }
    }

    // Model and tokenizer.
    let dir = ModelDir::open(&config.model)?;
    let (mut model, load_report) =
        BertForTokenClassification::load(&dir, Some(labels.labels().to_vec()), config.seed)?;
    let tokenizer = load_tokenizer(&dir, model.bert.config.vocab_size)?;
    let max_len = config
        .max_len
        .min(model.bert.config.max_position_embeddings);
    let pad = pad_id(&tokenizer);
    eprintln!(
        "alpaca: {} ({} parameters), {} labels, scheme {scheme}, {precision}, {threads} threads, {}",
        dir.path.display(),
        model.parameters.count(),
        labels.len(),
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

    let (train_encoded, mut truncated) =
        encode_sentences(&tokenizer, &train_sentences, &labels, max_len)?;
    let train_split = Split {
        name: "train".into(),
        sentences: train_sentences,
        encoded: train_encoded,
    };
    let mut eval_splits = Vec::new();
    for (name, sentences) in labelled {
        let (encoded, cut) = encode_sentences(&tokenizer, &sentences, &labels, max_len)?;
        truncated += cut;
        eval_splits.push(Split {
            name,
            sentences,
            encoded,
        });
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
                &labels,
                scheme,
                config.eval_batch_size,
                pad,
                &format!("{} before", split.name),
            )?;
            metrics.log(
                "eval",
                json!({"split": split.name, "stage": "before", "epoch": 0, "loss": evaluation.loss,
                       "entity_f1": evaluation.entity.micro.f1,
                       "entity_precision": evaluation.entity.micro.precision,
                       "entity_recall": evaluation.entity.micro.recall}),
            )?;
            Some(evaluation)
        };
        before.push(evaluation);
    }

    // Training.
    let lengths: Vec<usize> = train_split
        .encoded
        .iter()
        .map(|e| e.input_ids.len())
        .collect();
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
                let (ids, types, mask, targets) = batch_tensors(&batch)?;
                let logits = model.forward(&ids, &types, &mask, mode)?;
                let flat = logits.reshape((batch.batch_size * batch.seq_len, labels.len()))?;
                let loss = alpaca_kernels::cross_entropy(&flat, &targets, IGNORE_INDEX)?;
                Ok((loss, batch.attention_mask.iter().map(|&m| m as u64).sum()))
            },
        )?;
        let (seconds, train_loss) = (outcome.seconds, outcome.train_loss);

        let mut dev_f1 = None;
        if let Some(index) = dev_index {
            let (evaluation, _) = evaluate(
                &model,
                &eval_splits[index],
                &labels,
                scheme,
                config.eval_batch_size,
                pad,
                &format!("dev {epoch}"),
            )?;
            metrics.log(
                "eval",
                json!({"split": "dev", "stage": "epoch", "epoch": epoch, "loss": evaluation.loss,
                       "entity_f1": evaluation.entity.micro.f1,
                       "entity_precision": evaluation.entity.micro.precision,
                       "entity_recall": evaluation.entity.micro.recall}),
            )?;
            dev_f1 = Some(evaluation.entity.micro.f1);
        }
        let record = EpochRecord {
            epoch,
            train_loss,
            dev_entity_f1: dev_f1,
            seconds,
            tokens_per_second: outcome.tokens_per_second,
        };
        eprintln!(
            "epoch {epoch}: train loss {train_loss:.4}{} in {seconds:.1}s ({:.0} tokens/s)",
            dev_f1
                .map(|f| format!(", dev entity F1 {f:.4}"))
                .unwrap_or_default(),
            record.tokens_per_second
        );
        let end = EpochEnd {
            epoch,
            record,
            score: dev_f1.unwrap_or(epoch as f64),
            no_gain: "no better dev entity F1",
            checkpoint: json!({"dev_entity_f1": dev_f1}),
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
    let (mut best_model, _) = BertForTokenClassification::load(&best_model_dir, None, config.seed)?;
    // Only evaluated from here on (a bf16 run keeps its bf16 products: see pack_for_inference).
    best_model.pack_for_inference()?;
    model = best_model;
    let mut splits = Vec::new();
    for (split, before) in eval_splits.iter().zip(before) {
        let (after, predictions) = evaluate(
            &model,
            split,
            &labels,
            scheme,
            config.eval_batch_size,
            pad,
            &format!("{} after", split.name),
        )?;
        metrics.log(
            "eval",
            json!({"split": split.name, "stage": "after", "loss": after.loss,
                   "entity_f1": after.entity.micro.f1,
                   "entity_precision": after.entity.micro.precision,
                   "entity_recall": after.entity.micro.recall,
                   "token_micro_f1": after.tokens.micro.f1}),
        )?;
        write_predictions(
            &run.join(format!("predictions-{}.txt", split.name)),
            &split.sentences,
            &predictions,
        )?;
        splits.push(SplitReport {
            split: split.name.clone(),
            before,
            after,
        });
    }
    let report = NerReport {
        model: config.model.clone(),
        output: run.display().to_string(),
        tag_scheme: scheme.to_string(),
        labels: labels.labels().to_vec(),
        parameters: model.parameters.count(),
        threads,
        epochs: state.records,
        best_epoch: state.tracker.best_epoch,
        stopped_early,
        truncated_sentences: truncated,
        splits,
    };
    write_json_atomic(&run.join("report.json"), &report)?;
    write_atomic(&run.join("report.md"), report.to_markdown().as_bytes())?;
    Ok(report)
}

/// CoNLL-style `word gold predicted` lines, for error analysis with conlleval.
fn write_predictions(
    path: &Path,
    sentences: &[Sentence],
    predictions: &[Vec<String>],
) -> Result<()> {
    let mut text = String::new();
    for (sentence, predicted) in sentences.iter().zip(predictions) {
        for ((word, gold), tag) in sentence.words.iter().zip(&sentence.tags).zip(predicted) {
            text.push_str(&format!("{word} {gold} {tag}\n"));
        }
        text.push('\n');
    }
    Ok(write_atomic(path, text.as_bytes())?)
}
