//! The NER report: entity-level (seqeval) and token-level tables for dev and test, before
//! fine-tuning (fresh head) and after, side by side. Written as report.md and report.json.

use alpaca_eval::classification::ClassReport;
use alpaca_eval::seqeval::EntityReport;
use serde::Serialize;

/// One evaluation of one model on one split.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub loss: f64,
    pub sentences: usize,
    pub entity: EntityReport,
    pub tokens: ClassReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct SplitReport {
    pub split: String,
    pub before: Option<Evaluation>,
    pub after: Evaluation,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub dev_entity_f1: Option<f64>,
    pub seconds: f64,
    pub tokens_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NerReport {
    pub model: String,
    pub output: String,
    pub tag_scheme: String,
    pub labels: Vec<String>,
    pub parameters: usize,
    pub threads: usize,
    pub epochs: Vec<EpochRecord>,
    pub best_epoch: Option<usize>,
    pub stopped_early: bool,
    pub truncated_sentences: usize,
    pub splits: Vec<SplitReport>,
}

/// Two text blocks next to each other, each under its title.
pub fn side_by_side(left_title: &str, left: &str, right_title: &str, right: &str) -> String {
    let left_lines: Vec<&str> = left.lines().collect();
    let right_lines: Vec<&str> = right.lines().collect();
    let width = left_lines
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0)
        .max(left_title.chars().count());
    let mut out = format!("{left_title:<width$}  |  {right_title}\n");
    for row in 0..left_lines.len().max(right_lines.len()) {
        let l = left_lines.get(row).copied().unwrap_or("");
        let r = right_lines.get(row).copied().unwrap_or("");
        let line = format!("{l:<width$}  |  {r}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The "## Training" section both reports share: one row per epoch (train loss, the dev
/// metric named `dev_metric`, seconds, tokens/s), then the best epoch.
pub fn training_section(
    dev_metric: &str,
    epochs: impl IntoIterator<Item = (usize, f64, Option<f64>, f64, f64)>,
    best_epoch: Option<usize>,
    stopped_early: bool,
) -> String {
    let mut md = format!(
        "\n## Training\n\n| epoch | train loss | {dev_metric} | seconds | tokens/s |\n|---|---|---|---|---|\n"
    );
    for (epoch, train_loss, dev, seconds, tokens_per_second) in epochs {
        md.push_str(&format!(
            "| {epoch} | {train_loss:.4} | {} | {seconds:.1} | {tokens_per_second:.0} |\n",
            dev.map(|value| format!("{value:.4}"))
                .unwrap_or_else(|| "-".into()),
        ));
    }
    if let Some(best) = best_epoch {
        md.push_str(&format!("\nbest epoch: {best}"));
        if stopped_early {
            md.push_str(" (stopped early)");
        }
        md.push('\n');
    }
    md
}

impl NerReport {
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        md.push_str(&format!("# NER report: {}\n\n", self.output));
        md.push_str(&format!(
            "model `{}`, {} parameters, tag scheme {}, {} labels, {} threads\n\n",
            self.model,
            self.parameters,
            self.tag_scheme,
            self.labels.len(),
            self.threads
        ));
        md.push_str("## Summary (entity-level micro F1)\n\n");
        md.push_str("| split | before | after |\n|---|---|---|\n");
        for split in &self.splits {
            let before = split
                .before
                .as_ref()
                .map(|b| format!("{:.4}", b.entity.micro.f1))
                .unwrap_or_else(|| "-".into());
            md.push_str(&format!(
                "| {} | {} | {:.4} |\n",
                split.split, before, split.after.entity.micro.f1
            ));
        }
        md.push_str(&training_section(
            "dev entity F1",
            self.epochs.iter().map(|e| {
                (
                    e.epoch,
                    e.train_loss,
                    e.dev_entity_f1,
                    e.seconds,
                    e.tokens_per_second,
                )
            }),
            self.best_epoch,
            self.stopped_early,
        ));
        if self.truncated_sentences > 0 {
            md.push_str(&format!(
                "\n{} sentences were longer than max_len; their words past the limit are predicted O.\n",
                self.truncated_sentences
            ));
        }
        for split in &self.splits {
            md.push_str(&format!("\n## {}\n\n", split.split));
            let after_entity = split.after.entity.to_table(4);
            let after_tokens = split.after.tokens.to_micro_table(4);
            md.push_str("Entity level (seqeval):\n\n```\n");
            match &split.before {
                Some(before) => md.push_str(&side_by_side(
                    "before fine-tuning",
                    &before.entity.to_table(4),
                    "after fine-tuning",
                    &after_entity,
                )),
                None => md.push_str(&after_entity),
            }
            md.push_str("```\n\nToken level:\n\n```\n");
            match &split.before {
                Some(before) => md.push_str(&side_by_side(
                    "before fine-tuning",
                    &before.tokens.to_micro_table(4),
                    "after fine-tuning",
                    &after_tokens,
                )),
                None => md.push_str(&after_tokens),
            }
            md.push_str("```\n");
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_by_side_aligns_columns() {
        let text = side_by_side("a", "x\nlonger", "b", "1\n2\n3");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "a       |  b");
        assert_eq!(lines[1], "x       |  1");
        assert_eq!(lines[2], "longer  |  2");
        assert_eq!(lines[3], "        |  3");
    }
}
