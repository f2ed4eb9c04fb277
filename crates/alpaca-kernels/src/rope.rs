//! Rotary position embedding (Su et al. 2021) in Hugging Face's "rotate_half" layout, as LLaMA
//! uses it: dimension i pairs with i + d/2 (not the interleaved 2i, 2i+1 of the paper).
//!
//! x [B, H, T, D] (T tokens at positions offset, offset+1, …), half = D/2, for i < half:
//!   θ_i = theta^(−2i/D),  angle = p · θ_i,  c = cos(angle), s = sin(angle)
//!   y[i]        = x[i] · c − x[i + half] · s
//!   y[i + half] = x[i + half] · c + x[i] · s
//! The backward is the inverse rotation (a rotation's transpose): the same with −s.

use std::sync::Arc;

use crate::math;
use crate::util::{check_f32_cpu, rows_per_task, slice_f32, tensor_from, with_f32};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// cos/sin of every (position, frequency) pair, computed once per model.
#[derive(Debug, Clone)]
pub struct RopeTables {
    /// [positions, half], row p = cos(p · θ_i)
    cos: Arc<Vec<f32>>,
    /// [positions, half]
    sin: Arc<Vec<f32>>,
    head_dim: usize,
    positions: usize,
}

impl RopeTables {
    /// Tables for `positions` positions of heads of size `head_dim` (even) and base `theta`.
    /// Computed as transformers does (f32 inverse frequencies, f32 angle p · θ_i, then cos
    /// and sin of that f32 angle), so that logits agree at large positions too.
    pub fn new(head_dim: usize, theta: f64, positions: usize) -> Result<Self> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            bail!("rope: head_dim must be even and positive, got {head_dim}")
        }
        if !(theta.is_finite() && theta > 0.0) {
            bail!("rope: rope_theta must be a positive number, got {theta}")
        }
        let half = head_dim / 2;
        let inverse_frequency: Vec<f32> = (0..half)
            .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
            .collect();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for &f in &inverse_frequency {
                let angle = (p as f32 * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok(Self {
            cos: Arc::new(cos),
            sin: Arc::new(sin),
            head_dim,
            positions,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// How many positions the tables cover (offset + T must not exceed it).
    pub fn positions(&self) -> usize {
        self.positions
    }
}

/// Rotates `x` [B, H, T, D] whose tokens sit at positions `offset..offset + T` (offset > 0
/// when decoding with a KV cache). Differentiable w.r.t. `x`.
pub fn rope(x: &Tensor, tables: &RopeTables, offset: usize) -> Result<Tensor> {
    const OP: &str = "rope";
    check_f32_cpu(OP, "x", x)?;
    let (_b, _h, t, d) = x.dims4().map_err(|_| {
        candle_core::Error::Msg(format!(
            "{OP}: x must be [batch, heads, seq, head_dim], got {:?}",
            x.shape()
        ))
    })?;
    if d != tables.head_dim {
        bail!(
            "{OP}: x {:?} has head_dim {d} but the tables were built for {}",
            x.shape(),
            tables.head_dim
        )
    }
    if offset + t > tables.positions {
        bail!(
            "{OP}: positions {offset}..{} exceed the {} positions of the tables (max_position_embeddings)",
            offset + t,
            tables.positions
        )
    }
    x.contiguous()?.apply_op1(Rope {
        tables: tables.clone(),
        offset,
        inverse: false,
    })
}

pub(crate) struct Rope {
    pub(crate) tables: RopeTables,
    pub(crate) offset: usize,
    /// rotate by −angle (the backward)
    pub(crate) inverse: bool,
}

impl Rope {
    /// y = R(±angle) x for every row of `x` ([rows, D], T rows per (b, h)).
    pub(crate) fn apply(&self, x: &[f32], t: usize) -> Vec<f32> {
        let d = self.tables.head_dim;
        let half = d / 2;
        let sign = if self.inverse { -1.0f32 } else { 1.0 };
        let (cos, sin) = (&self.tables.cos[..], &self.tables.sin[..]);
        let mut y = vec![0.0f32; x.len()];
        let rows = rows_per_task(d);
        y.par_chunks_mut(rows * d)
            .zip(x.par_chunks(rows * d))
            .enumerate()
            .for_each(|(task, (yb, xb))| {
                math::simd(
                    #[inline(always)]
                    || {
                        for (i, (yr, xr)) in
                            yb.chunks_exact_mut(d).zip(xb.chunks_exact(d)).enumerate()
                        {
                            let position = self.offset + (task * rows + i) % t;
                            let c = &cos[position * half..][..half];
                            let s = &sin[position * half..][..half];
                            let (x1, x2) = xr.split_at(half);
                            let (y1, y2) = yr.split_at_mut(half);
                            for j in 0..half {
                                let sj = sign * s[j];
                                y1[j] = x1[j] * c[j] - x2[j] * sj;
                                y2[j] = x2[j] * c[j] + x1[j] * sj;
                            }
                        }
                    },
                )
            });
        y
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "alpaca-rope"
    }

    // forward: y = R(angle) x, row by row
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(self.name(), s, l)?;
        let t = l.dims()[2];
        Ok((CpuStorage::F32(self.apply(x, t)), l.shape().clone()))
    }

    // backward: dx = R(angle)ᵀ dy = R(−angle) dy
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let t = x.dims()[2];
        let inverse = Rope {
            tables: self.tables.clone(),
            offset: self.offset,
            inverse: !self.inverse,
        };
        let dx = with_f32(self.name(), grad_res, |dy| Ok(inverse.apply(dy, t)))?;
        Ok(Some(tensor_from(dx, x.shape())?))
    }
}
