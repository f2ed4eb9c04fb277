//! Filling in masked tokens with a masked-LM checkpoint (`alpaca predict mlm`): the top-k
//! tokens and their probabilities at every mask position of each text.

use alpaca_data::pretraining::SpecialIds;
use alpaca_models::{BertForPreTraining, Mode, ModelDir};
use anyhow::{anyhow, bail, Result};
use candle_core::{Device, Tensor};
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::inputs::load_tokenizer;

#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub token: String,
    pub id: u32,
    pub probability: f32,
}

/// The candidates for one mask position (its index among the text's sub-tokens).
#[derive(Debug, Clone, Serialize)]
pub struct MaskFill {
    pub position: usize,
    pub candidates: Vec<Candidate>,
    /// The text with this mask replaced by the best candidate (decoded).
    pub filled: String,
}

pub struct MaskFiller {
    model: BertForPreTraining,
    tokenizer: Tokenizer,
    mask_id: u32,
    mask_token: String,
}

impl MaskFiller {
    /// Loads a checkpoint that carries a masked-LM head (e.g. runs/<name>/best of
    /// `alpaca train mlm`, or splade-tiny).
    pub fn load(model: &str) -> Result<Self> {
        let dir = ModelDir::open(model)?;
        let (mut model, report) = BertForPreTraining::load(&dir, false, 0)?;
        if report
            .missing
            .iter()
            .any(|name| name.starts_with("cls.predictions"))
        {
            bail!(
                "{}: this checkpoint has no masked-LM head (cls.predictions.*); pre-train one \
                 with `alpaca train mlm --model {}`",
                dir.path.display(),
                dir.path.display()
            );
        }
        // Only predicts: the encoder's weights packed once (the head is small or tied).
        model.bert.pack_for_inference()?;
        let tokenizer = load_tokenizer(&dir, model.bert.config.vocab_size)?;
        let mask_id = SpecialIds::of(&tokenizer)?.mask;
        let mask_token = tokenizer
            .id_to_token(mask_id)
            .ok_or_else(|| anyhow!("the mask id {mask_id} has no token"))?;
        Ok(Self {
            model,
            tokenizer,
            mask_id,
            mask_token,
        })
    }

    pub fn mask_token(&self) -> &str {
        &self.mask_token
    }

    /// The `top_k` fills of every mask in `text`. A text without a mask token is an error
    /// naming the token to write.
    pub fn fill(&self, text: &str, top_k: usize) -> Result<Vec<MaskFill>> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
        let ids = encoding.get_ids().to_vec();
        let max = self.model.bert.config.max_position_embeddings;
        if ids.len() > max {
            bail!(
                "{text:?} has {} sub-tokens; the model takes at most {max}",
                ids.len()
            );
        }
        let masks: Vec<usize> = (0..ids.len()).filter(|&i| ids[i] == self.mask_id).collect();
        if masks.is_empty() {
            bail!(
                "{text:?} has no {} token; write {} where a word should be predicted",
                self.mask_token,
                self.mask_token
            );
        }
        let length = ids.len();
        let device = Device::Cpu;
        let input = Tensor::from_vec(ids.clone(), (1, length), &device)?;
        let types = Tensor::from_slice(encoding.get_type_ids(), (1, length), &device)?;
        let attention = Tensor::ones((1, length), candle_core::DType::F32, &device)?;
        let positions: Vec<u32> = masks.iter().map(|&p| p as u32).collect();
        let positions = Tensor::from_vec(positions, masks.len(), &device)?;
        let output = self
            .model
            .forward(&input, &types, &attention, &positions, Mode::EVAL)?;
        let logits = output.masked_lm_logits.to_vec2::<f32>()?;
        let mut fills = Vec::new();
        for (&position, row) in masks.iter().zip(&logits) {
            let row = softmax(row);
            let mut ranked: Vec<(usize, f32)> = row.into_iter().enumerate().collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
            ranked.truncate(top_k.max(1));
            let candidates: Vec<Candidate> = ranked
                .iter()
                .map(|&(id, probability)| Candidate {
                    token: self.tokenizer.id_to_token(id as u32).unwrap_or_default(),
                    id: id as u32,
                    probability,
                })
                .collect();
            let mut filled_ids = ids.clone();
            filled_ids[position] = candidates[0].id;
            let filled = self
                .tokenizer
                .decode(&filled_ids, true)
                .map_err(|e| anyhow!("decoding: {e}"))?;
            fills.push(MaskFill {
                position,
                candidates,
                filled,
            });
        }
        Ok(fills)
    }
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exponentials: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exponentials.iter().sum();
    exponentials.into_iter().map(|e| e / sum).collect()
}
