//! `BertForSequenceClassification`: the encoder, the pooler (a tanh layer over the [CLS]
//! token's hidden state) and a linear layer giving one label per text.
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

pub struct BertForSequenceClassification {
    pub bert: BertModel,
    /// `bert.pooler.dense`: hidden → hidden, followed by tanh.
    pub pooler: Linear,
    pub classifier: Linear,
    pub labels: Vec<String>,
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
        let (parameters, report) = loader.finish();
        Ok((
            Self {
                bert,
                pooler,
                classifier,
                labels,
                parameters,
                config_json,
            },
            report,
        ))
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
        // The [CLS] row of every sequence: [b, t, H] → [b, H].
        let first = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        let pooled = self.pooler.forward(&first)?.tanh()?;
        let probability = self
            .bert
            .config
            .classifier_dropout
            .unwrap_or(self.bert.config.hidden_dropout_prob);
        let pooled = dropout(&pooled, probability, mode, CLASSIFIER_DROPOUT_SITE)?;
        self.classifier.forward(&pooled)
    }

    /// config.json as transformers writes it for this model.
    pub fn config_for_saving(&self) -> Value {
        config_with_labels(
            &self.config_json,
            &self.labels,
            "BertForSequenceClassification",
        )
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
    fn every_parameter_gets_a_gradient() {
        let model = BertForSequenceClassification::new_random(tiny_config(), labels(), 3).unwrap();
        let (ids, types, mask) = inputs();
        let logits = model.forward(&ids, &types, &mask, Mode::EVAL).unwrap();
        assert_eq!(logits.dims(), [2, 3]);
        let targets = Tensor::from_slice(&[1i64, 2], 2, &candle_core::Device::Cpu).unwrap();
        let loss = alpaca_kernels::cross_entropy(&logits, &targets, -100).unwrap();
        let gradients = loss.backward().unwrap();
        for (name, var) in model.parameters.iter() {
            let gradient = gradients
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name} has no gradient"));
            let largest = gradient
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
}
