//! RMS normalisation over the last dimension (LLaMA's `LlamaRMSNorm`), forward and backward.
//!
//! x [.., C], weight [C] -> y [.., C]  (N = product of leading dims)
//!   rstd = 1 / sqrt(Σ x² / C + eps)     (accumulated in f32 lanes, as torch's fp32 path)
//!   xhat = x · rstd,  y = xhat · weight

use crate::math;
use crate::util::{check_f32_cpu, rows_per_task, slice_f32, tensor_from, with_f32};
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// RMS norm over the last dim of `x` with per-channel `weight` [C]. Differentiable w.r.t. both.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    const OP: &str = "rms_norm";
    check_f32_cpu(OP, "x", x)?;
    check_f32_cpu(OP, "weight", weight)?;
    let c = match x.dims().last() {
        Some(&c) if c > 0 => c,
        _ => bail!(
            "{OP}: x must have a non-empty last dimension, got shape {:?}",
            x.shape()
        ),
    };
    if weight.dims() != [c] {
        bail!(
            "{OP}: weight must have shape [{c}] (the last dim of x {:?}), got {:?}",
            x.shape(),
            weight.shape()
        )
    }
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })
}

struct RmsNorm {
    eps: f32,
}

/// 1 / sqrt(mean(x²) + eps) of one row.
#[inline(always)]
fn row_rstd(x: &[f32], eps: f32) -> f32 {
    1.0 / (math::dot(x, x) / x.len() as f32 + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "alpaca-rms-norm"
    }

    // forward: y[n, :] = x[n, :] · rstd_n · w
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let x = slice_f32(name, s1, l1)?;
        let w = slice_f32(name, s2, l2)?;
        let c = w.len();
        let mut y = vec![0.0f32; x.len()];
        let rows = rows_per_task(c);
        y.par_chunks_mut(rows * c)
            .zip(x.par_chunks(rows * c))
            .for_each(|(yb, xb)| {
                math::simd(
                    #[inline(always)]
                    || {
                        for (yr, xr) in yb.chunks_exact_mut(c).zip(xb.chunks_exact(c)) {
                            let rstd = row_rstd(xr, self.eps);
                            for ((yo, &xi), &wi) in yr.iter_mut().zip(xr).zip(w) {
                                // (x · rstd) · w, in torch's order of rounding
                                *yo = (xi * rstd) * wi;
                            }
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    // backward (dy = grad_res [N, C]):
    //   dxhat = dy · w
    //   dx    = rstd · (dxhat − xhat · mean(dxhat · xhat))     [N, C]
    //   dw    = Σ_n dy · xhat                                   [C]
    // rstd is recomputed from x (one cheap pass) instead of being stored.
    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let c = weight.elem_count();
        let (dx, dw) = with_f32(name, x, |x| {
            with_f32(name, weight, |w| {
                with_f32(name, grad_res, |dy| Ok(rms_norm_bwd(x, w, dy, self.eps)))
            })
        })?;
        Ok((Some(tensor_from(dx, x.shape())?), Some(tensor_from(dw, c)?)))
    }
}

/// Returns (dx [N·C], dw [C]).
fn rms_norm_bwd(x: &[f32], w: &[f32], dy: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let c = w.len();
    let mut dx = vec![0.0f32; x.len()];
    let rows = rows_per_task(c);
    // Each task accumulates its own dw over its rows; the partials are summed after.
    let dw = dx
        .par_chunks_mut(rows * c)
        .zip(x.par_chunks(rows * c))
        .zip(dy.par_chunks(rows * c))
        .map(|((dxb, xb), dyb)| {
            math::simd(
                #[inline(always)]
                || {
                    let mut dw = vec![0.0f32; c];
                    let mut dxhat = vec![0.0f32; c];
                    let mut xhat = vec![0.0f32; c];
                    for ((dxr, xr), dyr) in dxb
                        .chunks_exact_mut(c)
                        .zip(xb.chunks_exact(c))
                        .zip(dyb.chunks_exact(c))
                    {
                        let rstd = row_rstd(xr, eps);
                        // Re-slice to length c so the index loop has no bounds checks.
                        let (xr, dyr, w) = (&xr[..c], &dyr[..c], &w[..c]);
                        let (xhat, dxhat, dw) = (&mut xhat[..c], &mut dxhat[..c], &mut dw[..c]);
                        for i in 0..c {
                            let (xh, g) = (xr[i] * rstd, dyr[i]);
                            xhat[i] = xh;
                            dxhat[i] = g * w[i];
                            dw[i] += g * xh;
                        }
                        let mean_dxhat_xhat = math::dot(dxhat, xhat) / c as f32;
                        for ((o, &dh), &xh) in dxr.iter_mut().zip(dxhat.iter()).zip(xhat.iter()) {
                            *o = rstd * (dh - xh * mean_dxhat_xhat);
                        }
                    }
                    dw
                },
            )
        })
        .reduce(
            || vec![0.0f32; c],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        );
    (dx, dw)
}
