//! `y = x Wᵀ + b` for inference, with W [out, in] repacked once into panels of 32 outputs.
//!
//! Why: a prediction forward is short (one sentence is ~20 rows), so gemm's packing of the
//! whole weight at every call costs as much as the product, and dot products along the
//! weight's rows ([`crate::few_rows`]) end every 4 × 4 block in 16 horizontal sums. With the
//! weight stored as panels Wᵀ[in][32] (each panel one contiguous stream), a tile of 6 rows ×
//! 32 outputs keeps 12 AVX-512 accumulators that each step feeds from two panel vectors and six
//! broadcast x values: no reductions, no per-call packing, the panel read sequentially. The
//! bias is the accumulators' starting value. The op is for inference only: it has no backward,
//! and the panels are a copy, so a weight that changes must be packed again. (`crate::linear`
//! also packs at each call for the one training shape where gemm is slowest, 1536→384, and
//! keeps its own backward.)

use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::util::{check_f32_cpu, slice_f32, with_f32};

/// Outputs per panel: two AVX-512 vectors.
const PANEL: usize = 32;

/// Rows per register tile: 6 × 2 accumulators + 2 panel vectors + 1 broadcast = 15 registers.
const TILE_ROWS: usize = 6;

/// Rows per cache block: x [rows, in] of a block stays in L2 while every panel passes over
/// it (96 rows × 1,536 inputs × 4 bytes = 576 KB).
const BLOCK_ROWS: usize = 96;

/// A linear layer's weight and bias, packed for [`packed_linear`].
pub struct PackedLinear {
    out_features: usize,
    in_features: usize,
    /// Panel p holds Wᵀ[i][p·32 .. p·32 + 32] for every input i (outputs past `out_features`
    /// are zero).
    panels: Vec<f32>,
    /// The bias padded to whole panels (zeros without a bias).
    bias: Vec<f32>,
}

impl PackedLinear {
    /// Packs `weight` [out, in] (and `bias` [out]) as they are now.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Arc<Self>> {
        const OP: &str = "packed linear";
        check_f32_cpu(OP, "weight", weight)?;
        let dims = weight.dims2()?;
        if let Some(bias) = bias {
            check_f32_cpu(OP, "bias", bias)?;
            if bias.dims() != [dims.0] {
                bail!(
                    "{OP}: bias must have shape [{}], got {:?}",
                    dims.0,
                    bias.shape()
                )
            }
        }
        let packed = with_f32(OP, &weight.contiguous()?, |w| match bias {
            Some(bias) => with_f32(OP, &bias.contiguous()?, |b| {
                Ok(Self::from_slices(w, Some(b), dims))
            }),
            None => Ok(Self::from_slices(w, None, dims)),
        })?;
        Ok(Arc::new(packed))
    }

    /// Packs w [out, in] and b [out], in parallel over panels.
    pub(crate) fn from_slices(w: &[f32], b: Option<&[f32]>, dims: (usize, usize)) -> Self {
        let (out_features, in_features) = dims;
        let panel_count = out_features.div_ceil(PANEL);
        let mut panels = vec![0.0f32; panel_count * in_features * PANEL];
        panels
            .par_chunks_mut(in_features * PANEL)
            .enumerate()
            .for_each(|(p, panel)| {
                let lanes = PANEL.min(out_features - p * PANEL);
                let rows = &w[p * PANEL * in_features..(p * PANEL + lanes) * in_features];
                // Row by row: each weight row is read once, in order, and written down one
                // panel column (the panel, 32 × in floats, stays in L2).
                for (lane, row) in rows.chunks_exact(in_features).enumerate() {
                    for (slot, &value) in panel[lane..].iter_mut().step_by(PANEL).zip(row) {
                        *slot = value;
                    }
                }
            });
        let mut bias = vec![0.0f32; panel_count * PANEL];
        if let Some(b) = b {
            bias[..out_features].copy_from_slice(b);
        }
        Self {
            out_features,
            in_features,
            panels,
            bias,
        }
    }

    /// (out, in)
    pub fn dims(&self) -> (usize, usize) {
        (self.out_features, self.in_features)
    }

    /// Bytes held by the panels and the bias.
    pub fn size_in_bytes(&self) -> usize {
        (self.panels.len() + self.bias.len()) * std::mem::size_of::<f32>()
    }

    /// y [rows, out] = x [rows, in] · Wᵀ + b.
    pub(crate) fn product(&self, x: &[f32]) -> Vec<f32> {
        let (out_features, in_features) = self.dims();
        let rows = x.len() / in_features;
        let panel_count = out_features.div_ceil(PANEL);
        // Each task computes whole panels for a block of rows into its own [rows, 32] buffer;
        // the buffers are then copied into y's columns.
        let tasks: Vec<(usize, usize)> = (0..rows)
            .step_by(BLOCK_ROWS)
            .flat_map(|first| (0..panel_count).map(move |p| (first, p)))
            .collect();
        let results: Vec<Vec<f32>> = tasks
            .par_iter()
            .map(|&(first, p)| {
                let count = BLOCK_ROWS.min(rows - first);
                let x_block = &x[first * in_features..(first + count) * in_features];
                let panel = &self.panels[p * in_features * PANEL..][..in_features * PANEL];
                let bias = &self.bias[p * PANEL..][..PANEL];
                let mut out = vec![0.0f32; count * PANEL];
                panel_product(x_block, panel, bias, in_features, &mut out);
                out
            })
            .collect();
        let mut y = vec![0.0f32; rows * out_features];
        for (&(first, p), out) in tasks.iter().zip(&results) {
            let width = PANEL.min(out_features - p * PANEL);
            for (r, values) in out.chunks_exact(PANEL).enumerate() {
                let start = (first + r) * out_features + p * PANEL;
                y[start..start + width].copy_from_slice(&values[..width]);
            }
        }
        y
    }
}

/// out [rows, 32] = x [rows, k] · panel [k, 32] + bias [32].
fn panel_product(x: &[f32], panel: &[f32], bias: &[f32], k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::math::has_avx512() {
        // SAFETY: AVX-512F was detected at runtime; the slices' lengths are checked inside.
        unsafe { avx512::panel_product(x, panel, bias, k, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::math::has_avx2() {
        // SAFETY: AVX2 and FMA were detected at runtime; the slices' lengths are checked inside.
        unsafe { avx2::panel_product(x, panel, bias, k, out) };
        return;
    }
    portable_panel_product(x, panel, bias, k, out);
}

/// [`panel_product`] for any CPU.
fn portable_panel_product(x: &[f32], panel: &[f32], bias: &[f32], k: usize, out: &mut [f32]) {
    crate::math::simd(
        #[inline(always)]
        || {
            for (x_row, out_row) in x.chunks_exact(k).zip(out.chunks_exact_mut(PANEL)) {
                out_row.copy_from_slice(bias);
                for (&value, weights) in x_row.iter().zip(panel.chunks_exact(PANEL)) {
                    for (y, &w) in out_row.iter_mut().zip(weights) {
                        *y += value * w;
                    }
                }
            }
        },
    )
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{PANEL, TILE_ROWS};

    /// See [`super::panel_product`]: tiles of 6 rows, the last one smaller.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn panel_product(
        x: &[f32],
        panel: &[f32],
        bias: &[f32],
        k: usize,
        out: &mut [f32],
    ) {
        let rows = out.len() / PANEL;
        assert!(x.len() >= rows * k && panel.len() >= k * PANEL && bias.len() >= PANEL);
        let mut first = 0;
        while first < rows {
            let count = (rows - first).min(TILE_ROWS);
            let tile = Tile {
                x: x.as_ptr().add(first * k),
                panel: panel.as_ptr(),
                bias: bias.as_ptr(),
                k,
                out: out.as_mut_ptr().add(first * PANEL),
            };
            match count {
                6 => tile.run::<6>(),
                5 => tile.run::<5>(),
                4 => tile.run::<4>(),
                3 => tile.run::<3>(),
                2 => tile.run::<2>(),
                _ => tile.run::<1>(),
            }
            first += count;
        }
    }

    /// `N` rows of x from `x` (each `k` long) against one panel, into `N` rows of `out`.
    struct Tile {
        x: *const f32,
        panel: *const f32,
        bias: *const f32,
        k: usize,
        out: *mut f32,
    }

    impl Tile {
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn run<const N: usize>(&self) {
            let low_bias = _mm512_loadu_ps(self.bias);
            let high_bias = _mm512_loadu_ps(self.bias.add(16));
            let mut low = [low_bias; N];
            let mut high = [high_bias; N];
            for i in 0..self.k {
                let w_low = _mm512_loadu_ps(self.panel.add(i * PANEL));
                let w_high = _mm512_loadu_ps(self.panel.add(i * PANEL + 16));
                for (r, (l, h)) in low.iter_mut().zip(high.iter_mut()).enumerate() {
                    let value = _mm512_set1_ps(*self.x.add(r * self.k + i));
                    *l = _mm512_fmadd_ps(w_low, value, *l);
                    *h = _mm512_fmadd_ps(w_high, value, *h);
                }
            }
            for (r, (l, h)) in low.iter().zip(&high).enumerate() {
                _mm512_storeu_ps(self.out.add(r * PANEL), *l);
                _mm512_storeu_ps(self.out.add(r * PANEL + 16), *h);
            }
        }
    }
}

/// The same tiles for CPUs with AVX2 but not AVX-512 (Zen 2/3, Intel before Skylake-X): a
/// panel is four 8-lane vectors, and 16 registers hold 2 rows × 4 accumulators, the 4 panel
/// vectors and a broadcast. Without it the portable loop ran BERT's FFN output at ~5 GFLOP/s
/// on Zen 3 and a MiniLM training step took 3.6 s instead of ~1.3.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::PANEL;

    /// Rows per register tile: 2 × 4 accumulators + 4 panel vectors + 1 broadcast = 13.
    const TILE_ROWS: usize = 2;

    /// See [`super::panel_product`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn panel_product(
        x: &[f32],
        panel: &[f32],
        bias: &[f32],
        k: usize,
        out: &mut [f32],
    ) {
        let rows = out.len() / PANEL;
        assert!(x.len() >= rows * k && panel.len() >= k * PANEL && bias.len() >= PANEL);
        let mut first = 0;
        while first < rows {
            let (x, out) = (
                x.as_ptr().add(first * k),
                out.as_mut_ptr().add(first * PANEL),
            );
            if rows - first >= TILE_ROWS {
                tile::<TILE_ROWS>(x, panel.as_ptr(), bias.as_ptr(), k, out);
                first += TILE_ROWS;
            } else {
                tile::<1>(x, panel.as_ptr(), bias.as_ptr(), k, out);
                first += 1;
            }
        }
    }

    /// `N` rows of x (each `k` long) against one panel, into `N` rows of `out`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile<const N: usize>(
        x: *const f32,
        panel: *const f32,
        bias: *const f32,
        k: usize,
        out: *mut f32,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 4]; N];
        for row in acc.iter_mut() {
            for (v, a) in row.iter_mut().enumerate() {
                *a = _mm256_loadu_ps(bias.add(8 * v));
            }
        }
        for i in 0..k {
            let weights = panel.add(i * PANEL);
            let w = [0, 1, 2, 3].map(|v| _mm256_loadu_ps(weights.add(8 * v)));
            for (r, row) in acc.iter_mut().enumerate() {
                let value = _mm256_set1_ps(*x.add(r * k + i));
                for (a, &w) in row.iter_mut().zip(&w) {
                    *a = _mm256_fmadd_ps(w, value, *a);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, &a) in row.iter().enumerate() {
                _mm256_storeu_ps(out.add(r * PANEL + 8 * v), a);
            }
        }
    }
}

/// x [..., in] → x Wᵀ + b [..., out] with a packed weight. Inference only: no backward.
pub fn packed_linear(x: &Tensor, linear: &Arc<PackedLinear>) -> Result<Tensor> {
    check_f32_cpu("packed linear", "x", x)?;
    if x.dims().last() != Some(&linear.in_features) {
        bail!(
            "packed linear: x {:?} must end in the weight's input size {} (weight [{}, {}])",
            x.shape(),
            linear.in_features,
            linear.out_features,
            linear.in_features
        )
    }
    x.contiguous()?.apply_op1(PackedLinearOp(linear.clone()))
}

struct PackedLinearOp(Arc<PackedLinear>);

impl CustomOp1 for PackedLinearOp {
    fn name(&self) -> &'static str {
        "alpaca-packed-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(self.name(), storage, layout)?;
        let y = self.0.product(x);
        let mut dims = layout.shape().dims().to_vec();
        *dims.last_mut().expect("x has a last dim") = self.0.out_features;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(count: usize, seed: usize) -> Vec<f32> {
        (0..count)
            .map(|i| (((i * 37 + seed * 11) % 101) as f32 - 50.0) / 50.0)
            .collect()
    }

    /// Against plain f64 sums, over sizes that exercise every edge: rows not a multiple of the
    /// 6-row tile nor of the 96-row block, outputs not a multiple of the 32-wide panel, one
    /// row, one output.
    #[test]
    fn matches_plain_sums() {
        for &(rows, in_features, out_features) in &[
            (1, 7, 3),
            (5, 384, 9),
            (20, 33, 130),
            (97, 16, 64),
            (200, 45, 1),
            (3, 1536, 70),
        ] {
            let x = values(rows * in_features, 1);
            let w = values(out_features * in_features, 2);
            let b = values(out_features, 3);
            let device = Device::Cpu;
            let weight = Tensor::from_vec(w.clone(), (out_features, in_features), &device).unwrap();
            let bias = Tensor::from_vec(b.clone(), out_features, &device).unwrap();
            let input = Tensor::from_vec(x.clone(), (1, rows, in_features), &device).unwrap();
            let packed = PackedLinear::new(&weight, Some(&bias)).unwrap();
            let y = packed_linear(&input, &packed).unwrap();
            assert_eq!(y.dims(), [1, rows, out_features]);
            let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            crate::util::assert_product(&x, &w, &b, &y, (rows, in_features));
        }
    }

    /// Each kernel this CPU can run (AVX-512, AVX2, portable) gives the portable loop's
    /// results, whichever one `panel_product` picks here: the AVX2 tiles are also what
    /// AVX-512 machines would skip. Rows 1–5 cover the 2-row and 6-row tiles' remainders.
    #[test]
    fn every_kernel_agrees() {
        for &(rows, k) in &[(1usize, 3usize), (2, 17), (5, 384), (7, 1536)] {
            let (x, panel, bias) = (values(rows * k, 4), values(k * PANEL, 5), values(PANEL, 6));
            let mut expected = vec![0.0f32; rows * PANEL];
            portable_panel_product(&x, &panel, &bias, k, &mut expected);
            let mut found = Vec::new();
            #[cfg(target_arch = "x86_64")]
            {
                if crate::math::has_avx2() {
                    let mut out = vec![0.0f32; rows * PANEL];
                    // SAFETY: AVX2 and FMA were detected.
                    unsafe { avx2::panel_product(&x, &panel, &bias, k, &mut out) };
                    found.push(("avx2", out));
                }
                if crate::math::has_avx512() {
                    let mut out = vec![0.0f32; rows * PANEL];
                    // SAFETY: AVX-512F was detected.
                    unsafe { avx512::panel_product(&x, &panel, &bias, k, &mut out) };
                    found.push(("avx512", out));
                }
            }
            for (name, out) in found {
                for (index, (&a, &b)) in out.iter().zip(&expected).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{name} {rows}×{k}: {index}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn without_bias_and_bad_shapes() {
        let device = Device::Cpu;
        let weight = Tensor::from_vec(values(12, 1), (4, 3), &device).unwrap();
        let x = Tensor::from_vec(values(6, 2), (2, 3), &device).unwrap();
        let packed = PackedLinear::new(&weight, None).unwrap();
        let y = packed_linear(&x, &packed).unwrap();
        let expected = x.matmul(&weight.t().unwrap()).unwrap();
        assert!(crate::util::max_difference(&y, &expected) < 1e-6);
        let wrong = Tensor::zeros((2, 5), candle_core::DType::F32, &device).unwrap();
        let error = packed_linear(&wrong, &packed).unwrap_err().to_string();
        assert!(error.contains("input size 3"), "{error}");
        let bias = Tensor::zeros(5, candle_core::DType::F32, &device).unwrap();
        let error = PackedLinear::new(&weight, Some(&bias))
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("bias must have shape [4]"), "{error}");
    }

    /// Times the packed product (packing included and not) against gemm and the few-row
    /// blocks on MiniLM's shapes. Run by hand: `cargo test --release -p alpaca-kernels --lib
    /// packed_linear -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing_against_gemm() {
        let device = Device::Cpu;
        for &(k, out) in &[(384usize, 384usize), (384, 1536), (1536, 384)] {
            for &rows in &[20usize, 64, 128, 350, 700, 2048] {
                let x = values(rows * k, 1);
                let w = values(out * k, 2);
                let weight = Tensor::from_vec(w.clone(), (out, k), &device).unwrap();
                let time = |f: &dyn Fn()| {
                    f();
                    let started = std::time::Instant::now();
                    for _ in 0..20 {
                        f();
                    }
                    started.elapsed().as_secs_f64() / 20.0 * 1e6
                };
                let packed = PackedLinear::new(&weight, None).unwrap();
                let product = time(&|| {
                    std::hint::black_box(packed.product(&x));
                });
                let with_packing = time(&|| {
                    let packed = PackedLinear::new(&weight, None).unwrap();
                    std::hint::black_box(packed.product(&x));
                });
                let gemm = time(&|| {
                    let mut y = vec![0.0f32; rows * out];
                    let shape = (rows, out, k);
                    crate::linear::gemm_into(&mut y, shape, false, &x, (k, 1), &w, (1, k), 1.0);
                    std::hint::black_box(y);
                });
                let blocked = time(&|| {
                    std::hint::black_box(crate::few_rows::product(&x, &w, None, k, out));
                });
                println!(
                    "{k}→{out}, {rows} rows: packed {product:.0} µs ({with_packing:.0} with packing), gemm {gemm:.0} µs, few-row blocks {blocked:.0} µs"
                );
            }
        }
    }
}
