//! `BertForSequenceClassification`: the encoder, the pooler (a tanh layer over the [CLS]
//! token's hidden state) and a linear layer giving one label per text.
//!
//! config.json's `classifier_pooling` (the key ModernBERT's config uses) may instead say
//! `"mean"`: the classifier then reads the mean of the last hidden states over the real tokens
//! (what sentence-transformers checkpoints such as all-MiniLM-L6-v2 were trained to produce),
//! without the pooler. transformers' `BertForSequenceClassification` ignores the key and always
//! uses the pooler, so such a checkpoint gives other logits there.
//!
//! Saved exactly as transformers saves it (`bert.` body prefix with `bert.pooler.dense`,
//! `classifier.*`, id2label and label2id in config.json) so
//! `AutoModelForSequenceClassification.from_pretrained` loads it.

use std::path::Path;

use candle_core::Tensor;
use serde_json::Value;

use crate::bert::{BertConfig, BertModel};
use crate::checkpoint::{LoadReport, ModelDir, WeightLoader};
use crate::error::Result;
use crate::head::{
    classifier, config_with_labels, head_labels, open_bert_checkpoint, save_checkpoint,
};
use crate::layers::{dropout, Linear};
use crate::parameters::Parameters;
use crate::Mode;

/// Dropout site of the classifier input; far from the encoder's sites so masks never repeat.
const CLASSIFIER_DROPOUT_SITE: u64 = 10_000;

/// How a text's hidden states become the classifier's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The pooler (dense + tanh) over the [CLS] state, as BERT.
    Cls,
    /// The mean of the hidden states over the real (unmasked) tokens.
    Mean,
}

impl Pooling {
    /// config.json's `classifier_pooling` ("cls" when absent).
    pub fn from_config(config: &Value) -> std::result::Result<Self, String> {
        match config.get("classifier_pooling").and_then(Value::as_str) {
            None | Some("cls") => Ok(Pooling::Cls),
            Some("mean") => Ok(Pooling::Mean),
            Some(other) => Err(format!(
                "classifier_pooling {other:?} is not supported (expected \"cls\" or \"mean\")"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
        }
    }
}

pub struct BertForSequenceClassification {
    pub bert: BertModel,
    /// `bert.pooler.dense`: hidden → hidden, followed by tanh.
    pub pooler: Linear,
    pub classifier: Linear,
    pub labels: Vec<String>,
    pub pooling: Pooling,
    pub parameters: Parameters,
    /// config.json as read, so keys we do not model survive a save.
    config_json: Value,
}

impl BertForSequenceClassification {
    /// Loads a checkpoint. With `labels`, a classifier whose label list differs from the
    /// checkpoint's (or a checkpoint without one) gets a fresh head; without, the checkpoint
    /// must carry its own id2label (a fine-tuned model). A checkpoint without a pooler (a
    /// masked-LM one) gets a fresh pooler, as in transformers.
    pub fn load(
        dir: &ModelDir,
        labels: Option<Vec<String>>,
        seed: u64,
    ) -> Result<(Self, LoadReport)> {
        let (config_json, config, loader) = open_bert_checkpoint(dir, seed)?;
        let (labels, reuse_head) = head_labels(
            dir,
            &config_json,
            &loader,
            labels,
            ("sequence-classification", "alpaca train classify"),
        )?;
        Self::build(loader, config, config_json, labels, reuse_head)
    }

    /// A randomly initialised model (tests).
    pub fn new_random(config: BertConfig, labels: Vec<String>, seed: u64) -> Result<Self> {
        let config_json = serde_json::to_value(&config).expect("config serialises");
        let (model, _) = Self::build(WeightLoader::fresh(seed), config, config_json, labels, true)?;
        Ok(model)
    }

    fn build(
        mut loader: WeightLoader,
        config: BertConfig,
        config_json: Value,
        labels: Vec<String>,
        reuse_head: bool,
    ) -> Result<(Self, LoadReport)> {
        let bert = BertModel::load(&mut loader, "bert", &config)?;
        let hidden = config.hidden_size;
        let pooler = Linear::load(
            &mut loader,
            "bert.pooler.dense",
            hidden,
            hidden,
            config.initializer_range,
        )?;
        let classifier = classifier(
            &mut loader,
            labels.len(),
            hidden,
            config.initializer_range,
            reuse_head,
        )?;
        let pooling = Pooling::from_config(&config_json)
            .map_err(|m| crate::ModelError::checkpoint("config.json", m))?;
        let (parameters, report) = loader.finish();
        Ok((
            Self {
                bert,
                pooler,
                classifier,
                labels,
                pooling,
                parameters,
                config_json,
            },
            report,
        ))
    }

    /// Packs the encoder, the pooler and the classifier for prediction (see
    /// [`BertModel::pack_for_inference`]); the model then no longer trains.
    pub fn pack_for_inference(&mut self) -> Result<usize> {
        Ok(self.bert.pack_for_inference()?
            + self.pooler.pack_for_inference()?
            + self.classifier.pack_for_inference()?)
    }

    /// Logits [b, labels].
    pub fn forward(
        &self,
        input_ids: &Tensor,
        type_ids: &Tensor,
        attention_mask: &Tensor,
        mode: Mode,
    ) -> Result<Tensor> {
        let hidden = self
            .bert
            .forward(input_ids, type_ids, attention_mask, mode)?;
        let pooled = match self.pooling {
            Pooling::Cls => {
                // The [CLS] row of every sequence: [b, t, H] → [b, H].
                let first = hidden.narrow(1, 0, 1)?.squeeze(1)?;
                self.pooler.forward(&first)?.tanh()?
            }
            Pooling::Mean => {
                // Σ_t mask·h / Σ_t mask: [b, t, H] → [b, H]
                let mask = attention_mask.unsqueeze(2)?;
                let sum = hidden.broadcast_mul(&mask)?.sum(1)?;
                let count = mask.sum(1)?.clamp(1.0, f64::MAX)?;
                sum.broadcast_div(&count)?
            }
        };
        let probability = self
            .bert
            .config
            .classifier_dropout
            .unwrap_or(self.bert.config.hidden_dropout_prob);
        let pooled = dropout(&pooled, probability, mode, CLASSIFIER_DROPOUT_SITE)?;
        self.classifier.forward(&pooled)
    }

    /// Chooses the pooling (recorded in config.json when saved).
    pub fn set_pooling(&mut self, pooling: Pooling) {
        self.pooling = pooling;
    }

    /// config.json as transformers writes it for this model, plus `classifier_pooling` when
    /// it is not the default.
    pub fn config_for_saving(&self) -> Value {
        let mut config = config_with_labels(
            &self.config_json,
            &self.labels,
            "BertForSequenceClassification",
        );
        match self.pooling {
            Pooling::Cls => {
                if let Some(map) = config.as_object_mut() {
                    map.remove("classifier_pooling");
                }
            }
            Pooling::Mean => config["classifier_pooling"] = serde_json::json!("mean"),
        }
        config
    }

    /// Writes `target` in HF layout (replacing it atomically), copying the tokenizer files
    /// from `tokenizer_dir`.
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
    use crate::test_util::max_difference;

    fn tiny_config() -> BertConfig {
        serde_json::from_value(serde_json::json!({
            "vocab_size": 30, "hidden_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 16,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0
        }))
        .unwrap()
    }

    fn inputs() -> (Tensor, Tensor, Tensor) {
        let device = candle_core::Device::Cpu;
        let ids = Tensor::from_slice(&[2u32, 5, 9, 3, 2, 7, 3, 0], (2, 4), &device).unwrap();
        let types = ids.zeros_like().unwrap();
        let mask =
            Tensor::from_slice(&[1f32, 1., 1., 1., 1., 1., 1., 0.], (2, 4), &device).unwrap();
        (ids, types, mask)
    }

    fn labels() -> Vec<String> {
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn packed_for_inference_gives_the_same_logits() {
        let mut model =
            BertForSequenceClassification::new_random(tiny_config(), labels(), 3).unwrap();
        let (ids, types, mask) = inputs();
        let before = model.forward(&ids, &types, &mask, Mode::EVAL).unwrap();
        assert!(model.pack_for_inference().unwrap() > 0);
        assert!(model.pooler.is_packed() && model.classifier.is_packed());
        let after = model.forward(&ids, &types, &mask, Mode::EVAL).unwrap();
        let difference = max_difference(&before, &after);
        assert!(difference < 1e-5, "packed logits differ by {difference}");
    }

    #[test]
    fn every_parameter_gets_a_gradient() {
        let model = BertForSequenceClassification::new_random(tiny_config(), labels(), 3).unwrap();
        let (ids, types, mask) = inputs();
        let logits = model.forward(&ids, &types, &mask, Mode::EVAL).unwrap();
        assert_eq!(logits.dims(), [2, 3]);
        let targets = Tensor::from_slice(&[1i64, 2], 2, &candle_core::Device::Cpu).unwrap();
        let loss = alpaca_kernels::cross_entropy(&logits, &targets, -100).unwrap();
        let mut gradients = model
            .parameters
            .gradients_by_name(&loss.backward().unwrap())
            .unwrap();
        for (name, _) in model.parameters.iter() {
            let gradient = gradients
                .remove(name)
                .unwrap_or_else(|| panic!("{name} has no gradient"));
            let largest = gradient
                .to_dense()
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(largest > 0.0, "{name} has an all-zero gradient");
        }
        assert!(model.parameters.get("bert.pooler.dense.weight").is_some());
    }

    #[test]
    fn save_and_load_give_the_same_logits() {
        let model = BertForSequenceClassification::new_random(tiny_config(), labels(), 5).unwrap();
        let dir = tempfile::tempdir().unwrap();
        // A tokenizer file is copied along with the checkpoint; any JSON will do here.
        std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
        let target = dir.path().join("saved");
        model.save(&target, dir.path()).unwrap();
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(target.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            config["architectures"],
            serde_json::json!(["BertForSequenceClassification"])
        );
        assert_eq!(config["id2label"]["2"], "c");
        assert_eq!(config["label2id"]["b"], 1);
        let (loaded, report) = BertForSequenceClassification::load(
            &ModelDir::open(target.to_str().unwrap()).unwrap(),
            None,
            0,
        )
        .unwrap();
        assert!(report.summary().is_empty(), "{}", report.summary());
        assert_eq!(loaded.labels, labels());
        let (ids, types, mask) = inputs();
        let before = model.forward(&ids, &types, &mask, Mode::EVAL).unwrap();
        let after = loaded.forward(&ids, &types, &mask, Mode::EVAL).unwrap();
        let difference = (before - after)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(difference, 0.0);
    }

    #[test]
    fn mean_pooling_ignores_padding_and_survives_a_save() {
        let mut model =
            BertForSequenceClassification::new_random(tiny_config(), labels(), 9).unwrap();
        model.set_pooling(Pooling::Mean);
        let device = candle_core::Device::Cpu;
        // The second row's padding position holds a different id: it must not matter.
        let (ids, types, mask) = inputs();
        let other = Tensor::from_slice(&[2u32, 5, 9, 3, 2, 7, 3, 11], (2, 4), &device).unwrap();
        let a = model.forward(&ids, &types, &mask, Mode::EVAL).unwrap();
        let b = model.forward(&other, &types, &mask, Mode::EVAL).unwrap();
        let difference = (a.clone() - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(difference, 0.0);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
        let target = dir.path().join("saved");
        model.save(&target, dir.path()).unwrap();
        let (loaded, _) = BertForSequenceClassification::load(
            &ModelDir::open(target.to_str().unwrap()).unwrap(),
            None,
            0,
        )
        .unwrap();
        assert_eq!(loaded.pooling, Pooling::Mean);
        let c = loaded.forward(&ids, &types, &mask, Mode::EVAL).unwrap();
        assert_eq!(a.to_vec2::<f32>().unwrap(), c.to_vec2::<f32>().unwrap());
    }
}
