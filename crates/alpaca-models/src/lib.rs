//! alpaca-models: transformer bodies and task heads, loaded from and saved to the Hugging Face
//! layout (config.json, model.safetensors, tokenizer.json).
//!
//! One file per architecture (`bert.rs`, `llama.rs`), its config deserialising HF's config.json as is;
//! heads live apart from bodies. Every op on the training path comes from `alpaca-kernels`
//! or from candle ops that have a backward.

pub mod bert;
pub mod causal_lm;
pub mod checkpoint;
pub mod error;
pub mod gguf;
pub mod head;
pub mod hub;
pub mod layers;
pub mod llama;
pub mod lora;
pub mod masked_lm;
pub mod parameters;
pub mod sequence_classification;
pub mod token_classification;

#[cfg(test)]
mod test_util;

pub use bert::{BertConfig, BertModel};
pub use causal_lm::LlamaForCausalLM;
pub use checkpoint::{LoadReport, ModelDir};
pub use error::{ModelError, Result};
pub use llama::{KvCache, LlamaConfig, LlamaModel};
pub use masked_lm::BertForPreTraining;
pub use parameters::Parameters;
pub use sequence_classification::BertForSequenceClassification;
pub use token_classification::BertForTokenClassification;

/// Whether a forward pass is for training (dropout on) and which seed drives its dropout masks.
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    pub train: bool,
    pub seed: u64,
}

impl Mode {
    pub const EVAL: Mode = Mode {
        train: false,
        seed: 0,
    };

    pub fn train(seed: u64) -> Self {
        Mode { train: true, seed }
    }

    /// A seed for one dropout site, so that no two sites in a step share a mask.
    pub fn site_seed(&self, site: u64) -> u64 {
        self.seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(site.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }
}
