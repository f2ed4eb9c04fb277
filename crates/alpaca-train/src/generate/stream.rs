//! Turning generated token ids into text as they come, for streaming to a terminal.
//!
//! A byte-level BPE token can hold part of a UTF-8 character (an emoji is often two or three
//! tokens), and a sentencepiece token's leading space depends on what precedes it, so single
//! tokens are never decoded alone: the whole output is decoded again after each token and only
//! the new suffix is handed out, once it no longer ends in an incomplete character (decoded as
//! U+FFFD). Text that could be the start of a stop string is held back until it is known not
//! to be one, so the stream never shows a stop string or the part of it seen so far.

use anyhow::{anyhow, Result};
use tokenizers::Tokenizer;

/// What one more token did to the text.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Step {
    /// Text now safe to show (often empty: an incomplete character or a possible stop string).
    pub piece: String,
    /// The stop string the output now contains; the text is cut before it.
    pub stopped_at: Option<String>,
}

/// Incremental decoder of one generation's output ids.
pub struct TextStream<'t> {
    tokenizer: &'t Tokenizer,
    stop_strings: Vec<String>,
    ids: Vec<u32>,
    /// The output decoded so far (cut at a stop string once one is found).
    text: String,
    /// Bytes of `text` handed out so far.
    shown: usize,
    stopped: bool,
}

impl<'t> TextStream<'t> {
    pub fn new(tokenizer: &'t Tokenizer, stop_strings: &[String]) -> Self {
        Self {
            tokenizer,
            stop_strings: stop_strings
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            ids: Vec::new(),
            text: String::new(),
            shown: 0,
            stopped: false,
        }
    }

    /// Adds one generated token. After a stop string was found, further tokens are ignored.
    pub fn push(&mut self, id: u32) -> Result<Step> {
        if self.stopped {
            return Ok(Step::default());
        }
        self.ids.push(id);
        let decoded = self
            .tokenizer
            .decode(&self.ids, true)
            .map_err(|e| anyhow!("cannot decode the generated token ids: {e}"))?;
        if let Some((position, stop)) = self.first_stop(&decoded) {
            self.text = decoded[..position].to_string();
            self.stopped = true;
            return Ok(Step {
                piece: self.take_shown_up_to(self.text.len()),
                stopped_at: Some(stop),
            });
        }
        self.text = decoded;
        let safe = if self.text.ends_with('\u{FFFD}') {
            // The last token ended inside a character; wait for the rest of its bytes.
            self.shown
        } else {
            self.text.len() - self.possible_stop_start()
        };
        Ok(Step {
            piece: self.take_shown_up_to(safe),
            stopped_at: None,
        })
    }

    /// The text not handed out yet, at the end of generation (held-back bytes included).
    pub fn finish(&mut self) -> String {
        self.take_shown_up_to(self.text.len())
    }

    /// The output text so far (cut before a stop string).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The earliest stop string in `decoded`: its byte position and which one.
    fn first_stop(&self, decoded: &str) -> Option<(usize, String)> {
        self.stop_strings
            .iter()
            .filter_map(|stop| decoded.find(stop.as_str()).map(|at| (at, stop.clone())))
            .min_by_key(|(at, _)| *at)
    }

    /// Length of the longest end of `text` that is the beginning of some stop string.
    fn possible_stop_start(&self) -> usize {
        let mut held = 0;
        for stop in &self.stop_strings {
            for (length, _) in stop.char_indices().skip(1) {
                if length > held && self.text.ends_with(&stop[..length]) {
                    held = length;
                }
            }
        }
        held
    }

    /// Hands out `text[shown..end]`, if `text` still extends what was shown and `end` is a
    /// character boundary past it (decoding is prefix-stable for the tokenizers we load; if a
    /// decoder ever rewrote earlier text, nothing is shown until `finish`).
    fn take_shown_up_to(&mut self, end: usize) -> String {
        if end <= self.shown || !self.text.is_char_boundary(end) {
            return String::new();
        }
        if !self.text.is_char_boundary(self.shown) {
            return String::new();
        }
        let piece = self.text[self.shown..end].to_string();
        self.shown = end;
        piece
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;

    /// A byte-level BPE tokenizer whose vocabulary is the 256 byte symbols only: every byte is
    /// one token, so a multi-byte character spans several tokens.
    fn byte_tokenizer() -> Tokenizer {
        let mut symbols: Vec<char> = ByteLevel::alphabet().into_iter().collect();
        symbols.sort();
        let vocab: serde_json::Map<String, serde_json::Value> = symbols
            .iter()
            .enumerate()
            .map(|(index, c)| (c.to_string(), index.into()))
            .collect();
        // Built from JSON: BPE's builder wants ahash maps, which tokenizers does not export.
        let json = serde_json::json!({
            "version": "1.0",
            "model": {"type": "BPE", "vocab": vocab, "merges": []},
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false,
                              "trim_offsets": true, "use_regex": false},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true,
                        "trim_offsets": true, "use_regex": true},
        });
        json.to_string().parse().unwrap()
    }

    fn ids(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
        tokenizer.encode(text, false).unwrap().get_ids().to_vec()
    }

    fn stream_all(text: &str, stops: &[&str]) -> (Vec<String>, String, Option<String>) {
        let tokenizer = byte_tokenizer();
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut stream = TextStream::new(&tokenizer, &stops);
        let mut pieces = Vec::new();
        let mut stopped = None;
        for id in ids(&tokenizer, text) {
            let step = stream.push(id).unwrap();
            pieces.push(step.piece);
            if step.stopped_at.is_some() {
                stopped = step.stopped_at;
                break;
            }
        }
        pieces.push(stream.finish());
        (pieces, stream.text().to_string(), stopped)
    }

    #[test]
    fn pieces_are_whole_characters_and_concatenate_to_the_text() {
        let text = "héllo 🦙 wörld, ünïcode ✓";
        let (pieces, full, stopped) = stream_all(text, &[]);
        assert_eq!(stopped, None);
        assert_eq!(full, text);
        assert_eq!(pieces.concat(), text);
        // The llama emoji is 4 bytes, 4 tokens: three steps show nothing, the fourth all of it.
        assert!(pieces.iter().any(|p| p == "🦙"), "{pieces:?}");
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')));
    }

    #[test]
    fn a_stop_string_cuts_the_text_and_is_never_shown() {
        let (pieces, full, stopped) = stream_all("Answer: 42\n###\n2. Instruction", &["###"]);
        assert_eq!(stopped.as_deref(), Some("###"));
        assert_eq!(full, "Answer: 42\n");
        assert_eq!(pieces.concat(), "Answer: 42\n");
        assert!(pieces.iter().all(|p| !p.contains('#')), "{pieces:?}");
    }

    #[test]
    fn a_partial_stop_string_is_held_then_released() {
        let (pieces, full, stopped) = stream_all("a ## b #", &["###"]);
        assert_eq!(stopped, None);
        assert_eq!(full, "a ## b #");
        assert_eq!(pieces.concat(), full);
        // "a " is shown at once; "##" waits until " " proves it is not "###".
        assert_eq!(pieces[0], "a");
        assert_eq!(pieces[2], "");
        assert_eq!(pieces[3], "");
        assert_eq!(pieces[4], "## ");
        // The final "#" is only handed out by finish().
        assert_eq!(pieces.last().unwrap(), "#");
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins() {
        let (_, full, stopped) = stream_all("one END two STOP", &["STOP", "END"]);
        assert_eq!(stopped.as_deref(), Some("END"));
        assert_eq!(full, "one ");
    }
}
