//! GFLOP/s of the fused linear kernel on the reference step's shapes (batch 16 × 128 tokens,
//! MiniLM sizes), forward and backward, against candle's matmul chain.
//!     cargo run --release -p alpaca-kernels --example linear_bench

use std::time::Instant;

use alpaca_kernels::linear;
use candle_core::{Device, Tensor, Var};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> candle_core::Result<()> {
    let rows = 2048;
    for (input, output) in [(384, 384), (384, 1536), (1536, 384)] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (rows, input), &Device::Cpu)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.05, (output, input), &Device::Cpu)?)?;
        let b = Var::from_tensor(&Tensor::zeros(
            output,
            candle_core::DType::F32,
            &Device::Cpu,
        )?)?;
        let flops = 2.0 * (rows * input * output) as f64;
        let (mut forward, mut backward, mut candle_forward) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..7 {
            let start = Instant::now();
            let y = linear(x.as_tensor(), w.as_tensor(), b.as_tensor())?;
            forward.push(start.elapsed().as_secs_f64());
            let start = Instant::now();
            let _ = y.sum_all()?.backward()?;
            backward.push(start.elapsed().as_secs_f64());
            let start = Instant::now();
            let _ = x
                .as_tensor()
                .matmul(&w.as_tensor().t()?)?
                .broadcast_add(b.as_tensor())?;
            candle_forward.push(start.elapsed().as_secs_f64());
        }
        let (f, bw, cf) = (median(forward), median(backward), median(candle_forward));
        println!(
            "[{rows}x{input}] x [{input}x{output}]: forward {:.2} ms ({:.0} GFLOP/s), backward {:.2} ms ({:.0} GFLOP/s), candle forward {:.2} ms",
            f * 1e3,
            flops / f / 1e9,
            bw * 1e3,
            2.0 * flops / bw / 1e9,
            cf * 1e3
        );
    }
    Ok(())
}
