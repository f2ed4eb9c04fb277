//! Model inputs shared by the task pipelines: the tokenizer of a checkpoint, its padding id,
//! and a padded batch as tensors.

use alpaca_data::batch::Batch;
use alpaca_models::ModelDir;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

/// Loads `tokenizer.json` from a model directory, checking it fits the model's vocabulary.
pub fn load_tokenizer(dir: &ModelDir, vocab_size: usize) -> Result<Tokenizer> {
    let path = dir.require("tokenizer.json")?;
    let mut tokenizer = Tokenizer::from_file(&path)
        .map_err(|e| anyhow::anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
    alpaca_data::align::prepare_tokenizer(&mut tokenizer)?;
    let tokens = tokenizer.get_vocab_size(true);
    if tokens > vocab_size {
        bail!(
            "{}: the tokenizer has {tokens} tokens but the model's config.json says vocab_size {vocab_size}; \
             the tokenizer does not belong to this model",
            path.display()
        );
    }
    Ok(tokenizer)
}

/// The id used for padding: the tokenizer's [PAD] (or its padding setting), else 0.
pub fn pad_id(tokenizer: &Tokenizer) -> u32 {
    tokenizer
        .get_padding()
        .map(|p| p.pad_id)
        .or_else(|| tokenizer.token_to_id("[PAD]"))
        .unwrap_or(0)
}

/// The batch as tensors: ids, type ids, mask (f32), labels (i64).
pub fn batch_tensors(batch: &Batch) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let shape = (batch.batch_size, batch.seq_len);
    let device = Device::Cpu;
    let ids = Tensor::from_slice(&batch.input_ids, shape, &device)?;
    let types = Tensor::from_slice(&batch.type_ids, shape, &device)?;
    let mask: Vec<f32> = batch.attention_mask.iter().map(|&m| m as f32).collect();
    let mask = Tensor::from_vec(mask, shape, &device)?;
    let labels = Tensor::from_slice(&batch.labels, batch.labels.len(), &device)?;
    Ok((ids, types, mask, labels))
}
