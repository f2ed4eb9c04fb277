//! Where a LoRA SFT step of SmolLM2-135M spends its time: one decoder layer built the way
//! `alpaca-models`' llama.rs builds it (frozen base weights as detached tensors, LoRA r 8 on
//! q_proj/v_proj with dropout), forward + backward at batch × length tokens, then each op on
//! its own (forward + backward of sum(op · w)), and the output layer + cross-entropy.
//!     cargo run --release -p alpaca-kernels --example llama_layer_bench [-- BATCH LENGTH]

use std::time::Instant;

use alpaca_kernels as k;
use candle_core::{DType, Device, Result, Tensor, Var};

const H: usize = 576;
const F: usize = 1536;
const HQ: usize = 9;
const HKV: usize = 3;
const D: usize = 64;
const VOCAB: usize = 49152;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median ms of forward + backward (loss = Σ output · fixed weights) over `iters` runs.
fn time(iters: usize, inputs: &[&Tensor], f: &dyn Fn(&[Tensor]) -> Result<Tensor>) -> Result<f64> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t))
        .collect::<Result<_>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let shape = f(&ts)?.shape().clone();
    let w = Tensor::randn(0f32, 1.0, shape, &Device::Cpu)?;
    let mut times = Vec::new();
    for _ in 0..iters + 1 {
        let start = Instant::now();
        let y = f(&ts)?;
        let grads = (y * &w)?.sum_all()?.backward()?;
        std::hint::black_box(grads.get(&ts[0]));
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.remove(0);
    Ok(median(times))
}

struct Layer {
    norm1: Tensor,
    norm2: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
    lora: [(Var, Var); 2],
    rope: k::RopeTables,
}

fn weight(out: usize, inp: usize) -> Result<Tensor> {
    Tensor::randn(0f32, 0.04, (out, inp), &Device::Cpu)
}

impl Layer {
    fn new() -> Result<Self> {
        let lora = |out: usize| -> Result<(Var, Var)> {
            Ok((
                Var::from_tensor(&weight(8, H)?)?,
                Var::from_tensor(&weight(out, 8)?)?,
            ))
        };
        Ok(Layer {
            norm1: Tensor::ones(H, DType::F32, &Device::Cpu)?,
            norm2: Tensor::ones(H, DType::F32, &Device::Cpu)?,
            q: weight(HQ * D, H)?,
            k: weight(HKV * D, H)?,
            v: weight(HKV * D, H)?,
            o: weight(H, HQ * D)?,
            gate: weight(F, H)?,
            up: weight(F, H)?,
            down: weight(H, F)?,
            lora: [lora(HQ * D)?, lora(HKV * D)?],
            rope: k::RopeTables::new(D, 1e5, 8192)?,
        })
    }

    fn adapted(&self, x: &Tensor, w: &Tensor, which: usize) -> Result<Tensor> {
        let (a, b) = &self.lora[which];
        let low = k::linear_no_bias(&k::dropout(x, 0.05, 7)?, a.as_tensor())?;
        k::linear_no_bias(x, w)? + k::linear_no_bias(&low, b.as_tensor())?.affine(2.0, 0.0)?
    }

    /// llama.rs `layer_forward` without the cache.
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let n = k::rms_norm(x, &self.norm1, 1e-5)?;
        let split =
            |y: Tensor, heads: usize| y.reshape((b, t, heads, D))?.transpose(1, 2)?.contiguous();
        let q = split(self.adapted(&n, &self.q, 0)?, HQ)?;
        let kk = split(k::linear_no_bias(&n, &self.k)?, HKV)?;
        let v = split(self.adapted(&n, &self.v, 1)?, HKV)?;
        let q = k::rope(&q, &self.rope, 0)?;
        let kk = k::rope(&kk, &self.rope, 0)?;
        let context = k::causal_attention(&q, &kk, &v, Some(mask), 0.125)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, HQ * D))?;
        let x = (x + k::linear_no_bias(&context, &self.o)?)?;
        let n = k::rms_norm(&x, &self.norm2, 1e-5)?;
        let g = k::silu_mul(
            &k::linear_no_bias(&n, &self.gate)?,
            &k::linear_no_bias(&n, &self.up)?,
        )?;
        x + k::linear_no_bias(&g, &self.down)?
    }
}

/// As `alpaca_train::threads::tune_allocator` does for training runs: glibc keeps freed
/// buffers instead of unmapping them, so steps do not pay for fresh zeroed pages.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only changes allocator tuning parameters.
        unsafe {
            mallopt(-3, 1 << 30); // M_MMAP_THRESHOLD
            mallopt(-1, i32::MAX); // M_TRIM_THRESHOLD
        }
    }
}

fn main() -> Result<()> {
    tune_allocator();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (b, t) = (*args.first().unwrap_or(&8), *args.get(1).unwrap_or(&256));
    let n = b * t;
    let dev = Device::Cpu;
    println!(
        "batch {b} × {t} tokens, rayon threads {}",
        rayon::current_num_threads()
    );
    let layer = Layer::new()?;
    let x = Tensor::randn(0f32, 1.0, (b, t, H), &dev)?;
    let mask = Tensor::ones((b, t), DType::F32, &dev)?;
    let it = 5;
    let whole = time(it, &[&x], &|v| layer.forward(&v[0], &mask))?;
    let linear_flops = 2.0 * 2.0 * (n * H * (2 * HQ * D + 2 * HKV * D + 3 * F)) as f64;
    println!(
        "decoder layer forward+backward  {whole:8.2} ms   (× 30 layers = {:.2} s; its projections alone: {:.1} GFLOP)",
        whole * 30.0 / 1e3,
        linear_flops / 1e9
    );
    let xh = Tensor::randn(0f32, 1.0, (n, H), &dev)?;
    let xf = Tensor::randn(0f32, 1.0, (n, F), &dev)?;
    let report = |name: &str, ms: f64, flops: f64| {
        if flops > 0.0 {
            println!(
                "  {name:<30} {ms:8.2} ms  ({:.0} GFLOP/s)",
                flops / ms / 1e6
            );
        } else {
            println!("  {name:<30} {ms:8.2} ms");
        }
    };
    for (name, w, input) in [
        ("linear 576→576 (q, o)", &layer.q, &xh),
        ("linear 576→192 (k, v)", &layer.k, &xh),
        ("linear 576→1536 (gate, up)", &layer.gate, &xh),
        ("linear 1536→576 (down)", &layer.down, &xf),
    ] {
        let (o, i) = w.dims2()?;
        let ms = time(it, &[input], &|v| k::linear_no_bias(&v[0], w))?;
        report(name, ms, 4.0 * (n * o * i) as f64);
    }
    let ms = time(it, &[&xh], &|v| layer.adapted(&v[0], &layer.q, 0))?
        - time(it, &[&xh], &|v| k::linear_no_bias(&v[0], &layer.q))?;
    report("LoRA branch (q), extra", ms, 0.0);
    let (a, bm) = &layer.lora[0];
    let ms = time(it, &[&xh, a.as_tensor()], &|v| {
        k::linear_no_bias(&v[0], &v[1])
    })?;
    report("  LoRA A: 576→8, dA and dx", ms, 6.0 * (n * 8 * H) as f64);
    let low = Tensor::randn(0f32, 1.0, (n, 8), &dev)?;
    let ms = time(it, &[&low, bm.as_tensor()], &|v| {
        k::linear_no_bias(&v[0], &v[1])
    })?;
    report("  LoRA B: 8→576, dB and dx", ms, 6.0 * (n * 8 * H) as f64);
    let ms = time(it, &[&xh], &|v| k::dropout(&v[0], 0.05, 3))?;
    report("  dropout", ms, 0.0);
    let ms = time(it, &[&xh], &|v| v[0].affine(1.0, 0.0))?;
    report("harness floor [N, 576] (affine)", ms, 0.0);
    let ms = time(it, &[&xf], &|v| v[0].affine(1.0, 0.0))?;
    report("harness floor [N, 1536] (affine)", ms, 0.0);
    let ms = time(it, &[&xh], &|v| k::rms_norm(&v[0], &layer.norm1, 1e-5))?;
    report("rms_norm", ms, 0.0);
    let ms = time(it, &[&xf, &xf], &|v| k::silu_mul(&v[0], &v[1]))?;
    report("silu_mul", ms, 0.0);
    let qh = Tensor::randn(0f32, 1.0, (b, HQ, t, D), &dev)?;
    let ms = time(it, &[&qh], &|v| k::rope(&v[0], &layer.rope, 0))?;
    report("rope (q)", ms, 0.0);
    let ms = time(it, &[&xh], &|v| {
        v[0].reshape((b, t, HQ, D))?.transpose(1, 2)?.contiguous()
    })?;
    report("split heads (transpose copy)", ms, 0.0);
    let ms = time(it, &[&xh, &xh], &|v| &v[0] + &v[1])?;
    report("residual add", ms, 0.0);
    let kh = Tensor::randn(0f32, 1.0, (b, HKV, t, D), &dev)?;
    let ms = time(it, &[&qh, &kh, &kh], &|v| {
        k::causal_attention(&v[0], &v[1], &v[2], Some(&mask), 0.125)
    })?;
    report("causal_attention", ms, 0.0);

    // Output layer on the labelled positions only (about 40% of the tokens in the grammar
    // data) + cross-entropy, head frozen (tied embedding).
    let rows = n * 2 / 5;
    let head = Tensor::randn(0f32, 0.04, (VOCAB, H), &dev)?;
    let hidden = Tensor::randn(0f32, 1.0, (rows, H), &dev)?;
    let targets: Vec<i64> = (0..rows as i64)
        .map(|i| (i * 7919) % VOCAB as i64)
        .collect();
    let targets = Tensor::new(targets.as_slice(), &dev)?;
    let ms = time(it, &[&hidden], &|v| k::linear_no_bias(&v[0], &head))?;
    report(
        &format!("lm head {rows} rows → 49152"),
        ms,
        4.0 * (rows * VOCAB * H) as f64,
    );
    let logits = Tensor::randn(0f32, 1.0, (rows, VOCAB), &dev)?;
    let ms = time(it, &[&logits], &|v| k::cross_entropy(&v[0], &targets, -100))?;
    report("cross_entropy over 49152", ms, 0.0);
    Ok(())
}
