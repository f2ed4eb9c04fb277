mod common;
use alpaca_kernels::rms_norm;
use candle_core::{DType, Device, Result, Tensor, D};
use common::*;

fn composed(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let mean_square = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(mean_square + eps)?.sqrt()?)?
        .broadcast_mul(w)
}

fn inputs(dims: &[usize]) -> (Tensor, Tensor, Tensor) {
    let c = *dims.last().unwrap();
    // offset the data so that the mean is not zero (RMS norm does not centre)
    let x = (rand_tensor(dims, 1, 2.0) + 0.5).unwrap();
    let w = (rand_tensor(&[c], 2, 0.5) + 1.0).unwrap();
    let lw = rand_tensor(dims, 4, 1.0);
    (x, w, lw)
}

#[test]
fn forward_and_backward_match_composed_ops() {
    for dims in [vec![3, 5, 576], vec![7, 33], vec![2, 1]] {
        let (x, w, lw) = inputs(&dims);
        let (y, g) = autograd(&[&x, &w], &lw, |t| rms_norm(&t[0], &t[1], 1e-6));
        let (yr, gr) = autograd(&[&x, &w], &lw, |t| composed(&t[0], &t[1], 1e-6));
        assert_close(&y, &yr, 1e-5, 1e-5, "rms_norm forward");
        assert_close(&g[0], &gr[0], 1e-5, 1e-4, "dx");
        assert_close(&g[1], &gr[1], 1e-5, 1e-4, "dweight");
    }
}

#[test]
fn finite_differences() {
    let (x, w, lw) = inputs(&[4, 6, 32]);
    let lwv = flat(&lw);
    let f = |t: &[Tensor]| rms_norm(&t[0], &t[1], 1e-6);
    let (_, g) = autograd(&[&x, &w], &lw, f);
    for (which, n) in [(0, x.elem_count()), (1, 32)] {
        let idx = sample_indices(n, 8, 10 + which as u64);
        let fd = finite_diff(&[&x, &w], which, &idx, &lwv, 1e-3, f);
        check_fd(&fd, &g[which], &idx, &format!("rms_norm input {which}"));
    }
}

#[test]
fn non_contiguous_input() {
    let (x, w, _) = inputs(&[16, 24]);
    let xt = x.t().unwrap(); // [24, 16], not contiguous
    assert!(!xt.is_contiguous());
    let w16 = w.narrow(0, 0, 16).unwrap();
    let y = rms_norm(&xt, &w16, 1e-5).unwrap();
    let yr = composed(&xt, &w16, 1e-5).unwrap();
    assert_close(&y, &yr, 1e-5, 1e-5, "transposed");
}

#[test]
fn errors_not_panics() {
    let x = Tensor::zeros((2, 4), DType::F64, &Device::Cpu).unwrap();
    let w = Tensor::ones(4, DType::F32, &Device::Cpu).unwrap();
    assert!(rms_norm(&x, &w, 1e-5).is_err());
    let x = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
    let e = rms_norm(&x, &w, 1e-5).unwrap_err().to_string();
    assert!(e.contains("[5]"), "{e}");
    // an all-zero row normalises to zeros, not NaN
    let y = rms_norm(
        &Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap(),
        &w,
        1e-6,
    )
    .unwrap();
    assert!(flat(&y).iter().all(|&v| v == 0.0));
}
