//! Precision, recall, F1 and support from counts, and the three averages that seqeval and
//! scikit-learn print under their per-class rows.

/// The scores of one row of a report.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Scores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Number of gold items (entities or labels) of the row.
    pub support: usize,
}

/// Match counts for one class: the raw material every score is computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub true_positives: usize,
    pub predicted: usize,
    pub gold: usize,
}

/// How F1 is computed. Both give the same value mathematically; we follow each library's
/// formula so the last bits, and therefore the printed rounding, agree with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum F1Formula {
    /// seqeval: `2·p·r / (p + r)`.
    FromRates,
    /// scikit-learn ≥ 1.3: `2·tp / (gold + predicted)`.
    FromCounts,
}

/// Divides, reading 0/0 as 0 (the value of both libraries' default `zero_division`).
fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator == 0.0 {
        0.0
    } else {
        numerator / denominator
    }
}

impl Scores {
    pub(crate) fn from_counts(counts: Counts, formula: F1Formula) -> Scores {
        let true_positives = counts.true_positives as f64;
        let precision = ratio(true_positives, counts.predicted as f64);
        let recall = ratio(true_positives, counts.gold as f64);
        let f1 = match formula {
            F1Formula::FromRates => ratio(2.0 * precision * recall, precision + recall),
            F1Formula::FromCounts => ratio(
                2.0 * true_positives,
                (counts.gold + counts.predicted) as f64,
            ),
        };
        Scores {
            precision,
            recall,
            f1,
            support: counts.gold,
        }
    }
}

/// The micro, macro and support-weighted averages over per-class rows.
pub(crate) struct Averages {
    pub micro: Scores,
    pub macro_avg: Scores,
    pub weighted: Scores,
}

pub(crate) fn averages(per_class: &[Counts], formula: F1Formula) -> Averages {
    let total = per_class
        .iter()
        .fold(Counts::default(), |sum, counts| Counts {
            true_positives: sum.true_positives + counts.true_positives,
            predicted: sum.predicted + counts.predicted,
            gold: sum.gold + counts.gold,
        });
    let rows: Vec<Scores> = per_class
        .iter()
        .map(|counts| Scores::from_counts(*counts, formula))
        .collect();
    let uniform = vec![1.0; rows.len()];
    let by_support: Vec<f64> = rows.iter().map(|row| row.support as f64).collect();
    Averages {
        micro: Scores::from_counts(total, formula),
        macro_avg: weighted_mean(&rows, &uniform, total.gold),
        weighted: weighted_mean(&rows, &by_support, total.gold),
    }
}

/// Weighted mean of each score; all zeros when the weights sum to zero (no rows, or no gold
/// items for a support-weighted mean), as both libraries report with default `zero_division`.
fn weighted_mean(rows: &[Scores], weights: &[f64], support: usize) -> Scores {
    let weight_sum: f64 = weights.iter().sum();
    let mean = |score: fn(&Scores) -> f64| {
        let total: f64 = rows
            .iter()
            .zip(weights)
            .map(|(row, weight)| score(row) * weight)
            .sum();
        ratio(total, weight_sum)
    };
    Scores {
        precision: mean(|row| row.precision),
        recall: mean(|row| row.recall),
        f1: mean(|row| row.f1),
        support,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_over_zero_is_zero() {
        let scores = Scores::from_counts(Counts::default(), F1Formula::FromRates);
        assert_eq!(
            (scores.precision, scores.recall, scores.f1),
            (0.0, 0.0, 0.0)
        );
        let empty = averages(&[], F1Formula::FromCounts);
        assert_eq!(empty.weighted.f1, 0.0);
        assert_eq!(empty.macro_avg.support, 0);
    }

    #[test]
    fn averages_by_hand() {
        // Class a: tp 1, predicted 2, gold 4 -> p 0.5, r 0.25, f1 1/3.
        // Class b: tp 3, predicted 3, gold 3 -> 1, 1, 1.
        let counts = [
            Counts {
                true_positives: 1,
                predicted: 2,
                gold: 4,
            },
            Counts {
                true_positives: 3,
                predicted: 3,
                gold: 3,
            },
        ];
        let result = averages(&counts, F1Formula::FromRates);
        assert_eq!(result.micro.precision, 4.0 / 5.0);
        assert_eq!(result.micro.recall, 4.0 / 7.0);
        assert!((result.micro.f1 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(result.macro_avg.precision, 0.75);
        assert!((result.macro_avg.f1 - 2.0 / 3.0).abs() < 1e-12);
        assert!((result.weighted.recall - (0.25 * 4.0 + 3.0) / 7.0).abs() < 1e-12);
        assert_eq!(result.weighted.support, 7);
    }
}
