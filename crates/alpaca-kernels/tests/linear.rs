mod common;
use alpaca_kernels::{linear, linear_no_bias};
use candle_core::{Result, Tensor};
use common::*;

fn composed(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.broadcast_matmul(&w.t()?)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

#[test]
fn forward_and_backward_match_composed_ops() {
    // 3-d input as in the model, a 2-d one, an odd size and a single row (the forward's
    // register-blocked few-row products), enough rows × outputs for its gemm path, and a wide
    // input over many rows (its packed-panel path).
    for (dims, out) in [
        (vec![3, 5, 48], 40),
        (vec![17, 33], 9),
        (vec![1, 1, 8], 3),
        (vec![130, 64], 200),
        (vec![2, 150, 64], 400),
        (vec![900, 256], 60),
    ] {
        let input = *dims.last().unwrap();
        let x = rand_tensor(&dims, 1, 1.0);
        let w = rand_tensor(&[out, input], 2, 0.5);
        let b = rand_tensor(&[out], 3, 0.5);
        let mut out_dims = dims.clone();
        *out_dims.last_mut().unwrap() = out;
        let lw = rand_tensor(&out_dims, 4, 1.0);
        let (y, g) = autograd(&[&x, &w, &b], &lw, |t| linear(&t[0], &t[1], &t[2]));
        let (yr, gr) = autograd(&[&x, &w, &b], &lw, |t| composed(&t[0], &t[1], Some(&t[2])));
        assert_close(&y, &yr, 1e-5, 1e-4, "linear forward");
        for (k, name) in ["dx", "dweight", "dbias"].iter().enumerate() {
            assert_close(&g[k], &gr[k], 1e-4, 1e-4, name);
        }
        let (y, g) = autograd(&[&x, &w], &lw, |t| linear_no_bias(&t[0], &t[1]));
        let (yr, gr) = autograd(&[&x, &w], &lw, |t| composed(&t[0], &t[1], None));
        assert_close(&y, &yr, 1e-5, 1e-4, "linear_no_bias forward");
        assert_close(&g[0], &gr[0], 1e-4, 1e-4, "no-bias dx");
        assert_close(&g[1], &gr[1], 1e-4, 1e-4, "no-bias dweight");
    }
}

#[test]
fn finite_differences() {
    let x = rand_tensor(&[4, 6, 16], 5, 1.0);
    let w = rand_tensor(&[12, 16], 6, 0.5);
    let b = rand_tensor(&[12], 7, 0.5);
    let lw = rand_tensor(&[4, 6, 12], 8, 1.0);
    let lwv = flat(&lw);
    let (_, g) = autograd(&[&x, &w, &b], &lw, |t| linear(&t[0], &t[1], &t[2]));
    let f = |t: &[Tensor]| linear(&t[0], &t[1], &t[2]);
    for (which, n) in [(0, x.elem_count()), (1, w.elem_count()), (2, 12)] {
        let idx = sample_indices(n, 8, 20 + which as u64);
        let fd = finite_diff(&[&x, &w, &b], which, &idx, &lwv, 1e-3, f);
        check_fd(&fd, &g[which], &idx, &format!("linear input {which}"));
    }
}

#[test]
fn non_contiguous_input_and_shape_errors() {
    let x = rand_tensor(&[16, 24], 9, 1.0);
    let xt = x.t().unwrap(); // [24, 16], not contiguous
    let w = rand_tensor(&[5, 16], 10, 0.5);
    let b = rand_tensor(&[5], 11, 0.5);
    let y = linear(&xt, &w, &b).unwrap();
    let yr = composed(&xt.contiguous().unwrap(), &w, Some(&b)).unwrap();
    assert_close(&y, &yr, 1e-5, 1e-4, "transposed x");
    let error = linear(&x, &w, &b).unwrap_err().to_string();
    assert!(error.contains("input size 16"), "{error}");
    let error = linear(&xt, &w, &rand_tensor(&[4], 1, 1.0))
        .unwrap_err()
        .to_string();
    assert!(error.contains("bias must have shape [5]"), "{error}");
}

#[test]
fn a_frozen_weight_gets_no_gradient_and_the_input_the_same_one() {
    let x = candle_core::Var::from_tensor(&rand_tensor(&[3, 7, 16], 9, 1.0)).unwrap();
    let w = rand_tensor(&[10, 16], 10, 0.5);
    let frozen = w.detach();
    let trained = candle_core::Var::from_tensor(&w).unwrap();
    let loss_of = |weight: &Tensor| {
        linear_no_bias(x.as_tensor(), weight)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let with_frozen = loss_of(&frozen).backward().unwrap();
    let with_trained = loss_of(trained.as_tensor()).backward().unwrap();
    assert!(with_frozen.get(&frozen).is_none());
    assert!(with_trained.get(trained.as_tensor()).is_some());
    assert_close(
        with_frozen.get(x.as_tensor()).unwrap(),
        with_trained.get(x.as_tensor()).unwrap(),
        0.0,
        0.0,
        "dx",
    );
}

/// With sinks the weight and bias gradients are the store's, left in the sinks (summed over
/// two backward passes) while the store holds only x's; a frozen bias sends nothing.
#[test]
fn gradients_in_sinks_equal_the_stores() {
    use alpaca_kernels::{linear_with_sinks, WeightBiasSinks};
    use candle_core::Var;
    let x = Var::from_tensor(&rand_tensor(&[2, 9, 24], 12, 1.0)).unwrap();
    let w = Var::from_tensor(&rand_tensor(&[14, 24], 13, 0.5)).unwrap();
    let b = Var::from_tensor(&rand_tensor(&[14], 14, 0.5)).unwrap();
    let lw = rand_tensor(&[2, 9, 14], 15, 1.0);
    let loss = |y: Tensor| y.mul(&lw).unwrap().sum_all().unwrap();
    let (x_, w_, b_) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
    let store = loss(linear(x_, w_, b_).unwrap()).backward().unwrap();
    let sinks = WeightBiasSinks::default();
    for _ in 0..2 {
        let sunk = loss(linear_with_sinks(x_, w_, Some(b_), &sinks).unwrap())
            .backward()
            .unwrap();
        assert!(sunk.get(w_).is_none() && sunk.get(b_).is_none());
        assert_close(
            sunk.get(x_).unwrap(),
            store.get(x_).unwrap(),
            0.0,
            0.0,
            "dx",
        );
    }
    let twice = |t: &Tensor| t.affine(2.0, 0.0).unwrap();
    let dense = |sink: &alpaca_kernels::GradientSink| sink.take().unwrap().to_dense().unwrap();
    assert_close(
        &dense(&sinks.weight),
        &twice(store.get(w_).unwrap()),
        0.0,
        1e-6,
        "dW",
    );
    assert_close(
        &dense(&sinks.bias),
        &twice(store.get(b_).unwrap()),
        0.0,
        1e-6,
        "db",
    );

    let frozen_bias = b_.detach();
    loss(linear_with_sinks(x_, w_, Some(&frozen_bias), &sinks).unwrap())
        .backward()
        .unwrap();
    assert!(sinks.bias.take().is_none(), "a frozen bias got a gradient");
    assert!(sinks.weight.take().is_some());
    loss(linear_with_sinks(x_, w_, None, &sinks).unwrap())
        .backward()
        .unwrap();
    assert_close(
        &dense(&sinks.weight),
        store.get(w_).unwrap(),
        0.0,
        0.0,
        "no-bias dW",
    );
}
