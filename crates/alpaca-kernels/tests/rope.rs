mod common;
use alpaca_kernels::{rope, RopeTables};
use candle_core::{Device, Result, Tensor};
use common::*;

/// HF's apply_rotary_pos_emb: x·cos + rotate_half(x)·sin, with cos/sin [T, D] computed in f64.
fn composed(x: &Tensor, theta: f64, offset: usize) -> Result<Tensor> {
    let (_, _, t, d) = x.dims4()?;
    let half = d / 2;
    let mut cos = Vec::new();
    let mut sin = Vec::new();
    for p in offset..offset + t {
        for i in 0..d {
            let frequency = 1.0 / theta.powf((2 * (i % half)) as f64 / d as f64);
            cos.push((p as f64 * frequency).cos() as f32);
            sin.push((p as f64 * frequency).sin() as f32);
        }
    }
    let cos = Tensor::from_vec(cos, (t, d), &Device::Cpu)?;
    let sin = Tensor::from_vec(sin, (t, d), &Device::Cpu)?;
    let x1 = x.narrow(3, 0, half)?;
    let x2 = x.narrow(3, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], 3)?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

#[test]
fn forward_and_backward_match_composed_ops() {
    let tables = RopeTables::new(16, 10_000.0, 64).unwrap();
    for offset in [0, 5, 40] {
        let x = rand_tensor(&[2, 3, 7, 16], 1, 2.0);
        let lw = rand_tensor(&[2, 3, 7, 16], 2, 1.0);
        let (y, g) = autograd(&[&x], &lw, |t| rope(&t[0], &tables, offset));
        let (yr, gr) = autograd(&[&x], &lw, |t| composed(&t[0], 10_000.0, offset));
        assert_close(
            &y,
            &yr,
            2e-6,
            1e-5,
            &format!("rope forward, offset {offset}"),
        );
        assert_close(
            &g[0],
            &gr[0],
            2e-6,
            1e-5,
            &format!("rope backward, offset {offset}"),
        );
    }
}

#[test]
fn finite_differences() {
    let tables = RopeTables::new(8, 100_000.0, 16).unwrap();
    let x = rand_tensor(&[2, 2, 5, 8], 3, 1.0);
    let lw = rand_tensor(&[2, 2, 5, 8], 4, 1.0);
    let f = |t: &[Tensor]| rope(&t[0], &tables, 3);
    let (_, g) = autograd(&[&x], &lw, f);
    let idx = sample_indices(x.elem_count(), 12, 5);
    let fd = finite_diff(&[&x], 0, &idx, &flat(&lw), 1e-3, f);
    check_fd(&fd, &g[0], &idx, "rope");
}

#[test]
fn offset_equals_slice_of_the_full_sequence() {
    // What the KV cache relies on: rotating tokens 4..7 alone at offset 4 equals rotating all.
    let tables = RopeTables::new(16, 10_000.0, 32).unwrap();
    let x = rand_tensor(&[1, 2, 7, 16], 6, 1.0);
    let full = rope(&x, &tables, 0).unwrap().narrow(2, 4, 3).unwrap();
    let tail = rope(&x.narrow(2, 4, 3).unwrap(), &tables, 4).unwrap();
    assert_close(&tail, &full, 0.0, 0.0, "offset");
}

#[test]
fn errors_not_panics() {
    let tables = RopeTables::new(16, 10_000.0, 8).unwrap();
    let x = rand_tensor(&[1, 2, 6, 16], 1, 1.0);
    let e = rope(&x, &tables, 4).unwrap_err().to_string();
    assert!(e.contains("exceed"), "{e}");
    assert!(rope(&rand_tensor(&[1, 2, 6, 8], 1, 1.0), &tables, 0).is_err());
    assert!(rope(&rand_tensor(&[2, 6, 16], 1, 1.0), &tables, 0).is_err());
    assert!(RopeTables::new(15, 10_000.0, 8).is_err());
    assert!(RopeTables::new(16, -1.0, 8).is_err());
}
