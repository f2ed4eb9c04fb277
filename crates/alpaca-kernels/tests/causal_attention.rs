mod common;
use alpaca_kernels::causal_attention;
use candle_core::{Device, Result, Tensor, D};
use common::*;

/// Reference from candle ops: kv heads repeated to the query heads, additive −1e9 mask for
/// future and padded keys, exp/sum softmax, probabilities · v.
fn composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let (b, hq, tq, _) = q.dims4()?;
    let (_, hkv, tk, _) = k.dims4()?;
    let groups = hq / hkv;
    let repeat = |t: &Tensor| -> Result<Tensor> {
        let heads: Vec<Tensor> = (0..hq)
            .map(|h| t.narrow(1, h / groups, 1))
            .collect::<Result<_>>()?;
        Tensor::cat(&heads, 1)
    };
    let (k, v) = (repeat(k)?, repeat(v)?);
    let mut bias = vec![0.0f32; b * tq * tk];
    let mask_values = mask.map(flat);
    for batch in 0..b {
        for i in 0..tq {
            for j in 0..tk {
                let padded = mask_values
                    .as_ref()
                    .is_some_and(|m| m[batch * tk + j] == 0.0);
                if j > tk - tq + i || padded {
                    bias[(batch * tq + i) * tk + j] = -1e9;
                }
            }
        }
    }
    let bias = Tensor::from_vec(bias, (b, 1, tq, tk), &Device::Cpu)?;
    let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias)?;
    let max = scores.max_keepdim(D::Minus1)?.detach();
    let e = scores.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?.matmul(&v)
}

/// mask [2, tk]: batch 0 all tokens, batch 1 the last 2 keys are padding (right padding).
fn right_padding(tk: usize) -> Tensor {
    let mut m = vec![1.0f32; 2 * tk];
    m[2 * tk - 2..].iter_mut().for_each(|v| *v = 0.0);
    Tensor::from_vec(m, (2, tk), &Device::Cpu).unwrap()
}

fn inputs(hq: usize, hkv: usize, tq: usize, tk: usize, d: usize) -> [Tensor; 4] {
    [
        rand_tensor(&[2, hq, tq, d], 1, 1.5),
        rand_tensor(&[2, hkv, tk, d], 2, 1.5),
        rand_tensor(&[2, hkv, tk, d], 3, 1.0),
        rand_tensor(&[2, hq, tq, d], 4, 1.0),
    ]
}

#[test]
fn matches_composed_ops_with_groups_and_padding() {
    // (query heads, kv heads): multi-head, grouped, multi-query
    for (hq, hkv) in [(4, 4), (6, 2), (3, 1)] {
        let [q, k, v, lw] = inputs(hq, hkv, 9, 9, 16);
        let mask = right_padding(9);
        for mask in [None, Some(&mask)] {
            let what = format!("hq {hq} hkv {hkv} mask {}", mask.is_some());
            let (y, g) = autograd(&[&q, &k, &v], &lw, |t| {
                causal_attention(&t[0], &t[1], &t[2], mask, 0.25)
            });
            let (yr, gr) = autograd(&[&q, &k, &v], &lw, |t| {
                composed(&t[0], &t[1], &t[2], mask, 0.25)
            });
            assert_close(&y, &yr, 1e-5, 1e-4, &format!("{what}: forward"));
            for (n, name) in ["dq", "dk", "dv"].iter().enumerate() {
                assert_close(&g[n], &gr[n], 1e-5, 1e-4, &format!("{what}: {name}"));
            }
        }
    }
}

#[test]
fn fewer_queries_than_keys_is_the_kv_cache_case() {
    // 3 new queries over 5 cached + 3 new keys, forward and backward.
    let [q, k, v, lw] = inputs(4, 2, 3, 8, 8);
    let mask = right_padding(8);
    let (y, g) = autograd(&[&q, &k, &v], &lw, |t| {
        causal_attention(&t[0], &t[1], &t[2], Some(&mask), 0.5)
    });
    let (yr, gr) = autograd(&[&q, &k, &v], &lw, |t| {
        composed(&t[0], &t[1], &t[2], Some(&mask), 0.5)
    });
    assert_close(&y, &yr, 1e-5, 1e-4, "cache forward");
    for n in 0..3 {
        assert_close(&g[n], &gr[n], 1e-5, 1e-4, &format!("cache gradient {n}"));
    }
    // The last rows of a full causal pass equal the cached pass.
    let [q_full, _, _, _] = inputs(4, 2, 8, 8, 8);
    let full = causal_attention(&q_full, &k, &v, None, 0.5).unwrap();
    let last = causal_attention(&q_full.narrow(2, 5, 3).unwrap(), &k, &v, None, 0.5).unwrap();
    assert_close(
        &last,
        &full.narrow(2, 5, 3).unwrap(),
        0.0,
        0.0,
        "cached rows",
    );
}

#[test]
fn finite_differences() {
    let [q, k, v, lw] = inputs(4, 2, 5, 5, 8);
    let mask = right_padding(5);
    let f = |t: &[Tensor]| causal_attention(&t[0], &t[1], &t[2], Some(&mask), 0.4);
    let (_, g) = autograd(&[&q, &k, &v], &lw, f);
    for which in 0..3 {
        let n = [&q, &k, &v][which].elem_count();
        let idx = sample_indices(n, 12, 30 + which as u64);
        let fd = finite_diff(&[&q, &k, &v], which, &idx, &flat(&lw), 1e-3, f);
        check_fd(&fd, &g[which], &idx, &format!("attention input {which}"));
    }
}

#[test]
fn a_query_that_sees_only_padding_gives_zeros() {
    // Left padding: batch 1's first two positions are padding, so its queries 0 and 1 see no key.
    let [q, k, v, lw] = inputs(2, 1, 4, 4, 8);
    let mask =
        Tensor::from_vec(vec![1f32, 1., 1., 1., 0., 0., 1., 1.], (2, 4), &Device::Cpu).unwrap();
    let (y, g) = autograd(&[&q, &k, &v], &lw, |t| {
        causal_attention(&t[0], &t[1], &t[2], Some(&mask), 0.3)
    });
    let y1 = flat(&y.narrow(0, 1, 1).unwrap().narrow(2, 0, 2).unwrap());
    assert!(y1.iter().all(|&x| x == 0.0), "{y1:?}");
    let dq1 = flat(&g[0].narrow(0, 1, 1).unwrap().narrow(2, 0, 2).unwrap());
    assert!(dq1.iter().all(|&x| x == 0.0));
    assert!(g.iter().all(|t| flat(t).iter().all(|x| x.is_finite())));
    // The rows that see tokens match the reference.
    let yr = composed(&q, &k, &v, Some(&mask), 0.3).unwrap();
    assert_close(
        &y.narrow(2, 2, 2).unwrap(),
        &yr.narrow(2, 2, 2).unwrap(),
        1e-5,
        1e-4,
        "rest",
    );
}

#[test]
fn errors_not_panics() {
    let [q, k, v, _] = inputs(3, 2, 4, 4, 8);
    let e = causal_attention(&q, &k, &v, None, 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiple"), "{e}");
    let [q, k, v, _] = inputs(4, 2, 5, 4, 8);
    assert!(causal_attention(&q, &k, &v, None, 1.0).is_err());
    let [q, k, v, _] = inputs(4, 2, 4, 4, 8);
    let bad_mask = right_padding(5);
    let e = causal_attention(&q, &k, &v, Some(&bad_mask), 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("mask"), "{e}");
    assert!(causal_attention(&q, &k, &k.narrow(3, 0, 4).unwrap(), None, 1.0).is_err());
}

#[test]
fn long_odd_lengths_over_several_row_blocks() {
    // The kernel works on blocks of 64 query rows: lengths below, at and across block edges,
    // full and cached (Tq < Tk, so the causal diagonal is offset inside a block), with padded
    // keys inside and at the end of a row, against the composed ops, forward and backward.
    // (Rows that see no key at all are `a_query_that_sees_only_padding_gives_zeros`.)
    for (hq, hkv, tq, tk) in [
        (3, 1, 63, 63),
        (2, 2, 64, 64),
        (6, 2, 131, 131),
        (4, 2, 70, 133),
    ] {
        let [q, k, v, lw] = inputs(hq, hkv, tq, tk, 16);
        let mut m = vec![1.0f32; 2 * tk];
        m[3..8].iter_mut().for_each(|x| *x = 0.0); // batch 0: keys 3..8 masked
        m[2 * tk - 17..].iter_mut().for_each(|x| *x = 0.0); // batch 1: right padding
        let mask = Tensor::from_vec(m, (2, tk), &Device::Cpu).unwrap();
        for mask in [None, Some(&mask)] {
            let what = format!("hq {hq} hkv {hkv} tq {tq} tk {tk} mask {}", mask.is_some());
            let (y, g) = autograd(&[&q, &k, &v], &lw, |t| {
                causal_attention(&t[0], &t[1], &t[2], mask, 0.25)
            });
            let (yr, gr) = autograd(&[&q, &k, &v], &lw, |t| {
                composed(&t[0], &t[1], &t[2], mask, 0.25)
            });
            assert_close(&y, &yr, 1e-5, 1e-4, &format!("{what}: forward"));
            for (n, name) in ["dq", "dk", "dv"].iter().enumerate() {
                assert_close(&g[n], &gr[n], 1e-5, 1e-4, &format!("{what}: {name}"));
            }
        }
    }
}
