//! `BertForTokenClassification`: the encoder plus a linear layer over every token.
//!
//! Saved exactly as transformers saves it (`bert.` body prefix, `classifier.*`, id2label and
//! label2id in config.json) so `AutoModelForTokenClassification.from_pretrained` loads it.

use std::path::Path;

use candle_core::Tensor;
use serde_json::{json, Map, Value};

use crate::bert::{BertConfig, BertModel};
use crate::checkpoint::{
    copy_tokenizer_files, save_safetensors, write_dir_atomic, Init, LoadReport, ModelDir,
    WeightLoader,
};
use crate::error::{ModelError, Result};
use crate::layers::{dropout, Linear};
use crate::parameters::Parameters;
use crate::Mode;

/// The roots of a bare encoder's parameter names, which we store under `bert.`.
const BODY_ROOTS: [&str; 3] = ["embeddings.", "encoder.", "pooler."];

pub struct BertForTokenClassification {
    pub bert: BertModel,
    pub classifier: Linear,
    pub labels: Vec<String>,
    pub parameters: Parameters,
    /// config.json as read, so keys we do not model survive a save.
    config_json: Value,
}

/// The label list stored in a checkpoint's id2label, if it has one.
pub fn labels_from_config(config: &Value) -> Option<Vec<String>> {
    let map = config.get("id2label")?.as_object()?;
    let mut pairs: Vec<(usize, String)> = map
        .iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
        .collect();
    pairs.sort();
    if pairs.iter().enumerate().any(|(i, (k, _))| *k != i) {
        return None;
    }
    Some(pairs.into_iter().map(|(_, v)| v).collect())
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
        let config_json = dir.config_value()?;
        let config: BertConfig = serde_json::from_value(config_json.clone()).map_err(|e| {
            ModelError::checkpoint(dir.file("config.json"), format!("not a BERT config: {e}"))
        })?;
        let saved_labels = labels_from_config(&config_json);
        let mut loader =
            WeightLoader::new(&dir.file("model.safetensors"), dir.load_weights()?, seed);
        loader.add_prefix("bert", &BODY_ROOTS);
        let (labels, reuse_head) = match (labels, saved_labels) {
            (Some(wanted), Some(saved)) => {
                let same = wanted == saved;
                (wanted, same)
            }
            (Some(wanted), None) => (wanted, false),
            (None, Some(saved)) if loader.has("classifier.weight") => (saved, true),
            (None, _) => {
                return Err(ModelError::checkpoint(
                    dir.file("config.json"),
                    "this checkpoint has no token-classification head (no id2label and classifier.weight); \
                     fine-tune it first with `alpaca train ner`",
                ))
            }
        };
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
        let shape_w = [labels.len(), config.hidden_size];
        let init = Init::Normal(config.initializer_range);
        let classifier = if reuse_head {
            Linear {
                weight: loader.take("classifier.weight", &shape_w, init)?,
                bias: Some(loader.take("classifier.bias", &[labels.len()], Init::Zeros)?),
            }
        } else {
            Linear {
                weight: loader.fresh_parameter("classifier.weight", &shape_w, init)?,
                bias: Some(loader.fresh_parameter(
                    "classifier.bias",
                    &[labels.len()],
                    Init::Zeros,
                )?),
            }
        };
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
        let mut config = match self.config_json.clone() {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let id2label: Map<String, Value> = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), json!(l)))
            .collect();
        let label2id: Map<String, Value> = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), json!(i)))
            .collect();
        config.insert(
            "architectures".into(),
            json!(["BertForTokenClassification"]),
        );
        config.insert("model_type".into(), json!("bert"));
        config.insert("id2label".into(), Value::Object(id2label));
        config.insert("label2id".into(), Value::Object(label2id));
        config.remove("_name_or_path");
        Value::Object(config)
    }

    /// Writes `target` in HF layout (replacing it atomically), copying the tokenizer files
    /// from `tokenizer_dir`.
    pub fn save(&self, target: &Path, tokenizer_dir: &Path) -> Result<()> {
        write_dir_atomic(target, |dir| {
            save_safetensors(&dir.join("model.safetensors"), &self.parameters.tensors())?;
            let config = serde_json::to_string_pretty(&self.config_for_saving())
                .expect("JSON values serialise");
            std::fs::write(dir.join("config.json"), config + "\n").map_err(|source| {
                ModelError::Io {
                    path: dir.join("config.json"),
                    source,
                }
            })?;
            copy_tokenizer_files(tokenizer_dir, dir)
        })
    }
}
