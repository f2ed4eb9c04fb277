//! A bf16 GEMM with f32 accumulation for CPUs with AVX512-BF16 (`vdpbf16ps`), whose bf16 dot
//! products run at twice the f32 FMA rate: `C [m, n] (+)= A [m, k] · B [k, n]`, with A and C in
//! f32 and B packed once into bf16 panels ([`PackedB`]).
//!
//! Why B is packed separately: under LoRA the base weights never change, so a frozen weight is
//! converted and laid out once for the whole run and every product only converts the
//! activations. Rounding follows `torch.autocast(bfloat16)`: both operands are rounded to bf16
//! (round to nearest even), products and sums are f32.
//!
//! Layout: `vdpbf16ps` multiplies pairs of bf16 lanes and adds both products into one f32 lane,
//! so both operands hold pairs of consecutive k in one 32-bit word (even k in the low half).
//! B is stored as panels of [`NR`] columns: `[panel][k pair][NR]` words. A is re-packed per
//! block of [`MR`]-row panels as `[k pair][MR]` words, so the micro-kernel streams both.
//!
//! CPUs without AVX512-BF16 take a scalar path with the same roundings (slow; it keeps the
//! numerics and the tests the same everywhere).

use rayon::prelude::*;

use crate::util::zeroed;

/// Rows of A (and C) per micro-kernel call: 12 rows × 2 registers = 24 accumulators, which with
/// the two B registers and a broadcast leaves the 32 AVX-512 registers unspilled.
const MR: usize = 12;
/// Columns of B (and C) per micro-kernel call: two 16-lane registers.
const NR: usize = 32;
/// k pairs per block: a B panel block (256 × 32 words = 32 KiB) stays in L1/L2 while the
/// micro-kernel sweeps the block's A panels.
const KC_PAIRS: usize = 256;
/// Rows of A packed together (8 panels): one task's A block is 96 × 512 bf16 = 96 KiB.
const MC: usize = MR * 8;

/// f32 → bf16 bits, rounded to nearest even (what `vcvtne2ps2bf16` and PyTorch do); NaN stays NaN.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}

/// bf16 bits → f32 (exact).
#[inline(always)]
pub fn bf16_value(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Two consecutive k of one column as a `vdpbf16ps` word: `low` (even k) in the low half.
#[inline(always)]
fn pair(low: f32, high: f32) -> u32 {
    bf16_bits(low) as u32 | (bf16_bits(high) as u32) << 16
}

/// B [k, n] converted to bf16 and laid out in [`NR`]-column panels (zero-padded at the edges).
#[derive(Clone)]
pub struct PackedB {
    k: usize,
    n: usize,
    pairs: usize,
    data: Vec<u32>,
}

impl PackedB {
    /// Packs B [k, n] whose element (i, j) is `source[i·row_stride + j·column_stride]`.
    pub fn pack(
        source: &[f32],
        (k, n): (usize, usize),
        (row_stride, column_stride): (usize, usize),
    ) -> Self {
        assert!(
            k == 0 || n == 0 || source.len() > (k - 1) * row_stride + (n - 1) * column_stride,
            "PackedB::pack: source too small for [{k}, {n}]"
        );
        let pairs = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let len = panels * pairs * NR;
        // Zeroed panel by panel by the packing tasks rather than up front: a zero-filled
        // vec! of a 1536 × 384 weight was a serial pass the other threads waited for.
        let mut data: Vec<u32> = Vec::with_capacity(len);
        let at = |i: usize, j: usize| {
            if i < k {
                source[i * row_stride + j * column_stride]
            } else {
                0.0
            }
        };
        // (k = 0 leaves no words to fill, and chunks of 0 are refused.)
        data.spare_capacity_mut()[..len]
            .par_chunks_mut((pairs * NR).max(1))
            .enumerate()
            .for_each(|(panel, words)| {
                let words = zeroed(words);
                let columns = (n - panel * NR).min(NR);
                // Walk the source along its unit stride: down k for a weight read as Wᵀ
                // (row stride 1), across n otherwise.
                if row_stride == 1 {
                    // Each column is a contiguous run of k: convert it in one go.
                    let whole = k / 2;
                    for c in 0..columns {
                        let start = (panel * NR + c) * column_stride;
                        convert_pairs(&source[start..start + 2 * whole], words, c, NR);
                        if k % 2 == 1 {
                            words[whole * NR + c] = pair(source[start + k - 1], 0.0);
                        }
                    }
                } else {
                    // Rows are contiguous (an activation read as B): two source rows
                    // (k = 2p, 2p + 1) side by side give one row of words.
                    #[cfg(target_arch = "x86_64")]
                    if column_stride == 1 && has_avx512_bf16() {
                        // SAFETY: the CPU has the features; rows 0..k, columns
                        // first..first+columns lie inside `source` (asserted above) and the
                        // panel holds pairs · NR words.
                        unsafe {
                            pack_rows_avx512_bf16(
                                source,
                                row_stride,
                                (k, panel * NR, columns),
                                words,
                            )
                        };
                        return;
                    }
                    for p in 0..pairs {
                        for c in 0..columns {
                            let j = panel * NR + c;
                            words[p * NR + c] = pair(at(2 * p, j), at(2 * p + 1, j));
                        }
                    }
                }
            });
        // SAFETY: the tasks zeroed (then filled) every one of the len words.
        unsafe { data.set_len(len) };
        Self { k, n, pairs, data }
    }

    /// Wᵀ of a row-major weight W [out, in], as B [in, out]: the right operand of `x Wᵀ`.
    pub fn transposed_weight(weight: &[f32], (out_features, in_features): (usize, usize)) -> Self {
        Self::pack(weight, (in_features, out_features), (1, in_features))
    }

    /// A row-major weight W [out, in] as B [out, in]: the right operand of `dy W`.
    pub fn weight(weight: &[f32], (out_features, in_features): (usize, usize)) -> Self {
        Self::pack(weight, (out_features, in_features), (in_features, 1))
    }

    /// (k, n) of the packed matrix.
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// Bytes held.
    pub fn size_in_bytes(&self) -> usize {
        self.data.len() * 4
    }

    /// The words of panel `panel`, k pairs `from..from + count`.
    fn block(&self, panel: usize, from: usize, count: usize) -> &[u32] {
        let start = (panel * self.pairs + from) * NR;
        &self.data[start..start + count * NR]
    }
}

/// C as a raw pointer shared by the tasks, each of which writes a disjoint tile.
#[derive(Clone, Copy)]
struct Output(*mut f32);
// SAFETY: tasks write disjoint (row block, column range) tiles of C; see `gemm`.
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

impl Output {
    /// The element `offset` places into C. A method, so closures capture the whole (Sync)
    /// wrapper rather than its raw pointer field.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// How the products start each element of C.
#[derive(Clone, Copy)]
enum Start<'a> {
    /// From zero: C's old contents are never read.
    Zero,
    /// From C's old value.
    Accumulate,
    /// From the column's bias, `bias[j]`.
    Bias(&'a [f32]),
}

/// `c [m, n]` (row-major, contiguous) = `accumulate`·c + A · B, where A [m, k] is f32 with
/// element (i, j) at `a[i·row_stride + j·column_stride]` and B is packed. Parallel over blocks
/// of rows (and of columns when there are few rows) with rayon.
pub fn gemm(
    c: &mut [f32],
    m: usize,
    accumulate: bool,
    a: &[f32],
    strides: (usize, usize),
    b: &PackedB,
) {
    let (k, n) = b.dims();
    assert!(c.len() >= m * n, "bf16 gemm: output too small");
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    let start = if accumulate {
        Start::Accumulate
    } else {
        Start::Zero
    };
    // SAFETY: c holds m·n elements (asserted) and is exclusively borrowed.
    unsafe { gemm_raw(Output(c.as_mut_ptr()), m, start, a, strides, b) }
}

/// A new `[m, n]` C = A · B (+ `bias` in every row), written once by the products: no
/// zero-fill or bias copy before them (at a BERT step's sizes those were a serial pass over
/// every output in the main thread while the other workers waited).
pub fn product(
    m: usize,
    a: &[f32],
    strides: (usize, usize),
    b: &PackedB,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let (k, n) = b.dims();
    if let Some(bias) = bias {
        assert_eq!(bias.len(), n, "bf16 product: bias length");
    }
    if k == 0 || m == 0 || n == 0 {
        let row = bias.map_or_else(|| vec![0.0; n], <[f32]>::to_vec);
        return row.repeat(m);
    }
    let mut c = Vec::with_capacity(m * n);
    let start = bias.map_or(Start::Zero, Start::Bias);
    // SAFETY: c has capacity for m·n elements; with k > 0 and a Zero or Bias start the
    // products store every element of every valid tile once without reading C, and the valid
    // tiles cover [m, n], so all m·n elements are initialised before set_len.
    unsafe {
        gemm_raw(Output(c.as_mut_ptr()), m, start, a, strides, b);
        c.set_len(m * n);
    }
    c
}

/// The products behind [`gemm`] and [`product`].
///
/// # Safety
/// `c` must point at m·n writable f32 nobody else accesses meanwhile; with
/// [`Start::Accumulate`] they must be initialised. k must not be 0.
unsafe fn gemm_raw(
    output: Output,
    m: usize,
    start: Start,
    a: &[f32],
    (row_stride, column_stride): (usize, usize),
    b: &PackedB,
) {
    let (k, n) = b.dims();
    debug_assert!(k > 0);
    assert!(
        m == 0 || a.len() > (m - 1) * row_stride + (k - 1) * column_stride,
        "bf16 gemm: A too small for [{m}, {k}]"
    );
    if m == 0 || n == 0 {
        return;
    }
    let row_panels = m.div_ceil(MR);
    let panels = n.div_ceil(NR);
    // Enough tasks to keep every thread busy: rows are split first, down to one panel per
    // block, because each task converts its rows of A to bf16 again; columns are split only
    // when there are too few rows (the LM head at a few positions). Splitting the columns of
    // a 352-row product in two converted A twice. Blocks are (nearly) equal: 30 panels in
    // blocks of MC rows, 8, 8, 8, 6, left a thread idle at the end of every product.
    let wanted = 4 * rayon::current_num_threads().max(1);
    let row_blocks = row_panels.div_ceil(MC / MR).max(wanted.min(row_panels));
    let column_splits = wanted.div_ceil(row_blocks).clamp(1, panels);
    let panels_per_task = panels.div_ceil(column_splits);
    let column_splits = panels.div_ceil(panels_per_task);
    let block_rows = |block: usize| block * row_panels / row_blocks * MR;
    let kernel = Kernel::detect();
    (0..row_blocks * column_splits)
        .into_par_iter()
        .for_each_init(
            || vec![0u32; MC * KC_PAIRS],
            |packed_a, task| {
                let block = task / column_splits;
                let first_row = block_rows(block);
                let rows = block_rows(block + 1).min(m) - first_row;
                let first_panel = (task % column_splits) * panels_per_task;
                let last_panel = (first_panel + panels_per_task).min(panels);
                for from in (0..b.pairs).step_by(KC_PAIRS) {
                    let count = (b.pairs - from).min(KC_PAIRS);
                    pack_a(
                        packed_a,
                        a,
                        (row_stride, column_stride),
                        (first_row, rows),
                        (from, count),
                        k,
                    );
                    let tile_start = match start {
                        _ if from > 0 => Start::Accumulate,
                        start => start,
                    };
                    for panel in first_panel..last_panel {
                        let columns = (n - panel * NR).min(NR);
                        let b_block = b.block(panel, from, count);
                        let panel_start = match tile_start {
                            Start::Bias(bias) => Start::Bias(&bias[panel * NR..]),
                            other => other,
                        };
                        for (index, a_panel) in packed_a[..rows.div_ceil(MR) * count * MR]
                            .chunks_exact(count * MR)
                            .enumerate()
                        {
                            let row = first_row + index * MR;
                            let tile = output.at(row * n + panel * NR);
                            let valid = ((first_row + rows - row).min(MR), columns);
                            // SAFETY: this task alone writes rows first_row..first_row+rows
                            // and the columns of panels first_panel..last_panel of C, all
                            // inside its m·n elements (the caller's guarantee).
                            unsafe {
                                kernel.run(count, a_panel, b_block, tile, n, panel_start, valid)
                            };
                        }
                    }
                }
            },
        );
}

/// Packs rows `first..first+rows` and k pairs `from..from+count` of A into `[panel][pair][MR]`
/// words (rows past the end are zero).
fn pack_a(
    packed: &mut [u32],
    a: &[f32],
    (row_stride, column_stride): (usize, usize),
    (first, rows): (usize, usize),
    (from, count): (usize, usize),
    k: usize,
) {
    let panels = rows.div_ceil(MR);
    let at = |r: usize, i: usize| {
        if r < rows && i < k {
            a[(first + r) * row_stride + i * column_stride]
        } else {
            0.0
        }
    };
    if column_stride == 1 {
        // Rows are contiguous: convert each row's run of k at once.
        for r in 0..panels * MR {
            let (panel, lane) = (r / MR, r % MR);
            let words = &mut packed[panel * count * MR..(panel + 1) * count * MR];
            if r < rows && 2 * (from + count) <= k {
                let start = (first + r) * row_stride + 2 * from;
                convert_pairs(&a[start..start + 2 * count], words, lane, MR);
            } else {
                for p in 0..count {
                    let i = 2 * (from + p);
                    words[p * MR + lane] = pair(at(r, i), at(r, i + 1));
                }
            }
        }
    } else {
        // A transposed operand (e.g. dyᵀ for a weight gradient): walk k outside so the MR
        // rows of one panel are read side by side (contiguous when the row stride is 1).
        #[cfg(target_arch = "x86_64")]
        if row_stride == 1 && has_avx512_bf16() {
            // SAFETY: the CPU has the features; every index read is inside A (gemm's assert)
            // and every word written inside `packed` (panels · count · MR words).
            unsafe {
                pack_transposed_avx512_bf16(
                    &mut packed[..panels * count * MR],
                    a,
                    column_stride,
                    (first, rows),
                    (from, count),
                    k,
                )
            };
            return;
        }
        for panel in 0..panels {
            let words = &mut packed[panel * count * MR..(panel + 1) * count * MR];
            for p in 0..count {
                let i = 2 * (from + p);
                for lane in 0..MR {
                    let r = panel * MR + lane;
                    words[p * MR + lane] = pair(at(r, i), at(r, i + 1));
                }
            }
        }
    }
}

/// Sixteen `vdpbf16ps` words from two vectors of f32: `pair(low[j], high[j])` in lane j.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn pair_words(
    low: std::arch::x86_64::__m512,
    high: std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let low: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(low));
    let high: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(high));
    _mm512_or_si512(
        _mm512_cvtepu16_epi32(low),
        _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(high)),
    )
}

/// [`pack_a`] for A with row stride 1: per k pair, the panel's MR rows are two runs of MR
/// floats (k even, k odd), converted and interleaved with masked vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_transposed_avx512_bf16(
    packed: &mut [u32],
    a: &[f32],
    column_stride: usize,
    (first, rows): (usize, usize),
    (from, count): (usize, usize),
    k: usize,
) {
    use std::arch::x86_64::*;
    const PANEL: u16 = (1 << MR) - 1;
    for (panel, words) in packed.chunks_exact_mut(count * MR).enumerate() {
        let lanes = rows.saturating_sub(panel * MR).min(MR);
        let load: u16 = (1 << lanes) - 1;
        let start = a.as_ptr().add(first + panel * MR);
        for p in 0..count {
            let i = 2 * (from + p);
            let out = words.as_mut_ptr().add(p * MR);
            let low = _mm512_maskz_loadu_ps(load, start.add(i * column_stride));
            let high = if i + 1 < k {
                _mm512_maskz_loadu_ps(load, start.add((i + 1) * column_stride))
            } else {
                _mm512_setzero_ps()
            };
            let pairs = pair_words(low, high);
            _mm512_mask_storeu_epi32(out.cast(), PANEL, pairs);
        }
    }
}

/// One B panel from rows of a row-major source: `words[p·NR + c] = pair(B[2p, first + c],
/// B[2p+1, first + c])`, with the odd k's partner zero.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_rows_avx512_bf16(
    source: &[f32],
    row_stride: usize,
    (k, first, columns): (usize, usize, usize),
    words: &mut [u32],
) {
    use std::arch::x86_64::*;
    let base = source.as_ptr().add(first);
    for p in 0..k.div_ceil(2) {
        let low_row = base.add(2 * p * row_stride);
        let high_row = base.add((2 * p + 1) * row_stride);
        for half in 0..NR / 16 {
            let lanes = columns.saturating_sub(half * 16).min(16);
            if lanes == 0 {
                break;
            }
            let mask: u16 = if lanes == 16 {
                u16::MAX
            } else {
                (1 << lanes) - 1
            };
            let low = _mm512_maskz_loadu_ps(mask, low_row.add(half * 16));
            let high = if 2 * p + 1 < k {
                _mm512_maskz_loadu_ps(mask, high_row.add(half * 16))
            } else {
                _mm512_setzero_ps()
            };
            let pairs = pair_words(low, high);
            _mm512_mask_storeu_epi32(
                words.as_mut_ptr().add(p * NR + half * 16).cast(),
                mask,
                pairs,
            );
        }
    }
}

/// Contiguous f32 `values` (an even count) → words
/// `words[p·stride + lane] = pair(values[2p], values[2p+1])`.
fn convert_pairs(values: &[f32], words: &mut [u32], lane: usize, stride: usize) {
    let count = values.len() / 2;
    assert!(lane < stride && (count == 0 || words.len() > (count - 1) * stride + lane));
    #[cfg(target_arch = "x86_64")]
    if has_avx512_bf16() {
        // SAFETY: the CPU has the features; lengths are checked above.
        unsafe { convert_pairs_avx512_bf16(values, words, lane, stride) };
        return;
    }
    for p in 0..count {
        words[p * stride + lane] = pair(values[2 * p], values[2 * p + 1]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn convert_pairs_avx512_bf16(values: &[f32], words: &mut [u32], lane: usize, stride: usize) {
    use std::arch::x86_64::*;
    let count = values.len() / 2;
    let mut converted = [0u32; 16];
    let mut p = 0;
    while p + 16 <= count {
        let low = _mm512_loadu_ps(values.as_ptr().add(2 * p));
        let high = _mm512_loadu_ps(values.as_ptr().add(2 * p + 16));
        // cvtne2ps_pbh(a, b) puts b's 16 values first, then a's: 32 bf16 in order.
        let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(high, low));
        _mm512_storeu_si512(converted.as_mut_ptr().cast(), packed);
        for (offset, &word) in converted.iter().enumerate() {
            *words.get_unchecked_mut((p + offset) * stride + lane) = word;
        }
        p += 16;
    }
    for p in p..count {
        words[p * stride + lane] = pair(values[2 * p], values[2 * p + 1]);
    }
}

/// The micro-kernel in use: AVX512-BF16 when the CPU has it.
#[derive(Clone, Copy)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
    Scalar,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx512_bf16() {
                return Kernel::Avx512Bf16;
            }
        }
        Kernel::Scalar
    }

    /// One tile: C[MR, NR] at `c` (row stride `ldc`) = start + A panel · B block over `pairs`
    /// k pairs, writing only the `valid` (rows, columns). A bias start holds the tile's
    /// columns from its first element.
    ///
    /// # Safety
    /// `c` must point at a tile whose valid (rows, columns) part, with row stride `ldc`, is
    /// writable and not accessed by anyone else meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        self,
        pairs: usize,
        a: &[u32],
        b: &[u32],
        c: *mut f32,
        ldc: usize,
        start: Start,
        valid: (usize, usize),
    ) {
        debug_assert!(a.len() >= pairs * MR && b.len() >= pairs * NR);
        if let Start::Bias(bias) = start {
            debug_assert!(bias.len() >= valid.1);
        }
        match self {
            // SAFETY: detect() saw avx512f and avx512bf16; the slices hold `pairs` k pairs
            // (debug-asserted) and the caller guarantees the valid part of the tile is writable.
            // Few valid rows (generation decodes one token per sequence): a kernel that
            // computes only as many rows as are valid instead of all MR.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Bf16 => {
                let (a, b) = (a.as_ptr(), b.as_ptr());
                match valid.0 {
                    1 => kernel_avx512_bf16::<1>(pairs, a, b, c, ldc, start, valid),
                    2 => kernel_avx512_bf16::<2>(pairs, a, b, c, ldc, start, valid),
                    3 | 4 => kernel_avx512_bf16::<4>(pairs, a, b, c, ldc, start, valid),
                    5..=8 => kernel_avx512_bf16::<8>(pairs, a, b, c, ldc, start, valid),
                    _ => kernel_avx512_bf16::<MR>(pairs, a, b, c, ldc, start, valid),
                }
            }
            Kernel::Scalar => kernel_scalar(pairs, a, b, c, ldc, start, valid),
        }
    }
}

/// Whether this CPU runs the AVX512-BF16 kernel (for notices and tests).
pub fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The portable micro-kernel: the same bf16 products, summed in f32.
///
/// # Safety
/// As [`Kernel::run`].
unsafe fn kernel_scalar(
    pairs: usize,
    a: &[u32],
    b: &[u32],
    c: *mut f32,
    ldc: usize,
    start: Start,
    (rows, columns): (usize, usize),
) {
    let low = |w: u32| bf16_value(w as u16);
    let high = |w: u32| bf16_value((w >> 16) as u16);
    for r in 0..rows {
        for j in 0..columns {
            let mut sum = 0.0f32;
            for p in 0..pairs {
                let (x, y) = (a[p * MR + r], b[p * NR + j]);
                sum += low(x) * low(y) + high(x) * high(y);
            }
            // SAFETY: (r, j) is inside the valid part of the tile (see Kernel::run).
            let out = c.add(r * ldc + j);
            *out = match start {
                Start::Zero => sum,
                Start::Accumulate => *out + sum,
                Start::Bias(bias) => bias[j] + sum,
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel_avx512_bf16<const ROWS: usize>(
    pairs: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    start: Start,
    (rows, columns): (usize, usize),
) {
    use std::arch::x86_64::*;
    debug_assert!(ROWS <= MR && rows <= ROWS);
    let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
    for p in 0..pairs {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR).cast()));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16).cast()));
        let a_words = a.add(p * MR);
        for (r, row) in acc.iter_mut().enumerate() {
            let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a_words.add(r) as i32));
            row[0] = _mm512_dpbf16_ps(row[0], x, b0);
            row[1] = _mm512_dpbf16_ps(row[1], x, b1);
        }
    }
    let masks = [
        ((1u32 << columns.min(16)) - 1) as u16,
        ((1u32 << columns.saturating_sub(16)) - 1) as u16,
    ];
    // The bias of the tile's columns, loaded once (masked: the slice may end at the last
    // valid column).
    let bias = match start {
        Start::Bias(bias) => [
            _mm512_maskz_loadu_ps(masks[0], bias.as_ptr()),
            _mm512_maskz_loadu_ps(masks[1], bias.as_ptr().wrapping_add(16)),
        ],
        _ => [_mm512_setzero_ps(); 2],
    };
    for (r, row) in acc.iter().enumerate().take(rows) {
        for (half, &sum) in row.iter().enumerate() {
            let out = c.add(r * ldc + half * 16);
            let mask = masks[half];
            if mask == 0 {
                continue;
            }
            let value = match start {
                Start::Zero => sum,
                Start::Accumulate => _mm512_add_ps(_mm512_maskz_loadu_ps(mask, out), sum),
                Start::Bias(_) => _mm512_add_ps(bias[half], sum),
            };
            _mm512_mask_storeu_ps(out, mask, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
    }

    fn round(x: f32) -> f64 {
        bf16_value(bf16_bits(x)) as f64
    }

    /// C = A·B in f64 from the bf16-rounded operands.
    fn reference(a: &[f32], b: &[f32], (m, k, n): (usize, usize, usize)) -> Vec<f64> {
        let mut c = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|l| round(a[i * k + l]) * round(b[l * n + j]))
                    .sum();
            }
        }
        c
    }

    fn check(m: usize, k: usize, n: usize, accumulate: bool) {
        let a = random(m * k, 1);
        let b = random(k * n, 2);
        let start = random(m * n, 3);
        let packed = PackedB::pack(&b, (k, n), (n, 1));
        let mut c = start.clone();
        gemm(&mut c, m, accumulate, &a, (k, 1), &packed);
        let expected = reference(&a, &b, (m, k, n));
        for (index, (&got, want)) in c.iter().zip(&expected).enumerate() {
            let start = if accumulate { start[index] } else { 0.0 };
            assert_element(
                got,
                want + start as f64,
                k,
                &format!("[{m}x{k}x{n}] c[{index}]"),
            );
        }
    }

    /// Asserts a product's element against its f64 reference, within the rounding of f32
    /// sums over k terms.
    fn assert_element(got: f32, want: f64, k: usize, what: &str) {
        let tolerance = 1e-5 * (k as f64).sqrt() + 1e-6;
        assert!(
            (got as f64 - want).abs() <= tolerance,
            "{what} = {got}, want {want}"
        );
    }

    /// A new product, from zero or from a bias, equals the rounded reference plus the bias
    /// at every edge (rows split into uneven blocks, a last panel of 1–31 columns, k = 0).
    #[test]
    fn a_new_product_starts_from_zero_or_the_bias() {
        for &(m, k, n) in &[
            (1, 3, 1),
            (13, 7, 33),
            (350, 40, 47),
            (97, 600, 17),
            (5, 0, 4),
        ] {
            let a = random(m * k, 10);
            let b = random(k * n, 11);
            let bias = random(n, 12);
            let packed = PackedB::pack(&b, (k, n), (n, 1));
            let expected = reference(&a, &b, (m, k, n));
            for with_bias in [false, true] {
                let c = product(m, &a, (k, 1), &packed, with_bias.then_some(&bias[..]));
                assert_eq!(c.len(), m * n);
                for (index, (&got, want)) in c.iter().zip(&expected).enumerate() {
                    let start = if with_bias { bias[index % n] } else { 0.0 };
                    let what = format!("[{m}x{k}x{n}] bias {with_bias}: c[{index}]");
                    assert_element(got, want + start as f64, k, &what);
                }
            }
        }
    }

    #[test]
    fn a_transposed_left_operand_is_read_by_strides() {
        // C [m, n] = Aᵀ B with A stored [k, m]: the weight gradient dW = dyᵀ x.
        for &(m, k, n) in &[(13, 7, 33), (100, 600, 40)] {
            let stored = random(k * m, 8);
            let b = random(k * n, 9);
            let mut a = vec![0.0; m * k];
            for i in 0..m {
                for l in 0..k {
                    a[i * k + l] = stored[l * m + i];
                }
            }
            let mut c = vec![0.0; m * n];
            gemm(
                &mut c,
                m,
                false,
                &stored,
                (1, m),
                &PackedB::pack(&b, (k, n), (n, 1)),
            );
            for (got, want) in c.iter().zip(reference(&a, &b, (m, k, n))) {
                assert!((*got as f64 - want).abs() < 1e-4, "{got} vs {want}");
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3F80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3F80);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties go up to the even one.
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3F82);
        assert_eq!(bf16_value(bf16_bits(-2.5)), -2.5);
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
    }

    #[test]
    fn products_equal_the_rounded_reference_at_every_edge() {
        // Odd k, rows and columns that are not multiples of the tile, k across KC blocks.
        for &(m, k, n) in &[
            (1, 1, 1),
            (12, 2, 32),
            (13, 7, 33),
            (5, 600, 70),
            (100, 515, 17),
            (200, 64, 96),
        ] {
            check(m, k, n, false);
            check(m, k, n, true);
        }
    }

    #[test]
    fn transposed_operands_by_strides() {
        // y = x Wᵀ with W [out, in] read through strides, as the frozen linear layer does.
        let (rows, input, output) = (30, 41, 50);
        let x = random(rows * input, 4);
        let w = random(output * input, 5);
        let packed = PackedB::pack(&w, (input, output), (1, input));
        let mut y = vec![0.0; rows * output];
        gemm(&mut y, rows, false, &x, (input, 1), &packed);
        let mut wt = vec![0.0; input * output];
        for o in 0..output {
            for i in 0..input {
                wt[i * output + o] = w[o * input + i];
            }
        }
        let expected = reference(&x, &wt, (rows, input, output));
        for (got, want) in y.iter().zip(&expected) {
            assert!((*got as f64 - want).abs() < 1e-4, "{got} vs {want}");
        }
        // And A transposed: C = xᵀ-as-[input, rows] read with (1, input).
        let mut c = vec![0.0; output * rows];
        let xt_packed = PackedB::pack(&x, (input, rows), (1, input));
        gemm(&mut c, output, false, &w, (input, 1), &xt_packed);
        let mut xt = vec![0.0; input * rows];
        for r in 0..rows {
            for i in 0..input {
                xt[i * rows + r] = x[r * input + i];
            }
        }
        let expected = reference(&w, &xt, (output, input, rows));
        for (got, want) in c.iter().zip(&expected) {
            assert!((*got as f64 - want).abs() < 1e-4, "{got} vs {want}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_scalar_kernel_agrees_with_the_simd_one() {
        if !has_avx512_bf16() {
            return;
        }
        let (pairs, a, b) = (37, random(37 * MR, 6), random(37 * NR, 7));
        let a: Vec<u32> = a
            .chunks(2)
            .map(|p| pair(p[0], p[1]))
            .chain(std::iter::repeat(0))
            .take(pairs * MR)
            .collect();
        let b: Vec<u32> = b.iter().map(|&x| pair(x, -x)).collect();
        // Every row count the dispatch distinguishes; rows past the valid ones stay untouched.
        for rows in [1, 2, 3, 5, 8, 11, MR] {
            let mut simd = vec![7.0f32; MR * NR];
            let mut scalar = vec![7.0f32; MR * NR];
            // SAFETY: both outputs are whole MR × NR tiles.
            unsafe {
                let (simd_out, scalar_out) = (simd.as_mut_ptr(), scalar.as_mut_ptr());
                Kernel::Avx512Bf16.run(pairs, &a, &b, simd_out, NR, Start::Zero, (rows, NR));
                Kernel::Scalar.run(pairs, &a, &b, scalar_out, NR, Start::Zero, (rows, NR));
            }
            for (x, y) in simd.iter().zip(&scalar) {
                assert!((x - y).abs() < 1e-4, "{rows} rows: {x} vs {y}");
            }
            assert!(simd[rows * NR..].iter().all(|&x| x == 7.0));
        }
    }
}
