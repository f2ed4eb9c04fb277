//! Entity-level precision, recall and F1, as `seqeval.metrics.classification_report` computes
//! them in its default mode: an entity counts as correct only when its type and its exact token
//! span both match.

use std::collections::{BTreeMap, HashSet};

use crate::scheme::{entities, Entity, Scheme};
use crate::scores::{averages, Counts, F1Formula};
use crate::table::Table;

pub use crate::scores::Scores;

/// Per-type rows (sorted by type name) and the three averages of an entity-level evaluation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EntityReport {
    pub per_type: Vec<(String, Scores)>,
    pub micro: Scores,
    pub macro_avg: Scores,
    pub weighted: Scores,
}

impl EntityReport {
    /// The micro-averaged F1: the headline number of NER evaluations (seqeval's `f1_score`).
    pub fn f1(&self) -> f64 {
        self.micro.f1
    }

    /// The report in seqeval's text layout, with `digits` decimals (seqeval's default is 2).
    pub fn to_table(&self, digits: usize) -> String {
        let mut table = Table::new(self.per_type.iter().map(|(kind, _)| kind.as_str()), digits);
        for (kind, scores) in &self.per_type {
            table.row(kind, scores);
        }
        table.blank_line();
        table.row("micro avg", &self.micro);
        table.row("macro avg", &self.macro_avg);
        table.row("weighted avg", &self.weighted);
        table.finish()
    }
}

/// Scores predicted entities against gold ones, sentence by sentence.
///
/// Types are the union of those in gold and predictions (seqeval does the same), so a type only
/// ever predicted gets a row with zero support that lowers the macro average. Sentences must
/// line up one to one and token for token; otherwise an error names the first mismatch, since
/// silently padding or truncating would report scores for data that was never compared.
pub fn entity_report(
    gold: &[Vec<String>],
    predicted: &[Vec<String>],
    scheme: Scheme,
) -> Result<EntityReport, String> {
    if gold.len() != predicted.len() {
        return Err(format!(
            "gold has {} sentences but predictions have {}",
            gold.len(),
            predicted.len()
        ));
    }
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    for (index, (gold_tags, predicted_tags)) in gold.iter().zip(predicted).enumerate() {
        if gold_tags.len() != predicted_tags.len() {
            return Err(format!(
                "sentence {index}: gold has {} tags but predictions have {}",
                gold_tags.len(),
                predicted_tags.len()
            ));
        }
        let gold_entities = entities(gold_tags, scheme);
        let predicted_entities: HashSet<Entity> =
            entities(predicted_tags, scheme).into_iter().collect();
        for entity in &gold_entities {
            let entry = counts.entry(entity.kind.clone()).or_default();
            entry.gold += 1;
            if predicted_entities.contains(entity) {
                entry.true_positives += 1;
            }
        }
        for entity in &predicted_entities {
            counts.entry(entity.kind.clone()).or_default().predicted += 1;
        }
    }
    let per_class: Vec<Counts> = counts.values().copied().collect();
    let summary = averages(&per_class, F1Formula::FromRates);
    Ok(EntityReport {
        per_type: counts
            .into_iter()
            .map(|(kind, counts)| (kind, Scores::from_counts(counts, F1Formula::FromRates)))
            .collect(),
        micro: summary.micro,
        macro_avg: summary.macro_avg,
        weighted: summary.weighted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(sentences: &[&str]) -> Vec<Vec<String>> {
        sentences
            .iter()
            .map(|text| text.split_whitespace().map(str::to_string).collect())
            .collect()
    }

    fn readme_example() -> EntityReport {
        let gold = corpus(&["O O O B-MISC I-MISC I-MISC O", "B-PER I-PER O"]);
        let predicted = corpus(&["O O B-MISC I-MISC I-MISC I-MISC O", "B-PER I-PER O"]);
        entity_report(&gold, &predicted, Scheme::Iob2).unwrap()
    }

    fn scores(precision: f64, recall: f64, f1: f64, support: usize) -> Scores {
        Scores {
            precision,
            recall,
            f1,
            support,
        }
    }

    #[test]
    fn seqeval_readme_numbers() {
        let report = readme_example();
        assert_eq!(
            report.per_type,
            vec![
                ("MISC".to_string(), scores(0.0, 0.0, 0.0, 1)),
                ("PER".to_string(), scores(1.0, 1.0, 1.0, 1)),
            ]
        );
        assert_eq!(report.micro, scores(0.5, 0.5, 0.5, 2));
        assert_eq!(report.macro_avg, scores(0.5, 0.5, 0.5, 2));
        assert_eq!(report.weighted, scores(0.5, 0.5, 0.5, 2));
        assert_eq!(report.f1(), 0.5);
    }

    #[test]
    fn seqeval_readme_table() {
        let expected = "              precision    recall  f1-score   support\n\
                        \n\
                        \x20       MISC       0.00      0.00      0.00         1\n\
                        \x20        PER       1.00      1.00      1.00         1\n\
                        \n\
                        \x20  micro avg       0.50      0.50      0.50         2\n\
                        \x20  macro avg       0.50      0.50      0.50         2\n\
                        weighted avg       0.50      0.50      0.50         2\n";
        assert_eq!(readme_example().to_table(2), expected);
    }

    #[test]
    fn differing_counts_by_hand() {
        // Gold: PER[0,2), LOC[3,4) | ORG[0,1), PER[2,3)             -> PER 2, LOC 1, ORG 1
        // Pred: PER[0,2), LOC[3,4) | ORG[0,2), PER[2,3), MISC[3,4)  -> PER 2, LOC 1, ORG 1, MISC 1
        // Correct: PER[0,2), LOC[3,4), PER[2,3)                     -> tp PER 2, LOC 1
        let gold = corpus(&["B-PER I-PER O B-LOC", "B-ORG O B-PER O"]);
        let predicted = corpus(&["B-PER I-PER O I-LOC", "B-ORG I-ORG B-PER B-MISC"]);
        let report = entity_report(&gold, &predicted, Scheme::Iob2).unwrap();
        let names: Vec<&str> = report
            .per_type
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(names, ["LOC", "MISC", "ORG", "PER"]);
        assert_eq!(report.per_type[0].1, scores(1.0, 1.0, 1.0, 1));
        assert_eq!(report.per_type[1].1, scores(0.0, 0.0, 0.0, 0));
        assert_eq!(report.per_type[2].1, scores(0.0, 0.0, 0.0, 1));
        assert_eq!(report.per_type[3].1, scores(1.0, 1.0, 1.0, 2));
        // Micro: tp 3, predicted 5, gold 4.
        assert_eq!(report.micro.precision, 0.6);
        assert_eq!(report.micro.recall, 0.75);
        assert!((report.micro.f1 - 2.0 * 0.6 * 0.75 / 1.35).abs() < 1e-12);
        assert_eq!(report.micro.support, 4);
        // Macro over the 4 types in gold or predictions: (1 + 0 + 0 + 1) / 4.
        assert_eq!(report.macro_avg, scores(0.5, 0.5, 0.5, 4));
        // Weighted by gold support 1, 0, 1, 2: (1 + 2) / 4.
        assert_eq!(report.weighted, scores(0.75, 0.75, 0.75, 4));
    }

    #[test]
    fn mismatched_inputs_are_errors() {
        let gold = corpus(&["B-PER O", "O"]);
        let error = entity_report(&gold, &corpus(&["B-PER O"]), Scheme::Iob2).unwrap_err();
        assert!(error.contains("2 sentences"), "{error}");
        let error = entity_report(&gold, &corpus(&["B-PER O", "O O"]), Scheme::Iob2).unwrap_err();
        assert!(error.starts_with("sentence 1"), "{error}");
    }

    #[test]
    fn no_entities_gives_zeros_and_a_table() {
        let gold = corpus(&["O O"]);
        let report = entity_report(&gold, &gold, Scheme::Iob2).unwrap();
        assert!(report.per_type.is_empty());
        assert_eq!(report.f1(), 0.0);
        assert!(report
            .to_table(4)
            .ends_with("weighted avg     0.0000    0.0000    0.0000         0\n"));
    }
}
