mod common;
use alpaca_kernels::layer_norm;
use candle_core::{DType, Device, Result, Tensor, D};
use common::*;

const EPS: f64 = 1e-12;

fn composed(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(w)?
        .broadcast_add(b)
}

fn inputs(dims: &[usize]) -> (Tensor, Tensor, Tensor, Tensor) {
    let c = *dims.last().unwrap();
    // offset the data so the mean matters
    let x = (rand_tensor(dims, 1, 2.0) + 0.5).unwrap();
    let w = (rand_tensor(&[c], 2, 0.5) + 1.0).unwrap();
    let b = rand_tensor(&[c], 3, 0.5);
    let lw = rand_tensor(dims, 4, 1.0);
    (x, w, b, lw)
}

#[test]
fn forward_and_backward_match_composed_ops() {
    for dims in [vec![3, 5, 384], vec![7, 33], vec![2, 1]] {
        let (x, w, b, lw) = inputs(&dims);
        let (y, g) = autograd(&[&x, &w, &b], &lw, |t| {
            layer_norm(&t[0], &t[1], &t[2], 1e-5)
        });
        let (yr, gr) = autograd(&[&x, &w, &b], &lw, |t| composed(&t[0], &t[1], &t[2], 1e-5));
        assert_close(&y, &yr, 1e-5, 1e-5, "layer_norm forward");
        for (k, name) in ["dx", "dweight", "dbias"].iter().enumerate() {
            assert_close(&g[k], &gr[k], 1e-5, 1e-4, name);
        }
    }
}

#[test]
fn finite_differences() {
    let (x, w, b, lw) = inputs(&[4, 6, 32]);
    let lwv = flat(&lw);
    let (_, g) = autograd(&[&x, &w, &b], &lw, |t| layer_norm(&t[0], &t[1], &t[2], EPS));
    let f = |t: &[Tensor]| layer_norm(&t[0], &t[1], &t[2], EPS);
    for (which, n) in [(0, x.elem_count()), (1, 32), (2, 32)] {
        let idx = sample_indices(n, 8, 10 + which as u64);
        let fd = finite_diff(&[&x, &w, &b], which, &idx, &lwv, 1e-3, f);
        check_fd(&fd, &g[which], &idx, &format!("layer_norm input {which}"));
    }
}

#[test]
fn non_contiguous_input() {
    let (x, w, b, _) = inputs(&[16, 24]);
    let xt = x.t().unwrap(); // [24, 16], not contiguous
    assert!(!xt.is_contiguous());
    let w16 = w.narrow(0, 0, 16).unwrap();
    let b16 = b.narrow(0, 0, 16).unwrap();
    let y = layer_norm(&xt, &w16, &b16, 1e-5).unwrap();
    let yr = composed(&xt, &w16, &b16, 1e-5).unwrap();
    assert_close(&y, &yr, 1e-5, 1e-5, "transposed");
}

#[test]
fn errors_not_panics() {
    let x = Tensor::zeros((2, 4), DType::F64, &Device::Cpu).unwrap();
    let w = Tensor::ones(4, DType::F32, &Device::Cpu).unwrap();
    assert!(layer_norm(&x, &w, &w, 1e-5).is_err());
    let x = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
    let e = layer_norm(&x, &w, &w, 1e-5).unwrap_err().to_string();
    assert!(e.contains("[5]"), "{e}");
}

/// The fused LayerNorm(dropout(x) + residual) gives the three ops' output and gradients, with
/// and without dropout; its weight and bias gradients arrive in the sinks, x's and the
/// residual's in the store.
#[test]
fn residual_layer_norm_equals_dropout_add_and_layer_norm() {
    use alpaca_kernels::{dropout, residual_layer_norm, WeightBiasSinks};
    let x = rand_tensor(&[2, 700, 48], 30, 1.0);
    let residual = rand_tensor(&[2, 700, 48], 31, 1.0);
    let w = rand_tensor(&[48], 32, 0.5);
    let b = rand_tensor(&[48], 33, 0.5);
    let lw = rand_tensor(&[2, 700, 48], 34, 1.0);
    for probability in [0.0, 0.1] {
        let seed = 77;
        let (yr, gr) = autograd(&[&x, &residual, &w, &b], &lw, |t| {
            let dropped = dropout(&t[0], probability, seed)?;
            layer_norm(&(dropped + &t[1])?, &t[2], &t[3], 1e-12)
        });
        let sinks = WeightBiasSinks::default();
        let (y, g) = autograd(&[&x, &residual, &w, &b], &lw, |t| {
            let parameters = (&t[2], &t[3]);
            residual_layer_norm(&t[0], &t[1], parameters, 1e-12, (probability, seed), &sinks)
        });
        let what = |name: &str| format!("{name}, dropout {probability}");
        assert_close(&y, &yr, 0.0, 0.0, &what("output"));
        assert_close(&g[0], &gr[0], 1e-6, 1e-5, &what("dx"));
        assert_close(&g[1], &gr[1], 1e-6, 1e-5, &what("dresidual"));
        // The store got none for the weight and bias (autograd reports zeros), the sinks did.
        assert_eq!(
            flat(&g[2])
                .iter()
                .chain(&flat(&g[3]))
                .filter(|&&v| v != 0.0)
                .count(),
            0
        );
        let taken = |sink: &alpaca_kernels::GradientSink| sink.take().unwrap().to_dense().unwrap();
        assert_close(&taken(&sinks.weight), &gr[2], 1e-5, 1e-5, &what("dweight"));
        assert_close(&taken(&sinks.bias), &gr[3], 1e-5, 1e-5, &what("dbias"));
    }
    let sinks = WeightBiasSinks::default();
    let short = rand_tensor(&[2, 699, 48], 35, 1.0);
    let error = residual_layer_norm(&x, &short, (&w, &b), 1e-12, (0.0, 0), &sinks)
        .unwrap_err()
        .to_string();
    assert!(error.contains("must have one shape"), "{error}");
}
