//! GFLOP/s of the bf16 GEMM (frozen weight packed once) against the f32 gemm crate on the
//! projection shapes of a SmolLM2-135M LoRA step (8 × 256 tokens) and of a MiniLM CoNLL step
//! (~350 tokens), both directions of a frozen linear layer: forward y = x Wᵀ and input
//! gradient dx = dy W.
//!     RAYON_NUM_THREADS=2 cargo run --release -p alpaca-kernels --example bf16_gemm_bench

use std::time::Instant;

use alpaca_kernels::bf16_gemm::{gemm, has_avx512_bf16, PackedB};
use alpaca_kernels::linear_no_bias;
use candle_core::{Device, Tensor};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(mut f: impl FnMut()) -> f64 {
    let mut times = Vec::new();
    for _ in 0..9 {
        let start = Instant::now();
        f();
        times.push(start.elapsed().as_secs_f64());
    }
    median(times)
}

fn main() -> candle_core::Result<()> {
    println!("avx512-bf16 kernel: {}", has_avx512_bf16());
    for (rows, input, output) in [
        (350, 384, 384),
        (350, 384, 1536),
        (350, 1536, 384),
        (2048, 576, 576),
        (2048, 576, 192),
        (2048, 576, 1536),
        (2048, 1536, 576),
        (2048, 384, 1536),
        (2048, 1536, 384),
        (512, 576, 49152),
    ] {
        let x = Tensor::randn(0f32, 1.0, (rows, input), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 0.05, (output, input), &Device::Cpu)?;
        let dy = Tensor::randn(0f32, 1.0, (rows, output), &Device::Cpu)?;
        let flops = 2.0 * (rows * input * output) as f64;
        let (xs, ws, dys) = (
            x.flatten_all()?.to_vec1::<f32>()?,
            w.flatten_all()?.to_vec1::<f32>()?,
            dy.flatten_all()?.to_vec1::<f32>()?,
        );
        let forward_pack = PackedB::transposed_weight(&ws, (output, input));
        let backward_pack = PackedB::weight(&ws, (output, input));
        let f32_forward = time(|| {
            linear_no_bias(&x, &w).unwrap();
        });
        let mut y = vec![0.0f32; rows * output];
        let bf16_forward = time(|| gemm(&mut y, rows, false, &xs, (input, 1), &forward_pack));
        let mut dx = vec![0.0f32; rows * input];
        let bf16_backward = time(|| gemm(&mut dx, rows, false, &dys, (output, 1), &backward_pack));
        let pack = time(|| {
            PackedB::transposed_weight(&ws, (output, input));
        });
        // Weight gradient dW [out, in] = dyᵀ x: x packed as [rows, in], dy read transposed.
        let mut dw = vec![0.0f32; output * input];
        let weight_gradient = time(|| {
            let packed_x = PackedB::pack(&xs, (rows, input), (input, 1));
            gemm(&mut dw, output, false, &dys, (1, output), &packed_x)
        });
        let pack_x = time(|| {
            PackedB::pack(&xs, (rows, input), (input, 1));
        });
        println!(
            "[{rows}x{input}]·[{input}x{output}]: f32 forward {:.2} ms ({:.0} GFLOP/s) | bf16 forward {:.2} ms ({:.0} GFLOP/s), input gradient {:.2} ms ({:.0} GFLOP/s), packing W {:.2} ms, weight gradient {:.2} ms ({:.0} GFLOP/s, packing x {:.2} ms)",
            f32_forward * 1e3,
            flops / f32_forward / 1e9,
            bf16_forward * 1e3,
            flops / bf16_forward / 1e9,
            bf16_backward * 1e3,
            flops / bf16_backward / 1e9,
            pack * 1e3,
            weight_gradient * 1e3,
            flops / weight_gradient / 1e9,
            pack_x * 1e3,
        );
    }
    Ok(())
}
