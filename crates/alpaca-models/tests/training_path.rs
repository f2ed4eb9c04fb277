//! A tiny random token classifier: every parameter gets a gradient, and a save/load round trip
//! through the HF layout gives the same logits.

use alpaca_models::{BertConfig, BertForTokenClassification, Mode, ModelDir};
use candle_core::{DType, Device, Tensor};

fn tiny_config() -> BertConfig {
    serde_json::from_value(serde_json::json!({
        "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 32, "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1
    }))
    .unwrap()
}

fn inputs() -> (Tensor, Tensor, Tensor, Tensor) {
    let device = Device::Cpu;
    let ids = Tensor::new(&[[2u32, 7, 9, 11, 3, 0], [2, 5, 6, 3, 0, 0]], &device).unwrap();
    // Both token types occur so the token-type embedding rows both get gradients.
    let types = Tensor::new(&[[0u32, 0, 0, 1, 1, 0], [0, 0, 1, 1, 0, 0]], &device).unwrap();
    let mask = Tensor::new(
        &[[1f32, 1., 1., 1., 1., 0.], [1., 1., 1., 1., 0., 0.]],
        &device,
    )
    .unwrap();
    let labels = Tensor::new(
        &[-100i64, 1, 2, 0, -100, -100, -100, 2, 1, -100, -100, -100],
        &device,
    )
    .unwrap();
    (ids, types, mask, labels)
}

#[test]
fn every_parameter_receives_a_nonzero_gradient() {
    let labels = vec!["B-X".to_string(), "I-X".to_string(), "O".to_string()];
    let model = BertForTokenClassification::new_random(tiny_config(), labels, 1).unwrap();
    let (ids, types, mask, targets) = inputs();
    let logits = model.forward(&ids, &types, &mask, Mode::train(3)).unwrap();
    let flat = logits.reshape((12, 3)).unwrap();
    let loss = alpaca_kernels::cross_entropy(&flat, &targets, -100).unwrap();
    let mut gradients = model
        .parameters
        .gradients_by_name(&loss.backward().unwrap())
        .unwrap();
    for (name, _) in model.parameters.iter() {
        let gradient = gradients
            .remove(name)
            .unwrap_or_else(|| panic!("{name} has no gradient: the graph is cut somewhere"));
        let norm = gradient.squared_norm().unwrap();
        assert!(norm > 0.0, "{name} has an all-zero gradient");
    }
    // The model has every parameter transformers' BertForTokenClassification has (no pooler).
    assert_eq!(model.parameters.len(), 5 + 2 * 16 + 2);
}

#[test]
fn saved_checkpoint_reloads_with_identical_logits() {
    let labels = vec!["B-X".to_string(), "I-X".to_string(), "O".to_string()];
    let model = BertForTokenClassification::new_random(tiny_config(), labels.clone(), 5).unwrap();
    let directory = tempfile::tempdir().unwrap();
    let tokenizer_dir = tempfile::tempdir().unwrap();
    std::fs::write(tokenizer_dir.path().join("tokenizer.json"), "{}").unwrap();
    let target = directory.path().join("best");
    model.save(&target, tokenizer_dir.path()).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(target.join(file).is_file(), "{file} not written");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(target.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["id2label"]["1"], "I-X");
    assert_eq!(config["label2id"]["O"], 2);
    assert_eq!(config["architectures"][0], "BertForTokenClassification");

    let (reloaded, report) = BertForTokenClassification::load(
        &ModelDir::open(target.to_str().unwrap()).unwrap(),
        None,
        0,
    )
    .unwrap();
    assert!(
        report.missing.is_empty() && report.unexpected.is_empty(),
        "{report:?}"
    );
    assert_eq!(reloaded.labels, labels);
    let (ids, types, mask, _) = inputs();
    let before = model.forward(&ids, &types, &mask, Mode::EVAL).unwrap();
    let after = reloaded.forward(&ids, &types, &mask, Mode::EVAL).unwrap();
    let difference = (before - after)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(difference, 0.0);
    // Saving again over an existing checkpoint replaces it and leaves no temporary directory.
    model.save(&target, tokenizer_dir.path()).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(directory.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("best")]);
}

#[test]
fn checkpoint_lacking_files_is_named() {
    let directory = tempfile::tempdir().unwrap();
    std::fs::write(directory.path().join("config.json"), "{}").unwrap();
    let error = ModelDir::open(directory.path().to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(error.contains("lacks model.safetensors"), "{error}");
    assert!(error.contains("config.json"), "{error}");
}
