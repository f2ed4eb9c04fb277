//! Times each kernel forward+backward against the composed candle ops it replaces.
//! Run: cargo run --release -p alpaca-kernels --example kernel_bench
use alpaca_kernels as k;
use candle_core::{Device, Result, Tensor, Var, D};
use std::time::Instant;

/// Median seconds of `iters` runs of forward + backward (loss = sum of the output).
fn time(iters: usize, inputs: &[&Tensor], f: &dyn Fn(&[Tensor]) -> Result<Tensor>) -> Result<f64> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t))
        .collect::<Result<_>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let mut times = Vec::new();
    for _ in 0..iters + 1 {
        let t0 = Instant::now();
        let y = f(&ts)?;
        let grads = y.sum_all()?.backward()?;
        std::hint::black_box(grads.get(&ts[0]));
        times.push(t0.elapsed().as_secs_f64());
    }
    times.remove(0); // warm-up
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(times[times.len() / 2])
}

fn report(name: &str, ours: f64, candle: f64) {
    println!(
        "{name:<14} ours {:>8.2} ms   composed candle {:>8.2} ms   speed-up {:>5.1}x",
        ours * 1e3,
        candle * 1e3,
        candle / ours
    );
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    let it = 5;
    println!(
        "cpu: {}, rayon threads: {}",
        k::cpu_features(),
        rayon::current_num_threads()
    );
    let x = Tensor::randn(0f32, 1.0, (16, 128, 1536), &dev)?;
    let b = Tensor::randn(0f32, 1.0, 1536, &dev)?;
    let w = Tensor::randn(1f32, 0.1, 1536, &dev)?;

    let base = time(it, &[&x], &|t| t[0].affine(1.0, 0.0))?;
    println!(
        "(harness floor: affine + sum + backward on the same tensor: {:.2} ms)",
        base * 1e3
    );
    let ours = time(it, &[&x], &|t| k::gelu(&t[0]))?;
    let theirs = time(it, &[&x], &|t| t[0].gelu_erf())?;
    report("gelu", ours, theirs);

    let ours = time(it, &[&x, &b], &|t| k::bias_gelu(&t[0], &t[1]))?;
    let theirs = time(it, &[&x, &b], &|t| t[0].broadcast_add(&t[1])?.gelu_erf())?;
    report("bias_gelu", ours, theirs);

    let ours = time(it, &[&x, &w, &b], &|t| {
        k::layer_norm(&t[0], &t[1], &t[2], 1e-12)
    })?;
    let theirs = time(it, &[&x, &w, &b], &|t| {
        let mean = t[0].mean_keepdim(D::Minus1)?;
        let xc = t[0].broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        xc.broadcast_div(&(var + 1e-12)?.sqrt()?)?
            .broadcast_mul(&t[1])?
            .broadcast_add(&t[2])
    })?;
    report("layer_norm", ours, theirs);

    let s = Tensor::randn(0f32, 1.0, (16, 12, 128, 128), &dev)?;
    let mask = Tensor::ones((16, 128), candle_core::DType::F32, &dev)?;
    let m4 = mask.reshape((16, 1, 1, 128))?;
    let ours = time(it, &[&s], &|t| k::masked_softmax(&t[0], &mask, 0.125))?;
    let theirs = time(it, &[&s], &|t| {
        let v = (&t[0] * 0.125)?.broadcast_add(&((&m4 - 1.0)? * 1e9)?)?;
        let e = v
            .broadcast_sub(&v.max_keepdim(D::Minus1)?.detach())?
            .exp()?;
        e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
    })?;
    report("masked_softmax", ours, theirs);

    let logits = x.reshape((16 * 128, 1536))?;
    let tv: Vec<i64> = (0..2048)
        .map(|i| if i % 5 == 0 { -100 } else { (i * 31) % 1536 })
        .collect();
    let targets = Tensor::new(tv.as_slice(), &dev)?;
    let mut onehot = vec![0f32; 2048 * 1536];
    for (i, &t) in tv.iter().enumerate() {
        if t >= 0 {
            onehot[i * 1536 + t as usize] = 1.0;
        }
    }
    let onehot = Tensor::from_vec(onehot, (2048, 1536), &dev)?;
    let ours = time(it, &[&logits], &|t| k::cross_entropy(&t[0], &targets, -100))?;
    let theirs = time(it, &[&logits], &|t| {
        let m = t[0].max_keepdim(D::Minus1)?.detach();
        let sh = t[0].broadcast_sub(&m)?;
        let lse = sh.exp()?.sum_keepdim(D::Minus1)?.log()?;
        (sh.broadcast_sub(&lse)? * &onehot)?.sum_all()? * (-1.0 / 1638.0)
    })?;
    report("cross_entropy", ours, theirs);

    let ours = time(it, &[&x], &|t| k::dropout(&t[0], 0.1, 7))?;
    let theirs = time(it, &[&x], &|t| {
        let keep = Tensor::rand(0f32, 1.0, t[0].shape(), t[0].device())?.ge(0.1)?;
        (&t[0] * keep.to_dtype(candle_core::DType::F32)?)? * (1.0 / 0.9)
    })?;
    report("dropout", ours, theirs);

    // AdamW: one step over 22M parameters (MiniLM-sized) vs the composed candle update.
    let n = 22_000_000;
    let p = Tensor::randn(0f32, 1.0, n, &dev)?;
    let g = Tensor::randn(0f32, 1.0, n, &dev)?;
    let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
    let h = k::AdamWParams::default();
    let t0 = Instant::now();
    for step in 1..=3 {
        k::adamw_step(&p, &g, &mut m, &mut v, k::AdamWParams { step, ..h })?;
    }
    let ours = t0.elapsed().as_secs_f64() / 3.0;
    let (mut mt, mut vt) = (p.zeros_like()?, p.zeros_like()?);
    let mut pt = p.clone();
    let t0 = Instant::now();
    for step in 1..=3 {
        let bc1 = 1.0 - 0.9f64.powi(step);
        let bc2 = 1.0 - 0.999f64.powi(step);
        mt = ((&mt * 0.9)? + (&g * 0.1)?)?;
        vt = ((&vt * 0.999)? + (g.sqr()? * 0.001)?)?;
        let upd = ((&mt / bc1)? / ((&vt / bc2)?.sqrt()? + 1e-8)?)?;
        pt = ((&pt * (1.0 - 1e-5))? - (upd * 1e-3)?)?;
    }
    std::hint::black_box(&pt);
    let theirs = t0.elapsed().as_secs_f64() / 3.0;
    report("adamw (22M)", ours, theirs);
    Ok(())
}
