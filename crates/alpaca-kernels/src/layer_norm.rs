//! Layer normalisation over the last dimension, forward and backward.
//!
//! x [.., C], weight [C], bias [C] -> y [.., C]  (N = product of leading dims)
//!   mean = Σ x / C,  rstd = 1 / sqrt(Σ (x-mean)² / C + eps)   (biased variance, as torch)
//!   xhat = (x - mean) · rstd,  y = xhat · weight + bias

use crate::dropout::{self, Dropout};
use crate::gradient::{Gradient, WeightBiasSinks};
use crate::math;
use crate::util::{
    check_f32_cpu, par_new, par_new_reduce, rows_per_task, slice_f32, tensor_from, with_f32,
};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// Layer norm over the last dim of `x` with per-channel `weight` and `bias` ([C] each).
/// Differentiable w.r.t. all three.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    const OP: &str = "layer_norm";
    check_f32_cpu(OP, "x", x)?;
    check_parameters(OP, x, weight, bias)?;
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNorm { eps: eps as f32 },
    )
}

/// Errors unless weight and bias are f32 [C] with C the (non-empty) last dim of x.
fn check_parameters(op: &str, x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<()> {
    check_f32_cpu(op, "weight", weight)?;
    check_f32_cpu(op, "bias", bias)?;
    let c = match x.dims().last() {
        Some(&c) if c > 0 => c,
        _ => bail!(
            "{op}: x must have a non-empty last dimension, got shape {:?}",
            x.shape()
        ),
    };
    if weight.dims() != [c] || bias.dims() != [c] {
        bail!(
            "{op}: weight and bias must have shape [{c}] (the last dim of x {:?}), got {:?} and {:?}",
            x.shape(),
            weight.shape(),
            bias.shape()
        )
    }
    Ok(())
}

struct LayerNorm {
    eps: f32,
}

/// (mean, rstd) of one row.
#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let c = x.len() as f32;
    let mean = math::sum(x) / c;
    let mut acc = [0.0f32; math::LANES];
    let chunks = x.chunks_exact(math::LANES);
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    for ch in chunks {
        for i in 0..math::LANES {
            let d = ch[i] - mean;
            acc[i] += d * d;
        }
    }
    let var = (acc.iter().sum::<f32>() + tail) / c;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "alpaca-layer-norm"
    }

    // forward: y[n, :] = (x[n, :] - mean_n) * rstd_n * w + b
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let x = slice_f32(name, s1, l1)?;
        let w = slice_f32(name, s2, l2)?;
        let b = slice_f32(name, s3, l3)?;
        let y = layer_norm_fwd(x, w, b, self.eps);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    // backward (dy = grad_res [N, C]):
    //   dxhat = dy · w
    //   dx    = rstd · (dxhat − mean(dxhat) − xhat · mean(dxhat · xhat))     [N, C]
    //   dw    = Σ_n dy · xhat                                                [C]
    //   db    = Σ_n dy                                                       [C]
    // mean/rstd are recomputed from x (one cheap pass) instead of being stored.
    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let c = weight.elem_count();
        let (dx, dw, db) = with_f32(name, x, |x| {
            with_f32(name, weight, |w| {
                with_f32(name, grad_res, |dy| Ok(layer_norm_bwd(x, w, dy, self.eps)))
            })
        })?;
        Ok((
            Some(tensor_from(dx, x.shape())?),
            Some(tensor_from(dw, c)?),
            Some(tensor_from(db, c)?),
        ))
    }
}

/// y [N·C] = layer norm of x [N·C] with weight and bias [C].
fn layer_norm_fwd(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let c = w.len();
    let rows = rows_per_task(c);
    par_new(x.len(), rows * c, |block, yb| {
        let xb = &x[block * rows * c..][..yb.len()];
        math::simd(
            #[inline(always)]
            || {
                for (yr, xr) in yb.chunks_exact_mut(c).zip(xb.chunks_exact(c)) {
                    let (mean, rstd) = row_stats(xr, eps);
                    for (((yo, &xi), &wi), &bi) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                        *yo = (xi - mean) * rstd * wi + bi;
                    }
                }
            },
        )
    })
}

/// Returns (dx [N·C], dw [C], db [C]).
fn layer_norm_bwd(x: &[f32], w: &[f32], dy: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let c = w.len();
    let rows = rows_per_task(c);
    // Each task accumulates its own dw/db over its rows; the partials are summed after.
    let (dx, (dw, db)) = par_new_reduce(
        x.len(),
        rows * c,
        |block, dxb| {
            let start = block * rows * c;
            let (xb, dyb) = (&x[start..][..dxb.len()], &dy[start..][..dxb.len()]);
            math::simd(
                #[inline(always)]
                || {
                    let mut dw = vec![0.0f32; c];
                    let mut db = vec![0.0f32; c];
                    let mut dxhat = vec![0.0f32; c];
                    let mut xhat = vec![0.0f32; c];
                    for ((dxr, xr), dyr) in dxb
                        .chunks_exact_mut(c)
                        .zip(xb.chunks_exact(c))
                        .zip(dyb.chunks_exact(c))
                    {
                        let (mean, rstd) = row_stats(xr, eps);
                        // Re-slice to length c so the index loop has no bounds checks.
                        let (xr, dyr, w) = (&xr[..c], &dyr[..c], &w[..c]);
                        let (xhat, dxhat) = (&mut xhat[..c], &mut dxhat[..c]);
                        let (dw, db) = (&mut dw[..c], &mut db[..c]);
                        for i in 0..c {
                            let (xh, g) = ((xr[i] - mean) * rstd, dyr[i]);
                            xhat[i] = xh;
                            dxhat[i] = g * w[i];
                            dw[i] += g * xh;
                            db[i] += g;
                        }
                        let inv_c = 1.0 / c as f32;
                        let mean_dxhat = math::sum(dxhat) * inv_c;
                        let mean_dxhat_xhat = math::dot(dxhat, xhat) * inv_c;
                        for ((o, &dh), &xh) in dxr.iter_mut().zip(dxhat.iter()).zip(xhat.iter()) {
                            *o = rstd * (dh - mean_dxhat - xh * mean_dxhat_xhat);
                        }
                    }
                    (dw, db)
                },
            )
        },
        || (vec![0.0f32; c], vec![0.0f32; c]),
        |(mut aw, mut ab), (bw, bb)| {
            aw.iter_mut().zip(&bw).for_each(|(a, b)| *a += b);
            ab.iter_mut().zip(&bb).for_each(|(a, b)| *a += b);
            (aw, ab)
        },
    );
    (dx, dw, db)
}

/// `LayerNorm(dropout(x) + residual)`: BERT's "add & norm" after the attention output and
/// after the feed-forward output, as one op whose weight and bias gradients go to `sinks`.
///
/// Why one op: as dropout, an add and a layer norm, candle's backward accumulated five
/// gradients of the activations' size (each a zero-fill and an add in the calling thread
/// alone); here there are two, x's and the residual's. The same numbers as the three ops:
/// the dropout masks are those of [`crate::dropout`] with the same seed over x's elements.
/// `dropout` is (probability, seed); probability 0 is none.
pub fn residual_layer_norm(
    x: &Tensor,
    residual: &Tensor,
    (weight, bias): (&Tensor, &Tensor),
    eps: f64,
    (probability, seed): (f32, u64),
    sinks: &WeightBiasSinks,
) -> Result<Tensor> {
    const OP: &str = "residual_layer_norm";
    check_f32_cpu(OP, "x", x)?;
    check_f32_cpu(OP, "residual", residual)?;
    if x.shape() != residual.shape() {
        bail!(
            "{OP}: x {:?} and the residual {:?} must have one shape",
            x.shape(),
            residual.shape()
        )
    }
    check_parameters(OP, x, weight, bias)?;
    let op = ResidualLayerNorm {
        weight: weight.contiguous()?,
        bias: bias.contiguous()?,
        eps: eps as f32,
        dropout: Dropout::active(OP, probability, seed)?,
        sinks: sinks.clone(),
    };
    x.contiguous()?.apply_op2(&residual.contiguous()?, op)
}

struct ResidualLayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
    dropout: Option<Dropout>,
    sinks: WeightBiasSinks,
}

impl ResidualLayerNorm {
    /// h = dropout(x) + residual, the layer norm's input, chunk by chunk in parallel (the
    /// dropout's chunks, so its masks are those of the same element indices).
    fn normalised_input(&self, x: &[f32], residual: &[f32]) -> Vec<f32> {
        par_new(x.len(), dropout::CHUNK, |chunk, h| {
            let start = chunk * dropout::CHUNK;
            let (x, residual) = (&x[start..][..h.len()], &residual[start..][..h.len()]);
            match &self.dropout {
                Some(dropout) => {
                    h.copy_from_slice(residual);
                    dropout.apply_chunk::<true>(chunk, x, h);
                }
                None => {
                    for ((h, &x), &r) in h.iter_mut().zip(x).zip(residual) {
                        *h = x + r;
                    }
                }
            }
        })
    }
}

impl CustomOp2 for ResidualLayerNorm {
    fn name(&self) -> &'static str {
        "alpaca-residual-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (x, residual) = (slice_f32(name, s1, l1)?, slice_f32(name, s2, l2)?);
        let h = self.normalised_input(x, residual);
        let y = with_f32(name, &self.weight, |w| {
            with_f32(name, &self.bias, |b| Ok(layer_norm_fwd(&h, w, b, self.eps)))
        })?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    // backward: dh = layer-norm backward at h (recomputed); dresidual = dh;
    // dx = dh · mask · scale (the forward's mask, recomputed from the seed).
    fn bwd(
        &self,
        x: &Tensor,
        residual: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let c = self.weight.elem_count();
        let (dh, dw, db) = with_f32(name, x, |x| {
            with_f32(name, residual, |residual| {
                with_f32(name, &self.weight, |w| {
                    with_f32(name, grad_res, |dy| {
                        let h = self.normalised_input(x, residual);
                        Ok(layer_norm_bwd(&h, w, dy, self.eps))
                    })
                })
            })
        })?;
        let dx = match &self.dropout {
            Some(dropout) => Some(tensor_from(dropout.run(&dh), x.shape())?),
            None => None,
        };
        let dh = tensor_from(dh, x.shape())?;
        // A frozen weight or bias (a detached tensor) gets no gradient.
        for (parameter, gradient, sink) in [
            (&self.weight, dw, &self.sinks.weight),
            (&self.bias, db, &self.sinks.bias),
        ] {
            if parameter.track_op() {
                sink.add(Gradient::Dense(tensor_from(gradient, c)?))?;
            }
        }
        // Without dropout x's gradient is dh itself: the same tensor, not a copy.
        Ok((Some(dx.unwrap_or_else(|| dh.clone())), Some(dh)))
    }
}
