//! `BertForTokenClassification`: the encoder plus a linear layer over every token.
//!
//! Saved exactly as transformers saves it (`bert.` body prefix, `classifier.*`, id2label and
//! label2id in config.json) so `AutoModelForTokenClassification.from_pretrained` loads it.

use std::path::Path;

use candle_core::Tensor;
use serde_json::Value;

use crate::bert::{BertConfig, BertModel};
use crate::checkpoint::{LoadReport, ModelDir, WeightLoader};
use crate::error::Result;
pub use crate::head::labels_from_config;
use crate::head::{
    classifier, config_with_labels, head_labels, open_bert_checkpoint, save_checkpoint,
};
use crate::layers::{dropout, Linear};
use crate::parameters::Parameters;
use crate::Mode;

pub struct BertForTokenClassification {
    pub bert: BertModel,
    pub classifier: Linear,
    pub labels: Vec<String>,
    pub parameters: Parameters,
    /// config.json as read, so keys we do not model survive a save.
    config_json: Value,
}

impl BertForTokenClassification {
    /// Loads a checkpoint. With `labels`, a classifier whose label list differs from the
    /// checkpoint's (or a checkpoint without one) gets a fresh head; without, the checkpoint
    /// must carry its own id2label (a fine-tuned model).
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
            ("token-classification", "alpaca train ner"),
        )?;
        Self::build(loader, config, config_json, labels, reuse_head)
    }

    /// A randomly initialised model (tests, pre-training from scratch).
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
        let classifier = classifier(
            &mut loader,
            labels.len(),
            config.hidden_size,
            config.initializer_range,
            reuse_head,
        )?;
        let (parameters, report) = loader.finish();
        Ok((
            Self {
                bert,
                classifier,
                labels,
                parameters,
                config_json,
            },
            report,
        ))
    }

    /// Packs the encoder and the classifier for prediction (see
    /// [`BertModel::pack_for_inference`]); the model then no longer trains.
    pub fn pack_for_inference(&mut self) -> Result<usize> {
        Ok(self.bert.pack_for_inference()? + self.classifier.pack_for_inference()?)
    }

    /// Logits [b, t, labels].
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
        let probability = self
            .bert
            .config
            .classifier_dropout
            .unwrap_or(self.bert.config.hidden_dropout_prob);
        let hidden = dropout(&hidden, probability, mode, 10_000)?;
        self.classifier.forward(&hidden)
    }

    /// config.json as transformers writes it for this model.
    pub fn config_for_saving(&self) -> Value {
        config_with_labels(
            &self.config_json,
            &self.labels,
            "BertForTokenClassification",
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
