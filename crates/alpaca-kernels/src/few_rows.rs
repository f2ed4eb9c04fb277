//! y [N, out] = x [N, in] · Wᵀ (+ b) for a few rows (one short sentence, one decoding step),
//! with W in HF's [out, in] layout.
//!
//! Why not gemm: gemm packs the whole weight matrix on every call, which for 20 rows costs as
//! much as the product. Why not one dot product per (row, output): each dot is a chain of
//! dependent adds (~3 multiply-adds a cycle); here a block of 4 rows × 4 outputs keeps 16
//! independent AVX-512 accumulators, so each loaded vector of x or W feeds 4 fused
//! multiply-adds and add latency no longer bounds the loop: 80–130 GFLOP/s on this machine's
//! two cores (gemm's kernels reach ~200; the 16 horizontal sums that end each block and x
//! re-read from L2 for every 4 outputs are the difference, which `crate::packed_linear`
//! avoids for prediction). Each thread owns a range of outputs, so every weight row is read
//! from memory once for all rows.

use rayon::prelude::*;

/// Rows and outputs of one register block (16 accumulators + 4 weight vectors + 1 x vector
/// fit the 32 AVX-512 registers).
const BLOCK: usize = 4;

/// Outputs per parallel task: a multiple of `BLOCK`, small enough that a 384-output layer
/// still splits across threads, large enough that a task outweighs its scheduling.
const OUTPUTS_PER_TASK: usize = 64;

/// Up to this many rows [`product`] always runs: gemm would pack the whole weight for them.
pub(crate) const FEW: usize = 32;

/// Whether [`product`] beats gemm for x [rows, in] · Wᵀ [in, out] (measured on 2 AVX-512
/// cores (Zen 4), MiniLM's shapes, `cargo test -p alpaca-kernels --lib few_rows -- --ignored`):
/// - up to 32 rows, always: gemm packs the whole weight for them;
/// - while rows × out ≤ 49,152: 384→384 won up to 128 rows (364 against 469 µs), 384→1536
///   only up to 32 (above, gemm's 4×6 kernel is faster than these 4×4 blocks);
/// - with in ≥ 4·out (BERT's FFN output, 1536→384) up to 256 rows (2.0 against 3.1 ms):
///   gemm is slow on that shape below ~500 rows (not from the transposed operand: computing
///   yᵀ = W·xᵀ instead was no faster).
pub(crate) fn suits(rows: usize, in_features: usize, out_features: usize) -> bool {
    if !crate::math::has_avx512() {
        // The thresholds below were measured with the AVX-512 blocks. With AVX2's 8-lane
        // blocks gemm wins from 64 rows on every MiniLM shape (Zen 3: 384→384 at 64 rows 184
        // against 162 µs, 1536→384 841 against 828; up to 32 rows the blocks win, 1536→384
        // at 32 rows 301 against 420).
        return rows <= FEW;
    }
    rows <= FEW || rows * out_features <= 49_152 || (in_features >= 4 * out_features && rows <= 256)
}

/// y [N, out] = x [N, in] · Wᵀ (+ b broadcast over rows).
pub(crate) fn product(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    in_features: usize,
    out_features: usize,
) -> Vec<f32> {
    let rows = x.len() / in_features;
    // Computed transposed ([out, N]) so that each task owns a contiguous block.
    let mut transposed = vec![0.0f32; out_features * rows];
    if rows == 0 {
        return transposed;
    }
    transposed
        .par_chunks_mut(OUTPUTS_PER_TASK * rows)
        .enumerate()
        .for_each(|(task, out_block)| {
            let first = task * OUTPUTS_PER_TASK;
            let count = out_block.len() / rows;
            let w = &weight[first * in_features..(first + count) * in_features];
            products_transposed(x, w, in_features, rows, out_block);
            if let Some(b) = bias {
                for (column, &b) in out_block.chunks_exact_mut(rows).zip(&b[first..]) {
                    column.iter_mut().for_each(|y| *y += b);
                }
            }
        });
    let mut y = vec![0.0f32; rows * out_features];
    for (o, column) in transposed.chunks_exact(rows).enumerate() {
        for (n, &value) in column.iter().enumerate() {
            y[n * out_features + o] = value;
        }
    }
    y
}

/// out [count, rows] = w [count, k] · xᵀ: element (o, n) = Σ_i w[o, i]·x[n, i].
fn products_transposed(x: &[f32], w: &[f32], k: usize, rows: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::math::has_avx512() {
        // SAFETY: AVX-512F was detected at runtime; the slices' lengths are checked inside.
        unsafe { avx512::products_transposed(x, w, k, rows, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::math::has_avx2() {
        // SAFETY: AVX2 and FMA were detected at runtime; the slices' lengths are checked inside.
        unsafe { avx2::products_transposed(x, w, k, rows, out) };
        return;
    }
    portable_products_transposed(x, w, k, rows, out);
}

/// [`products_transposed`] for any CPU: one vectorised dot product per element.
fn portable_products_transposed(x: &[f32], w: &[f32], k: usize, rows: usize, out: &mut [f32]) {
    crate::math::simd(
        #[inline(always)]
        || {
            for (o, column) in out.chunks_exact_mut(rows).enumerate() {
                let w_row = &w[o * k..(o + 1) * k];
                for (n, y) in column.iter_mut().enumerate() {
                    *y = crate::math::dot(&x[n * k..(n + 1) * k], w_row);
                }
            }
        },
    )
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::BLOCK;

    /// See [`super::products_transposed`]; blocks of up to 4 × 4, remainders in smaller
    /// blocks of the same kernel.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn products_transposed(
        x: &[f32],
        w: &[f32],
        k: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        let outputs = out.len() / rows;
        assert!(x.len() >= rows * k && w.len() >= outputs * k && out.len() == outputs * rows);
        let mut o = 0;
        while o < outputs {
            let o_count = (outputs - o).min(BLOCK);
            // The next block's weight rows, into L2 while this block computes: at batch 1 the
            // weights stream from memory, and short rows (1.5 KB) give the hardware prefetcher
            // little to go on.
            let next = (o + BLOCK) * k;
            let next_end = (o + 2 * BLOCK).min(outputs) * k;
            let mut line = next;
            while line < next_end {
                _mm_prefetch::<_MM_HINT_T1>(w.as_ptr().add(line) as *const i8);
                line += 16;
            }
            let mut n = 0;
            while n < rows {
                let n_count = (rows - n).min(BLOCK);
                let block = Block {
                    x: x.as_ptr().add(n * k),
                    w: w.as_ptr().add(o * k),
                    k,
                };
                let sums = match (o_count, n_count) {
                    (4, 4) => block.sums::<4, 4>(),
                    (4, 3) => block.sums::<4, 3>(),
                    (4, 2) => block.sums::<4, 2>(),
                    (4, 1) => block.sums::<4, 1>(),
                    (3, 4) => block.sums::<3, 4>(),
                    (3, 3) => block.sums::<3, 3>(),
                    (3, 2) => block.sums::<3, 2>(),
                    (3, 1) => block.sums::<3, 1>(),
                    (2, 4) => block.sums::<2, 4>(),
                    (2, 3) => block.sums::<2, 3>(),
                    (2, 2) => block.sums::<2, 2>(),
                    (2, 1) => block.sums::<2, 1>(),
                    (1, 4) => block.sums::<1, 4>(),
                    (1, 3) => block.sums::<1, 3>(),
                    (1, 2) => block.sums::<1, 2>(),
                    _ => block.sums::<1, 1>(),
                };
                for (j, sums_of_output) in sums.iter().enumerate().take(o_count) {
                    let column = &mut out[(o + j) * rows + n..(o + j) * rows + n + n_count];
                    column.copy_from_slice(&sums_of_output[..n_count]);
                }
                n += n_count;
            }
            o += o_count;
        }
    }

    /// `O` weight rows starting at `w` against `N` x rows starting at `x`, each `k` long.
    struct Block {
        x: *const f32,
        w: *const f32,
        k: usize,
    }

    impl Block {
        /// sums[j][r] = Σ_i w[j, i]·x[r, i] (entries past O or N are zero).
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn sums<const O: usize, const N: usize>(&self) -> [[f32; 4]; 4] {
            // acc[r][j]: x row r against weight row j.
            let mut acc = [[_mm512_setzero_ps(); O]; N];
            let full = self.k / 16 * 16;
            let mut i = 0;
            while i < full {
                self.accumulate(&mut acc, i, |p| _mm512_loadu_ps(p));
                i += 16;
            }
            if i < self.k {
                // The last k mod 16 elements through masked loads (lanes past k read as 0).
                let mask: __mmask16 = (1u16 << (self.k - i)) - 1;
                self.accumulate(&mut acc, i, |p| _mm512_maskz_loadu_ps(mask, p));
            }
            let mut sums = [[0.0f32; 4]; 4];
            for (r, acc_row) in acc.iter().enumerate() {
                for (j, &a) in acc_row.iter().enumerate() {
                    sums[j][r] = _mm512_reduce_add_ps(a);
                }
            }
            sums
        }

        /// acc[r][j] += w[j, i..i + 16] · x[r, i..i + 16], lane by lane.
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn accumulate<const O: usize, const N: usize>(
            &self,
            acc: &mut [[__m512; O]; N],
            i: usize,
            load: impl Fn(*const f32) -> __m512,
        ) {
            let mut wv = [_mm512_setzero_ps(); O];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = load(self.w.add(j * self.k + i));
            }
            for (r, acc_row) in acc.iter_mut().enumerate() {
                let xv = load(self.x.add(r * self.k + i));
                for (a, &v) in acc_row.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(v, xv, *a);
                }
            }
        }
    }
}

/// The same blocks for CPUs with AVX2 but not AVX-512: 16 registers hold 4 weight rows ×
/// 2 x rows of 8-lane accumulators, the 4 weight vectors and an x vector. The portable dot
/// products ran 3–4× slower than gemm on Zen 3.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::BLOCK;

    /// x rows per block: 4 × 2 accumulators + 4 weight vectors + 1 x vector = 13 registers.
    const ROWS: usize = 2;

    /// See [`super::products_transposed`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn products_transposed(
        x: &[f32],
        w: &[f32],
        k: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        let outputs = out.len() / rows;
        assert!(x.len() >= rows * k && w.len() >= outputs * k && out.len() == outputs * rows);
        let mut o = 0;
        while o < outputs {
            let o_count = (outputs - o).min(BLOCK);
            let mut n = 0;
            while n < rows {
                let n_count = (rows - n).min(ROWS);
                let (x, w) = (x.as_ptr().add(n * k), w.as_ptr().add(o * k));
                let sums = match (o_count, n_count) {
                    (4, 2) => sums::<4, 2>(x, w, k),
                    (4, _) => sums::<4, 1>(x, w, k),
                    (3, 2) => sums::<3, 2>(x, w, k),
                    (3, _) => sums::<3, 1>(x, w, k),
                    (2, 2) => sums::<2, 2>(x, w, k),
                    (2, _) => sums::<2, 1>(x, w, k),
                    (_, 2) => sums::<1, 2>(x, w, k),
                    _ => sums::<1, 1>(x, w, k),
                };
                for (j, sums_of_output) in sums.iter().enumerate().take(o_count) {
                    let column = &mut out[(o + j) * rows + n..(o + j) * rows + n + n_count];
                    column.copy_from_slice(&sums_of_output[..n_count]);
                }
                n += n_count;
            }
            o += o_count;
        }
    }

    /// sums[j][r] = Σ_i w[j, i]·x[r, i] for `O` weight rows at `w` and `N` x rows at `x`,
    /// each `k` long.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn sums<const O: usize, const N: usize>(
        x: *const f32,
        w: *const f32,
        k: usize,
    ) -> [[f32; ROWS]; BLOCK] {
        let mut acc = [[_mm256_setzero_ps(); O]; N];
        let full = k / 8 * 8;
        let mut i = 0;
        while i < full {
            accumulate(&mut acc, (x, w, k), i, |p| _mm256_loadu_ps(p));
            i += 8;
        }
        if i < k {
            // The last k mod 8 elements through masked loads (lanes past k read as 0).
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((k - i) as i32), lanes);
            accumulate(&mut acc, (x, w, k), i, |p| _mm256_maskload_ps(p, mask));
        }
        let mut sums = [[0.0f32; ROWS]; BLOCK];
        for (r, acc_row) in acc.iter().enumerate() {
            for (j, &a) in acc_row.iter().enumerate() {
                let half = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
                let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
                sums[j][r] = _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps::<1>(pairs, pairs)));
            }
        }
        sums
    }

    /// acc[r][j] += w[j, i..i + 8] · x[r, i..i + 8], lane by lane.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn accumulate<const O: usize, const N: usize>(
        acc: &mut [[__m256; O]; N],
        (x, w, k): (*const f32, *const f32, usize),
        i: usize,
        load: impl Fn(*const f32) -> __m256,
    ) {
        let wv: [__m256; O] = std::array::from_fn(|j| load(w.add(j * k + i)));
        for (r, acc_row) in acc.iter_mut().enumerate() {
            let xv = load(x.add(r * k + i));
            for (a, &v) in acc_row.iter_mut().zip(&wv) {
                *a = _mm256_fmadd_ps(v, xv, *a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kernel this CPU can run (AVX-512, AVX2, portable) gives the portable dot
    /// products' results: the AVX2 blocks are what AVX-512 machines skip. Outputs 1–7 and
    /// rows 1–5 cover every block remainder, k = 13 and 21 the masked tails.
    #[test]
    fn every_kernel_agrees() {
        for &(outputs, rows, k) in &[
            (1usize, 1usize, 8usize),
            (3, 2, 13),
            (7, 5, 21),
            (6, 3, 384),
        ] {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let w: Vec<f32> = (0..outputs * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            let mut expected = vec![0.0f32; outputs * rows];
            portable_products_transposed(&x, &w, k, rows, &mut expected);
            let mut found = Vec::new();
            #[cfg(target_arch = "x86_64")]
            {
                if crate::math::has_avx2() {
                    let mut out = vec![0.0f32; outputs * rows];
                    // SAFETY: AVX2 and FMA were detected.
                    unsafe { avx2::products_transposed(&x, &w, k, rows, &mut out) };
                    found.push(("avx2", out));
                }
                if crate::math::has_avx512() {
                    let mut out = vec![0.0f32; outputs * rows];
                    // SAFETY: AVX-512F was detected.
                    unsafe { avx512::products_transposed(&x, &w, k, rows, &mut out) };
                    found.push(("avx512", out));
                }
            }
            for (name, out) in found {
                for (index, (&a, &b)) in out.iter().zip(&expected).enumerate() {
                    let what = format!("{name} {outputs}×{rows}×{k}: {index}");
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{what}: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// The blocked kernel against plain f64 sums, over sizes that exercise every remainder:
    /// rows and outputs not multiples of 4, k not a multiple of 16, outputs spanning tasks.
    #[test]
    fn matches_plain_sums() {
        for &(rows, in_features, out_features) in &[
            (1, 7, 3),
            (5, 384, 9),
            (20, 33, 130),
            (32, 16, 64),
            (3, 1536, 70),
        ] {
            let x: Vec<f32> = (0..rows * in_features)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let w: Vec<f32> = (0..out_features * in_features)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            let b: Vec<f32> = (0..out_features).map(|o| o as f32 * 0.1).collect();
            let y = product(&x, &w, Some(&b), in_features, out_features);
            crate::util::assert_product(&x, &w, &b, &y, (rows, in_features));
        }
    }

    /// Times [`product`] against gemm on MiniLM's three linear shapes (the figures behind
    /// [`suits`]). Run by hand: `cargo test --release -p alpaca-kernels --lib few_rows --
    /// --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing_against_gemm() {
        for &(k, out) in &[(384usize, 384usize), (384, 1536), (1536, 384)] {
            for &rows in &[16usize, 32, 64, 96, 128, 192, 256, 512] {
                let x = vec![0.5f32; rows * k];
                let w = vec![0.25f32; out * k];
                let time = |f: &dyn Fn()| {
                    f();
                    let started = std::time::Instant::now();
                    for _ in 0..50 {
                        f();
                    }
                    started.elapsed().as_secs_f64() / 50.0 * 1e6
                };
                let blocked = time(&|| {
                    std::hint::black_box(product(&x, &w, None, k, out));
                });
                let gemm = time(&|| {
                    let mut y = vec![0.0f32; rows * out];
                    let shape = (rows, out, k);
                    crate::linear::gemm_into(&mut y, shape, false, &x, (k, 1), &w, (1, k), 1.0);
                    std::hint::black_box(y);
                });
                println!("{k}→{out}, {rows} rows: blocked {blocked:.0} µs, gemm {gemm:.0} µs");
            }
        }
    }
}
