//! `linear` in the run-wide bf16 mode (its own test binary: the mode is process-wide). Each
//! product must equal the f32 product of bf16-rounded operands: y = x̃ W̃ᵀ + b, dx = dỹ W̃,
//! dW = dỹᵀ x̃ (tilde: rounded to bf16), db = Σ dy in f32; and fp32 mode must come back exact.
mod common;
use alpaca_kernels::linear::{precision, set_precision};
use alpaca_kernels::{linear, Precision};
use candle_core::{DType, Result, Tensor};
use common::*;

fn rounded(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

fn composed(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.broadcast_matmul(&w.t()?)?.broadcast_add(b)
}

#[test]
fn bf16_products_equal_f32_products_of_rounded_operands() {
    // Enough rows for the GEMM path (more than 32), odd sizes at the edges of the tiles.
    let (rows, input, output) = (70, 45, 37);
    let x = rand_tensor(&[rows, input], 1, 1.0);
    let w = rand_tensor(&[output, input], 2, 0.5);
    let b = rand_tensor(&[output], 3, 0.5);
    let upstream = rand_tensor(&[rows, output], 4, 1.0);

    set_precision(Precision::Bf16);
    assert_eq!(precision(), Precision::Bf16);
    let (y, g) = autograd(&[&x, &w, &b], &upstream, |t| linear(&t[0], &t[1], &t[2]));
    let expected_y = composed(&rounded(&x), &rounded(&w), &b).unwrap();
    assert_close(&y, &expected_y, 1e-4, 1e-4, "bf16 forward");
    let dy = rounded(&upstream);
    let expected_dx = dy.matmul(&rounded(&w)).unwrap();
    let expected_dw = dy.t().unwrap().matmul(&rounded(&x)).unwrap();
    let expected_db = upstream.sum(0).unwrap();
    assert_close(&g[0], &expected_dx, 1e-4, 1e-4, "bf16 dx");
    assert_close(&g[1], &expected_dw, 1e-4, 1e-4, "bf16 dweight");
    assert_close(&g[2], &expected_db, 1e-5, 1e-5, "bias gradient stays f32");
    // Not the f32 result: the mode is really on.
    let f32_y = composed(&x, &w, &b).unwrap();
    let difference = (&y - &f32_y).unwrap().abs().unwrap().max_all().unwrap();
    assert!(difference.to_scalar::<f32>().unwrap() > 1e-4);

    set_precision(Precision::Fp32);
    let (y, g) = autograd(&[&x, &w, &b], &upstream, |t| linear(&t[0], &t[1], &t[2]));
    assert_close(&y, &f32_y, 1e-5, 1e-4, "fp32 forward again");
    let expected_dw = upstream.t().unwrap().matmul(&x).unwrap();
    assert_close(&g[1], &expected_dw, 1e-4, 1e-4, "fp32 dweight again");
}
