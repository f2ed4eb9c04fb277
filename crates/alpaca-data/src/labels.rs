//! The tag vocabulary of a task, and checks and conversions of tagging schemes.
//!
//! Ids follow HF run_ner's `get_label_list`: the sorted unique tags of the training file, so
//! a checkpoint trained by either tool maps ids to the same labels.

use std::collections::BTreeSet;
use std::path::Path;

use alpaca_eval::scheme::{check_sentence, Scheme};

use crate::conll::Sentence;
use crate::error::{DataError, Result};

/// The ordered list of labels; a label's id is its position.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelSet {
    labels: Vec<String>,
}

impl LabelSet {
    /// Sorted unique tags of `sentences` (e.g. `B-LOC, B-MISC, ..., O`).
    pub fn from_sentences(sentences: &[Sentence]) -> LabelSet {
        let unique: BTreeSet<&str> = sentences
            .iter()
            .flat_map(|sentence| sentence.tags.iter().map(String::as_str))
            .collect();
        LabelSet {
            labels: unique.into_iter().map(str::to_string).collect(),
        }
    }

    /// Labels in the given order, e.g. from a checkpoint's `id2label`, whose ids must not move.
    pub fn from_labels(labels: Vec<String>) -> LabelSet {
        LabelSet { labels }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Id of `label`, if it is in the set.
    pub fn id(&self, label: &str) -> Option<usize> {
        self.labels.iter().position(|known| known == label)
    }

    /// Label of `id`. Ids come from this set or from a model head sized by it.
    ///
    /// # Panics
    /// If `id >= self.len()`, which means the caller mixed up label sets.
    pub fn label(&self, id: usize) -> &str {
        &self.labels[id]
    }

    /// Fails on the first tag that is not in the set, naming its line: a tag the model never
    /// saw in training can never be predicted, which would silently lower the scores.
    pub fn check(&self, sentences: &[Sentence], path: &Path) -> Result<()> {
        for sentence in sentences {
            for (index, tag) in sentence.tags.iter().enumerate() {
                if self.id(tag).is_none() {
                    return Err(DataError::Parse {
                        path: path.to_path_buf(),
                        line: sentence.line + index,
                        message: format!(
                            "tag {tag:?} does not occur in the training file; known tags: {}",
                            self.labels.join(", ")
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Fails on the first sentence whose tags break `scheme`, naming the line and the reason.
pub fn check_scheme(sentences: &[Sentence], scheme: Scheme, path: &Path) -> Result<()> {
    for sentence in sentences {
        if let Err((index, reason)) = check_sentence(&sentence.tags, scheme) {
            return Err(DataError::Parse {
                path: path.to_path_buf(),
                line: sentence.line + index,
                message: format!(
                    "tags do not follow the {scheme} scheme: {reason}; \
                     use --tag-scheme to choose iob1|iob2|bioes"
                ),
            });
        }
    }
    Ok(())
}

/// Rewrites `tags` from one scheme into another through entity spans (tags → spans → tags),
/// so that a model always trains on one scheme whatever the file used.
///
/// Decoding is lenient and the same for all three schemes: `B-`/`S-` start an entity, `I-`/`E-`
/// continue an open entity of the same type (or start one), `E-`/`S-` close it, and `O` or a
/// tag without a recognised prefix is outside. Run [`check_scheme`] first to reject bad input.
/// When `from` and `to` are the same scheme the tags are returned unchanged.
pub fn convert_scheme(tags: &[String], from: Scheme, to: Scheme) -> Vec<String> {
    let target = Target::of(&to);
    if Target::of(&from) == target {
        return tags.to_vec();
    }
    let spans = decode_spans(tags);
    encode_spans(&spans, tags.len(), target)
}

/// The schemes this module can write, matched by reference so `Scheme` needs no extra traits.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    Iob1,
    Iob2,
    Bioes,
}

impl Target {
    fn of(scheme: &Scheme) -> Target {
        match scheme {
            Scheme::Iob1 => Target::Iob1,
            Scheme::Iob2 => Target::Iob2,
            Scheme::Bioes => Target::Bioes,
        }
    }
}

/// An entity: its type and the token range `start..end`.
#[derive(Debug, Clone, PartialEq)]
struct Span {
    kind: String,
    start: usize,
    end: usize,
}

/// Splits `B-PER` into (`'B'`, `"PER"`); `None` for `O` and anything unrecognised.
fn prefix_and_kind(tag: &str) -> Option<(char, &str)> {
    let (prefix, kind) = tag.split_once('-')?;
    match prefix {
        "B" | "I" | "E" | "S" if !kind.is_empty() => Some((prefix.chars().next()?, kind)),
        _ => None,
    }
}

fn decode_spans(tags: &[String]) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut open: Option<Span> = None;
    for (position, tag) in tags.iter().enumerate() {
        let Some((prefix, kind)) = prefix_and_kind(tag) else {
            spans.extend(open.take());
            continue;
        };
        let continues =
            matches!(prefix, 'I' | 'E') && open.as_ref().is_some_and(|span| span.kind == kind);
        if continues {
            if let Some(span) = open.as_mut() {
                span.end = position + 1;
            }
        } else {
            spans.extend(open.take());
            open = Some(Span {
                kind: kind.to_string(),
                start: position,
                end: position + 1,
            });
        }
        if matches!(prefix, 'E' | 'S') {
            spans.extend(open.take());
        }
    }
    spans.extend(open);
    spans
}

fn encode_spans(spans: &[Span], len: usize, target: Target) -> Vec<String> {
    let mut tags = vec!["O".to_string(); len];
    let mut previous: Option<&Span> = None;
    for span in spans {
        let single = span.end - span.start == 1;
        for (position, tag) in tags.iter_mut().enumerate().take(span.end).skip(span.start) {
            let first = position == span.start;
            let last = position + 1 == span.end;
            let prefix = match target {
                Target::Iob2 => {
                    if first {
                        "B"
                    } else {
                        "I"
                    }
                }
                Target::Bioes if single => "S",
                Target::Bioes => {
                    if first {
                        "B"
                    } else if last {
                        "E"
                    } else {
                        "I"
                    }
                }
                Target::Iob1 => {
                    // IOB1 writes B- only where an entity directly follows one of the same type.
                    let touches_same_kind = previous
                        .is_some_and(|before| before.end == span.start && before.kind == span.kind);
                    if first && touches_same_kind {
                        "B"
                    } else {
                        "I"
                    }
                }
            };
            *tag = format!("{prefix}-{}", span.kind);
        }
        previous = Some(span);
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(tags: &str) -> Vec<String> {
        tags.split_whitespace().map(str::to_string).collect()
    }

    fn sentence(tags: &str, line: usize) -> Sentence {
        let tags = strings(tags);
        Sentence {
            words: tags.iter().map(|_| "w".to_string()).collect(),
            tags,
            line,
        }
    }

    #[test]
    fn label_set_is_sorted_and_unique() {
        let sentences = vec![sentence("B-PER I-PER O", 1), sentence("O B-LOC", 5)];
        let labels = LabelSet::from_sentences(&sentences);
        assert_eq!(labels.labels(), strings("B-LOC B-PER I-PER O").as_slice());
        assert_eq!(labels.id("B-PER"), Some(1));
        assert_eq!(labels.id("B-ORG"), None);
        assert_eq!(labels.label(3), "O");
        assert_eq!(labels.len(), 4);
        assert!(!labels.is_empty());
    }

    #[test]
    fn from_labels_keeps_order_and_round_trips_through_json() {
        let labels = LabelSet::from_labels(strings("O B-PER I-PER"));
        assert_eq!(labels.id("O"), Some(0));
        let json = serde_json::to_string(&labels).unwrap();
        assert_eq!(serde_json::from_str::<LabelSet>(&json).unwrap(), labels);
    }

    #[test]
    fn unseen_tag_names_its_line() {
        let labels = LabelSet::from_sentences(&[sentence("B-PER O", 1)]);
        let dev = vec![sentence("O O", 3), sentence("O B-FOO O", 7)];
        let error = labels.check(&dev, Path::new("dev.txt")).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("dev.txt:8: tag \"B-FOO\" does not occur"),
            "{message}"
        );
        assert!(message.contains("known tags: B-PER, O"), "{message}");
        assert!(labels.check(&dev[..1], Path::new("dev.txt")).is_ok());
    }

    #[test]
    fn scheme_violation_names_line_and_the_flag() {
        let sentences = vec![sentence("B-PER I-PER", 1), sentence("O O I-LOC", 4)];
        let error = check_scheme(&sentences, Scheme::Iob2, Path::new("train.txt")).unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("train.txt:6: "), "{message}");
        assert!(
            message.contains("use --tag-scheme to choose iob1|iob2|bioes"),
            "{message}"
        );
        assert!(check_scheme(&sentences[..1], Scheme::Iob2, Path::new("train.txt")).is_ok());
    }

    #[test]
    fn conversion_round_trips_on_a_hand_case() {
        // Two adjacent PER entities, a one-token LOC, a three-token ORG, a one-token MISC.
        let iob1 = strings("I-PER I-PER B-PER O I-LOC I-ORG I-ORG I-ORG O I-MISC");
        let iob2 = strings("B-PER I-PER B-PER O B-LOC B-ORG I-ORG I-ORG O B-MISC");
        let bioes = strings("B-PER E-PER S-PER O S-LOC B-ORG I-ORG E-ORG O S-MISC");
        let all = [
            (Scheme::Iob1, &iob1),
            (Scheme::Iob2, &iob2),
            (Scheme::Bioes, &bioes),
        ];
        for (from, source) in &all {
            for (to, expected) in &all {
                let converted = convert_scheme(source, *from, *to);
                assert_eq!(&&converted, expected, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn iob1_to_iob2_starts_entities_with_b() {
        let converted = convert_scheme(
            &strings("O I-LOC I-LOC O I-PER"),
            Scheme::Iob1,
            Scheme::Iob2,
        );
        assert_eq!(converted, strings("O B-LOC I-LOC O B-PER"));
    }
}
