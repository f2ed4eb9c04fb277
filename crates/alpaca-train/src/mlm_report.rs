//! The pre-training report: held-out masked-LM loss, perplexity and masked-token accuracy
//! (and NSP accuracy) before and after training, the corpus, and the per-epoch table.
//! Written as report.md and report.json.

use serde::{Deserialize, Serialize};

use crate::report::training_section;

/// One evaluation of the model on the held-out examples (fixed masks).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MlmEvaluation {
    /// Mean cross-entropy over the masked tokens.
    pub loss: f64,
    /// exp(loss).
    pub perplexity: f64,
    /// Share of masked tokens whose original token is the top prediction.
    pub accuracy: f64,
    pub masked_tokens: usize,
    pub examples: usize,
    pub next_sentence_loss: Option<f64>,
    pub next_sentence_accuracy: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MlmEpochRecord {
    pub epoch: usize,
    pub steps: u64,
    pub train_loss: f64,
    pub held_out: Option<MlmEvaluation>,
    pub seconds: f64,
    pub tokens_per_second: f64,
}

/// What was read and built from the corpus.
#[derive(Debug, Clone, Serialize)]
pub struct CorpusSummary {
    pub files: usize,
    pub documents: usize,
    pub empty_documents: usize,
    pub held_out_documents: usize,
    pub train_tokens: usize,
    /// Examples per epoch (NSP pairs are rebuilt each epoch; this is the first epoch's count).
    pub train_examples: usize,
    pub held_out_examples: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct MlmReport {
    /// The checkpoint continued, or a description of the new model.
    pub model: String,
    pub architecture: String,
    pub output: String,
    pub parameters: usize,
    pub threads: usize,
    pub corpus: CorpusSummary,
    pub epochs: Vec<MlmEpochRecord>,
    pub best_epoch: Option<usize>,
    pub stopped_early: bool,
    pub before: Option<MlmEvaluation>,
    pub after: Option<MlmEvaluation>,
}

/// A report row: its name, how to read it from an evaluation, and its decimals.
type Row = (&'static str, fn(&MlmEvaluation) -> Option<f64>, usize);

fn cell(value: Option<f64>, decimals: usize) -> String {
    value
        .map(|v| format!("{v:.decimals$}"))
        .unwrap_or_else(|| "-".into())
}

impl MlmReport {
    pub fn to_markdown(&self) -> String {
        let mut md = format!("# Pre-training report: {}\n\n", self.output);
        md.push_str(&format!(
            "model `{}` ({}), {} parameters, {} threads\n\n",
            self.model, self.architecture, self.parameters, self.threads
        ));
        let c = &self.corpus;
        md.push_str(&format!(
            "corpus: {} files, {} documents ({} empty skipped), {} held out; {} training \
             tokens in {} examples, {} held-out examples\n\n",
            c.files,
            c.documents,
            c.empty_documents,
            c.held_out_documents,
            c.train_tokens,
            c.train_examples,
            c.held_out_examples
        ));
        md.push_str("## Held-out evaluation\n\n| metric | before | after |\n|---|---|---|\n");
        let (before, after) = (self.before.as_ref(), self.after.as_ref());
        let rows: [Row; 5] = [
            ("masked-LM loss", |e| Some(e.loss), 4),
            ("perplexity", |e| Some(e.perplexity), 2),
            ("masked-token accuracy", |e| Some(e.accuracy), 4),
            ("NSP loss", |e| e.next_sentence_loss, 4),
            ("NSP accuracy", |e| e.next_sentence_accuracy, 4),
        ];
        for (name, get, decimals) in rows {
            let b = before.and_then(get);
            let a = after.and_then(get);
            if b.is_none() && a.is_none() {
                continue;
            }
            md.push_str(&format!(
                "| {name} | {} | {} |\n",
                cell(b, decimals),
                cell(a, decimals)
            ));
        }
        md.push_str(&training_section(
            "held-out perplexity",
            self.epochs.iter().map(|e| {
                (
                    e.epoch,
                    e.train_loss,
                    e.held_out.as_ref().map(|h| h.perplexity),
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
