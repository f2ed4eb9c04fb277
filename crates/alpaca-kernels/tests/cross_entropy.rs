mod common;
use alpaca_kernels::cross_entropy;
use candle_core::{DType, Device, Result, Tensor, D};
use common::*;

const IGNORE: i64 = -100;

/// Composed reference: log_softmax via max/exp/sum/log, one-hot pick, mean over counted rows.
fn composed(logits: &Tensor, targets: &[i64]) -> Result<Tensor> {
    let (n, c) = logits.dims2()?;
    let mut onehot = vec![0.0f32; n * c];
    let mut valid = vec![0.0f32; n];
    for (i, &t) in targets.iter().enumerate() {
        if t != IGNORE {
            onehot[i * c + t as usize] = 1.0;
            valid[i] = 1.0;
        }
    }
    let count = valid.iter().sum::<f32>() as f64;
    let onehot = Tensor::from_vec(onehot, (n, c), &Device::Cpu)?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    let picked = (logp * onehot)?.sum(D::Minus1)?;
    let valid = Tensor::from_vec(valid, n, &Device::Cpu)?;
    ((picked * valid)?.sum_all()? * (-1.0 / count))?.reshape(())
}

fn scalar_weight() -> Tensor {
    Tensor::new(1.7f32, &Device::Cpu).unwrap()
}

#[test]
fn matches_composed_ops_with_ignored_rows() {
    for (n, c) in [(12, 9), (5, 1000)] {
        let logits = rand_tensor(&[n, c], 1, 5.0);
        let t: Vec<i64> = (0..n as i64)
            .map(|i| {
                if i % 4 == 1 {
                    IGNORE
                } else {
                    (i * 7) % c as i64
                }
            })
            .collect();
        let targets = Tensor::new(t.as_slice(), &Device::Cpu).unwrap();
        let (y, g) = autograd(&[&logits], &scalar_weight(), |x| {
            cross_entropy(&x[0], &targets, IGNORE)
        });
        let (yr, gr) = autograd(&[&logits], &scalar_weight(), |x| composed(&x[0], &t));
        assert_eq!(y.dims(), &[] as &[usize]);
        assert_close(&y, &yr, 1e-5, 1e-5, "cross_entropy forward");
        assert_close(&g[0], &gr[0], 1e-6, 1e-4, "cross_entropy backward");
        // ignored rows get exactly zero gradient
        let gf = flat(&g[0]);
        assert!(gf[c..2 * c].iter().all(|&v| v == 0.0));
        // u32 targets give the same (ignored rows can't be expressed in u32 unless the index fits)
        let tu: Vec<u32> = (0..n as u32).map(|i| (i * 7) % c as u32).collect();
        let tu_t = Tensor::new(tu.as_slice(), &Device::Cpu).unwrap();
        let ti: Vec<i64> = tu.iter().map(|&v| v as i64).collect();
        let yu = cross_entropy(&logits, &tu_t, IGNORE).unwrap();
        assert_close(
            &yu,
            &composed(&logits, &ti).unwrap(),
            1e-5,
            1e-5,
            "u32 targets",
        );
    }
}

#[test]
fn all_ignored_gives_zero_loss_and_grad() {
    let logits = rand_tensor(&[4, 6], 2, 3.0);
    let targets = Tensor::new(&[IGNORE; 4], &Device::Cpu).unwrap();
    let (y, g) = autograd(&[&logits], &scalar_weight(), |x| {
        cross_entropy(&x[0], &targets, IGNORE)
    });
    assert_eq!(y.to_scalar::<f32>().unwrap(), 0.0);
    assert!(flat(&g[0]).iter().all(|&v| v == 0.0));
}

#[test]
fn finite_differences() {
    let logits = rand_tensor(&[6, 5], 3, 3.0);
    let t = [0i64, 4, IGNORE, 2, 1, 3];
    let targets = Tensor::new(&t, &Device::Cpu).unwrap();
    let f = |x: &[Tensor]| cross_entropy(&x[0], &targets, IGNORE);
    let (_, g) = autograd(&[&logits], &scalar_weight(), f);
    let idx: Vec<usize> = (0..30).step_by(2).collect();
    check_fd(
        &finite_diff(&[&logits], 0, &idx, &[1.7], 1e-3, f),
        &g[0],
        &idx,
        "cross_entropy",
    );
}

#[test]
fn bad_target_is_an_error_naming_it() {
    let logits = rand_tensor(&[3, 4], 4, 1.0);
    let targets = Tensor::new(&[0i64, 7, 1], &Device::Cpu).unwrap();
    let e = cross_entropy(&logits, &targets, IGNORE)
        .unwrap_err()
        .to_string();
    assert!(e.contains("target 7") && e.contains("row 1"), "{e}");
    let neg = Tensor::new(&[0i64, -1, 1], &Device::Cpu).unwrap();
    assert!(cross_entropy(&logits, &neg, IGNORE).is_err());
    let f = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    assert!(cross_entropy(&logits, &f, IGNORE).is_err());
}

#[test]
fn non_contiguous_logits() {
    let logits = rand_tensor(&[7, 5], 5, 3.0).t().unwrap(); // [5, 7]
    let t = [6i64, 0, IGNORE, 3, 2];
    let targets = Tensor::new(&t, &Device::Cpu).unwrap();
    let y = cross_entropy(&logits, &targets, IGNORE).unwrap();
    assert_close(
        &y,
        &composed(&logits, &t).unwrap(),
        1e-5,
        1e-5,
        "transposed",
    );
}
