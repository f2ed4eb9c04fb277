//! `alpaca predict classify`: the label of each text and the probability of every label.

use std::collections::BTreeMap;

use alpaca_data::align::Encoded;
use alpaca_data::batch::collate;
use alpaca_models::{BertForSequenceClassification, Mode, ModelDir};
use anyhow::Result;
use candle_core::Tensor;
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::classify::encode_texts;
use crate::inputs::{batch_tensors, load_tokenizer, pad_id};

#[derive(Debug, Clone, Serialize)]
pub struct PredictedLabel {
    pub label: String,
    pub probabilities: BTreeMap<String, f64>,
}

pub struct ClassifyPredictor {
    model: BertForSequenceClassification,
    tokenizer: Tokenizer,
    max_len: usize,
    pad: u32,
}

impl ClassifyPredictor {
    pub fn load(model: &str) -> Result<Self> {
        let dir = ModelDir::open(model)?;
        let (mut model, _) = BertForSequenceClassification::load(&dir, None, 0)?;
        model.pack_for_inference()?;
        let tokenizer = load_tokenizer(&dir, model.bert.config.vocab_size)?;
        let pad = pad_id(&tokenizer);
        let max_len = model.bert.config.max_position_embeddings.min(512);
        Ok(Self {
            model,
            tokenizer,
            max_len,
            pad,
        })
    }

    /// The predicted label of each text, processed `batch_size` texts at a time.
    pub fn predict(&self, texts: &[String], batch_size: usize) -> Result<Vec<PredictedLabel>> {
        let mut results = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(batch_size.max(1)) {
            let strings: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let (encoded, _) = encode_texts(&self.tokenizer, &strings, self.max_len)?;
            let references: Vec<&Encoded> = encoded.iter().collect();
            let indices: Vec<usize> = (0..chunk.len()).collect();
            let batch = collate(&references, &indices, self.pad);
            let (ids, types, mask, _) = batch_tensors(&batch)?;
            let logits = self.model.forward(&ids, &types, &mask, Mode::EVAL)?;
            // Softmax, shifted by the row maximum so exp cannot overflow.
            let shifted = logits.broadcast_sub(&logits.max_keepdim(1)?)?;
            let exponentials = Tensor::exp(&shifted)?;
            let probabilities = exponentials.broadcast_div(&exponentials.sum_keepdim(1)?)?;
            for row in probabilities.to_vec2::<f32>()? {
                let best = row
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                results.push(PredictedLabel {
                    label: self.model.labels[best].clone(),
                    probabilities: self
                        .model
                        .labels
                        .iter()
                        .cloned()
                        .zip(row.iter().map(|&p| p as f64))
                        .collect(),
                });
            }
        }
        Ok(results)
    }
}
