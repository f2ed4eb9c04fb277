//! Inverted dropout with a counter-based RNG: the keep mask of element i is a pure function
//! of (seed, i), so backward recomputes it instead of storing it.
//!
//!   keep_i = u(seed, i) ≥ p,   u ∈ [0, 1) from splitmix64(seed-key + i·γ) (top 24 bits)
//!   y_i = keep_i ? x_i / (1 − p) : 0,      dx_i = keep_i ? dy_i / (1 − p) : 0

use crate::util::{check_f32_cpu, par_new, slice_f32, tensor_from, with_f32};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per task; chunk i of a tensor is elements i·CHUNK.. ([`Dropout::apply_chunk`]).
pub(crate) const CHUNK: usize = 16 * 1024;
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Inverted dropout: zeroes each element with probability `probability` and scales the rest
/// by 1/(1−p). Deterministic in (`seed`, element index of the contiguous tensor).
/// `probability` 0 returns `x` itself (a cheap clone); 1 returns zeros. Differentiable.
pub fn dropout(x: &Tensor, probability: f32, seed: u64) -> Result<Tensor> {
    check_f32_cpu("dropout", "x", x)?;
    if !(0.0..=1.0).contains(&probability) {
        bail!("dropout: probability must be in [0, 1], got {probability}")
    }
    if probability == 0.0 {
        return Ok(x.clone());
    }
    if probability == 1.0 {
        return x.zeros_like();
    }
    x.contiguous()?.apply_op1(Dropout::new(probability, seed))
}

pub(crate) struct Dropout {
    /// keep iff the 24-bit uniform ≥ threshold
    threshold: u32,
    scale: f32,
    key: u64,
}

impl Dropout {
    pub(crate) fn new(p: f32, seed: u64) -> Self {
        Self {
            threshold: (p as f64 * (1u64 << 24) as f64).round() as u32,
            scale: 1.0 / (1.0 - p),
            key: mix(seed.wrapping_add(GOLDEN)),
        }
    }

    /// y = x · mask · scale (or, when `ACCUMULATE`, y += x · mask · scale) over a chunk whose
    /// first element has global index `start`.
    #[inline(always)]
    fn apply<const ACCUMULATE: bool>(&self, start: usize, src: &[f32], dst: &mut [f32]) {
        for (i, (o, &v)) in dst.iter_mut().zip(src).enumerate() {
            let kept = if self.keeps(start + i) {
                v * self.scale
            } else {
                0.0
            };
            if ACCUMULATE {
                *o += kept;
            } else {
                *o = kept;
            }
        }
    }

    /// The dropout of an op's `probability` (which must be in [0, 1)) and `seed`; none at 0.
    pub(crate) fn active(op: &str, probability: f32, seed: u64) -> Result<Option<Self>> {
        if !(0.0..1.0).contains(&probability) {
            bail!("{op}: dropout {probability} is not in [0, 1)")
        }
        Ok((probability > 0.0).then(|| Self::new(probability, seed)))
    }

    /// Whether the element of index `index` is kept.
    #[inline(always)]
    fn keeps(&self, index: usize) -> bool {
        let u = (mix(self.key.wrapping_add((index as u64).wrapping_mul(GOLDEN))) >> 40) as u32;
        u >= self.threshold
    }

    /// values = values · mask · scale in place, element i having index `start + i` (the
    /// caller vectorises, e.g. under `math::simd`).
    #[inline(always)]
    pub(crate) fn scale_kept(&self, start: usize, values: &mut [f32]) {
        for (i, v) in values.iter_mut().enumerate() {
            *v = if self.keeps(start + i) {
                *v * self.scale
            } else {
                0.0
            };
        }
    }

    /// [`Dropout::apply`] over chunk `chunk` of a tensor (`src` and `dst` are its elements
    /// chunk·CHUNK..), vectorised.
    pub(crate) fn apply_chunk<const ACCUMULATE: bool>(
        &self,
        chunk: usize,
        src: &[f32],
        dst: &mut [f32],
    ) {
        // AVX-512DQ multiplies 64-bit lanes (vpmullq), so the hash vectorises there.
        crate::math::simd(
            #[inline(always)]
            || self.apply::<ACCUMULATE>(chunk * CHUNK, src, dst),
        )
    }

    /// x · mask · scale, element i of `src` having index i.
    pub(crate) fn run(&self, src: &[f32]) -> Vec<f32> {
        par_new(src.len(), CHUNK, |c, d| {
            self.apply_chunk::<false>(c, &src[c * CHUNK..][..d.len()], d)
        })
    }

    /// dst += src · mask · scale, with the masks [`Dropout::run`] uses for the same indices.
    pub(crate) fn accumulate(&self, src: &[f32], dst: &mut [f32]) {
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (d, s))| self.apply_chunk::<true>(c, s, d));
    }
}

/// splitmix64 finaliser.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "alpaca-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(self.name(), s, l)?;
        Ok((CpuStorage::F32(self.run(x)), l.shape().clone()))
    }

    // backward: dx = dy · mask · scale  (same mask, recomputed from (seed, index))
    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_f32(self.name(), dy, |dy| Ok(self.run(dy)))?;
        Ok(Some(tensor_from(dx, x.shape())?))
    }
}
