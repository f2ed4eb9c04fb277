//! Instruction-tuning data: conversations read from the formats people publish them in.
//! - Alpaca JSON: an array of `{"instruction", "input", "output"}` (`input` may be absent);
//! - JSONL of the same objects, one per line;
//! - ShareGPT JSON: an array of `{"conversations": [{"from", "value"}]}` (multi-turn; `from`
//!   is human/user, gpt/assistant/chatgpt/bing or system); JSONL of the same;
//! - CSV with `instruction,input,output` columns, or any two columns read as
//!   (prompt, response) — with a fixed instruction the prompt becomes the input.
//!
//! A JSON array cut short (a download that stopped) is read record by record: the records
//! before the cut load, and [`Skipped`] says where and why the rest did not, so the caller can
//! carry on (`--on-error skip`) or stop (`--on-error fail`). Bad records (missing fields, an
//! empty response, an unknown role) are skipped and reported the same way.

use std::path::Path;

use serde_json::Value;

use crate::corpus::read_utf8;
use crate::error::{DataError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The role a ShareGPT/OpenAI `from`/`role` value names.
    pub fn parse(name: &str) -> Option<Role> {
        match name.to_ascii_lowercase().as_str() {
            "system" => Some(Role::System),
            "human" | "user" => Some(Role::User),
            "gpt" | "assistant" | "chatgpt" | "bing" | "bard" => Some(Role::Assistant),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// One training example: a conversation that ends with an assistant message. Alpaca items
/// keep their three fields so the Alpaca template can lay them out exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    /// `file:line` or `file[index]`, for messages about this example.
    pub source: String,
    pub messages: Vec<Message>,
    /// `(instruction, input)` when the example came as an Alpaca item or CSV pair.
    pub alpaca: Option<(String, String)>,
}

/// A record (or the tail of a file) that could not be used, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Skipped {
    pub source: String,
    pub reason: String,
}

/// Everything read from one file.
#[derive(Debug, Clone, Default)]
pub struct InstructionData {
    pub conversations: Vec<Conversation>,
    pub skipped: Vec<Skipped>,
}

/// How to read CSV files.
#[derive(Debug, Clone, Default)]
pub struct CsvLayout {
    /// With a two-column file: this instruction for every row, the first column as its input.
    pub instruction: Option<String>,
}

/// Reads instruction data, its format from the extension (`.json`, `.jsonl`, `.csv`).
pub fn read_instructions(path: &Path, csv: &CsvLayout) -> Result<InstructionData> {
    let text = read_utf8(path)?;
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let data = match extension {
        "json" => parse_json_array(&text, path)?,
        "jsonl" => parse_json_lines(&text, path),
        "csv" => parse_csv(&text, path, csv)?,
        _ => {
            return Err(DataError::File {
                path: path.to_path_buf(),
                message: "unknown instruction-data format: expected .json (Alpaca or \
                          ShareGPT), .jsonl or .csv"
                    .into(),
            })
        }
    };
    if data.conversations.is_empty() {
        let first = data
            .skipped
            .first()
            .map(|s| format!("; first problem: {}: {}", s.source, s.reason))
            .unwrap_or_default();
        return Err(DataError::File {
            path: path.to_path_buf(),
            message: format!("no usable examples{first}"),
        });
    }
    Ok(data)
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = 1 + before.matches('\n').count();
    let column = 1 + before.len() - before.rfind('\n').map_or(0, |p| p + 1);
    (line, column)
}

/// Reads a JSON array element by element, so that a file cut short yields the records before
/// the cut and one [`Skipped`] naming where the cut is.
fn parse_json_array(text: &str, path: &Path) -> Result<InstructionData> {
    let name = path.display().to_string();
    let bytes = text.as_bytes();
    let skip_space = |mut position: usize| {
        while position < bytes.len() && bytes[position].is_ascii_whitespace() {
            position += 1;
        }
        position
    };
    let mut position = skip_space(0);
    if bytes.get(position) != Some(&b'[') {
        // A single object is one record.
        let value: Value = serde_json::from_str(text).map_err(|e| DataError::Parse {
            path: path.to_path_buf(),
            line: e.line(),
            message: format!("not valid JSON: {e}; expected an array of examples"),
        })?;
        let mut data = InstructionData::default();
        add_record(&value, name.clone(), &mut data);
        return Ok(data);
    }
    position += 1;
    let mut data = InstructionData::default();
    let mut index = 0;
    loop {
        position = skip_space(position);
        match bytes.get(position) {
            Some(b']') => break,
            None => {
                let (line, column) = line_column(text, position);
                data.skipped.push(Skipped {
                    source: format!("{name}:{line}:{column}"),
                    reason: format!(
                        "the file ends inside the array (after {index} records): it is \
                         truncated; the records before this point were read"
                    ),
                });
                break;
            }
            _ => {}
        }
        let mut stream = serde_json::Deserializer::from_str(&text[position..]).into_iter::<Value>();
        match stream.next() {
            Some(Ok(value)) => {
                add_record(&value, format!("{name}[{index}]"), &mut data);
                position += stream.byte_offset();
            }
            Some(Err(error)) => {
                // serde_json counts from the start of the record; report the file position.
                let (start_line, start_column) = line_column(text, position);
                let line = start_line + error.line().saturating_sub(1);
                let column = if error.line() <= 1 {
                    start_column + error.column().saturating_sub(1)
                } else {
                    error.column()
                };
                let what = error.to_string();
                let what = what.split(" at line ").next().unwrap_or(&what).to_string();
                let reason = if error.is_eof() {
                    format!(
                        "record {index} (from line {start_line}) is cut off by the end of the \
                         file ({what}): the file is truncated; the {index} records before it \
                         were read"
                    )
                } else {
                    format!("record {index} is not valid JSON ({what}); stopped reading here")
                };
                data.skipped.push(Skipped {
                    source: format!("{name}:{line}:{column}"),
                    reason,
                });
                break;
            }
            None => break,
        }
        index += 1;
        position = skip_space(position);
        match bytes.get(position) {
            Some(b',') => position += 1,
            Some(b']') => break,
            None => continue,
            Some(_) => {
                let (line, column) = line_column(text, position);
                data.skipped.push(Skipped {
                    source: format!("{name}:{line}:{column}"),
                    reason: "expected ',' or ']' after a record; stopped reading here".into(),
                });
                break;
            }
        }
    }
    Ok(data)
}

fn parse_json_lines(text: &str, path: &Path) -> InstructionData {
    let name = path.display().to_string();
    let mut data = InstructionData::default();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let source = format!("{name}:{}", number + 1);
        match serde_json::from_str::<Value>(line) {
            Ok(value) => add_record(&value, source, &mut data),
            Err(error) => data.skipped.push(Skipped {
                source,
                reason: format!("not valid JSON: {error}"),
            }),
        }
    }
    data
}

/// Adds one Alpaca or ShareGPT record, or says why it was skipped.
fn add_record(value: &Value, source: String, data: &mut InstructionData) {
    match conversation_of(value, &source) {
        Ok(conversation) => data.conversations.push(conversation),
        Err(reason) => data.skipped.push(Skipped { source, reason }),
    }
}

fn string_field<'a>(value: &'a Value, field: &str) -> std::result::Result<Option<&'a str>, String> {
    match value.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(format!("field {field:?} is not a string")),
    }
}

fn conversation_of(value: &Value, source: &str) -> std::result::Result<Conversation, String> {
    if !value.is_object() {
        return Err("expected an object (an Alpaca item or a ShareGPT conversation)".into());
    }
    if let Some(turns) = value.get("conversations").or_else(|| value.get("messages")) {
        return sharegpt(turns, source);
    }
    let instruction = string_field(value, "instruction")?;
    let input = string_field(value, "input")?.unwrap_or("");
    let output = string_field(value, "output")?;
    match (instruction, output) {
        (Some(instruction), Some(output)) => alpaca(instruction, input, output, source),
        _ => {
            let keys: Vec<&String> = value.as_object().expect("checked").keys().collect();
            Err(format!(
                "expected \"instruction\" and \"output\" (Alpaca) or \"conversations\" \
                 (ShareGPT); found fields {keys:?}"
            ))
        }
    }
}

fn alpaca(
    instruction: &str,
    input: &str,
    output: &str,
    source: &str,
) -> std::result::Result<Conversation, String> {
    if instruction.trim().is_empty() {
        return Err("empty instruction".into());
    }
    if output.trim().is_empty() {
        return Err("empty output".into());
    }
    let prompt = if input.trim().is_empty() {
        instruction.to_string()
    } else {
        format!("{instruction}\n\n{input}")
    };
    Ok(Conversation {
        source: source.to_string(),
        messages: vec![
            Message {
                role: Role::User,
                content: prompt,
            },
            Message {
                role: Role::Assistant,
                content: output.to_string(),
            },
        ],
        alpaca: Some((instruction.to_string(), input.to_string())),
    })
}

fn sharegpt(turns: &Value, source: &str) -> std::result::Result<Conversation, String> {
    let turns = turns
        .as_array()
        .ok_or("\"conversations\" is not an array")?;
    let mut messages: Vec<Message> = Vec::new();
    for (index, turn) in turns.iter().enumerate() {
        let role_name = string_field(turn, "from")
            .and_then(|r| match r {
                Some(r) => Ok(Some(r)),
                None => string_field(turn, "role"),
            })?
            .ok_or(format!("turn {index} has no \"from\""))?;
        let role =
            Role::parse(role_name).ok_or(format!("turn {index}: unknown speaker {role_name:?}"))?;
        let content = string_field(turn, "value")
            .and_then(|c| match c {
                Some(c) => Ok(Some(c)),
                None => string_field(turn, "content"),
            })?
            .ok_or(format!("turn {index} has no \"value\""))?;
        // Two turns of one speaker in a row are one message (ShareGPT splits long answers).
        match messages.last_mut() {
            Some(last) if last.role == role => {
                last.content.push_str("\n\n");
                last.content.push_str(content);
            }
            _ => messages.push(Message {
                role,
                content: content.to_string(),
            }),
        }
    }
    // A conversation the assistant opens has no prompt for its first answer: drop that.
    let start = messages
        .iter()
        .position(|m| m.role != Role::Assistant)
        .unwrap_or(messages.len());
    messages.drain(..start);
    // A trailing user turn has no answer to learn.
    while messages.last().is_some_and(|m| m.role != Role::Assistant) {
        messages.pop();
    }
    if !messages.iter().any(|m| m.role == Role::Assistant) {
        return Err("no user turn followed by an assistant answer".into());
    }
    if messages
        .iter()
        .any(|m| m.role == Role::Assistant && m.content.trim().is_empty())
    {
        return Err("an empty assistant answer".into());
    }
    Ok(Conversation {
        source: source.to_string(),
        messages,
        alpaca: None,
    })
}

fn parse_csv(text: &str, path: &Path, layout: &CsvLayout) -> Result<InstructionData> {
    let name = path.display().to_string();
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| DataError::Parse {
            path: path.to_path_buf(),
            line: 1,
            message: format!("cannot read the CSV header: {e}"),
        })?
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let column = |wanted: &str| header.iter().position(|h| h == wanted);
    let columns = match (column("instruction"), column("input"), column("output")) {
        (Some(i), input, Some(o)) => (i, input, o),
        _ if header.len() == 2 => (0, None, 1),
        _ => {
            return Err(DataError::Parse {
                path: path.to_path_buf(),
                line: 1,
                message: format!(
                    "expected columns instruction,input,output or exactly two columns \
                     (prompt, response); found {header:?}"
                ),
            })
        }
    };
    let mut data = InstructionData::default();
    for record in reader.records() {
        let record = match record {
            Ok(record) => record,
            Err(error) => {
                let line = error.position().map_or(0, |p| p.line() as usize);
                data.skipped.push(Skipped {
                    source: format!("{name}:{line}"),
                    reason: format!("not a CSV row of {} fields: {error}", header.len()),
                });
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line() as usize);
        let source = format!("{name}:{line}");
        let field = |i: usize| record.get(i).unwrap_or("").trim();
        let (instruction, input, output) = match (columns, &layout.instruction) {
            ((i, Some(input), o), _) => (field(i).to_string(), field(input), field(o)),
            ((i, None, o), Some(fixed)) => (fixed.clone(), field(i), field(o)),
            ((i, None, o), None) => (field(i).to_string(), "", field(o)),
        };
        match alpaca(&instruction, input, output, &source) {
            Ok(conversation) => data.conversations.push(conversation),
            Err(reason) => data.skipped.push(Skipped { source, reason }),
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn alpaca_json_with_and_without_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "a.json",
            r#"[{"instruction": "Give a synonym.", "input": "happy", "output": "glad"},
                {"instruction": "Say hi.", "output": "Hi!"},
                {"instruction": "Empty.", "input": "", "output": "  "}]"#,
        );
        let data = read_instructions(&path, &CsvLayout::default()).unwrap();
        assert_eq!(data.conversations.len(), 2);
        let first = &data.conversations[0];
        assert_eq!(
            first.alpaca,
            Some(("Give a synonym.".into(), "happy".into()))
        );
        assert_eq!(first.messages[1].content, "glad");
        assert_eq!(
            data.conversations[1].alpaca,
            Some(("Say hi.".into(), "".into()))
        );
        assert_eq!(data.skipped.len(), 1);
        assert_eq!(data.skipped[0].reason, "empty output");
        assert!(data.skipped[0].source.ends_with("a.json[2]"));
    }

    #[test]
    fn truncated_sharegpt_keeps_what_parses_and_says_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[\n {\"id\": \"a\", \"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}, \
                    {\"from\": \"gpt\", \"value\": \"Hello\"}, {\"from\": \"human\", \"value\": \"More\"}, \
                    {\"from\": \"gpt\", \"value\": \"Sure\"}]},\n {\"id\": \"b\", \"conversations\": \
                    [{\"from\": \"gpt\", \"value\": \"Opening\"}, {\"from\": \"human\", \"value\": \"Q\"}, \
                    {\"from\": \"gpt\", \"value\": \"A\"}, {\"from\": \"human\", \"value\": \"unanswered\"}]},\n \
                    {\"id\": \"c\", \"conversations\": [{\"from\": \"human\", \"value\": \"cut he";
        let path = write(dir.path(), "share.json", text);
        let data = read_instructions(&path, &CsvLayout::default()).unwrap();
        assert_eq!(data.conversations.len(), 2);
        let roles: Vec<Role> = data.conversations[0]
            .messages
            .iter()
            .map(|m| m.role)
            .collect();
        assert_eq!(
            roles,
            [Role::User, Role::Assistant, Role::User, Role::Assistant]
        );
        // The assistant's opening and the unanswered last question are dropped.
        let second: Vec<&str> = data.conversations[1]
            .messages
            .iter()
            .map(|m| m.content.as_str())
            .collect();
        assert_eq!(second, ["Q", "A"]);
        assert_eq!(data.skipped.len(), 1);
        assert!(
            data.skipped[0].source.ends_with("share.json:4:65"),
            "{:?}",
            data.skipped
        );
        assert!(
            data.skipped[0].reason.contains("truncated"),
            "{:?}",
            data.skipped
        );
    }

    #[test]
    fn csv_pairs_with_a_fixed_instruction_and_bom_crlf() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "g.csv",
            "\u{feff}input,target\r\nhe go home,He goes home.\r\n\"a, b\",\"A, B.\"\r\n",
        );
        let layout = CsvLayout {
            instruction: Some("Correct the grammar.".into()),
        };
        let data = read_instructions(&path, &layout).unwrap();
        assert_eq!(data.conversations.len(), 2);
        assert_eq!(
            data.conversations[1].alpaca,
            Some(("Correct the grammar.".into(), "a, b".into()))
        );
        assert_eq!(data.conversations[1].messages[1].content, "A, B.");
        assert!(data.conversations[0].source.ends_with("g.csv:2"));
    }

    #[test]
    fn unusable_files_are_errors_that_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "x.jsonl",
            "{\"prompt\": \"a\", \"completion\": \"b\"}\n",
        );
        let error = read_instructions(&path, &CsvLayout::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("x.jsonl:1"), "{error}");
        assert!(error.contains("\"instruction\""), "{error}");
        let path = write(dir.path(), "x.csv", "a,b,c\n1,2,3\n");
        let error = read_instructions(&path, &CsvLayout::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("two columns"), "{error}");
        let path = write(dir.path(), "x.txt", "hello");
        let error = read_instructions(&path, &CsvLayout::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown instruction-data format"), "{error}");
    }
}
