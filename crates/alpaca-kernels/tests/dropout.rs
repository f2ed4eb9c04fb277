mod common;
use alpaca_kernels::dropout;
use candle_core::{DType, Device, Tensor};
use common::*;

#[test]
fn mean_preserved_and_rate_right() {
    let x = Tensor::ones((256, 1024), DType::F32, &Device::Cpu).unwrap();
    for p in [0.1f32, 0.5] {
        let y = flat(&dropout(&x, p, 42).unwrap());
        let zeros = y.iter().filter(|&&v| v == 0.0).count() as f64 / y.len() as f64;
        let mean = y.iter().map(|&v| v as f64).sum::<f64>() / y.len() as f64;
        assert!(
            (zeros - p as f64).abs() < 0.005,
            "p {p}: dropped fraction {zeros}"
        );
        assert!((mean - 1.0).abs() < 0.01, "p {p}: mean {mean}");
        let kept = 1.0 / (1.0 - p);
        assert!(y.iter().all(|&v| v == 0.0 || (v - kept).abs() < 1e-6));
    }
}

#[test]
fn same_seed_same_mask_other_seed_other_mask() {
    let x = rand_tensor(&[64, 64], 1, 1.0);
    let a = flat(&dropout(&x, 0.3, 7).unwrap());
    let b = flat(&dropout(&x, 0.3, 7).unwrap());
    let c = flat(&dropout(&x, 0.3, 8).unwrap());
    assert_eq!(a, b);
    let differ = a
        .iter()
        .zip(&c)
        .filter(|(x, y)| (**x == 0.0) != (**y == 0.0))
        .count();
    assert!(
        differ > 500,
        "seeds 7 and 8 give nearly the same mask ({differ} differ)"
    );
}

#[test]
fn p_zero_is_identity_and_p_one_zeros() {
    let x = rand_tensor(&[8, 8], 2, 1.0);
    let y = dropout(&x, 0.0, 1).unwrap();
    assert_eq!(flat(&x), flat(&y));
    assert!(flat(&dropout(&x, 1.0, 1).unwrap())
        .iter()
        .all(|&v| v == 0.0));
    assert!(dropout(&x, 1.5, 1).is_err());
    assert!(dropout(&x, -0.1, 1).is_err());
}

#[test]
fn backward_is_mask_times_scale() {
    let x = rand_tensor(&[32, 48], 3, 1.0);
    let lw = rand_tensor(&[32, 48], 4, 1.0);
    let p = 0.25;
    let (y, g) = autograd(&[&x], &lw, |t| dropout(&t[0], p, 99));
    let (yf, xf, gf, wf) = (flat(&y), flat(&x), flat(&g[0]), flat(&lw));
    for i in 0..yf.len() {
        let kept = yf[i] != 0.0;
        let want = if kept { wf[i] / (1.0 - p) } else { 0.0 };
        assert!((gf[i] - want).abs() < 1e-6, "element {i}");
        if kept {
            assert!((yf[i] - xf[i] / (1.0 - p)).abs() < 1e-6);
        }
    }
}

#[test]
fn non_contiguous_input() {
    let x = rand_tensor(&[16, 8], 5, 1.0);
    let xt = x.t().unwrap();
    let a = flat(&dropout(&xt, 0.5, 3).unwrap());
    let b = flat(&dropout(&xt.contiguous().unwrap(), 0.5, 3).unwrap());
    assert_eq!(a, b);
}
