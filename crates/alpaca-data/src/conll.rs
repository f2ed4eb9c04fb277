//! Reader for CoNLL-style token-classification files.
//!
//! One token per line, columns separated by any run of spaces or tabs; the word is the first
//! column and the tag the last, so both the two-column (`EU B-ORG`) and the four-column
//! CoNLL-2003 layout (`EU NNP B-NP B-ORG`) read the same way. Blank (or whitespace-only) lines
//! end a sentence and `-DOCSTART-` lines end a document. `#` is not special: it is a legitimate
//! token in real corpora.

use std::path::Path;

use crate::error::{DataError, Result};

/// The first column of a document-break line.
const DOCUMENT_START: &str = "-DOCSTART-";

/// What a file with no usable lines should have looked like, for error messages.
const EXPECTED_LAYOUT: &str = "expected one token per line with the word in the first column \
     and the tag in the last (e.g. `EU B-ORG`), sentences separated by blank lines";

/// One sentence: its words, one tag per word, and where it starts in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Sentence {
    pub words: Vec<String>,
    pub tags: Vec<String>,
    /// 1-based line of the first token. Tokens of a sentence sit on consecutive lines, so
    /// token `i` is on line `line + i`; later checks use this to name the offending line.
    pub line: usize,
}

/// Reads and parses a CoNLL file.
pub fn read_conll(path: &Path) -> Result<Vec<Sentence>> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_conll_bytes(&bytes, path)
}

/// Parses CoNLL text already in memory; `path` is used only in error messages.
pub fn parse_conll(text: &str, path: &Path) -> Result<Vec<Sentence>> {
    parse_conll_bytes(text.as_bytes(), path)
}

/// Parses raw bytes. Decoding happens line by line so that invalid UTF-8 is reported at the
/// line that holds it rather than as an anonymous whole-file failure.
pub fn parse_conll_bytes(bytes: &[u8], path: &Path) -> Result<Vec<Sentence>> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut reader = Reader::new(path);
    let mut lines = bytes.split(|&byte| byte == b'\n').peekable();
    let mut number = 0;
    while let Some(raw) = lines.next() {
        number += 1;
        // A final newline leaves one empty piece after it; it is not a line.
        if raw.is_empty() && lines.peek().is_none() {
            break;
        }
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw).map_err(|error| DataError::Parse {
            path: path.to_path_buf(),
            line: number,
            message: format!(
                "invalid UTF-8 at byte {} of the line; expected a UTF-8 text file",
                error.valid_up_to() + 1
            ),
        })?;
        reader.line(line, number)?;
    }
    reader.finish()
}

/// State of the line-by-line parse.
struct Reader<'p> {
    path: &'p Path,
    sentences: Vec<Sentence>,
    current: Sentence,
    /// Column count of the first token line, and where it was, which all others must match.
    columns: Option<(usize, usize)>,
}

impl<'p> Reader<'p> {
    fn new(path: &'p Path) -> Self {
        Reader {
            path,
            sentences: Vec::new(),
            current: empty_sentence(),
            columns: None,
        }
    }

    fn error(&self, line: usize, message: String) -> DataError {
        DataError::Parse {
            path: self.path.to_path_buf(),
            line,
            message,
        }
    }

    fn line(&mut self, line: &str, number: usize) -> Result<()> {
        let fields: Vec<&str> = line
            .split(|c: char| c.is_ascii_whitespace())
            .filter(|f| !f.is_empty())
            .collect();
        if fields.is_empty() || fields[0] == DOCUMENT_START {
            self.end_sentence();
            return Ok(());
        }
        if fields.len() < 2 {
            return Err(self.error(
                number,
                format!(
                    "found 1 column ({:?}); expected at least 2: the word first and the tag last",
                    fields[0]
                ),
            ));
        }
        match self.columns {
            None => self.columns = Some((fields.len(), number)),
            Some((expected, first)) if expected != fields.len() => {
                return Err(self.error(
                    number,
                    format!(
                        "found {} columns; expected {} like the first token line (line {first})",
                        fields.len(),
                        expected
                    ),
                ));
            }
            Some(_) => {}
        }
        if self.current.words.is_empty() {
            self.current.line = number;
        }
        self.current.words.push(fields[0].to_string());
        self.current.tags.push(fields[fields.len() - 1].to_string());
        Ok(())
    }

    fn end_sentence(&mut self) {
        if !self.current.words.is_empty() {
            let sentence = std::mem::replace(&mut self.current, empty_sentence());
            self.sentences.push(sentence);
        }
    }

    fn finish(mut self) -> Result<Vec<Sentence>> {
        self.end_sentence();
        if self.sentences.is_empty() {
            return Err(DataError::File {
                path: self.path.to_path_buf(),
                message: format!("contains no sentences; {EXPECTED_LAYOUT}"),
            });
        }
        Ok(self.sentences)
    }
}

fn empty_sentence() -> Sentence {
    Sentence {
        words: Vec::new(),
        tags: Vec::new(),
        line: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn parse(text: &str) -> Result<Vec<Sentence>> {
        parse_conll(text, Path::new("data.txt"))
    }

    fn words(sentences: &[Sentence]) -> Vec<Vec<&str>> {
        sentences
            .iter()
            .map(|s| s.words.iter().map(String::as_str).collect())
            .collect()
    }

    #[test]
    fn reads_tab_and_space_separated_columns() {
        let sentences =
            parse("EU\tNNP  B-NP\tB-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n").unwrap();
        assert_eq!(
            words(&sentences),
            vec![vec!["EU", "rejects"], vec!["Peter"]]
        );
        assert_eq!(sentences[0].tags, vec!["B-ORG", "O"]);
        assert_eq!(sentences[1].tags, vec!["B-PER"]);
        assert_eq!(sentences[0].line, 1);
        assert_eq!(sentences[1].line, 4);
    }

    #[test]
    fn accepts_crlf_bom_and_missing_final_newline() {
        let sentences = parse("\u{feff}EU B-ORG\r\nrejects O\r\n\r\nPeter B-PER").unwrap();
        assert_eq!(
            words(&sentences),
            vec![vec!["EU", "rejects"], vec!["Peter"]]
        );
        assert_eq!(sentences[0].tags, vec!["B-ORG", "O"]);
        assert_eq!(sentences[1].tags, vec!["B-PER"]);
        assert_eq!(sentences[1].line, 4);
    }

    #[test]
    fn whitespace_only_and_repeated_blank_lines_separate_sentences() {
        let sentences = parse("a O\n   \n\t\n\n\nb O\n \t \nc O\n\n\n").unwrap();
        assert_eq!(words(&sentences), vec![vec!["a"], vec!["b"], vec!["c"]]);
        assert_eq!(sentences[1].line, 6);
        assert_eq!(sentences[2].line, 8);
    }

    #[test]
    fn docstart_ends_the_sentence_and_produces_nothing() {
        let text = "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\n-DOCSTART- -X- -X- O\nPeter NNP B-NP B-PER\n";
        let sentences = parse(text).unwrap();
        assert_eq!(words(&sentences), vec![vec!["EU"], vec!["Peter"]]);
        assert_eq!(sentences[1].line, 5);
    }

    #[test]
    fn hash_is_an_ordinary_token() {
        let sentences = parse("# O\n#1 B-MISC\n").unwrap();
        assert_eq!(words(&sentences), vec![vec!["#", "#1"]]);
    }

    #[test]
    fn wrong_column_count_names_line_and_counts() {
        let error = parse("EU NNP B-NP B-ORG\nrejects VBZ O\n").unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, DataError::Parse { line: 2, .. }),
            "{message}"
        );
        assert!(message.starts_with("data.txt:2:"), "{message}");
        assert!(message.contains("found 3 columns; expected 4"), "{message}");
    }

    #[test]
    fn single_column_line_is_an_error() {
        let error = parse("EU B-ORG\n\nlonely\n").unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("data.txt:3:"), "{message}");
        assert!(message.contains("expected at least 2"), "{message}");
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let bytes = b"EU B-ORG\nre\xffjects O\n";
        let error = parse_conll_bytes(bytes, Path::new("bad.txt")).unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, DataError::Parse { line: 2, .. }),
            "{message}"
        );
        assert!(message.contains("invalid UTF-8 at byte 3"), "{message}");
    }

    #[test]
    fn empty_or_sentence_free_file_is_an_error() {
        for text in ["", "\n\n", "-DOCSTART- -X- -X- O\n\n"] {
            let message = parse(text).unwrap_err().to_string();
            assert!(
                message.starts_with("data.txt: contains no sentences; expected"),
                "{message}"
            );
        }
    }

    #[test]
    fn missing_file_names_the_path() {
        let path = PathBuf::from("/nonexistent/alpaca/train.txt");
        let error = read_conll(&path).unwrap_err();
        assert!(matches!(error, DataError::Io { .. }));
        assert!(error
            .to_string()
            .starts_with("/nonexistent/alpaca/train.txt: "));
    }

    #[test]
    fn reads_from_disk() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("train.txt");
        std::fs::write(&path, "EU B-ORG\n\nPeter B-PER\n").unwrap();
        assert_eq!(read_conll(&path).unwrap().len(), 2);
    }
}
