//! Tag schemes for token labelling (IOB1, IOB2, BIOES): parsing tags, detecting and checking a
//! scheme, and turning a tag sequence into entity spans.
//!
//! Span extraction follows python seqeval's default (conlleval-compatible) mode, so that the
//! entity-level scores we print are the numbers users compare against from the HF scripts.

use std::fmt;
use std::str::FromStr;

/// How entity boundaries are written in a tag sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// `I-` everywhere; `B-` only where two entities of one type touch.
    Iob1,
    /// Every entity opens with `B-` (CoNLL-2003 as shipped in the assets).
    Iob2,
    /// `B-`, `I-`, `E-` for multi-token entities, `S-` for single-token ones.
    Bioes,
}

impl FromStr for Scheme {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "iob1" => Ok(Scheme::Iob1),
            "iob2" | "bio" => Ok(Scheme::Iob2),
            "bioes" | "iobes" => Ok(Scheme::Bioes),
            _ => Err(format!(
                "unknown tag scheme {text:?}: expected iob1, iob2 (bio) or bioes (iobes)"
            )),
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Scheme::Iob1 => "iob1",
            Scheme::Iob2 => "iob2",
            Scheme::Bioes => "bioes",
        };
        formatter.write_str(name)
    }
}

/// The position marker of a tag: begin, inside, end, single, outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    B,
    I,
    E,
    S,
    O,
}

/// Splits a tag into its prefix and entity type: `"B-PER"` gives `(B, "PER")`, `"O"` gives
/// `(O, "")`. The split is at the first `-`, so a type may itself contain `-` (`"B-ORG-CORP"`).
pub fn split_tag(tag: &str) -> Result<(Prefix, &str), String> {
    if tag == "O" {
        return Ok((Prefix::O, ""));
    }
    let malformed =
        || format!("tag {tag:?}: expected O or a B-/I-/E-/S- prefix followed by an entity type");
    let (head, kind) = tag.split_once('-').ok_or_else(malformed)?;
    let prefix = match head {
        "B" => Prefix::B,
        "I" => Prefix::I,
        "E" => Prefix::E,
        "S" => Prefix::S,
        _ => return Err(malformed()),
    };
    if kind.is_empty() {
        return Err(malformed());
    }
    Ok((prefix, kind))
}

/// Parses a tag for span extraction and scheme detection, where a malformed tag must not stop
/// an evaluation: it reads as `O`. Use [`check_sentence`] to find such tags.
fn parse_or_outside(tag: &str) -> (Prefix, &str) {
    split_tag(tag).unwrap_or((Prefix::O, ""))
}

/// Guesses the scheme of one flat tag sequence (treated as a single sentence).
/// See [`detect_scheme_in_sentences`] for the rules.
pub fn detect_scheme<'a>(tags: impl IntoIterator<Item = &'a str>) -> Scheme {
    let mut evidence = SchemeEvidence::default();
    evidence.observe(tags);
    evidence.verdict()
}

/// Guesses the scheme of a corpus: any `E-`/`S-` tag means BIOES; an `I-X` that opens an
/// entity (first token, after `O`, or after another type) while no `B-` ever opens one means
/// IOB1; anything else is IOB2. Sentences are read separately because an entity cannot cross
/// a sentence boundary.
pub fn detect_scheme_in_sentences(sentences: &[Vec<String>]) -> Scheme {
    let mut evidence = SchemeEvidence::default();
    for sentence in sentences {
        evidence.observe(sentence.iter().map(String::as_str));
    }
    evidence.verdict()
}

/// What the tags seen so far say about their scheme.
#[derive(Default)]
struct SchemeEvidence {
    has_end_or_single: bool,
    inside_opens_entity: bool,
    begin_opens_entity: bool,
}

impl SchemeEvidence {
    fn observe<'a>(&mut self, sentence: impl IntoIterator<Item = &'a str>) {
        let mut previous = (Prefix::O, "");
        for tag in sentence {
            let (prefix, kind) = parse_or_outside(tag);
            let opens = previous.0 == Prefix::O || previous.1 != kind;
            match prefix {
                Prefix::E | Prefix::S => self.has_end_or_single = true,
                Prefix::I if opens => self.inside_opens_entity = true,
                Prefix::B if opens => self.begin_opens_entity = true,
                _ => {}
            }
            previous = (prefix, kind);
        }
    }

    fn verdict(&self) -> Scheme {
        if self.has_end_or_single {
            Scheme::Bioes
        } else if self.inside_opens_entity && !self.begin_opens_entity {
            Scheme::Iob1
        } else {
            Scheme::Iob2
        }
    }
}

/// Finds the first position in a sentence that breaks `scheme`, with the reason.
///
/// IOB2: `I-X` must follow `B-X` or `I-X`. IOB1: any `B-`/`I-` order is accepted (a `B-X` after
/// `O` is non-canonical but harmless). BIOES: `I-X`/`E-X` must follow `B-X` or `I-X`, and
/// `B-X`/`I-X` must be followed by `I-X` or `E-X` (an entity left open at the end of the sentence
/// is reported at its last tag). `E-`/`S-` are errors outside BIOES; malformed tags always are.
pub fn check_sentence(tags: &[String], scheme: Scheme) -> Result<(), (usize, String)> {
    let mut previous: Option<(Prefix, &str, &str)> = None;
    for (position, tag) in tags.iter().enumerate() {
        let (prefix, kind) = split_tag(tag).map_err(|reason| (position, reason))?;
        if scheme != Scheme::Bioes && matches!(prefix, Prefix::E | Prefix::S) {
            return Err((
                position,
                format!("tag {tag:?}: E-/S- prefixes are not part of {scheme}"),
            ));
        }
        let continues_from = |previous: Option<(Prefix, &str, &str)>| matches!(previous, Some((Prefix::B | Prefix::I, previous_kind, _)) if previous_kind == kind);
        match scheme {
            Scheme::Iob1 => {}
            Scheme::Iob2 => {
                if prefix == Prefix::I && !continues_from(previous) {
                    return Err((
                        position,
                        format!("tag {tag:?} must follow B-{kind} or I-{kind} in iob2"),
                    ));
                }
            }
            Scheme::Bioes => {
                let previous_open = matches!(previous, Some((Prefix::B | Prefix::I, _, _)));
                let continuation = matches!(prefix, Prefix::I | Prefix::E);
                if previous_open && !(continuation && continues_from(previous)) {
                    let (_, open_kind, open_tag) = previous.unwrap_or((Prefix::O, "", ""));
                    return Err((
                        position,
                        format!(
                            "tag {tag:?} after {open_tag:?}: an open entity must continue with \
                             I-{open_kind} or E-{open_kind} in bioes"
                        ),
                    ));
                }
                if !previous_open && continuation {
                    return Err((
                        position,
                        format!("tag {tag:?} must follow B-{kind} or I-{kind} in bioes"),
                    ));
                }
            }
        }
        previous = Some((prefix, kind, tag));
    }
    if scheme == Scheme::Bioes {
        if let Some((Prefix::B | Prefix::I, kind, tag)) = previous {
            return Err((
                tags.len() - 1,
                format!(
                    "tag {tag:?} ends the sentence but leaves {kind} open: close it with E-{kind}"
                ),
            ));
        }
    }
    Ok(())
}

/// One entity: its type and token span (`end` exclusive).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Entity {
    pub kind: String,
    pub start: usize,
    pub end: usize,
}

/// Extracts the entities of one sentence exactly as seqeval's default mode `get_entities` does.
///
/// seqeval's default mode applies one set of lenient boundary rules ([`ends_chunk`] and
/// [`starts_chunk`]) to every scheme, so `scheme` does not change the result; it is taken so
/// callers state what they evaluate. Malformed tags read as `O`.
pub fn entities(tags: &[impl AsRef<str>], scheme: Scheme) -> Vec<Entity> {
    let _ = scheme;
    let mut found = Vec::new();
    let mut previous = (Prefix::O, "");
    let mut start = 0;
    // A trailing `O` closes whatever entity is still open at the end of the sentence.
    let padded = tags.iter().map(AsRef::as_ref).chain(std::iter::once("O"));
    for (position, tag) in padded.enumerate() {
        let current = parse_or_outside(tag);
        if ends_chunk(previous, current) {
            found.push(Entity {
                kind: previous.1.to_string(),
                start,
                end: position,
            });
        }
        if starts_chunk(previous, current) {
            start = position;
        }
        previous = current;
    }
    found
}

/// Whether the entity holding the previous tag ends before the current tag (seqeval's
/// `end_of_chunk`): `E`/`S` always close; `B`/`I` close before `B`, `S` or `O`; and any entity
/// closes when the type changes.
fn ends_chunk(previous: (Prefix, &str), current: (Prefix, &str)) -> bool {
    use Prefix::*;
    let (previous_prefix, previous_kind) = previous;
    let (prefix, kind) = current;
    match (previous_prefix, prefix) {
        (O, _) => false,
        (E | S, _) => true,
        (B | I, B | S | O) => true,
        _ => previous_kind != kind,
    }
}

/// Whether the current tag opens a new entity (seqeval's `start_of_chunk`): `B` and `S` always
/// open; `I`/`E` open after `E`, `S` or `O` (a dangling `I` after `O` is an entity); and any
/// non-`O` tag opens one when the type changes.
fn starts_chunk(previous: (Prefix, &str), current: (Prefix, &str)) -> bool {
    use Prefix::*;
    let (previous_prefix, previous_kind) = previous;
    let (prefix, kind) = current;
    match (previous_prefix, prefix) {
        (_, O) => false,
        (_, B | S) => true,
        (E | S | O, I | E) => true,
        _ => previous_kind != kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_string).collect()
    }

    fn spans(text: &str, scheme: Scheme) -> Vec<(String, usize, usize)> {
        entities(&tags(text), scheme)
            .into_iter()
            .map(|entity| (entity.kind, entity.start, entity.end))
            .collect()
    }

    fn span(kind: &str, start: usize, end: usize) -> (String, usize, usize) {
        (kind.to_string(), start, end)
    }

    #[test]
    fn iob2_entities() {
        assert_eq!(
            spans("B-PER I-PER O B-LOC", Scheme::Iob2),
            vec![span("PER", 0, 2), span("LOC", 3, 4)]
        );
    }

    #[test]
    fn iob1_entities() {
        assert_eq!(
            spans("I-PER I-PER B-PER O I-LOC", Scheme::Iob1),
            vec![span("PER", 0, 2), span("PER", 2, 3), span("LOC", 4, 5)]
        );
    }

    #[test]
    fn bioes_entities() {
        assert_eq!(
            spans("B-ORG E-ORG S-PER O B-LOC I-LOC E-LOC", Scheme::Bioes),
            vec![span("ORG", 0, 2), span("PER", 2, 3), span("LOC", 4, 7)]
        );
    }

    #[test]
    fn inside_of_another_type_starts_new_entity() {
        assert_eq!(
            spans("B-LOC I-PER I-PER", Scheme::Iob2),
            vec![span("LOC", 0, 1), span("PER", 1, 3)]
        );
        assert_eq!(
            spans("I-LOC I-PER", Scheme::Iob2),
            vec![span("LOC", 0, 1), span("PER", 1, 2)]
        );
    }

    #[test]
    fn dangling_inside_after_outside_starts_entity() {
        assert_eq!(
            spans("O I-MISC I-MISC O", Scheme::Iob2),
            vec![span("MISC", 1, 3)]
        );
    }

    #[test]
    fn inside_after_end_or_single_starts_entity() {
        assert_eq!(
            spans("S-PER I-PER E-PER E-PER", Scheme::Bioes),
            vec![span("PER", 0, 1), span("PER", 1, 3), span("PER", 3, 4)]
        );
    }

    #[test]
    fn hyphenated_types_and_malformed_tags() {
        assert_eq!(
            spans("B-ORG-CORP I-ORG-CORP X-PER B-LOC", Scheme::Iob2),
            vec![span("ORG-CORP", 0, 2), span("LOC", 3, 4)]
        );
        assert!(spans("", Scheme::Iob2).is_empty());
    }

    #[test]
    fn split_tag_accepts_and_rejects() {
        assert_eq!(split_tag("B-PER"), Ok((Prefix::B, "PER")));
        assert_eq!(split_tag("S-A-B"), Ok((Prefix::S, "A-B")));
        assert_eq!(split_tag("O"), Ok((Prefix::O, "")));
        for bad in ["X-PER", "B-", "", "B", "B_PER", "o"] {
            let error = split_tag(bad).unwrap_err();
            assert!(
                error.contains("expected O or a B-/I-/E-/S- prefix"),
                "{error}"
            );
        }
    }

    #[test]
    fn scheme_names() {
        assert_eq!("BIO".parse::<Scheme>(), Ok(Scheme::Iob2));
        assert_eq!("IOBES".parse::<Scheme>(), Ok(Scheme::Bioes));
        assert_eq!("iob1".parse::<Scheme>(), Ok(Scheme::Iob1));
        assert!("bilou".parse::<Scheme>().is_err());
        assert_eq!(Scheme::Bioes.to_string(), "bioes");
        assert_eq!(serde_json::to_string(&Scheme::Iob2).unwrap(), "\"iob2\"");
        let parsed: Scheme = serde_json::from_str("\"iob1\"").unwrap();
        assert_eq!(parsed, Scheme::Iob1);
    }

    #[test]
    fn check_sentence_iob2() {
        assert_eq!(
            check_sentence(&tags("O I-PER"), Scheme::Iob2)
                .unwrap_err()
                .0,
            1
        );
        assert_eq!(
            check_sentence(&tags("B-PER I-LOC"), Scheme::Iob2)
                .unwrap_err()
                .0,
            1
        );
        assert_eq!(
            check_sentence(&tags("I-PER"), Scheme::Iob2).unwrap_err().0,
            0
        );
        assert!(check_sentence(&tags("B-PER I-PER O B-LOC B-LOC"), Scheme::Iob2).is_ok());
        assert_eq!(
            check_sentence(&tags("O S-PER"), Scheme::Iob2)
                .unwrap_err()
                .0,
            1
        );
        assert_eq!(
            check_sentence(&tags("O X-PER"), Scheme::Iob2)
                .unwrap_err()
                .0,
            1
        );
    }

    #[test]
    fn check_sentence_iob1() {
        assert!(check_sentence(&tags("I-PER B-PER O B-LOC I-MISC"), Scheme::Iob1).is_ok());
        assert_eq!(
            check_sentence(&tags("O E-PER"), Scheme::Iob1)
                .unwrap_err()
                .0,
            1
        );
    }

    #[test]
    fn check_sentence_bioes() {
        assert_eq!(
            check_sentence(&tags("B-PER O"), Scheme::Bioes)
                .unwrap_err()
                .0,
            1
        );
        assert_eq!(
            check_sentence(&tags("O B-PER"), Scheme::Bioes)
                .unwrap_err()
                .0,
            1
        );
        assert_eq!(
            check_sentence(&tags("B-PER E-LOC"), Scheme::Bioes)
                .unwrap_err()
                .0,
            1
        );
        assert_eq!(
            check_sentence(&tags("O E-PER"), Scheme::Bioes)
                .unwrap_err()
                .0,
            1
        );
        assert_eq!(
            check_sentence(&tags("S-PER I-PER E-PER"), Scheme::Bioes)
                .unwrap_err()
                .0,
            1
        );
        assert!(check_sentence(
            &tags("B-ORG E-ORG S-PER O B-LOC I-LOC E-LOC"),
            Scheme::Bioes
        )
        .is_ok());
    }

    #[test]
    fn detects_schemes() {
        let corpus = |texts: &[&str]| texts.iter().map(|text| tags(text)).collect::<Vec<_>>();
        assert_eq!(
            detect_scheme_in_sentences(&corpus(&["B-PER I-PER O", "O B-LOC"])),
            Scheme::Iob2
        );
        assert_eq!(
            detect_scheme_in_sentences(&corpus(&["I-PER B-PER O", "O I-LOC"])),
            Scheme::Iob1
        );
        // The second sentence opens with I-PER: a boundary resets the context.
        assert_eq!(
            detect_scheme_in_sentences(&corpus(&["B-PER", "I-PER"])),
            Scheme::Iob2
        );
        assert_eq!(
            detect_scheme_in_sentences(&corpus(&["O", "I-PER"])),
            Scheme::Iob1
        );
        assert_eq!(
            detect_scheme_in_sentences(&corpus(&["O S-PER"])),
            Scheme::Bioes
        );
        assert_eq!(detect_scheme(["I-PER", "I-LOC"]), Scheme::Iob1);
        assert_eq!(detect_scheme(["B-PER", "I-PER"]), Scheme::Iob2);
        assert_eq!(detect_scheme(["B-PER", "E-PER"]), Scheme::Bioes);
    }
}
