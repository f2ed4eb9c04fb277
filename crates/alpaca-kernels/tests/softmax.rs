mod common;
use alpaca_kernels::masked_softmax;
use candle_core::{Device, Result, Tensor, D};
use common::*;

/// Composed reference: additive −1e9 mask, exp/sum, then zero padded keys.
fn composed(s: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, _, _, k) = s.dims4()?;
    let m4 = mask.reshape((b, 1, 1, k))?;
    let v = (s * scale)?.broadcast_add(&((m4.clone() - 1.0)? * 1e9)?)?;
    let max = v.max_keepdim(D::Minus1)?.detach();
    let e = v.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// mask [2, 7]: batch 0 attends 5 of 7 keys, batch 1 attends 3.
fn padded_mask() -> Tensor {
    let m: [f32; 14] = [1., 1., 1., 1., 1., 0., 0., 1., 0., 1., 1., 0., 0., 0.];
    Tensor::from_vec(m.to_vec(), (2, 7), &Device::Cpu).unwrap()
}

#[test]
fn matches_composed_ops_with_padding() {
    let s = rand_tensor(&[2, 3, 4, 7], 1, 4.0);
    let lw = rand_tensor(&[2, 3, 4, 7], 2, 1.0);
    let mask = padded_mask();
    let scale = 0.125;
    let (y, g) = autograd(&[&s], &lw, |t| masked_softmax(&t[0], &mask, scale));
    let (yr, gr) = autograd(&[&s], &lw, |t| composed(&t[0], &mask, scale));
    assert_close(&y, &yr, 1e-6, 1e-5, "softmax forward");
    assert_close(&g[0], &gr[0], 1e-6, 1e-4, "softmax backward");
    // padded keys are exactly zero
    let (yf, mf) = (flat(&y), flat(&mask));
    for (i, v) in yf.iter().enumerate() {
        let (b, k) = (i / (3 * 4 * 7), i % 7);
        if mf[b * 7 + k] == 0.0 {
            assert_eq!(*v, 0.0);
        }
    }
}

#[test]
fn longer_rows_and_4d_mask() {
    // K = 128 (vector path), mask given as [B, 1, 1, K]
    let s = rand_tensor(&[2, 2, 3, 128], 3, 8.0);
    let lw = rand_tensor(&[2, 2, 3, 128], 4, 1.0);
    let mut m = vec![1.0f32; 256];
    m[100..128].iter_mut().for_each(|v| *v = 0.0);
    m[128 + 17..].iter_mut().for_each(|v| *v = 0.0);
    let mask = Tensor::from_vec(m, (2, 128), &Device::Cpu).unwrap();
    let mask4 = mask.reshape((2, 1, 1, 128)).unwrap();
    let (y, g) = autograd(&[&s], &lw, |t| masked_softmax(&t[0], &mask4, 0.3));
    let (yr, gr) = autograd(&[&s], &lw, |t| composed(&t[0], &mask, 0.3));
    assert_close(&y, &yr, 1e-6, 1e-5, "softmax K=128 forward");
    assert_close(&g[0], &gr[0], 1e-6, 1e-4, "softmax K=128 backward");
}

#[test]
fn all_padded_row_gives_zeros() {
    let s = rand_tensor(&[2, 2, 3, 5], 5, 3.0);
    let lw = rand_tensor(&[2, 2, 3, 5], 6, 1.0);
    let m: [f32; 10] = [1., 1., 0., 1., 0., 0., 0., 0., 0., 0.];
    let mask = Tensor::from_vec(m.to_vec(), (2, 5), &Device::Cpu).unwrap();
    let (y, g) = autograd(&[&s], &lw, |t| masked_softmax(&t[0], &mask, 1.0));
    let (yf, gf) = (flat(&y), flat(&g[0]));
    let half = yf.len() / 2;
    assert!(
        yf[half..].iter().all(|&v| v == 0.0),
        "all-padded rows must be zero"
    );
    assert!(
        gf[half..].iter().all(|&v| v == 0.0),
        "all-padded rows have zero grad"
    );
    assert!(yf.iter().chain(&gf).all(|v| v.is_finite()));
    // the first batch still matches the reference
    let s0 = s.narrow(0, 0, 1).unwrap();
    let m0 = mask.narrow(0, 0, 1).unwrap();
    let y0 = masked_softmax(&s0, &m0, 1.0).unwrap();
    assert_close(
        &y0,
        &composed(&s0, &m0, 1.0).unwrap(),
        1e-6,
        1e-5,
        "batch 0",
    );
}

#[test]
fn finite_differences() {
    let s = rand_tensor(&[2, 2, 3, 7], 7, 3.0);
    let lw = rand_tensor(&[2, 2, 3, 7], 8, 1.0);
    let mask = padded_mask();
    let f = |t: &[Tensor]| masked_softmax(&t[0], &mask, 0.5);
    let (_, g) = autograd(&[&s], &lw, f);
    let idx = sample_indices(s.elem_count(), 12, 9);
    check_fd(
        &finite_diff(&[&s], 0, &idx, &flat(&lw), 1e-3, f),
        &g[0],
        &idx,
        "softmax",
    );
}

#[test]
fn non_contiguous_scores() {
    // [b, q, h, k] transposed to [b, h, q, k]
    let s = rand_tensor(&[2, 4, 3, 7], 10, 3.0).transpose(1, 2).unwrap();
    assert!(!s.is_contiguous());
    let mask = padded_mask();
    let y = masked_softmax(&s, &mask, 0.7).unwrap();
    assert_close(
        &y,
        &composed(&s, &mask, 0.7).unwrap(),
        1e-6,
        1e-5,
        "transposed",
    );
    assert!(masked_softmax(&s, &mask.narrow(1, 0, 6).unwrap(), 1.0).is_err());
}
