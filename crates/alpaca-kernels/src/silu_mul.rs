//! SwiGLU's gate: `silu(gate) · up` fused (LLaMA's MLP), forward and backward.
//!
//! gate [..], up [..] (same shape) -> y [..]
//!   σ(g) = 1 / (1 + e^{−g}),  silu(g) = g · σ(g),  y = silu(g) · u
//!   dy/dg = u · σ(g) · (1 + g · (1 − σ(g))),  dy/du = silu(g)
//! One pass instead of candle's silu, mul and their backward temporaries.

use crate::math;
use crate::util::{check_f32_cpu, slice_f32, tensor_from, with_f32};
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per rayon task.
const CHUNK: usize = 16 * 1024;

/// `silu(gate) · up`, element-wise; both of the same shape. Differentiable w.r.t. both.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    const OP: &str = "silu_mul";
    check_f32_cpu(OP, "gate", gate)?;
    check_f32_cpu(OP, "up", up)?;
    if gate.dims() != up.dims() {
        bail!(
            "{OP}: gate and up must have the same shape, got {:?} and {:?}",
            gate.shape(),
            up.shape()
        )
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
}

/// σ(g) with the vectorisable exp (clamped, so no inf/NaN for large |g|).
#[inline(always)]
fn sigmoid(g: f32) -> f32 {
    1.0 / (1.0 + math::exp(-g))
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "alpaca-silu-mul"
    }

    // forward: y = g · σ(g) · u
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gate = slice_f32(self.name(), s1, l1)?;
        let up = slice_f32(self.name(), s2, l2)?;
        let mut y = vec![0.0f32; gate.len()];
        y.par_chunks_mut(CHUNK)
            .zip(gate.par_chunks(CHUNK))
            .zip(up.par_chunks(CHUNK))
            .for_each(|((yc, gc), uc)| {
                math::simd(
                    #[inline(always)]
                    || {
                        for ((o, &g), &u) in yc.iter_mut().zip(gc).zip(uc) {
                            *o = g * sigmoid(g) * u;
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    // backward (dy = grad_res):
    //   dgate = dy · u · σ(g) · (1 + g · (1 − σ(g)))
    //   dup   = dy · g · σ(g)
    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let (dgate, dup) = with_f32(name, gate, |gate| {
            with_f32(name, up, |up| {
                with_f32(name, grad_res, |dy| {
                    let mut dgate = vec![0.0f32; gate.len()];
                    let mut dup = vec![0.0f32; gate.len()];
                    dgate
                        .par_chunks_mut(CHUNK)
                        .zip(dup.par_chunks_mut(CHUNK))
                        .zip(gate.par_chunks(CHUNK))
                        .zip(up.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
                        .for_each(|(((dgc, duc), gc), (uc, dyc))| {
                            math::simd(
                                #[inline(always)]
                                || {
                                    for ((((dg, du), &g), &u), &d) in
                                        dgc.iter_mut().zip(duc.iter_mut()).zip(gc).zip(uc).zip(dyc)
                                    {
                                        let s = sigmoid(g);
                                        *dg = d * u * s * (1.0 + g * (1.0 - s));
                                        *du = d * g * s;
                                    }
                                },
                            )
                        });
                    Ok((dgate, dup))
                })
            })
        })?;
        Ok((
            Some(tensor_from(dgate, gate.shape())?),
            Some(tensor_from(dup, up.shape())?),
        ))
    }
}
