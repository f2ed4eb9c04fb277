//! `alpaca predict ner`: entities in raw text, with character offsets and a confidence score.

use alpaca_data::align::{encode_words, word_starts};
use alpaca_data::batch::collate;
use alpaca_eval::scheme::{entities, Scheme};
use alpaca_models::{BertForTokenClassification, Mode, ModelDir};
use anyhow::Result;
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::ner::{batch_tensors, load_tokenizer, pad_id};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PredictedEntity {
    pub text: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Character offsets into the input, end exclusive.
    pub start: usize,
    pub end: usize,
    /// Mean probability of the predicted tag over the entity's words.
    pub score: f64,
}

/// Splits text into CoNLL-like words with character offsets: whitespace separates words, and
/// punctuation at either end of a chunk becomes its own word ("Paris," → "Paris" ","), except
/// a final period after a single letter, which stays with its abbreviation ("U.S.").
pub fn split_words(text: &str) -> Vec<(String, usize, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let mut words = Vec::new();
    let mut position = 0;
    while position < chars.len() {
        if chars[position].is_whitespace() {
            position += 1;
            continue;
        }
        let start = position;
        while position < chars.len() && !chars[position].is_whitespace() {
            position += 1;
        }
        let (mut left, mut right) = (start, position);
        let mut leading = Vec::new();
        while left < right && chars[left].is_ascii_punctuation() {
            leading.push((chars[left].to_string(), left, left + 1));
            left += 1;
        }
        let mut trailing = Vec::new();
        while right > left && chars[right - 1].is_ascii_punctuation() {
            let abbreviation = chars[right - 1] == '.'
                && right >= left + 3
                && chars[right - 2].is_alphabetic()
                && chars[right - 3] == '.';
            if abbreviation {
                break;
            }
            trailing.push((chars[right - 1].to_string(), right - 1, right));
            right -= 1;
        }
        words.extend(leading);
        if left < right {
            words.push((chars[left..right].iter().collect(), left, right));
        }
        words.extend(trailing.into_iter().rev());
    }
    words
}

pub struct NerPredictor {
    model: BertForTokenClassification,
    tokenizer: Tokenizer,
    scheme: Scheme,
    max_len: usize,
    pad: u32,
}

impl NerPredictor {
    pub fn load(model: &str) -> Result<Self> {
        let dir = ModelDir::open(model)?;
        let (mut model, _) = BertForTokenClassification::load(&dir, None, 0)?;
        model.pack_for_inference()?;
        let tokenizer = load_tokenizer(&dir, model.bert.config.vocab_size)?;
        let bioes = model
            .labels
            .iter()
            .any(|l| l.starts_with("E-") || l.starts_with("S-"));
        let pad = pad_id(&tokenizer);
        let max_len = model.bert.config.max_position_embeddings.min(512);
        Ok(Self {
            model,
            tokenizer,
            scheme: if bioes { Scheme::Bioes } else { Scheme::Iob2 },
            max_len,
            pad,
        })
    }

    /// Words, encodings, the padded batch and the logits [b, t, labels] for `texts`.
    fn run(&self, texts: &[String]) -> Result<RawOutput> {
        let words: Vec<Vec<(String, usize, usize)>> =
            texts.iter().map(|t| split_words(t)).collect();
        let encoded = words
            .iter()
            .map(|w| {
                let strings: Vec<String> = w.iter().map(|(s, _, _)| s.clone()).collect();
                encode_words(&self.tokenizer, &strings, None, self.max_len)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let references: Vec<_> = encoded.iter().collect();
        let indices: Vec<usize> = (0..texts.len()).collect();
        let batch = collate(&references, &indices, self.pad);
        let (ids, types, mask, _) = batch_tensors(&batch)?;
        let logits = self.model.forward(&ids, &types, &mask, Mode::EVAL)?;
        Ok(RawOutput {
            words,
            encoded,
            batch,
            logits,
        })
    }

    /// The model's input ids, attention mask and logits for `texts` as JSON, so a reference
    /// implementation can be run on exactly the same input (scripts/check_hf_logits.py).
    pub fn logits_json(&self, texts: &[String]) -> Result<serde_json::Value> {
        let output = self.run(texts)?;
        let shape = (output.batch.batch_size, output.batch.seq_len);
        let rows = |values: &[u32]| -> Vec<Vec<u32>> {
            values.chunks(shape.1.max(1)).map(|c| c.to_vec()).collect()
        };
        Ok(serde_json::json!({
            "texts": texts,
            "labels": self.model.labels,
            "input_ids": rows(&output.batch.input_ids),
            "token_type_ids": rows(&output.batch.type_ids),
            "attention_mask": rows(&output.batch.attention_mask),
            "logits": output.logits.to_vec3::<f32>()?,
        }))
    }

    /// Entities of each text, processed `batch_size` texts at a time.
    pub fn predict(
        &self,
        texts: &[String],
        batch_size: usize,
    ) -> Result<Vec<Vec<PredictedEntity>>> {
        let mut results = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(batch_size.max(1)) {
            let RawOutput {
                words,
                encoded,
                logits,
                ..
            } = self.run(chunk)?;
            let probabilities =
                candle_core::Tensor::exp(&logits.broadcast_sub(&logits.max_keepdim(2)?)?)?;
            let probabilities = probabilities.broadcast_div(&probabilities.sum_keepdim(2)?)?;
            let probabilities = probabilities.to_vec3::<f32>()?;
            for (row, text_words) in words.iter().enumerate() {
                let starts = word_starts(&encoded[row]);
                let mut tags = vec!["O".to_string(); text_words.len()];
                let mut confidence = vec![0f64; text_words.len()];
                for (word, start) in starts.iter().enumerate() {
                    if let Some(position) = start {
                        let scores = &probabilities[row][*position];
                        let (best, p) = scores
                            .iter()
                            .enumerate()
                            .max_by(|a, b| a.1.total_cmp(b.1))
                            .map(|(i, p)| (i, *p))
                            .unwrap_or((0, 0.0));
                        tags[word] = self.model.labels[best].clone();
                        confidence[word] = p as f64;
                    }
                }
                let text_chars: Vec<char> = chunk[row].chars().collect();
                let found = entities(&tags, self.scheme)
                    .into_iter()
                    .map(|entity| {
                        let start = text_words[entity.start].1;
                        let end = text_words[entity.end - 1].2;
                        let score = confidence[entity.start..entity.end].iter().sum::<f64>()
                            / (entity.end - entity.start) as f64;
                        PredictedEntity {
                            text: text_chars[start..end].iter().collect(),
                            kind: entity.kind,
                            start,
                            end,
                            score,
                        }
                    })
                    .collect();
                results.push(found);
            }
        }
        Ok(results)
    }
}

struct RawOutput {
    words: Vec<Vec<(String, usize, usize)>>,
    encoded: Vec<alpaca_data::align::Encoded>,
    batch: alpaca_data::batch::Batch,
    logits: candle_core::Tensor,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_punctuation_but_keeps_abbreviations() {
        let words: Vec<String> =
            split_words("Peter (Blackburn) met the U.S. envoy in Paris, today.")
                .into_iter()
                .map(|w| w.0)
                .collect();
        assert_eq!(
            words,
            [
                "Peter",
                "(",
                "Blackburn",
                ")",
                "met",
                "the",
                "U.S.",
                "envoy",
                "in",
                "Paris",
                ",",
                "today",
                "."
            ]
        );
        let offsets = split_words("  Zoë  Smith");
        assert_eq!(offsets[0], ("Zoë".to_string(), 2, 5));
        assert_eq!(offsets[1], ("Smith".to_string(), 7, 12));
    }
}
