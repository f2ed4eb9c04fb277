//! Shared test helpers: seeded random tensors, closeness checks, finite differences.
#![allow(dead_code)]

use candle_core::{Device, Result, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub fn rand_vec(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| rng.gen_range(-1.0f32..1.0) * scale)
        .collect()
}

pub fn rand_tensor(dims: &[usize], seed: u64, scale: f32) -> Tensor {
    let n = dims.iter().product();
    Tensor::from_vec(rand_vec(n, seed, scale), dims, &Device::Cpu).unwrap()
}

pub fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Asserts |a − b| ≤ atol + rtol·|b| element-wise, naming the worst element.
pub fn assert_close(a: &Tensor, b: &Tensor, atol: f32, rtol: f32, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
    let (a, b) = (flat(a), flat(b));
    let mut worst = (0usize, 0.0f32);
    for (i, (&x, &y)) in a.iter().zip(&b).enumerate() {
        assert!(x.is_finite(), "{what}: element {i} is {x}");
        let excess = (x - y).abs() - (atol + rtol * y.abs());
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    let i = worst.0;
    assert!(
        worst.1 <= 0.0,
        "{what}: element {i}: got {} want {} (atol {atol}, rtol {rtol})",
        a[i],
        b[i]
    );
}

/// Σ w·y in f64.
pub fn weighted_sum(y: &Tensor, w: &[f32]) -> f64 {
    flat(y)
        .iter()
        .zip(w)
        .map(|(&a, &b)| a as f64 * b as f64)
        .sum()
}

/// Gradient of L = Σ w·f(inputs) w.r.t. each input, by candle autograd through `f`.
pub fn autograd(
    inputs: &[&Tensor],
    w: &Tensor,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts).unwrap();
    let loss = (y.broadcast_mul(w).unwrap()).sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let gs = vars
        .iter()
        .map(|v| {
            grads
                .get(v.as_tensor())
                .cloned()
                .unwrap_or_else(|| v.as_tensor().zeros_like().unwrap())
        })
        .collect();
    (y, gs)
}

/// Central finite differences of L = Σ w·f(inputs) w.r.t. `inputs[which]` at flat `indices`.
pub fn finite_diff(
    inputs: &[&Tensor],
    which: usize,
    indices: &[usize],
    w: &[f32],
    eps: f32,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Vec<f64> {
    let base = flat(inputs[which]);
    let shape = inputs[which].dims().to_vec();
    indices
        .iter()
        .map(|&i| {
            let eval = |delta: f32| {
                let mut v = base.clone();
                v[i] += delta;
                let moved = Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap();
                let ts: Vec<Tensor> = inputs
                    .iter()
                    .enumerate()
                    .map(|(j, t)| {
                        if j == which {
                            moved.clone()
                        } else {
                            (*t).clone()
                        }
                    })
                    .collect();
                weighted_sum(&f(&ts).unwrap(), w)
            };
            (eval(eps) - eval(-eps)) / (2.0 * eps as f64)
        })
        .collect()
}

/// Compares finite differences with an analytic gradient at `indices`.
pub fn check_fd(fd: &[f64], grad: &Tensor, indices: &[usize], what: &str) {
    let g = flat(grad);
    for (&i, &d) in indices.iter().zip(fd) {
        let a = g[i] as f64;
        let tol = 1e-2 * a.abs().max(d.abs()) + 3e-3;
        assert!(
            (a - d).abs() <= tol,
            "{what}: element {i}: analytic {a}, finite difference {d}"
        );
    }
}

/// A few spread-out flat indices in [0, n).
pub fn sample_indices(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..k).map(|_| rng.gen_range(0..n)).collect()
}
