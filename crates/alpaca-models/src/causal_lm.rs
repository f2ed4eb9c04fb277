//! The causal language-model head on the LLaMA decoder (`LlamaForCausalLM`): logits over the
//! vocabulary from the final hidden states, `lm_head.weight` or, with tie_word_embeddings,
//! the embedding table itself (one Var, so both uses add into one gradient); the shifted
//! next-token loss; loading and saving in the layout transformers reads.

use std::path::Path;
use std::sync::Arc;

use alpaca_kernels::{FrozenWeight, Precision};

use candle_core::{Tensor, Var};
use serde_json::{json, Value};

use crate::checkpoint::{
    copy_tokenizer_files, save_safetensors, write_dir_atomic, Init, LoadReport, ModelDir,
    WeightLoader,
};
use crate::error::{ModelError, Result};
use crate::llama::{KvCache, LlamaConfig, LlamaModel};
use crate::parameters::Parameters;
use crate::Mode;

/// Label value that the loss skips (prompt tokens, padding), as in transformers.
pub const IGNORE_INDEX: i64 = -100;

pub struct LlamaForCausalLM {
    pub model: LlamaModel,
    /// [vocab, H]; the embedding table's own Var when `tied`.
    pub lm_head: Var,
    pub tied: bool,
    /// Trainable parameters by HF name (a tied head is not listed twice).
    pub parameters: Parameters,
    config_json: Value,
    /// The head takes no gradient (LoRA).
    frozen: bool,
    /// The frozen head prepared for its products (see [`LlamaForCausalLM::pack_frozen`]).
    head_frozen: Option<Arc<FrozenWeight>>,
}

impl LlamaForCausalLM {
    /// Loads an HF directory (config.json + model.safetensors). Parameters the checkpoint
    /// lacks are initialised as transformers does and listed in the report.
    pub fn load(dir: &ModelDir, seed: u64) -> Result<(Self, LoadReport)> {
        let config_json = dir.config_value()?;
        let config: LlamaConfig = serde_json::from_value(config_json.clone()).map_err(|e| {
            ModelError::checkpoint(dir.file("config.json"), format!("not a LLaMA config: {e}"))
        })?;
        config
            .validate()
            .map_err(|m| ModelError::checkpoint(dir.file("config.json"), m))?;
        let loader = WeightLoader::new(&dir.file("model.safetensors"), dir.load_weights()?, seed);
        Self::build(loader, config, config_json)
    }

    /// A new model of the given size, every parameter initialised from `seed`.
    pub fn new_random(config: LlamaConfig, seed: u64) -> Result<Self> {
        let config_json = serde_json::to_value(&config).expect("config serialises");
        let (model, _) = Self::build(WeightLoader::fresh(seed), config, config_json)?;
        Ok(model)
    }

    fn build(
        mut loader: WeightLoader,
        config: LlamaConfig,
        config_json: Value,
    ) -> Result<(Self, LoadReport)> {
        let model = LlamaModel::load(&mut loader, "model", &config)?;
        let (lm_head, tied) = if config.tie_word_embeddings {
            // transformers does not store a tied head; if a file does, it is the same table.
            loader.skip("lm_head.weight");
            (model.embed_tokens.weight.clone(), true)
        } else {
            let weight = loader.take(
                "lm_head.weight",
                &[config.vocab_size, config.hidden_size],
                Init::Normal(config.initializer_range),
            )?;
            (weight, false)
        };
        let (parameters, report) = loader.finish();
        Ok((
            Self {
                model,
                lm_head,
                tied,
                parameters,
                config_json,
                frozen: false,
                head_frozen: None,
            },
            report,
        ))
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.model.config
    }

    /// input_ids [b, t] u32, attention_mask [b, t] f32 (1 = token, 0 = right padding) or none
    /// → logits [b, t, vocab]. For training and evaluation.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mode: Mode,
    ) -> Result<Tensor> {
        let hidden = self.model.forward(input_ids, attention_mask, mode)?;
        self.logits(&hidden)
    }

    /// Generation step: feeds `input_ids` [b, t] (the prompt, then one token at a time) after
    /// the cached tokens and returns the logits of the last position only, [b, vocab].
    pub fn forward_with_cache(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let hidden = self.model.forward_with_cache(input_ids, cache)?;
        let length = hidden.dim(1)?;
        if length == 0 {
            return Err(ModelError::checkpoint(
                "input_ids",
                "forward_with_cache needs at least one new token",
            ));
        }
        // [b, 1, H] → [b, vocab]
        let last = hidden.narrow(1, length - 1, 1)?.squeeze(1)?;
        self.logits(&last)
    }

    /// hidden [.., H] → [.., vocab]
    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        if let Some(packed) = &self.head_frozen {
            return Ok(alpaca_kernels::frozen_linear(hidden, packed)?);
        }
        let head = if self.frozen {
            self.lm_head.as_tensor().detach()
        } else {
            self.lm_head.as_tensor().clone()
        };
        Ok(alpaca_kernels::linear_no_bias(hidden, &head)?)
    }

    /// Freezes every base parameter, the head included (LoRA); see [`LlamaModel::freeze`].
    pub fn freeze(&mut self) {
        self.frozen = true;
        self.model.freeze();
    }

    /// Prepares every frozen weight (the base projections and the output head under LoRA)
    /// for its products in `precision`; see [`LlamaModel::pack_frozen`]. Returns the bytes
    /// the packed copies hold.
    pub fn pack_frozen(&mut self, precision: Precision) -> Result<usize> {
        let mut bytes = self.model.pack_frozen(precision)?;
        if self.frozen {
            let packed = FrozenWeight::new(self.lm_head.as_tensor(), precision)?;
            bytes += packed.size_in_bytes();
            self.head_frozen = Some(packed);
        }
        Ok(bytes)
    }

    /// Mean cross-entropy of the logits of `hidden` [P, H] against `targets` [P] (rows whose
    /// target is [`IGNORE_INDEX`] skipped). With a frozen head (LoRA, after `pack_frozen`) this is one
    /// op that never holds the [P, vocab] logits and, when training, forms the gradient for
    /// `hidden` as it goes; otherwise the logits, then the loss.
    pub fn head_loss(&self, hidden: &Tensor, targets: &Tensor, mode: Mode) -> Result<Tensor> {
        if let Some(packed) = &self.head_frozen {
            return Ok(alpaca_kernels::frozen_head_cross_entropy(
                hidden,
                packed,
                targets,
                IGNORE_INDEX,
                mode.train,
            )?);
        }
        Ok(alpaca_kernels::cross_entropy(
            &self.logits(hidden)?,
            targets,
            IGNORE_INDEX,
        )?)
    }

    /// Mean next-token cross-entropy as transformers computes it: position i predicts
    /// labels[i + 1]; labels equal to −100 (and the last position) are skipped.
    /// logits [b, t, vocab], labels [b, t] i64 → scalar.
    pub fn loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let (batch, length, vocab) = logits.dims3()?;
        if labels.dims() != [batch, length] {
            return Err(ModelError::checkpoint(
                "labels",
                format!(
                    "must be [{batch}, {length}] like the logits' first two dimensions, got {:?}",
                    labels.dims()
                ),
            ));
        }
        if length < 2 {
            return Ok(Tensor::new(0f32, logits.device())?);
        }
        // [b, t−1, vocab] against [b, t−1]
        let predicted = logits
            .narrow(1, 0, length - 1)?
            .reshape((batch * (length - 1), vocab))?;
        let targets = labels
            .narrow(1, 1, length - 1)?
            .to_dtype(candle_core::DType::I64)?
            .flatten_all()?;
        Ok(alpaca_kernels::cross_entropy(
            &predicted,
            &targets,
            IGNORE_INDEX,
        )?)
    }

    /// config.json as transformers writes it for this model.
    pub fn config_for_saving(&self) -> Value {
        let mut config = self.config_json.clone();
        if !config.is_object() {
            config = json!({});
        }
        config["architectures"] = json!(["LlamaForCausalLM"]);
        config["model_type"] = json!("llama");
        config["tie_word_embeddings"] = json!(self.tied);
        if let Some(map) = config.as_object_mut() {
            map.remove("_name_or_path");
        }
        config
    }

    /// Writes `target` in HF layout (replacing it atomically): model.safetensors (without a
    /// tied head), config.json, and the tokenizer, generation config and chat template files
    /// of `tokenizer_dir` when present.
    pub fn save(&self, target: &Path, tokenizer_dir: &Path) -> Result<()> {
        let config = self.config_for_saving();
        write_dir_atomic(target, |dir| {
            save_safetensors(&dir.join("model.safetensors"), &self.parameters.tensors())?;
            let text = serde_json::to_string_pretty(&config).expect("JSON values serialise");
            let config_path = dir.join("config.json");
            std::fs::write(&config_path, text + "\n").map_err(|source| ModelError::Io {
                path: config_path.clone(),
                source,
            })?;
            copy_tokenizer_files(tokenizer_dir, dir)?;
            for name in ["generation_config.json", "chat_template.jinja"] {
                let source = tokenizer_dir.join(name);
                if source.is_file() {
                    std::fs::copy(&source, dir.join(name)).map_err(|source_error| {
                        ModelError::Io {
                            path: source.clone(),
                            source: source_error,
                        }
                    })?;
                }
            }
            Ok(())
        })
    }
}
