mod common;
use alpaca_kernels::silu_mul;
use candle_core::{Device, Result, Tensor};
use common::*;

/// g · σ(g) · u from candle ops that have a backward.
fn composed(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let sigmoid = (gate.neg()?.exp()? + 1.0)?.recip()?;
    (gate * sigmoid)? * up
}

#[test]
fn forward_and_backward_match_composed_ops() {
    for dims in [vec![3, 5, 1536], vec![7, 33], vec![1]] {
        let gate = rand_tensor(&dims, 1, 6.0);
        let up = rand_tensor(&dims, 2, 2.0);
        let lw = rand_tensor(&dims, 3, 1.0);
        let (y, g) = autograd(&[&gate, &up], &lw, |t| silu_mul(&t[0], &t[1]));
        let (yr, gr) = autograd(&[&gate, &up], &lw, |t| composed(&t[0], &t[1]));
        assert_close(&y, &yr, 1e-6, 1e-5, "silu_mul forward");
        assert_close(&g[0], &gr[0], 1e-6, 1e-4, "dgate");
        assert_close(&g[1], &gr[1], 1e-6, 1e-4, "dup");
    }
}

#[test]
fn finite_differences() {
    let gate = rand_tensor(&[4, 40], 4, 5.0);
    let up = rand_tensor(&[4, 40], 5, 2.0);
    let lw = rand_tensor(&[4, 40], 6, 1.0);
    let f = |t: &[Tensor]| silu_mul(&t[0], &t[1]);
    let (_, g) = autograd(&[&gate, &up], &lw, f);
    for (which, gradient) in g.iter().enumerate() {
        let idx = sample_indices(160, 10, 20 + which as u64);
        let fd = finite_diff(&[&gate, &up], which, &idx, &flat(&lw), 1e-3, f);
        check_fd(&fd, gradient, &idx, &format!("silu_mul input {which}"));
    }
}

#[test]
fn extreme_gates_stay_finite() {
    let gate = Tensor::new(&[-200.0f32, -90.0, 0.0, 90.0, 200.0], &Device::Cpu).unwrap();
    let up = Tensor::ones(5, candle_core::DType::F32, &Device::Cpu).unwrap();
    let lw = Tensor::ones(5, candle_core::DType::F32, &Device::Cpu).unwrap();
    let (y, g) = autograd(&[&gate, &up], &lw, |t| silu_mul(&t[0], &t[1]));
    let (y, dg) = (flat(&y), flat(&g[0]));
    assert!(y.iter().chain(&dg).all(|v| v.is_finite()), "{y:?} {dg:?}");
    assert!(y[0].abs() < 1e-30 && (y[4] - 200.0).abs() < 1e-4, "{y:?}");
    assert!(
        (dg[4] - 1.0).abs() < 1e-6 && (dg[2] - 0.5).abs() < 1e-7,
        "{dg:?}"
    );
}

#[test]
fn shape_mismatch_is_an_error() {
    let a = rand_tensor(&[2, 3], 1, 1.0);
    let b = rand_tensor(&[3, 2], 1, 1.0);
    let e = silu_mul(&a, &b).unwrap_err().to_string();
    assert!(e.contains("same shape"), "{e}");
}
