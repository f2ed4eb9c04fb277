//! What every classification head shares: its label list in config.json (id2label,
//! label2id), the `classifier` layer (reused from the checkpoint or freshly initialised), and
//! saving in HF layout.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::bert::BertConfig;
use crate::checkpoint::{
    copy_tokenizer_files, save_safetensors, write_dir_atomic, Init, ModelDir, WeightLoader,
};
use crate::error::{ModelError, Result};
use crate::layers::Linear;
use crate::parameters::Parameters;

/// The roots of a bare encoder's parameter names, which we store under `bert.`.
pub const BODY_ROOTS: [&str; 3] = ["embeddings.", "encoder.", "pooler."];

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

/// The label list of the head and whether the checkpoint's classifier can be reused. With
/// `wanted` labels, a classifier whose label list differs from the checkpoint's (or a
/// checkpoint without one) gets a fresh head; without, the checkpoint must carry its own
/// id2label and classifier (a fine-tuned model); the error names the `head` and the
/// `train_command` that makes one.
pub fn head_labels(
    dir: &ModelDir,
    config_json: &Value,
    loader: &WeightLoader,
    wanted: Option<Vec<String>>,
    (head, train_command): (&str, &str),
) -> Result<(Vec<String>, bool)> {
    match (wanted, labels_from_config(config_json)) {
        (Some(wanted), Some(saved)) => {
            let same = wanted == saved;
            Ok((wanted, same))
        }
        (Some(wanted), None) => Ok((wanted, false)),
        (None, Some(saved)) if loader.has("classifier.weight") => Ok((saved, true)),
        (None, _) => Err(ModelError::checkpoint(
            dir.file("config.json"),
            format!(
                "this checkpoint has no {head} head (no id2label and classifier.weight); \
                 fine-tune it first with `{train_command}`"
            ),
        )),
    }
}

/// The `classifier` layer (`labels` × `hidden`): the checkpoint's when `reuse` (its label list
/// is the wanted one), else fresh, as transformers initialises it.
pub fn classifier(
    loader: &mut WeightLoader,
    labels: usize,
    hidden: usize,
    initializer_range: f64,
    reuse: bool,
) -> Result<Linear> {
    let shape = [labels, hidden];
    let init = Init::Normal(initializer_range);
    Ok(if reuse {
        Linear::new(
            loader.take("classifier.weight", &shape, init)?,
            Some(loader.take("classifier.bias", &[labels], Init::Zeros)?),
        )
    } else {
        Linear::new(
            loader.fresh_parameter("classifier.weight", &shape, init)?,
            Some(loader.fresh_parameter("classifier.bias", &[labels], Init::Zeros)?),
        )
    })
}

/// config.json as transformers writes it for a head over `labels`: the original keys, plus
/// architectures, id2label and label2id.
pub fn config_with_labels(config_json: &Value, labels: &[String], architecture: &str) -> Value {
    let mut config = match config_json.clone() {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let id2label: Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), json!(l)))
        .collect();
    let label2id: Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), json!(i)))
        .collect();
    config.insert("architectures".into(), json!([architecture]));
    config.insert("model_type".into(), json!("bert"));
    config.insert("id2label".into(), Value::Object(id2label));
    config.insert("label2id".into(), Value::Object(label2id));
    config.remove("_name_or_path");
    Value::Object(config)
}

/// Writes `target` in HF layout (replacing it atomically): the parameters, `config`, and the
/// tokenizer files copied from `tokenizer_dir`.
pub fn save_checkpoint(
    target: &Path,
    tokenizer_dir: &Path,
    parameters: &Parameters,
    config: &Value,
) -> Result<()> {
    write_dir_atomic(target, |dir| {
        save_safetensors(&dir.join("model.safetensors"), &parameters.tensors())?;
        let text = serde_json::to_string_pretty(config).expect("JSON values serialise");
        std::fs::write(dir.join("config.json"), text + "\n").map_err(|source| ModelError::Io {
            path: dir.join("config.json"),
            source,
        })?;
        copy_tokenizer_files(tokenizer_dir, dir)
    })
}

/// What every head's `load` starts from: config.json (raw, and read as a BERT config) and a
/// weight loader whose bare-encoder names are mapped under `bert.`.
pub fn open_bert_checkpoint(
    dir: &ModelDir,
    seed: u64,
) -> Result<(Value, BertConfig, WeightLoader)> {
    let config_json = dir.config_value()?;
    let config: BertConfig = serde_json::from_value(config_json.clone()).map_err(|e| {
        ModelError::checkpoint(dir.file("config.json"), format!("not a BERT config: {e}"))
    })?;
    let mut loader = WeightLoader::new(&dir.file("model.safetensors"), dir.load_weights()?, seed);
    loader.add_prefix("bert", &BODY_ROOTS);
    Ok((config_json, config, loader))
}
