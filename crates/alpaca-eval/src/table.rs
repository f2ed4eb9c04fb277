//! The plain-text report layout shared by seqeval and scikit-learn's `classification_report`,
//! reproduced character for character so logs can be diffed against the Python scripts.

use crate::scores::Scores;

const HEADERS: [&str; 4] = ["precision", "recall", "f1-score", "support"];

/// The longest average row name; the first column is at least this wide.
const LONGEST_AVERAGE_NAME: &str = "weighted avg";

/// Builds a report: header, blank line, class rows, blank line, average rows.
pub(crate) struct Table {
    text: String,
    width: usize,
    digits: usize,
}

impl Table {
    /// Starts a table whose first column fits `names` (the class names) and the average names.
    pub(crate) fn new<'a>(names: impl IntoIterator<Item = &'a str>, digits: usize) -> Table {
        let width = names
            .into_iter()
            .map(|name| name.chars().count())
            .chain([LONGEST_AVERAGE_NAME.len(), digits])
            .max()
            .unwrap_or(0);
        let mut text = format!("{:>width$} ", "");
        for header in HEADERS {
            text.push_str(&format!(" {header:>9}"));
        }
        text.push_str("\n\n");
        Table {
            text,
            width,
            digits,
        }
    }

    /// Appends one row of scores.
    pub(crate) fn row(&mut self, name: &str, scores: &Scores) {
        let (width, digits) = (self.width, self.digits);
        self.text.push_str(&format!(
            "{name:>width$}  {:>9.digits$} {:>9.digits$} {:>9.digits$} {:>9}\n",
            scores.precision, scores.recall, scores.f1, scores.support
        ));
    }

    /// Appends scikit-learn's accuracy row: only the F1 column and the support are filled.
    pub(crate) fn accuracy_row(&mut self, accuracy: f64, support: usize) {
        let (width, digits) = (self.width, self.digits);
        self.text.push_str(&format!(
            "{:>width$}  {:>9} {:>9} {accuracy:>9.digits$} {support:>9}\n",
            "accuracy", "", ""
        ));
    }

    pub(crate) fn blank_line(&mut self) {
        self.text.push('\n');
    }

    pub(crate) fn finish(self) -> String {
        self.text
    }
}
