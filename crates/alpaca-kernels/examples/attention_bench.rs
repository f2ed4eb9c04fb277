//! Times `causal_attention` forward and forward + backward at the shapes training and
//! generation use (SmolLM2-135M: 9 query / 3 KV heads, head_dim 64).
//!     cargo run --release -p alpaca-kernels --example attention_bench
//!
//! GFLOP/s counts the dense products a composed implementation performs: 2 matmuls
//! (Q·Kᵀ, P·V) forward, 4 more backward (dP, dQ, dK, dV), each 2·B·Hq·Tq·Tk·D flops,
//! although only the causal half of them is needed.

use std::time::Instant;

use alpaca_kernels::causal_attention;
use candle_core::{Device, Result, Tensor, Var};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Right padding: batch row r has `tk - (r·tk/(4b))` tokens (a quarter of the last row padded).
fn padding_mask(b: usize, tk: usize) -> Result<Tensor> {
    let mut m = vec![0f32; b * tk];
    for r in 0..b {
        let len = tk - r * tk / (4 * b);
        m[r * tk..r * tk + len].iter_mut().for_each(|x| *x = 1.0);
    }
    Tensor::from_vec(m, (b, tk), &Device::Cpu)
}

#[allow(clippy::too_many_arguments)]
fn case(
    name: &str,
    b: usize,
    hq: usize,
    hkv: usize,
    tq: usize,
    tk: usize,
    d: usize,
    backward: bool,
    iters: usize,
) -> Result<()> {
    let dev = Device::Cpu;
    let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, hq, tq, d), &dev)?)?;
    let k = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, hkv, tk, d), &dev)?)?;
    let v = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, hkv, tk, d), &dev)?)?;
    let mask = padding_mask(b, tk)?;
    let scale = 1.0 / (d as f64).sqrt();
    let product = 2.0 * (b * hq * tq * tk * d) as f64;
    let (mut fwd, mut total) = (Vec::new(), Vec::new());
    for _ in 0..iters + 1 {
        let start = Instant::now();
        let y = causal_attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            Some(&mask),
            scale,
        )?;
        fwd.push(start.elapsed().as_secs_f64());
        if backward {
            let grads = y.sum_all()?.backward()?;
            std::hint::black_box(grads.get(q.as_tensor()));
            total.push(start.elapsed().as_secs_f64());
        }
    }
    fwd.remove(0);
    let f = median(fwd);
    print!(
        "{name:<34} forward {:>8.3} ms ({:>5.1} GFLOP/s)",
        f * 1e3,
        2.0 * product / f / 1e9
    );
    if backward {
        total.remove(0);
        let t = median(total);
        print!(
            "   forward+backward {:>8.3} ms ({:>5.1} GFLOP/s)",
            t * 1e3,
            6.0 * product / t / 1e9
        );
    }
    println!();
    Ok(())
}

fn main() -> Result<()> {
    println!(
        "cpu: {}, rayon threads: {}",
        alpaca_kernels::cpu_features(),
        rayon::current_num_threads()
    );
    // LoRA SFT of SmolLM2-135M: batch 8 × 256 tokens.
    case(
        "sft b8 t256 (9/3 heads, d64)",
        8,
        9,
        3,
        256,
        256,
        64,
        true,
        7,
    )?;
    // A long odd-length sequence.
    case("long b1 t1000", 1, 9, 3, 1000, 1000, 64, true, 5)?;
    // Prompt prefill and one decode step over a 512-token cache (generation).
    case("prefill b1 t100", 1, 9, 3, 100, 100, 64, false, 21)?;
    case("decode b1 tq1 tk512", 1, 9, 3, 1, 512, 64, false, 201)?;
    Ok(())
}
