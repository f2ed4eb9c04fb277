//! Masked, scaled softmax over the key dimension of attention scores, forward and backward.
//!
//! scores [B, H, Q, K], mask [B, K] (1.0 = attend, 0.0 = padding) -> y [B, H, Q, K]
//!   y[b,h,q,k] = exp(s·scale − max) / Σ_k' exp(...)  over keys with mask[b,k] ≠ 0,
//!   and 0 at padded keys. A row whose keys are all padded is all zeros (not NaN).

use crate::math;
use crate::util::{check_f32_cpu, rows_per_task, slice_f32, tensor_from, with_f32};
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `softmax(scale · scores)` over the last dim, skipping keys where `mask` is 0.
/// `mask` is data (no gradient); shape [B, K] or [B, 1, 1, K]. Differentiable w.r.t. `scores`.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    const OP: &str = "masked_softmax";
    check_f32_cpu(OP, "scores", scores)?;
    check_f32_cpu(OP, "mask", mask)?;
    let (b, _h, _q, k) = scores.dims4().map_err(|_| {
        candle_core::Error::Msg(format!(
            "{OP}: scores must be [batch, heads, queries, keys], got {:?}",
            scores.shape()
        ))
    })?;
    let mask_ok = match mask.dims() {
        [mb, mk] => *mb == b && *mk == k,
        [mb, 1, 1, mk] => *mb == b && *mk == k,
        _ => false,
    };
    if !mask_ok {
        bail!(
            "{OP}: mask must be [{b}, {k}] (batch, keys) for scores {:?}, got {:?}",
            scores.shape(),
            mask.shape()
        )
    }
    scores.contiguous()?.apply_op2(
        &mask.contiguous()?,
        MaskedSoftmax {
            scale: scale as f32,
        },
    )
}

struct MaskedSoftmax {
    scale: f32,
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "alpaca-masked-softmax"
    }

    // forward, per row r = (b, h, q) of K scores:
    //   v = s · scale;  m = max over attended keys;  e = attended ? exp(v − m) : 0
    //   y = e / Σ e      (all zeros when no key is attended)
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = slice_f32(self.name(), s1, l1)?;
        let mask = slice_f32(self.name(), s2, l2)?;
        let dims = l1.dims();
        let k = dims[3];
        let rows_per_batch = dims[1] * dims[2];
        let scale = self.scale;
        let mut y = vec![0.0f32; s.len()];
        let rows = rows_per_task(k);
        y.par_chunks_mut(rows * k)
            .zip(s.par_chunks(rows * k))
            .enumerate()
            .for_each(|(task, (yb, sb))| {
                math::simd(
                    #[inline(always)]
                    || {
                        let mut v = vec![0.0f32; k];
                        for (i, (yr, sr)) in
                            yb.chunks_exact_mut(k).zip(sb.chunks_exact(k)).enumerate()
                        {
                            let row = task * rows + i;
                            let mr = &mask[(row / rows_per_batch) * k..][..k];
                            for ((vo, &si), &mi) in v.iter_mut().zip(sr).zip(mr) {
                                *vo = if mi != 0.0 {
                                    si * scale
                                } else {
                                    f32::NEG_INFINITY
                                };
                            }
                            let m = math::max(&v);
                            if m == f32::NEG_INFINITY {
                                yr.fill(0.0); // every key padded
                                continue;
                            }
                            for ((o, &vi), &mi) in yr.iter_mut().zip(&v).zip(mr) {
                                let e = math::exp(vi - m);
                                *o = if mi != 0.0 { e } else { 0.0 };
                            }
                            let inv = 1.0 / math::sum(yr);
                            yr.iter_mut().for_each(|o| *o *= inv);
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    // backward, per row:  ds = scale · y · (dy − Σ_k dy·y)     [B, H, Q, K]
    // (padded keys have y = 0, so their gradient is 0; the mask gets none.)
    fn bwd(
        &self,
        scores: &Tensor,
        _mask: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let k = scores.dims()[3];
        let scale = self.scale;
        let ds = with_f32(name, y, |y| {
            with_f32(name, dy, |dy| {
                let mut ds = vec![0.0f32; y.len()];
                let rows = rows_per_task(k);
                ds.par_chunks_mut(rows * k)
                    .zip(y.par_chunks(rows * k))
                    .zip(dy.par_chunks(rows * k))
                    .for_each(|((db, yb), gb)| {
                        math::simd(
                            #[inline(always)]
                            || {
                                for ((dr, yr), gr) in db
                                    .chunks_exact_mut(k)
                                    .zip(yb.chunks_exact(k))
                                    .zip(gb.chunks_exact(k))
                                {
                                    let s = math::dot(yr, gr);
                                    for ((o, &yi), &gi) in dr.iter_mut().zip(yr).zip(gr) {
                                        *o = scale * yi * (gi - s);
                                    }
                                }
                            },
                        )
                    });
                Ok(ds)
            })
        })?;
        Ok((Some(tensor_from(ds, scores.shape())?), None))
    }
}
