mod common;
use alpaca_kernels::{
    adamw_step, adamw_step_rows, scale_in_place, squared_norm, touched_rows, AdamWParams,
    RowGradient,
};
use candle_core::{Device, Tensor, Var};
use common::*;

/// torch.optim.AdamW's update, in f64, as a plain loop.
fn reference(p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64], h: AdamWParams) {
    let t = h.step as i32;
    let bc1 = 1.0 - h.beta1.powi(t);
    let bc2 = 1.0 - h.beta2.powi(t);
    for i in 0..p.len() {
        let g = g[i] * h.gradient_scale;
        p[i] *= 1.0 - h.learning_rate * h.weight_decay;
        m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * g;
        v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * g * g;
        let denom = (v[i] / bc2).sqrt() + h.epsilon;
        p[i] -= h.learning_rate * (m[i] / bc1) / denom;
    }
}

#[test]
fn three_steps_match_torch_formula() {
    let n = 40_000; // > one parallel chunk
    let p0 = rand_vec(n, 1, 1.0);
    let var =
        Var::from_tensor(&Tensor::from_vec(p0.clone(), (200, 200), &Device::Cpu).unwrap()).unwrap();
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    let mut rp: Vec<f64> = p0.iter().map(|&x| x as f64).collect();
    let (mut rm, mut rv) = (vec![0.0f64; n], vec![0.0f64; n]);
    let id_before = var.as_tensor().id();
    for step in 1..=3u64 {
        let g = rand_vec(n, 10 + step, 0.5);
        let gt = Tensor::from_vec(g.clone(), (200, 200), &Device::Cpu).unwrap();
        let h = AdamWParams {
            learning_rate: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.01,
            step,
            // the last step clipped
            gradient_scale: if step == 3 { 0.25 } else { 1.0 },
        };
        adamw_step(var.as_tensor(), &gt, &mut m, &mut v, h).unwrap();
        let g64: Vec<f64> = g.iter().map(|&x| x as f64).collect();
        reference(&mut rp, &g64, &mut rm, &mut rv, h);
    }
    assert_eq!(var.as_tensor().id(), id_before);
    let got = flat(var.as_tensor());
    for i in 0..n {
        assert!(
            (got[i] as f64 - rp[i]).abs() < 1e-6,
            "param {i}: {} vs {}",
            got[i],
            rp[i]
        );
        assert!((m[i] as f64 - rm[i]).abs() < 1e-6);
        assert!((v[i] as f64 - rv[i]).abs() < 1e-7);
    }
    // the params actually moved
    assert!(got.iter().zip(&p0).any(|(a, b)| (a - b).abs() > 1e-3));
}

#[test]
fn rejects_bad_input() {
    let p = Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let g = p.ones_like().unwrap();
    let (mut m, mut v) = (vec![0.0; 16], vec![0.0; 15]);
    assert!(adamw_step(&p, &g, &mut m, &mut v, AdamWParams::default()).is_err());
    let mut v = vec![0.0; 16];
    let h = AdamWParams {
        step: 0,
        ..Default::default()
    };
    assert!(adamw_step(&p, &g, &mut m, &mut v, h).is_err());
    // grad aliasing the param is refused, not UB
    assert!(adamw_step(&p, &p, &mut m, &mut v, AdamWParams::default()).is_err());
    // non-contiguous grad is fine
    let gt = rand_tensor(&[4, 4], 1, 1.0).t().unwrap();
    adamw_step(&p, &gt, &mut m, &mut v, AdamWParams::default()).unwrap();
}

/// A table whose gradient touches a few rows: the row update equals the dense update with
/// that gradient's zeros, element for element, over steps where the touched rows change (so
/// untouched rows carry moments from earlier steps).
#[test]
fn row_gradients_update_as_their_dense_gradient() {
    let (rows, width) = (1_000, 48); // > one parallel chunk
    let p0 = rand_vec(rows * width, 3, 1.0);
    let table = |p: &[f32]| Tensor::from_vec(p.to_vec(), (rows, width), &Device::Cpu).unwrap();
    let (dense, sparse) = (
        Var::from_tensor(&table(&p0)).unwrap(),
        Var::from_tensor(&table(&p0)).unwrap(),
    );
    let zeros = || vec![0.0f32; rows * width];
    let (mut dense_m, mut dense_v, mut sparse_m, mut sparse_v) =
        (zeros(), zeros(), zeros(), zeros());
    // Rows never looked up take the weight decay alone, without their moments; at step 3
    // the flags are derived again from the moments, as a resumed run does; step 4 has no decay.
    let mut touched = vec![false; rows];
    for step in 1..=4u64 {
        let ids: Vec<u32> = match step {
            1 => vec![5, 999, 5, 17],
            2 => vec![0, 17, 400],
            _ => vec![3],
        };
        if step == 3 {
            touched = touched_rows((&sparse_m, &sparse_v), width);
            assert_eq!(touched.iter().filter(|&&t| t).count(), 5);
        }
        let upstream = rand_vec(ids.len() * width, 20 + step, 0.5);
        let gradient = RowGradient::from_lookup(rows, width, &ids, &upstream);
        let h = AdamWParams {
            learning_rate: 1e-2,
            weight_decay: if step == 4 { 0.0 } else { 0.01 },
            step,
            gradient_scale: 0.5,
            ..Default::default()
        };
        let full = gradient.to_dense().unwrap();
        adamw_step(dense.as_tensor(), &full, &mut dense_m, &mut dense_v, h).unwrap();
        let moments = (&mut sparse_m[..], &mut sparse_v[..]);
        adamw_step_rows(sparse.as_tensor(), &gradient, moments, &mut touched, h).unwrap();
    }
    assert_eq!(flat(dense.as_tensor()), flat(sparse.as_tensor()));
    assert_eq!(dense_m, sparse_m);
    assert_eq!(dense_v, sparse_v);
    assert_ne!(flat(dense.as_tensor()), p0);

    // A gradient of another table is refused.
    let other = RowGradient::from_lookup(rows + 1, width, &[rows as u32], &vec![1.0; width]);
    let h = AdamWParams::default();
    let moments = (&mut sparse_m[..], &mut sparse_v[..]);
    assert!(adamw_step_rows(sparse.as_tensor(), &other, moments, &mut touched, h).is_err());
}

#[test]
fn norm_and_scale() {
    let x = rand_tensor(&[300, 301], 2, 1.0);
    let want: f64 = flat(&x).iter().map(|&v| v as f64 * v as f64).sum();
    let got = squared_norm(&x).unwrap();
    assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
    let xt = x.t().unwrap();
    assert!((squared_norm(&xt).unwrap() - want).abs() < 1e-9 * want);
    let before = flat(&x);
    scale_in_place(&x, 0.5).unwrap();
    assert!(flat(&x).iter().zip(&before).all(|(a, b)| *a == b * 0.5));
}

#[test]
fn cpu_features_reports() {
    let s = alpaca_kernels::cpu_features();
    assert!(!s.is_empty());
}
