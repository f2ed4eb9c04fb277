//! GELU (exact erf form, HF "gelu") and the fused bias + GELU, forward and backward.
//!
//!   gelu(x)  = x · Φ(x),           Φ = standard normal CDF
//!   gelu'(x) = Φ(x) + x · φ(x),    φ = standard normal density

use crate::math;
use crate::util::{
    check_f32_cpu, par_new, par_new_reduce, rows_per_task, slice_f32, tensor_from, with_f32,
};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

/// Elements per rayon task for element-wise kernels.
const CHUNK: usize = 16 * 1024;

/// Exact-erf GELU, element-wise, any shape. Differentiable.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    check_f32_cpu("gelu", "x", x)?;
    x.contiguous()?.apply_op1(Gelu)
}

/// `gelu(x + bias)` fused; `bias` has shape [C] (the last dim of x). Differentiable
/// w.r.t. x and bias.
pub fn bias_gelu(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    const OP: &str = "bias_gelu";
    check_f32_cpu(OP, "x", x)?;
    check_f32_cpu(OP, "bias", bias)?;
    match x.dims().last() {
        Some(&c) if c > 0 && bias.dims() == [c] => {}
        _ => bail!(
            "{OP}: bias must have shape [C] with C the last dim of x; got x {:?}, bias {:?}",
            x.shape(),
            bias.shape()
        ),
    }
    x.contiguous()?.apply_op2(&bias.contiguous()?, BiasGelu)
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "alpaca-gelu"
    }

    // forward: y = x · Φ(x)   (any shape, element-wise)
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(self.name(), s, l)?;
        let y = par_new(x.len(), CHUNK, |chunk, yc| {
            let xc = &x[chunk * CHUNK..][..yc.len()];
            math::simd(
                #[inline(always)]
                || {
                    for (o, &v) in yc.iter_mut().zip(xc) {
                        *o = math::gelu(v);
                    }
                },
            )
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    // backward: dx = dy · (Φ(x) + x φ(x))
    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let name = self.name();
        let dx = with_f32(name, x, |x| {
            with_f32(name, dy, |dy| {
                Ok(par_new(x.len(), CHUNK, |chunk, o| {
                    let start = chunk * CHUNK;
                    let (xc, gc) = (&x[start..][..o.len()], &dy[start..][..o.len()]);
                    math::simd(
                        #[inline(always)]
                        || {
                            for ((o, &v), &g) in o.iter_mut().zip(xc).zip(gc) {
                                *o = g * math::gelu_grad(v);
                            }
                        },
                    )
                }))
            })
        })?;
        Ok(Some(tensor_from(dx, x.shape())?))
    }
}

struct BiasGelu;

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "alpaca-bias-gelu"
    }

    // forward: y[n, c] = gelu(x[n, c] + bias[c])       x, y [N, C]; bias [C]
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(self.name(), s1, l1)?;
        let b = slice_f32(self.name(), s2, l2)?;
        let c = b.len();
        let rows = rows_per_task(c);
        let y = par_new(x.len(), rows * c, |block, yb| {
            let xb = &x[block * rows * c..][..yb.len()];
            for (yr, xr) in yb.chunks_exact_mut(c).zip(xb.chunks_exact(c)) {
                for ((o, &v), &bi) in yr.iter_mut().zip(xr).zip(b) {
                    *o = math::gelu(v + bi);
                }
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    // backward:
    //   dx[n, c] = dy[n, c] · gelu'(x[n, c] + bias[c])    [N, C]
    //   dbias[c] = Σ_n dx[n, c]                            [C]
    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let c = bias.elem_count();
        let (dx, db) = with_f32(name, x, |x| {
            with_f32(name, bias, |b| {
                with_f32(name, dy, |dy| {
                    let rows = rows_per_task(c);
                    let (dx, db) = par_new_reduce(
                        x.len(),
                        rows * c,
                        |block, dxb| {
                            let start = block * rows * c;
                            let (xb, gb) = (&x[start..][..dxb.len()], &dy[start..][..dxb.len()]);
                            let mut db = vec![0.0f32; c];
                            for ((dxr, xr), gr) in dxb
                                .chunks_exact_mut(c)
                                .zip(xb.chunks_exact(c))
                                .zip(gb.chunks_exact(c))
                            {
                                for ((((o, &v), &g), &bi), acc) in
                                    dxr.iter_mut().zip(xr).zip(gr).zip(b).zip(db.iter_mut())
                                {
                                    let d = g * math::gelu_grad(v + bi);
                                    *o = d;
                                    *acc += d;
                                }
                            }
                            db
                        },
                        || vec![0.0f32; c],
                        |mut a, b| {
                            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                            a
                        },
                    );
                    Ok((dx, db))
                })
            })
        })?;
        Ok((Some(tensor_from(dx, x.shape())?), Some(tensor_from(db, c)?)))
    }
}
