//! Label-level precision, recall and F1, as `sklearn.metrics.classification_report(y_true,
//! y_pred, labels=labels)` computes them: used for the token-level NER table and for sentence
//! classification.

use std::collections::HashMap;

use crate::scores::{averages, Counts, F1Formula, Scores};
use crate::table::Table;

/// Per-label rows (in the order of the `labels` given), averages and the confusion matrix.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClassReport {
    pub per_label: Vec<(String, Scores)>,
    /// Fraction of items whose predicted label equals the gold one, over all items.
    pub accuracy: f64,
    /// Micro average over the listed labels only (equal to `accuracy` when they cover every
    /// label seen).
    pub micro: Scores,
    pub macro_avg: Scores,
    pub weighted: Scores,
    /// Rows are gold labels, columns predicted labels, both in `labels` order; items with a gold
    /// or predicted label outside `labels` are not counted here.
    pub confusion: Vec<Vec<usize>>,
    /// Whether the listed labels cover every gold and predicted label; scikit-learn then prints
    /// an `accuracy` row instead of `micro avg`.
    #[serde(skip)]
    micro_is_accuracy: bool,
}

impl ClassReport {
    /// The report in scikit-learn's text layout with `digits` decimals (its default is 2).
    ///
    /// Like scikit-learn, the first average row reads `accuracy` (F1 column and support only)
    /// when the labels cover everything seen, and `micro avg` when some label was left out.
    pub fn to_table(&self, digits: usize) -> String {
        self.table(digits, self.micro_is_accuracy)
    }

    /// The same layout, but always with a full `micro avg` row (precision, recall, F1 over
    /// the listed labels), as the NER token-level table shows it.
    pub fn to_micro_table(&self, digits: usize) -> String {
        self.table(digits, false)
    }

    fn table(&self, digits: usize, accuracy_row: bool) -> String {
        let mut table = Table::new(
            self.per_label.iter().map(|(label, _)| label.as_str()),
            digits,
        );
        for (label, scores) in &self.per_label {
            table.row(label, scores);
        }
        table.blank_line();
        if accuracy_row {
            table.accuracy_row(self.micro.f1, self.micro.support);
        } else {
            table.row("micro avg", &self.micro);
        }
        table.row("macro avg", &self.macro_avg);
        table.row("weighted avg", &self.weighted);
        table.finish()
    }

    /// The confusion matrix as text: one row per gold label, one right-aligned column per
    /// predicted label, headed by the label names.
    pub fn confusion_table(&self) -> String {
        let labels: Vec<&str> = self
            .per_label
            .iter()
            .map(|(label, _)| label.as_str())
            .collect();
        let name_width = labels
            .iter()
            .map(|label| label.chars().count())
            .chain(["gold \\ predicted".len()])
            .max()
            .unwrap_or(0);
        let largest = self.confusion.iter().flatten().max().copied().unwrap_or(0);
        let column_widths: Vec<usize> = labels
            .iter()
            .map(|label| label.chars().count().max(largest.to_string().len()))
            .collect();
        let mut text = format!("{:<name_width$}", "gold \\ predicted");
        for (label, width) in labels.iter().zip(&column_widths) {
            text.push_str(&format!("  {label:>width$}"));
        }
        text.push('\n');
        for (label, row) in labels.iter().zip(&self.confusion) {
            text.push_str(&format!("{label:<name_width$}"));
            for (count, width) in row.iter().zip(&column_widths) {
                text.push_str(&format!("  {count:>width$}"));
            }
            text.push('\n');
        }
        text
    }
}

/// Scores predicted labels against gold ones for the listed `labels`.
///
/// Items whose gold or predicted label is not listed still count as scikit-learn counts them:
/// a listed predicted label on an unlisted gold one is a false positive, and the reverse a false
/// negative. Errors: different numbers of gold and predicted items, no labels, or a label
/// listed twice.
pub fn classification_report(
    gold: &[impl AsRef<str>],
    predicted: &[impl AsRef<str>],
    labels: &[String],
) -> Result<ClassReport, String> {
    if gold.len() != predicted.len() {
        return Err(format!(
            "gold has {} items but predictions have {}",
            gold.len(),
            predicted.len()
        ));
    }
    if labels.is_empty() {
        return Err("no labels to report on".to_string());
    }
    let mut index_of: HashMap<&str, usize> = HashMap::new();
    for (index, label) in labels.iter().enumerate() {
        if index_of.insert(label.as_str(), index).is_some() {
            return Err(format!("label {label:?} is listed twice"));
        }
    }

    let mut counts = vec![Counts::default(); labels.len()];
    let mut confusion = vec![vec![0; labels.len()]; labels.len()];
    let mut matches = 0;
    let mut micro_is_accuracy = true;
    for (gold_label, predicted_label) in gold.iter().zip(predicted) {
        let (gold_label, predicted_label) = (gold_label.as_ref(), predicted_label.as_ref());
        let gold_index = index_of.get(gold_label).copied();
        let predicted_index = index_of.get(predicted_label).copied();
        if gold_label == predicted_label {
            matches += 1;
        }
        if let Some(index) = gold_index {
            counts[index].gold += 1;
            if gold_label == predicted_label {
                counts[index].true_positives += 1;
            }
        }
        if let Some(index) = predicted_index {
            counts[index].predicted += 1;
        }
        match (gold_index, predicted_index) {
            (Some(row), Some(column)) => confusion[row][column] += 1,
            _ => micro_is_accuracy = false,
        }
    }

    let summary = averages(&counts, F1Formula::FromCounts);
    Ok(ClassReport {
        per_label: labels
            .iter()
            .zip(&counts)
            .map(|(label, counts)| {
                (
                    label.clone(),
                    Scores::from_counts(*counts, F1Formula::FromCounts),
                )
            })
            .collect(),
        accuracy: if gold.is_empty() {
            0.0
        } else {
            matches as f64 / gold.len() as f64
        },
        micro: summary.micro,
        macro_avg: summary.macro_avg,
        weighted: summary.weighted,
        confusion,
        micro_is_accuracy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    fn close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() < 1e-12, "{actual} != {expected}");
    }

    // gold: a a a b b c ; predicted: a b a a b a. Label c is never predicted.
    // a: tp 2, predicted 4, gold 3 -> p 1/2, r 2/3, f1 4/7
    // b: tp 1, predicted 2, gold 2 -> p 1/2, r 1/2, f1 1/2
    // c: tp 0, predicted 0, gold 1 -> 0, 0, 0
    fn example() -> ClassReport {
        let gold = ["a", "a", "a", "b", "b", "c"];
        let predicted = ["a", "b", "a", "a", "b", "a"];
        classification_report(&gold, &predicted, &labels(&["a", "b", "c"])).unwrap()
    }

    #[test]
    fn per_label_numbers_by_hand() {
        let report = example();
        let (name, a) = &report.per_label[0];
        assert_eq!(name, "a");
        close(a.precision, 0.5);
        close(a.recall, 2.0 / 3.0);
        close(a.f1, 4.0 / 7.0);
        assert_eq!(a.support, 3);
        let b = report.per_label[1].1;
        close(b.precision, 0.5);
        close(b.recall, 0.5);
        close(b.f1, 0.5);
        assert_eq!(b.support, 2);
        let c = report.per_label[2].1;
        assert_eq!((c.precision, c.recall, c.f1, c.support), (0.0, 0.0, 0.0, 1));
    }

    #[test]
    fn averages_and_confusion_by_hand() {
        let report = example();
        close(report.accuracy, 3.0 / 6.0);
        // Micro: tp 3, predicted 6, gold 6.
        close(report.micro.precision, 0.5);
        close(report.micro.recall, 0.5);
        close(report.micro.f1, 0.5);
        assert_eq!(report.micro.support, 6);
        close(report.macro_avg.precision, (0.5 + 0.5 + 0.0) / 3.0);
        close(report.macro_avg.recall, (2.0 / 3.0 + 0.5) / 3.0);
        close(report.macro_avg.f1, (4.0 / 7.0 + 0.5) / 3.0);
        close(report.weighted.recall, (2.0 + 1.0) / 6.0);
        close(report.weighted.f1, (3.0 * 4.0 / 7.0 + 2.0 * 0.5) / 6.0);
        assert_eq!(
            report.confusion,
            vec![vec![2, 1, 0], vec![1, 1, 0], vec![1, 0, 0]]
        );
    }

    #[test]
    fn table_with_all_labels_shows_accuracy_row() {
        // Checked against sklearn 1.9.1: classification_report(gold, predicted,
        // labels=["a", "b", "c"], digits=2, zero_division=0).
        let expected = "              precision    recall  f1-score   support\n\
                        \n\
                        \x20          a       0.50      0.67      0.57         3\n\
                        \x20          b       0.50      0.50      0.50         2\n\
                        \x20          c       0.00      0.00      0.00         1\n\
                        \n\
                        \x20   accuracy                           0.50         6\n\
                        \x20  macro avg       0.33      0.39      0.36         6\n\
                        weighted avg       0.42      0.50      0.45         6\n";
        assert_eq!(example().to_table(2), expected);
    }

    #[test]
    fn unlisted_labels_count_as_sklearn_does() {
        // Only a and b listed; the c item (predicted a) is a false positive for a.
        let gold = ["a", "a", "a", "b", "b", "c"];
        let predicted = ["a", "b", "a", "a", "b", "a"];
        let report = classification_report(&gold, &predicted, &labels(&["a", "b"])).unwrap();
        // Micro over a and b: tp 3, predicted 6, gold 5.
        close(report.micro.precision, 0.5);
        close(report.micro.recall, 0.6);
        assert_eq!(report.micro.support, 5);
        close(report.accuracy, 0.5);
        assert_eq!(report.confusion, vec![vec![2, 1], vec![1, 1]]);
        let table = report.to_table(4);
        assert!(
            table.contains("   micro avg     0.5000    0.6000    0.5455         5\n"),
            "{table}"
        );
    }

    #[test]
    fn confusion_table_layout() {
        let expected = "gold \\ predicted  a  b  c\n\
                        a                 2  1  0\n\
                        b                 1  1  0\n\
                        c                 1  0  0\n";
        assert_eq!(example().confusion_table(), expected);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let two = labels(&["a", "b"]);
        assert!(classification_report(&["a"], &["a", "b"], &two).is_err());
        assert!(classification_report(&["a"], &["a"], &[]).is_err());
        assert!(classification_report(&["a"], &["a"], &labels(&["a", "a"])).is_err());
        let empty: [&str; 0] = [];
        let report = classification_report(&empty, &empty, &two).unwrap();
        assert_eq!(report.accuracy, 0.0);
    }
}
