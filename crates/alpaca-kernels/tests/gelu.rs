mod common;
use alpaca_kernels::{bias_gelu, gelu};
use candle_core::{DType, Device, Tensor};
use common::*;

#[test]
fn gelu_matches_candle_gelu_erf() {
    let x = rand_tensor(&[4, 33, 64], 1, 6.0);
    let lw = rand_tensor(&[4, 33, 64], 2, 1.0);
    let (y, g) = autograd(&[&x], &lw, |t| gelu(&t[0]));
    let (yr, gr) = autograd(&[&x], &lw, |t| t[0].gelu_erf());
    assert_close(&y, &yr, 1e-5, 1e-5, "gelu forward");
    assert_close(&g[0], &gr[0], 1e-5, 1e-4, "gelu backward");
}

#[test]
fn gelu_extreme_values() {
    let v = vec![
        -100.0f32, -30.0, -10.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 10.0, 30.0, 100.0,
    ];
    let x = Tensor::new(v.as_slice(), &Device::Cpu).unwrap();
    let y = gelu(&x).unwrap();
    let yr = x.gelu_erf().unwrap();
    assert_close(&y, &yr, 1e-5, 1e-5, "gelu extremes");
}

#[test]
fn gelu_finite_differences() {
    let x = rand_tensor(&[8, 16], 3, 4.0);
    let lw = rand_tensor(&[8, 16], 4, 1.0);
    let (_, g) = autograd(&[&x], &lw, |t| gelu(&t[0]));
    let idx = sample_indices(128, 10, 5);
    let fd = finite_diff(&[&x], 0, &idx, &flat(&lw), 1e-3, |t| gelu(&t[0]));
    check_fd(&fd, &g[0], &idx, "gelu");
}

#[test]
fn bias_gelu_matches_composed() {
    let x = rand_tensor(&[3, 17, 48], 6, 3.0);
    let b = rand_tensor(&[48], 7, 1.0);
    let lw = rand_tensor(&[3, 17, 48], 8, 1.0);
    let (y, g) = autograd(&[&x, &b], &lw, |t| bias_gelu(&t[0], &t[1]));
    let (yr, gr) = autograd(&[&x, &b], &lw, |t| t[0].broadcast_add(&t[1])?.gelu_erf());
    assert_close(&y, &yr, 1e-5, 1e-5, "bias_gelu forward");
    assert_close(&g[0], &gr[0], 1e-5, 1e-4, "bias_gelu dx");
    assert_close(&g[1], &gr[1], 1e-4, 1e-4, "bias_gelu dbias");
}

#[test]
fn bias_gelu_finite_differences() {
    let x = rand_tensor(&[5, 16], 9, 3.0);
    let b = rand_tensor(&[16], 10, 1.0);
    let lw = rand_tensor(&[5, 16], 11, 1.0);
    let (_, g) = autograd(&[&x, &b], &lw, |t| bias_gelu(&t[0], &t[1]));
    let f = |t: &[Tensor]| bias_gelu(&t[0], &t[1]);
    let idx = sample_indices(80, 8, 12);
    check_fd(
        &finite_diff(&[&x, &b], 0, &idx, &flat(&lw), 1e-3, f),
        &g[0],
        &idx,
        "dx",
    );
    let idx = sample_indices(16, 6, 13);
    check_fd(
        &finite_diff(&[&x, &b], 1, &idx, &flat(&lw), 1e-3, f),
        &g[1],
        &idx,
        "dbias",
    );
}

#[test]
fn non_contiguous_and_errors() {
    let x = rand_tensor(&[12, 20], 14, 3.0);
    let xt = x.t().unwrap();
    assert_close(
        &gelu(&xt).unwrap(),
        &xt.gelu_erf().unwrap(),
        1e-5,
        1e-5,
        "transposed gelu",
    );
    let b = rand_tensor(&[12], 15, 1.0);
    let yr = xt.broadcast_add(&b).unwrap().gelu_erf().unwrap();
    assert_close(
        &bias_gelu(&xt, &b).unwrap(),
        &yr,
        1e-5,
        1e-5,
        "transposed bias_gelu",
    );
    let xi = Tensor::zeros(4, DType::F64, &Device::Cpu).unwrap();
    assert!(gelu(&xi).is_err());
    assert!(bias_gelu(&x, &b).is_err()); // bias [12] vs last dim 20
}
