//! The text-classification report: accuracy, per-label precision/recall/F1 and the confusion
//! matrix for dev and test, before fine-tuning (fresh head) and after. Written as report.md
//! and report.json.

use alpaca_eval::classification::ClassReport;
use serde::Serialize;

use crate::report::{side_by_side, training_section};

/// One evaluation of one model on one split.
#[derive(Debug, Clone, Serialize)]
pub struct ClassifyEvaluation {
    pub loss: f64,
    pub examples: usize,
    pub report: ClassReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassifySplitReport {
    pub split: String,
    pub before: Option<ClassifyEvaluation>,
    pub after: ClassifyEvaluation,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ClassifyEpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub dev_accuracy: Option<f64>,
    pub seconds: f64,
    pub tokens_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassifyReport {
    pub model: String,
    pub output: String,
    pub labels: Vec<String>,
    pub parameters: usize,
    pub threads: usize,
    pub epochs: Vec<ClassifyEpochRecord>,
    pub best_epoch: Option<usize>,
    pub stopped_early: bool,
    /// Texts longer than max_len sub-tokens, cut at the end.
    pub truncated_texts: usize,
    pub splits: Vec<ClassifySplitReport>,
}

impl ClassifyReport {
    pub fn to_markdown(&self) -> String {
        let mut md = format!("# Classification report: {}\n\n", self.output);
        md.push_str(&format!(
            "model `{}`, {} parameters, {} labels, {} threads\n\n",
            self.model,
            self.parameters,
            self.labels.len(),
            self.threads
        ));
        md.push_str("## Summary (accuracy)\n\n| split | before | after |\n|---|---|---|\n");
        for split in &self.splits {
            let before = split
                .before
                .as_ref()
                .map(|b| format!("{:.4}", b.report.accuracy))
                .unwrap_or_else(|| "-".into());
            md.push_str(&format!(
                "| {} | {} | {:.4} |\n",
                split.split, before, split.after.report.accuracy
            ));
        }
        md.push_str(&training_section(
            "dev accuracy",
            self.epochs.iter().map(|e| {
                (
                    e.epoch,
                    e.train_loss,
                    e.dev_accuracy,
                    e.seconds,
                    e.tokens_per_second,
                )
            }),
            self.best_epoch,
            self.stopped_early,
        ));
        if self.truncated_texts > 0 {
            md.push_str(&format!(
                "\n{} texts were longer than max_len and were cut at the end.\n",
                self.truncated_texts
            ));
        }
        for split in &self.splits {
            md.push_str(&format!("\n## {}\n\n```\n", split.split));
            let after = split.after.report.to_table(4);
            match &split.before {
                Some(before) => md.push_str(&side_by_side(
                    "before fine-tuning",
                    &before.report.to_table(4),
                    "after fine-tuning",
                    &after,
                )),
                None => md.push_str(&after),
            }
            md.push_str("```\n\nConfusion matrix after fine-tuning:\n\n```\n");
            md.push_str(&split.after.report.confusion_table());
            md.push_str("```\n");
        }
        md
    }
}
