//! BERT's pre-training heads: masked-LM (`BertForMaskedLM`) and, optionally, next-sentence
//! prediction on top (`BertForPreTraining`).
//!
//! - masked LM: `cls.predictions.transform` (dense H→H, GELU, layer norm), then a decoder whose
//!   weight is the word-embedding table (tied, as in transformers) plus `cls.predictions.bias`;
//! - NSP: the pooler (tanh over the [CLS] state, `bert.pooler.dense`) and
//!   `cls.seq_relationship` (H→2).
//!
//! The decoder runs only on the positions that carry a masked-LM target: the loss is the same
//! as over all positions with −100 elsewhere, at ~15% of the vocabulary-sized matmul.
//! Saved as transformers saves it (the tied decoder weight is not stored).

use std::path::Path;

use candle_core::{Tensor, Var};
use serde_json::{json, Value};

use crate::bert::{BertConfig, BertModel};
use crate::checkpoint::{Init, LoadReport, ModelDir, WeightLoader};
use crate::error::Result;
use crate::head::{open_bert_checkpoint, save_checkpoint};
use crate::layers::{LayerNorm, Linear};
use crate::parameters::Parameters;
use crate::Mode;

/// The next-sentence head: pooler and a two-way classifier.
pub struct NextSentenceHead {
    pub pooler: Linear,
    pub classifier: Linear,
}

pub struct BertForPreTraining {
    pub bert: BertModel,
    /// `cls.predictions.transform.dense`
    pub transform: Linear,
    /// `cls.predictions.transform.LayerNorm`
    pub transform_norm: LayerNorm,
    /// `cls.predictions.bias` [vocab]
    pub decoder_bias: Var,
    pub next_sentence: Option<NextSentenceHead>,
    pub parameters: Parameters,
    config_json: Value,
}

/// What one forward pass predicts.
pub struct PreTrainingOutput {
    /// [n, vocab] for the n positions asked for.
    pub masked_lm_logits: Tensor,
    /// [b, 2] when the model has the NSP head.
    pub next_sentence_logits: Option<Tensor>,
}

impl BertForPreTraining {
    /// Loads a checkpoint; heads it lacks (a bare encoder, or NSP on a masked-LM checkpoint)
    /// are initialised as transformers does and listed in the report.
    pub fn load(dir: &ModelDir, next_sentence: bool, seed: u64) -> Result<(Self, LoadReport)> {
        let (config_json, config, loader) = open_bert_checkpoint(dir, seed)?;
        Self::build(loader, config, config_json, next_sentence)
    }

    /// A new model of the given size, every parameter initialised (pre-training from scratch).
    pub fn new_random(config: BertConfig, next_sentence: bool, seed: u64) -> Result<Self> {
        let config_json = serde_json::to_value(&config).expect("config serialises");
        let (model, _) = Self::build(
            WeightLoader::fresh(seed),
            config,
            config_json,
            next_sentence,
        )?;
        Ok(model)
    }

    fn build(
        mut loader: WeightLoader,
        config: BertConfig,
        config_json: Value,
        next_sentence: bool,
    ) -> Result<(Self, LoadReport)> {
        let bert = BertModel::load(&mut loader, "bert", &config)?;
        let hidden = config.hidden_size;
        let init = config.initializer_range;
        let transform = Linear::load(
            &mut loader,
            "cls.predictions.transform.dense",
            hidden,
            hidden,
            init,
        )?;
        let transform_norm = LayerNorm::load(
            &mut loader,
            "cls.predictions.transform.LayerNorm",
            hidden,
            config.layer_norm_eps,
        )?;
        let decoder_bias =
            loader.take("cls.predictions.bias", &[config.vocab_size], Init::Zeros)?;
        // Tied to the word embeddings (and to `cls.predictions.bias`) when stored at all.
        loader.skip("cls.predictions.decoder.weight");
        loader.skip("cls.predictions.decoder.bias");
        let next_sentence = if next_sentence {
            Some(NextSentenceHead {
                pooler: Linear::load(&mut loader, "bert.pooler.dense", hidden, hidden, init)?,
                classifier: Linear::load(&mut loader, "cls.seq_relationship", hidden, 2, init)?,
            })
        } else {
            None
        };
        let (parameters, report) = loader.finish();
        Ok((
            Self {
                bert,
                transform,
                transform_norm,
                decoder_bias,
                next_sentence,
                parameters,
                config_json,
            },
            report,
        ))
    }

    /// `positions`: [n] u32 indices into the flattened [b·t] tokens whose vocabulary
    /// distribution is wanted (the masked ones when training, all when filling in).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        type_ids: &Tensor,
        attention_mask: &Tensor,
        positions: &Tensor,
        mode: Mode,
    ) -> Result<PreTrainingOutput> {
        let hidden = self
            .bert
            .forward(input_ids, type_ids, attention_mask, mode)?;
        let (batch, length, size) = hidden.dims3()?;
        // [b, t, H] → [n, H]
        let picked = hidden
            .reshape((batch * length, size))?
            .index_select(positions, 0)?;
        let transformed = alpaca_kernels::bias_gelu(
            &self.transform.forward_without_bias(&picked)?,
            self.transform
                .bias
                .as_ref()
                .expect("the transform has a bias")
                .as_tensor(),
        )?;
        let transformed = self.transform_norm.forward(&transformed)?;
        // [n, H] · [vocab, H]ᵀ + bias → [n, vocab]
        let masked_lm_logits = alpaca_kernels::linear(
            &transformed,
            self.bert.word_embeddings().as_tensor(),
            self.decoder_bias.as_tensor(),
        )?;
        let next_sentence_logits = match &self.next_sentence {
            Some(head) => {
                let first = hidden.narrow(1, 0, 1)?.squeeze(1)?;
                let pooled = head.pooler.forward(&first)?.tanh()?;
                Some(head.classifier.forward(&pooled)?)
            }
            None => None,
        };
        Ok(PreTrainingOutput {
            masked_lm_logits,
            next_sentence_logits,
        })
    }

    /// The architecture transformers should build when loading the saved directory.
    pub fn architecture(&self) -> &'static str {
        if self.next_sentence.is_some() {
            "BertForPreTraining"
        } else {
            "BertForMaskedLM"
        }
    }

    pub fn config_for_saving(&self) -> Value {
        let mut config = self.config_json.clone();
        if !config.is_object() {
            config = json!({});
        }
        config["architectures"] = json!([self.architecture()]);
        config["model_type"] = json!("bert");
        config["tie_word_embeddings"] = json!(true);
        if let Some(map) = config.as_object_mut() {
            for key in ["id2label", "label2id", "_name_or_path"] {
                map.remove(key);
            }
        }
        config
    }

    /// Writes `target` in HF layout (replacing it atomically), with the tokenizer files of
    /// `tokenizer_dir`.
    pub fn save(&self, target: &Path, tokenizer_dir: &Path) -> Result<()> {
        save_checkpoint(
            target,
            tokenizer_dir,
            &self.parameters,
            &self.config_for_saving(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{largest, max_difference};
    use candle_core::Device;

    fn tiny_config() -> BertConfig {
        serde_json::from_value(json!({
            "vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 16,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0
        }))
        .unwrap()
    }

    fn inputs() -> (Tensor, Tensor, Tensor, Tensor) {
        let device = Device::Cpu;
        let ids = Tensor::from_slice(&[2u32, 5, 4, 3, 2, 7, 3, 0], (2, 4), &device).unwrap();
        let types = Tensor::from_slice(&[0u32, 0, 0, 0, 0, 0, 1, 0], (2, 4), &device).unwrap();
        let mask =
            Tensor::from_slice(&[1f32, 1., 1., 1., 1., 1., 1., 0.], (2, 4), &device).unwrap();
        let positions = Tensor::from_slice(&[2u32, 5], 2, &device).unwrap();
        (ids, types, mask, positions)
    }

    #[test]
    fn every_parameter_gets_a_gradient_through_both_heads() {
        let model = BertForPreTraining::new_random(tiny_config(), true, 1).unwrap();
        let (ids, types, mask, positions) = inputs();
        let output = model
            .forward(&ids, &types, &mask, &positions, Mode::EVAL)
            .unwrap();
        assert_eq!(output.masked_lm_logits.dims(), [2, 40]);
        let nsp = output.next_sentence_logits.unwrap();
        assert_eq!(nsp.dims(), [2, 2]);
        let device = Device::Cpu;
        let targets = Tensor::from_slice(&[9i64, 11], 2, &device).unwrap();
        let nsp_targets = Tensor::from_slice(&[0i64, 1], 2, &device).unwrap();
        let loss = (alpaca_kernels::cross_entropy(&output.masked_lm_logits, &targets, -100)
            .unwrap()
            + alpaca_kernels::cross_entropy(&nsp, &nsp_targets, -100).unwrap())
        .unwrap();
        let mut gradients = model
            .parameters
            .gradients_by_name(&loss.backward().unwrap())
            .unwrap();
        for (name, _) in model.parameters.iter() {
            let gradient = gradients
                .remove(name)
                .unwrap_or_else(|| panic!("{name} has no gradient"));
            assert!(
                gradient.squared_norm().unwrap() > 0.0,
                "{name}: zero gradient"
            );
        }
        assert!(model
            .parameters
            .get("cls.predictions.decoder.weight")
            .is_none());
    }

    /// transformers' `BertForMaskedLM(config)` / `BertForPreTraining(config)`: every linear
    /// weight and every embedding table N(0, initializer_range) with the word table's padding
    /// row zero, biases (the decoder's too) zero, LayerNorm 1 and 0, and the decoder tied to
    /// the word embeddings.
    #[test]
    fn a_new_bert_is_initialised_as_transformers_does() {
        let config: BertConfig = serde_json::from_value(json!({
            "vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 64,
            "initializer_range": 0.02, "pad_token_id": 3
        }))
        .unwrap();
        let model = BertForPreTraining::new_random(config, true, 11).unwrap();
        let mut normal = 0;
        for (name, var) in model.parameters.iter() {
            let mut values = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            if name.contains("LayerNorm.weight") {
                assert!(values.iter().all(|&v| v == 1.0), "{name}");
            } else if name.ends_with(".bias") {
                assert!(values.iter().all(|&v| v == 0.0), "{name}");
            } else {
                if name == "bert.embeddings.word_embeddings.weight" {
                    let padding: Vec<f32> = values.drain(3 * 64..4 * 64).collect();
                    assert!(padding.iter().all(|&v| v == 0.0), "padding row not zero");
                    assert!(values[2 * 64..3 * 64].iter().all(|&v| v != 0.0));
                }
                let n = values.len() as f64;
                let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
                let std = (values
                    .iter()
                    .map(|&v| (v as f64 - mean).powi(2))
                    .sum::<f64>()
                    / n)
                    .sqrt();
                // Four standard errors of the sample mean and standard deviation.
                assert!(mean.abs() < 4.0 * 0.02 / n.sqrt(), "{name}: mean {mean}");
                assert!(
                    (std - 0.02).abs() < 4.0 * 0.02 / (2.0 * n).sqrt(),
                    "{name}: std {std}"
                );
                normal += 1;
            }
        }
        // 3 embedding tables, 6 linears per layer, the transform, pooler and NSP classifier.
        assert_eq!(normal, 3 + 2 * 6 + 3);
        assert!(model
            .parameters
            .get("cls.predictions.decoder.weight")
            .is_none());
        // Tied: with the word table zeroed, every logit is the (zero) decoder bias.
        let table = model.bert.word_embeddings();
        table
            .set(&Tensor::zeros(table.shape(), table.dtype(), &Device::Cpu).unwrap())
            .unwrap();
        let (ids, types, mask, positions) = inputs();
        let logits = model
            .forward(&ids, &types, &mask, &positions, Mode::EVAL)
            .unwrap()
            .masked_lm_logits;
        assert_eq!(largest(&logits), 0.0);
    }

    #[test]
    fn picked_positions_equal_the_full_decoder() {
        let model = BertForPreTraining::new_random(tiny_config(), false, 2).unwrap();
        let (ids, types, mask, _) = inputs();
        let all = Tensor::arange(0u32, 8, &Device::Cpu).unwrap();
        let full = model
            .forward(&ids, &types, &mask, &all, Mode::EVAL)
            .unwrap()
            .masked_lm_logits;
        let some = Tensor::from_slice(&[6u32, 1], 2, &Device::Cpu).unwrap();
        let picked = model
            .forward(&ids, &types, &mask, &some, Mode::EVAL)
            .unwrap()
            .masked_lm_logits;
        let expected = full.index_select(&some, 0).unwrap();
        assert!(max_difference(&picked, &expected) < 1e-6);
    }

    #[test]
    fn save_and_load_round_trip_without_the_tied_decoder() {
        let model = BertForPreTraining::new_random(tiny_config(), true, 3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
        let target = dir.path().join("saved");
        model.save(&target, dir.path()).unwrap();
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(target.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["architectures"], json!(["BertForPreTraining"]));
        let (loaded, report) =
            BertForPreTraining::load(&ModelDir::open(target.to_str().unwrap()).unwrap(), true, 0)
                .unwrap();
        assert!(report.summary().is_empty(), "{}", report.summary());
        let (ids, types, mask, positions) = inputs();
        let before = model
            .forward(&ids, &types, &mask, &positions, Mode::EVAL)
            .unwrap();
        let after = loaded
            .forward(&ids, &types, &mask, &positions, Mode::EVAL)
            .unwrap();
        assert_eq!(
            max_difference(&before.masked_lm_logits, &after.masked_lm_logits),
            0.0
        );
        // Loaded without NSP, the saved NSP head is reported as unexpected, not silently used.
        let (_, report) =
            BertForPreTraining::load(&ModelDir::open(target.to_str().unwrap()).unwrap(), false, 0)
                .unwrap();
        assert!(
            report.summary().contains("seq_relationship"),
            "{}",
            report.summary()
        );
    }
}
