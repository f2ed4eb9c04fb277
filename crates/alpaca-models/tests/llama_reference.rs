//! The LLaMA decoder against transformers: logits, loss and the gradient norm of every
//! parameter of tiny random LlamaForCausalLM models (tied and untied output), the KV-cache
//! path against the full forward, and save → load. Fixtures: tests/fixtures/llama_{tied,untied},
//! written by scripts/make_llama_fixtures.py.

use std::path::PathBuf;

use alpaca_models::{KvCache, LlamaForCausalLM, Mode, ModelDir};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

fn fixture(name: &str) -> (PathBuf, Value) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run scripts/make_llama_fixtures.py)",
            dir.display()
        )
    });
    (dir, serde_json::from_str(&text).unwrap())
}

fn matrix<T: serde::de::DeserializeOwned + candle_core::WithDType>(value: &Value) -> Tensor {
    let rows: Vec<Vec<T>> = serde_json::from_value(value.clone()).unwrap();
    let (b, t) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, t), &Device::Cpu).unwrap()
}

fn load(dir: &std::path::Path) -> LlamaForCausalLM {
    let (model, report) =
        LlamaForCausalLM::load(&ModelDir::open(dir.to_str().unwrap()).unwrap(), 0).unwrap();
    assert!(report.summary().is_empty(), "{}", report.summary());
    model
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

struct Inputs {
    ids: Tensor,
    mask: Tensor,
    labels: Tensor,
}

fn inputs(reference: &Value) -> Inputs {
    Inputs {
        ids: matrix::<u32>(&reference["input_ids"]),
        mask: matrix::<u32>(&reference["attention_mask"])
            .to_dtype(DType::F32)
            .unwrap(),
        labels: matrix::<i64>(&reference["labels"]),
    }
}

fn check_against_transformers(name: &str) {
    let (dir, reference) = fixture(name);
    let model = load(&dir);
    let inputs = inputs(&reference);
    let logits = model
        .forward(&inputs.ids, Some(&inputs.mask), Mode::train(0))
        .unwrap();
    let rows: Vec<Vec<Vec<f32>>> = serde_json::from_value(reference["logits"].clone()).unwrap();
    let (b, t, v) = (rows.len(), rows[0].len(), rows[0][0].len());
    let expected = Tensor::from_vec(rows.concat().concat(), (b, t, v), &Device::Cpu).unwrap();
    let difference = max_abs_diff(&logits, &expected);
    assert!(
        difference < 1e-4,
        "{name}: max |logits − torch| = {difference}"
    );

    let loss = LlamaForCausalLM::loss(&logits, &inputs.labels).unwrap();
    let ours = loss.to_scalar::<f32>().unwrap() as f64;
    let torch = reference["loss"].as_f64().unwrap();
    assert!(
        (ours - torch).abs() <= 1e-3 * torch,
        "{name}: loss {ours} vs torch {torch}"
    );

    let gradients = loss.backward().unwrap();
    let norms = reference["gradient_norms"].as_object().unwrap();
    let mut worst_gradient = 0.0f64;
    for (parameter, expected) in norms {
        let expected = expected.as_f64().unwrap();
        let var = model
            .parameters
            .get(parameter)
            .unwrap_or_else(|| panic!("{name}: torch has {parameter}, we do not"));
        let gradient = gradients
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: {parameter} got no gradient"));
        let norm = alpaca_kernels::squared_norm(gradient).unwrap().sqrt();
        assert!(
            expected > 0.0,
            "{name}: torch's gradient of {parameter} is zero"
        );
        worst_gradient = worst_gradient.max((norm - expected).abs() / expected);
        assert!(
            (norm - expected).abs() <= 1e-3 * expected,
            "{name}: |grad {parameter}| = {norm} vs torch {expected}"
        );
    }
    // Printed for docs/benchmarks.md (cargo test … -- --nocapture).
    eprintln!(
        "{name}: max |logits − torch| {difference:.2e}, loss {ours:.7} vs {torch:.7}, \
         worst relative gradient-norm difference {worst_gradient:.2e} over {} parameters",
        norms.len()
    );
    // Every parameter of ours was compared, and there are exactly torch's.
    assert_eq!(norms.len(), model.parameters.len(), "{name}");
}

#[test]
fn tied_model_matches_transformers() {
    check_against_transformers("llama_tied");
}

#[test]
fn untied_model_matches_transformers() {
    check_against_transformers("llama_untied");
}

#[test]
fn kv_cache_token_by_token_equals_the_full_forward() {
    for name in ["llama_tied", "llama_untied"] {
        let (dir, reference) = fixture(name);
        let model = load(&dir);
        // Row 0 (no padding) as a batch of one.
        let ids = inputs(&reference).ids.narrow(0, 0, 1).unwrap();
        let length = ids.dim(1).unwrap();
        let full = model
            .forward(&ids, None, Mode::EVAL)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let mut cache = KvCache::new();
        // A 3-token prompt in one call, then one token at a time.
        let mut worst = 0.0f32;
        let prompt = model
            .forward_with_cache(&ids.narrow(1, 0, 3).unwrap(), &mut cache)
            .unwrap();
        worst = worst.max(max_abs_diff(&prompt, &full.narrow(0, 2, 1).unwrap()));
        for position in 3..length {
            let step = model
                .forward_with_cache(&ids.narrow(1, position, 1).unwrap(), &mut cache)
                .unwrap();
            worst = worst.max(max_abs_diff(&step, &full.narrow(0, position, 1).unwrap()));
        }
        assert_eq!(cache.len(), length);
        assert!(
            worst < 1e-5,
            "{name}: cached vs full logits differ by {worst}"
        );
        // A cache for one sequence refuses a batch of two.
        let two = inputs(&reference).ids.narrow(1, 0, 1).unwrap();
        assert!(model.forward_with_cache(&two, &mut cache).is_err());
    }
}

#[test]
fn save_and_load_round_trip() {
    for name in ["llama_tied", "llama_untied"] {
        let (dir, reference) = fixture(name);
        let model = load(&dir);
        let scratch = tempfile::tempdir().unwrap();
        let target = scratch.path().join("saved");
        model.save(&target, &dir).unwrap();
        let stored =
            candle_core::safetensors::load(target.join("model.safetensors"), &Device::Cpu).unwrap();
        assert_eq!(stored.contains_key("lm_head.weight"), !model.tied, "{name}");
        assert!(target.join("generation_config.json").is_file());
        let loaded = load(&target);
        assert_eq!(loaded.tied, model.tied);
        let inputs = inputs(&reference);
        let before = model
            .forward(&inputs.ids, Some(&inputs.mask), Mode::EVAL)
            .unwrap();
        let after = loaded
            .forward(&inputs.ids, Some(&inputs.mask), Mode::EVAL)
            .unwrap();
        assert_eq!(max_abs_diff(&before, &after), 0.0, "{name}");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let (dir, _) = fixture("llama_tied");
    let model = load(&dir);
    let too_large = Tensor::new(&[[5u32, 128]], &Device::Cpu).unwrap();
    let error = model
        .forward(&too_large, None, Mode::EVAL)
        .unwrap_err()
        .to_string();
    assert!(error.contains("vocab"), "{error}");
    let too_long = Tensor::zeros((1, 65), DType::U32, &Device::Cpu).unwrap();
    let error = model
        .forward(&too_long, None, Mode::EVAL)
        .unwrap_err()
        .to_string();
    assert!(error.contains("max_position_embeddings"), "{error}");
    let ids = Tensor::zeros((1, 4), DType::U32, &Device::Cpu).unwrap();
    let mask = Tensor::ones((1, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(model.forward(&ids, Some(&mask), Mode::EVAL).is_err());
    let logits = model.forward(&ids, None, Mode::EVAL).unwrap();
    let labels = Tensor::zeros((1, 3), DType::I64, &Device::Cpu).unwrap();
    assert!(LlamaForCausalLM::loss(&logits, &labels).is_err());
}
