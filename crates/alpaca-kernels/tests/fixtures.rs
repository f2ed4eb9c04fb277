//! Compares the kernels with PyTorch on small fixtures written by
//! tests/fixtures/make_fixtures.py (inputs, a loss weight w, torch's outputs and gradients
//! of sum(w * out)).
mod common;
use alpaca_kernels::{
    bias_gelu, causal_attention, cross_entropy, gelu, layer_norm, masked_softmax, rms_norm, rope,
    silu_mul, RopeTables,
};
use candle_core::{Device, Tensor};
use common::*;
use std::collections::HashMap;

fn load(name: &str) -> HashMap<String, Tensor> {
    let path = format!(
        "{}/tests/fixtures/{name}.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{path}: {e} (regenerate with make_fixtures.py)"))
}

#[test]
fn layer_norm_matches_torch() {
    let f = load("layer_norm");
    let (x, weight, bias, w) = (&f["x"], &f["weight"], &f["bias"], &f["w"]);
    let (y, g) = autograd(&[x, weight, bias], w, |t| {
        layer_norm(&t[0], &t[1], &t[2], 1e-12)
    });
    assert_close(&y, &f["y"], 1e-5, 1e-5, "y");
    assert_close(&g[0], &f["dx"], 1e-5, 1e-4, "dx");
    assert_close(&g[1], &f["dweight"], 1e-5, 1e-4, "dweight");
    assert_close(&g[2], &f["dbias"], 1e-5, 1e-4, "dbias");
}

#[test]
fn gelu_and_bias_gelu_match_torch() {
    let f = load("gelu");
    let (x, bias, w) = (&f["x"], &f["bias"], &f["w"]);
    let (y, g) = autograd(&[x, bias], w, |t| bias_gelu(&t[0], &t[1]));
    assert_close(&y, &f["y"], 1e-5, 1e-5, "bias_gelu y");
    assert_close(&g[0], &f["dx"], 1e-5, 1e-4, "bias_gelu dx");
    assert_close(&g[1], &f["dbias"], 1e-4, 1e-4, "bias_gelu dbias");
    let xb = x.broadcast_add(bias).unwrap();
    let (y, g) = autograd(&[&xb], w, |t| gelu(&t[0]));
    assert_close(&y, &f["y"], 1e-5, 1e-5, "gelu y");
    assert_close(&g[0], &f["dx"], 1e-5, 1e-4, "gelu dx");
}

#[test]
fn masked_softmax_matches_torch() {
    let f = load("softmax");
    let scale = f["scale"].to_vec1::<f32>().unwrap()[0] as f64;
    let (y, g) = autograd(&[&f["scores"]], &f["w"], |t| {
        masked_softmax(&t[0], &f["mask"], scale)
    });
    assert_close(&y, &f["y"], 1e-6, 1e-5, "y");
    assert_close(&g[0], &f["dscores"], 1e-6, 1e-4, "dscores");
}

#[test]
fn cross_entropy_matches_torch() {
    let f = load("cross_entropy");
    let one = Tensor::new(1.0f32, &Device::Cpu).unwrap();
    let (loss, g) = autograd(&[&f["logits"]], &one, |t| {
        cross_entropy(&t[0], &f["targets"], -100)
    });
    assert_close(&loss, &f["loss"], 1e-5, 1e-5, "loss");
    assert_close(&g[0], &f["dlogits"], 1e-6, 1e-4, "dlogits");
}

#[test]
fn rms_norm_matches_torch() {
    let f = load("rms_norm");
    let (y, g) = autograd(&[&f["x"], &f["weight"]], &f["w"], |t| {
        rms_norm(&t[0], &t[1], 1e-6)
    });
    assert_close(&y, &f["y"], 1e-5, 1e-5, "y");
    assert_close(&g[0], &f["dx"], 1e-5, 1e-4, "dx");
    assert_close(&g[1], &f["dweight"], 1e-5, 1e-4, "dweight");
}

#[test]
fn silu_mul_matches_torch() {
    let f = load("silu_mul");
    let (y, g) = autograd(&[&f["gate"], &f["up"]], &f["w"], |t| silu_mul(&t[0], &t[1]));
    assert_close(&y, &f["y"], 1e-6, 1e-5, "y");
    assert_close(&g[0], &f["dgate"], 1e-6, 1e-4, "dgate");
    assert_close(&g[1], &f["dup"], 1e-6, 1e-4, "dup");
}

#[test]
fn rope_matches_transformers() {
    let f = load("rope");
    let offset = f["offset"].to_vec1::<i64>().unwrap()[0] as usize;
    let theta = f["theta"].to_vec1::<f32>().unwrap()[0] as f64;
    let tables = RopeTables::new(16, theta, 64).unwrap();
    let (y, g) = autograd(&[&f["x"]], &f["w"], |t| rope(&t[0], &tables, offset));
    assert_close(&y, &f["y"], 1e-6, 1e-5, "y");
    assert_close(&g[0], &f["dx"], 1e-6, 1e-5, "dx");
}

#[test]
fn causal_attention_matches_torch_full_and_cached() {
    for name in ["causal_attention", "causal_attention_cache"] {
        let f = load(name);
        let scale = f["scale"].to_vec1::<f32>().unwrap()[0] as f64;
        let (y, g) = autograd(&[&f["q"], &f["k"], &f["v"]], &f["w"], |t| {
            causal_attention(&t[0], &t[1], &t[2], Some(&f["mask"]), scale)
        });
        assert_close(&y, &f["y"], 1e-5, 1e-4, &format!("{name} y"));
        for (n, key) in ["dq", "dk", "dv"].iter().enumerate() {
            assert_close(&g[n], &f[*key], 1e-5, 1e-4, &format!("{name} {key}"));
        }
    }
}
