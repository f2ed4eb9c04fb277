//! Raw text for self-supervised pre-training and tokenizer training.
//!
//! What a document is, per format:
//! - a plain-text file (`.txt`, `.text`, `.md`, or no extension) is one document; blank lines
//!   separate paragraphs;
//! - `.jsonl`: every non-empty line is a JSON object whose text field is one document;
//! - `.json`: an object with a text field (one document) or an array of such objects;
//! - a directory: every file of those kinds inside it, recursively, in name order.
//!
//! Sentences (the segments NSP pairs are built from) are found by [`split_sentences`].
//! Documents that hold no text are skipped and counted, so a user sees how much was dropped.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{DataError, Result};

/// One document of raw text and where it came from (`file` or `file:line`).
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub source: String,
    pub text: String,
}

/// The documents read from the user's paths.
#[derive(Debug, Clone, Default)]
pub struct Corpus {
    pub documents: Vec<Document>,
    /// Files read (directories expanded).
    pub files: usize,
    /// Documents skipped because they held only whitespace.
    pub empty_documents: usize,
}

impl Corpus {
    pub fn words(&self) -> usize {
        self.documents
            .iter()
            .map(|d| d.text.split_whitespace().count())
            .sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Json,
    JsonLines,
}

fn kind_of(path: &Path) -> Option<Kind> {
    match path.extension().and_then(|e| e.to_str()) {
        None => Some(Kind::Text),
        Some("txt") | Some("text") | Some("md") => Some(Kind::Text),
        Some("json") => Some(Kind::Json),
        Some("jsonl") => Some(Kind::JsonLines),
        Some(_) => None,
    }
}

/// Reads every path (files, or directories of them). `text_field` names the JSON field that
/// holds a document's text. Errors name the file (and line) and what was expected; a corpus
/// without any text is an error.
pub fn read_corpus(paths: &[PathBuf], text_field: &str) -> Result<Corpus> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            collect_files(path, &mut files)?;
            if files.is_empty() {
                return Err(DataError::File {
                    path: path.clone(),
                    message: "the directory holds no .txt, .json or .jsonl files".into(),
                });
            }
        } else {
            if kind_of(path).is_none() {
                return Err(DataError::File {
                    path: path.clone(),
                    message: "unknown corpus format: expected plain text (.txt, .text, .md), \
                              .json or .jsonl"
                        .into(),
                });
            }
            files.push(path.clone());
        }
    }
    let mut corpus = Corpus {
        files: files.len(),
        ..Corpus::default()
    };
    for file in &files {
        let text = read_utf8(file)?;
        let kind = kind_of(file).expect("collected files have a known kind");
        for document in parse_documents(&text, kind, file, text_field)? {
            if document.text.trim().is_empty() {
                corpus.empty_documents += 1;
            } else {
                corpus.documents.push(document);
            }
        }
    }
    if corpus.documents.is_empty() {
        let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(DataError::File {
            path: PathBuf::from(shown.join(", ")),
            message: format!(
                "no text: {} file(s), {} empty document(s)",
                corpus.files, corpus.empty_documents
            ),
        });
    }
    Ok(corpus)
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let io = |source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(io)?;
    entries.sort();
    for entry in entries {
        let hidden = entry
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if entry.is_dir() {
            collect_files(&entry, files)?;
        } else if kind_of(&entry).is_some() {
            files.push(entry);
        }
    }
    Ok(())
}

/// The file as UTF-8 text (a leading byte-order mark removed, CRLF turned into LF).
/// Invalid bytes are an error naming the line, since silently replacing them would train the
/// tokenizer on garbage.
pub fn read_utf8(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.replace("\r\n", "\n")),
        Err(error) => {
            let before = &bytes[..error.valid_up_to()];
            let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
            let column = before.len()
                - before
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |p| p + 1);
            Err(DataError::Parse {
                path: path.to_path_buf(),
                line,
                message: format!(
                    "invalid UTF-8 at byte {} of the line; convert the file to UTF-8 \
                     (e.g. `iconv -f latin1 -t utf-8`)",
                    column + 1
                ),
            })
        }
    }
}

fn parse_documents(text: &str, kind: Kind, path: &Path, text_field: &str) -> Result<Vec<Document>> {
    let source = path.display().to_string();
    match kind {
        Kind::Text => Ok(vec![Document {
            source,
            text: text.to_string(),
        }]),
        Kind::JsonLines => {
            let mut documents = Vec::new();
            for (index, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let parse = |message: String| DataError::Parse {
                    path: path.to_path_buf(),
                    line: index + 1,
                    message,
                };
                let value: Value = serde_json::from_str(line)
                    .map_err(|e| parse(format!("not a JSON object: {e}")))?;
                let text = field_text(&value, text_field).map_err(parse)?;
                documents.push(Document {
                    source: format!("{source}:{}", index + 1),
                    text,
                });
            }
            Ok(documents)
        }
        Kind::Json => {
            let value: Value = serde_json::from_str(text).map_err(|e| DataError::Parse {
                path: path.to_path_buf(),
                line: e.line(),
                message: format!("not valid JSON: {e}"),
            })?;
            let file_error = |message: String| DataError::File {
                path: path.to_path_buf(),
                message,
            };
            match &value {
                Value::Array(items) => items
                    .iter()
                    .enumerate()
                    .map(|(index, item)| {
                        Ok(Document {
                            source: format!("{source}[{index}]"),
                            text: field_text(item, text_field)
                                .map_err(|m| file_error(format!("item {index}: {m}")))?,
                        })
                    })
                    .collect(),
                _ => Ok(vec![Document {
                    source,
                    text: field_text(&value, text_field).map_err(file_error)?,
                }]),
            }
        }
    }
}

fn field_text(value: &Value, field: &str) -> std::result::Result<String, String> {
    match value.get(field) {
        Some(Value::String(text)) => Ok(text.replace("\r\n", "\n")),
        Some(Value::Null) => Ok(String::new()),
        Some(other) => Err(format!(
            "field {field:?} is not a string but {}",
            json_kind(other)
        )),
        None if value.is_object() => {
            let keys: Vec<&String> = value.as_object().expect("checked").keys().collect();
            Err(format!(
                "no field {field:?} (fields: {keys:?}); choose the text field with --text-field"
            ))
        }
        None => Err(format!(
            "expected an object with a {field:?} field, found {}",
            json_kind(value)
        )),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Abbreviations after which a full stop does not end a sentence.
const ABBREVIATIONS: [&str; 14] = [
    "Mr", "Mrs", "Ms", "Dr", "St", "Jr", "Sr", "Mt", "vs", "etc", "No", "Gen", "Gov", "Hon",
];

/// Splits text into sentences: paragraphs (separated by line breaks) are split after `.`, `!`
/// or `?` (and any closing quotes or brackets) followed by whitespace and an upper-case letter,
/// a digit or an opening quote. A rule of thumb, not a parser, which is what BERT's NSP needs:
/// segments that usually end where a sentence does.
pub fn split_sentences(text: &str) -> Vec<&str> {
    let mut sentences = Vec::new();
    for paragraph in text.split('\n') {
        let mut start = 0;
        let characters: Vec<(usize, char)> = paragraph.char_indices().collect();
        let mut index = 0;
        while index < characters.len() {
            let (_, character) = characters[index];
            if matches!(character, '.' | '!' | '?') {
                let mut end = index + 1;
                while end < characters.len()
                    && matches!(characters[end].1, '"' | '\'' | ')' | ']' | '”' | '’')
                {
                    end += 1;
                }
                let followed_by_space = end < characters.len() && characters[end].1.is_whitespace();
                let next = characters[end..]
                    .iter()
                    .find(|(_, c)| !c.is_whitespace())
                    .map(|&(_, c)| c);
                let starts_sentence = next.is_some_and(|c| {
                    c.is_uppercase() || c.is_ascii_digit() || matches!(c, '"' | '“' | '\'')
                });
                let word_before = paragraph[start..characters[index].0]
                    .rsplit(|c: char| c.is_whitespace())
                    .next()
                    .unwrap_or("");
                let abbreviation = character == '.'
                    && (ABBREVIATIONS.contains(&word_before)
                        || (word_before.chars().count() == 1
                            && word_before.chars().all(char::is_uppercase)));
                if followed_by_space && starts_sentence && !abbreviation {
                    let cut = characters[end].0;
                    let sentence = paragraph[start..cut].trim();
                    if !sentence.is_empty() {
                        sentences.push(sentence);
                    }
                    start = cut;
                }
                index = end;
            } else {
                index += 1;
            }
        }
        let rest = paragraph[start..].trim();
        if !rest.is_empty() {
            sentences.push(rest);
        }
    }
    sentences
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_end_at_terminal_punctuation_before_a_capital() {
        let text = "Call me Ishmael. Some years ago—never mind how long—I went. \
                    Mr. Starbuck said \"Aye!\" Then 3 men left.\r\n\nA new paragraph? yes.";
        let text = text.replace("\r\n", "\n");
        assert_eq!(
            split_sentences(&text),
            vec![
                "Call me Ishmael.",
                "Some years ago—never mind how long—I went.",
                "Mr. Starbuck said \"Aye!\"",
                "Then 3 men left.",
                "A new paragraph? yes.",
            ]
        );
    }

    #[test]
    fn reads_text_json_jsonl_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("a.txt"), "\u{feff}First doc.\r\nSecond line.\r\n").unwrap();
        std::fs::write(
            root.join("b.json"),
            r#"{"title": "t", "text": "Chapter text."}"#,
        )
        .unwrap();
        std::fs::write(
            root.join("c.jsonl"),
            "{\"text\": \"one\"}\n\n{\"text\": \"  \"}\n{\"text\": \"two\"}\n",
        )
        .unwrap();
        std::fs::write(root.join("notes.csv"), "ignored").unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/d.json"), r#"[{"text": "x"}, {"text": "y"}]"#).unwrap();
        let corpus = read_corpus(&[root.to_path_buf()], "text").unwrap();
        let texts: Vec<&str> = corpus.documents.iter().map(|d| d.text.as_str()).collect();
        assert_eq!(
            texts,
            vec![
                "First doc.\nSecond line.\n",
                "Chapter text.",
                "one",
                "two",
                "x",
                "y"
            ]
        );
        assert_eq!(corpus.files, 4);
        assert_eq!(corpus.empty_documents, 1);
        assert!(corpus.documents[2].source.ends_with("c.jsonl:1"));
        assert!(corpus.documents[5].source.ends_with("d.json[1]"));
    }

    #[test]
    fn errors_name_the_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let jsonl = root.join("bad.jsonl");
        std::fs::write(
            &jsonl,
            "{\"text\": \"ok\"}\n{\"body\": \"no text field\"}\n",
        )
        .unwrap();
        let message = read_corpus(&[jsonl], "text").unwrap_err().to_string();
        assert!(message.contains("bad.jsonl:2"), "{message}");
        assert!(message.contains("\"body\""), "{message}");

        let latin1 = root.join("latin1.txt");
        std::fs::write(&latin1, b"fine\ncaf\xe9\n").unwrap();
        let message = read_corpus(&[latin1], "text").unwrap_err().to_string();
        assert!(message.contains("latin1.txt:2"), "{message}");
        assert!(message.contains("invalid UTF-8 at byte 4"), "{message}");

        let truncated = root.join("cut.json");
        std::fs::write(&truncated, "[{\"text\": \"a\"}, {\"text\": \"b").unwrap();
        let message = read_corpus(&[truncated], "text").unwrap_err().to_string();
        assert!(message.contains("cut.json:1"), "{message}");

        let empty = root.join("empty.txt");
        std::fs::write(&empty, " \n\n").unwrap();
        let message = read_corpus(&[empty], "text").unwrap_err().to_string();
        assert!(message.contains("no text"), "{message}");

        let odd = root.join("data.parquet");
        std::fs::write(&odd, "x").unwrap();
        let message = read_corpus(&[odd], "text").unwrap_err().to_string();
        assert!(message.contains("unknown corpus format"), "{message}");
    }
}
