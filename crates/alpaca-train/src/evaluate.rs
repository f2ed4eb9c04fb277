//! `alpaca eval`: re-evaluate a saved fine-tuned model on any labelled file of its task. The
//! task comes from the checkpoint's config.json (`architectures`), so one command serves both.

use std::path::{Path, PathBuf};

use alpaca_data::align::encode_sentences;
use alpaca_data::labels::LabelSet;
use alpaca_data::text_classification::{read_labelled_texts, Columns};
use alpaca_models::{BertForSequenceClassification, BertForTokenClassification, ModelDir};
use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::inputs::{load_tokenizer, pad_id};

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub model: String,
    pub data: PathBuf,
    pub batch_size: usize,
    pub max_len: usize,
    /// NER only: iob1, iob2 or bioes (detected when absent).
    pub tag_scheme: Option<alpaca_eval::scheme::Scheme>,
    /// Classification only: which CSV/TSV columns or JSON fields hold text and label.
    pub text_column: String,
    pub label_column: String,
}

/// The report as text (tables) and as JSON.
pub struct EvalOutput {
    pub text: String,
    pub json: Value,
}

fn architecture(dir: &ModelDir) -> Result<String> {
    let config = dir.config_value()?;
    match config["architectures"].get(0).and_then(Value::as_str) {
        Some(name) => Ok(name.to_string()),
        None => bail!(
            "{}: config.json names no architecture, so the task is unknown (expected \
             BertForTokenClassification or BertForSequenceClassification)",
            dir.file("config.json").display()
        ),
    }
}

pub fn evaluate_saved(options: &EvalOptions) -> Result<EvalOutput> {
    let dir = ModelDir::open(&options.model)?;
    match architecture(&dir)?.as_str() {
        "BertForTokenClassification" => evaluate_ner(&dir, options),
        "BertForSequenceClassification" => evaluate_classify(&dir, options),
        other => bail!(
            "{}: architecture {other} has no evaluation (expected BertForTokenClassification \
             or BertForSequenceClassification)",
            dir.file("config.json").display()
        ),
    }
}

fn evaluate_ner(dir: &ModelDir, options: &EvalOptions) -> Result<EvalOutput> {
    let (mut model, _) = BertForTokenClassification::load(dir, None, 0)?;
    model.pack_for_inference()?;
    let tokenizer = load_tokenizer(dir, model.bert.config.vocab_size)?;
    let labels = LabelSet::from_labels(model.labels.clone());
    let (sentences, scheme) =
        crate::ner::read_split("evaluation", &options.data, None, options.tag_scheme)?;
    labels.check(&sentences, &options.data)?;
    let max_len = options
        .max_len
        .min(model.bert.config.max_position_embeddings);
    let (encoded, truncated) = encode_sentences(&tokenizer, &sentences, &labels, max_len)?;
    let split = crate::ner::Split {
        name: file_name(&options.data),
        sentences,
        encoded,
    };
    let (evaluation, _) = crate::ner::evaluate(
        &model,
        &split,
        &labels,
        scheme,
        options.batch_size,
        pad_id(&tokenizer),
        "eval",
    )?;
    let text = format!(
        "{} on {} ({} sentences, scheme {scheme}, loss {:.4}{})\n\nEntity level (seqeval):\n\n{}\nToken level:\n\n{}",
        options.model,
        options.data.display(),
        evaluation.sentences,
        evaluation.loss,
        if truncated > 0 { format!(", {truncated} truncated") } else { String::new() },
        evaluation.entity.to_table(4),
        evaluation.tokens.to_micro_table(4)
    );
    Ok(EvalOutput {
        text,
        json: json!({"model": options.model, "data": options.data, "task": "ner", "evaluation": evaluation}),
    })
}

fn evaluate_classify(dir: &ModelDir, options: &EvalOptions) -> Result<EvalOutput> {
    let (mut model, _) = BertForSequenceClassification::load(dir, None, 0)?;
    model.pack_for_inference()?;
    let tokenizer = load_tokenizer(dir, model.bert.config.vocab_size)?;
    let columns = Columns {
        text: &options.text_column,
        label: &options.label_column,
    };
    let examples = read_labelled_texts(&options.data, columns)?;
    let max_len = options
        .max_len
        .min(model.bert.config.max_position_embeddings);
    let (split, truncated) = crate::classify::encode_split(
        &file_name(&options.data),
        &options.data,
        examples,
        &model.labels,
        &tokenizer,
        max_len,
    )?;
    let (evaluation, _) = crate::classify::evaluate(
        &model,
        &split,
        options.batch_size,
        pad_id(&tokenizer),
        "eval",
    )?;
    let text = format!(
        "{} on {} ({} texts, loss {:.4}{})\n\n{}\nConfusion matrix (rows gold, columns predicted):\n\n{}",
        options.model,
        options.data.display(),
        evaluation.examples,
        evaluation.loss,
        if truncated > 0 { format!(", {truncated} truncated") } else { String::new() },
        evaluation.report.to_table(4),
        evaluation.report.confusion_table()
    );
    Ok(EvalOutput {
        text,
        json: json!({"model": options.model, "data": options.data, "task": "classify", "evaluation": evaluation}),
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
