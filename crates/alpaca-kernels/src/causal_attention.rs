//! Causal self-attention with grouped-query heads (GQA), fused: scores, causal + padding mask,
//! softmax in f32 and the weighted sum of values in one pass per query row; the backward
//! recomputes the probabilities (flash-attention style) instead of storing [T, T] per head.
//!
//! q [B, Hq, Tq, D], k/v [B, Hkv, Tk, D] with Hq = Hkv · G (query head h reads kv head h / G),
//! Tq ≤ Tk: the Tq queries are the last Tq positions, so with a KV cache (Tk − Tq past tokens)
//! query i sits at position P + i, P = Tk − Tq, and attends key j iff j ≤ P + i and
//! mask[b, j] ≠ 0 (mask [B, Tk], 1 = token, 0 = padding; none = all tokens).
//!   s_j = scale · q_i · k_j,  p = softmax(s) over the attended keys,  o_i = Σ_j p_j v_j
//! A query row that attends no key (all padded) gives o_i = 0 and zero gradients.
//!
//! Cost: O(B · Hq · Tq · Tk · D) with dot products over D; parallel over (batch, head).

use std::sync::Arc;

use crate::math;
use crate::util::{check_f32_cpu, slice_f32, tensor_from, with_f32};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Causal attention of `q` over `k`/`v` (shapes above) with an optional key padding `mask`
/// [B, Tk] (data, no gradient) and score `scale` (usually 1/√D). Differentiable w.r.t. q, k
/// and v, also when Tq < Tk (a KV cache); generation calls it forward only.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    const OP: &str = "causal_attention";
    check_f32_cpu(OP, "q", q)?;
    check_f32_cpu(OP, "k", k)?;
    check_f32_cpu(OP, "v", v)?;
    let dims4 = |t: &Tensor, what: &str| {
        t.dims4().map_err(|_| {
            candle_core::Error::Msg(format!(
                "{OP}: {what} must be [batch, heads, seq, head_dim], got {:?}",
                t.shape()
            ))
        })
    };
    let (b, hq, tq, d) = dims4(q, "q")?;
    let (kb, hkv, tk, kd) = dims4(k, "k")?;
    if v.dims() != k.dims() {
        bail!(
            "{OP}: v must have k's shape {:?}, got {:?}",
            k.shape(),
            v.shape()
        )
    }
    if kb != b || kd != d {
        bail!(
            "{OP}: k {:?} must match q {:?} in batch and head_dim",
            k.shape(),
            q.shape()
        )
    }
    if hkv == 0 || !hq.is_multiple_of(hkv) {
        bail!("{OP}: query heads {hq} must be a multiple of key/value heads {hkv}")
    }
    if tq > tk {
        bail!("{OP}: more queries ({tq}) than keys ({tk}); queries are the last Tq positions")
    }
    let mask = match mask {
        None => None,
        Some(m) => {
            check_f32_cpu(OP, "mask", m)?;
            if m.dims() != [b, tk] {
                bail!(
                    "{OP}: mask must be [{b}, {tk}] (batch, keys), got {:?}",
                    m.shape()
                )
            }
            Some(Arc::new(m.flatten_all()?.to_vec1::<f32>()?))
        }
    };
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        CausalAttention {
            mask,
            scale: scale as f32,
        },
    )
}

struct CausalAttention {
    /// [B, Tk], 1 = attend
    mask: Option<Arc<Vec<f32>>>,
    scale: f32,
}

/// Sizes of one call.
#[derive(Clone, Copy)]
struct Dims {
    hq: usize,
    hkv: usize,
    tq: usize,
    tk: usize,
    d: usize,
}

impl Dims {
    fn of(q: &[usize], k: &[usize]) -> Self {
        Dims {
            hq: q[1],
            tq: q[2],
            d: q[3],
            hkv: k[1],
            tk: k[2],
        }
    }

    fn groups(&self) -> usize {
        self.hq / self.hkv
    }
}

impl CausalAttention {
    /// Probabilities of query row `i` of batch `b` into `p[..Tk]` (0 at keys not attended);
    /// returns false when the row attends no key.
    #[inline(always)]
    fn probabilities(
        &self,
        dims: Dims,
        batch: usize,
        i: usize,
        q_row: &[f32],
        k_head: &[f32],
        p: &mut [f32],
    ) -> bool {
        let (tk, d) = (dims.tk, dims.d);
        let last = tk - dims.tq + i; // last key this query may see
        let mask = self.mask.as_deref().map(|m| &m[batch * tk..][..tk]);
        let mut max = f32::NEG_INFINITY;
        for (j, pj) in p[..tk].iter_mut().enumerate() {
            let attended = j <= last && mask.is_none_or(|m| m[j] != 0.0);
            *pj = if attended {
                let s = self.scale * math::dot(q_row, &k_head[j * d..][..d]);
                max = if s > max { s } else { max };
                s
            } else {
                f32::NEG_INFINITY
            };
        }
        if max == f32::NEG_INFINITY {
            p[..tk].fill(0.0);
            return false;
        }
        for pj in p[..tk].iter_mut() {
            *pj = if *pj == f32::NEG_INFINITY {
                0.0
            } else {
                math::exp(*pj - max)
            };
        }
        let inverse = 1.0 / math::sum(&p[..tk]);
        p[..tk].iter_mut().for_each(|pj| *pj *= inverse);
        true
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "alpaca-causal-attention"
    }

    // forward, per (b, h) in parallel and query row i:
    //   p = softmax over attended j of scale · q_i · k_j;  o_i = Σ_j p_j v_j      o [B, Hq, Tq, D]
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
        let (q, k, v) = (
            slice_f32(name, s1, l1)?,
            slice_f32(name, s2, l2)?,
            slice_f32(name, s3, l3)?,
        );
        let dims = Dims::of(l1.dims(), l2.dims());
        let (tq, tk, d, groups) = (dims.tq, dims.tk, dims.d, dims.groups());
        let mut out = vec![0.0f32; q.len()];
        if out.is_empty() {
            return Ok((CpuStorage::F32(out), l1.shape().clone()));
        }
        out.par_chunks_mut(tq * d)
            .zip(q.par_chunks(tq * d))
            .enumerate()
            .for_each(|(task, (o_head, q_head))| {
                let (batch, head) = (task / dims.hq, task % dims.hq);
                let kv = batch * dims.hkv + head / groups;
                let k_head = &k[kv * tk * d..][..tk * d];
                let v_head = &v[kv * tk * d..][..tk * d];
                math::simd(
                    #[inline(always)]
                    || {
                        let mut p = vec![0.0f32; tk];
                        for i in 0..tq {
                            let q_row = &q_head[i * d..][..d];
                            if !self.probabilities(dims, batch, i, q_row, k_head, &mut p) {
                                continue; // o_i stays 0
                            }
                            let o_row = &mut o_head[i * d..][..d];
                            for (j, &pj) in p.iter().enumerate() {
                                if pj != 0.0 {
                                    let v_row = &v_head[j * d..][..d];
                                    for (o, &vv) in o_row.iter_mut().zip(v_row) {
                                        *o += pj * vv;
                                    }
                                }
                            }
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    // backward, per (b, kv head) in parallel (it owns dk, dv of its kv head and dq of its G
    // query heads, so no two tasks write the same memory), per query row i (p recomputed):
    //   dp_j = do_i · v_j;   ds_j = p_j (dp_j − Σ_j' p_j' dp_j')
    //   dq_i = scale Σ_j ds_j k_j;   dk_j += scale ds_j q_i;   dv_j += p_j do_i
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let dims = Dims::of(q.dims(), k.dims());
        let (tq, tk, d, groups) = (dims.tq, dims.tk, dims.d, dims.groups());
        let (dq, dk, dv) = with_f32(name, q, |q| {
            with_f32(name, k, |k| {
                with_f32(name, v, |v| {
                    with_f32(name, grad_out, |dout| {
                        let mut dq = vec![0.0f32; q.len()];
                        let mut dk = vec![0.0f32; k.len()];
                        let mut dv = vec![0.0f32; v.len()];
                        if dq.is_empty() || dk.is_empty() {
                            return Ok((dq, dk, dv));
                        }
                        let q_block = groups * tq * d;
                        dq.par_chunks_mut(q_block)
                            .zip(dk.par_chunks_mut(tk * d))
                            .zip(dv.par_chunks_mut(tk * d))
                            .enumerate()
                            .for_each(|(task, ((dq_block, dk_head), dv_head))| {
                                let batch = task / dims.hkv;
                                let k_head = &k[task * tk * d..][..tk * d];
                                let v_head = &v[task * tk * d..][..tk * d];
                                let q_group = &q[task * q_block..][..q_block];
                                let do_group = &dout[task * q_block..][..q_block];
                                math::simd(
                                    #[inline(always)]
                                    || {
                                        let mut p = vec![0.0f32; tk];
                                        let mut dp = vec![0.0f32; tk];
                                        for row in 0..groups * tq {
                                            let i = row % tq;
                                            let q_row = &q_group[row * d..][..d];
                                            let do_row = &do_group[row * d..][..d];
                                            if !self.probabilities(
                                                dims, batch, i, q_row, k_head, &mut p,
                                            ) {
                                                continue;
                                            }
                                            let mut weighted = 0.0f32;
                                            for (j, (dpj, &pj)) in
                                                dp.iter_mut().zip(p.iter()).enumerate()
                                            {
                                                *dpj = if pj != 0.0 {
                                                    math::dot(do_row, &v_head[j * d..][..d])
                                                } else {
                                                    0.0
                                                };
                                                weighted += pj * *dpj;
                                            }
                                            let dq_row = &mut dq_block[row * d..][..d];
                                            for j in 0..tk {
                                                let pj = p[j];
                                                if pj == 0.0 {
                                                    continue;
                                                }
                                                let ds = self.scale * pj * (dp[j] - weighted);
                                                let k_row = &k_head[j * d..][..d];
                                                for (g, &kv) in dq_row.iter_mut().zip(k_row) {
                                                    *g += ds * kv;
                                                }
                                                let dk_row = &mut dk_head[j * d..][..d];
                                                for (g, &qv) in dk_row.iter_mut().zip(q_row) {
                                                    *g += ds * qv;
                                                }
                                                let dv_row = &mut dv_head[j * d..][..d];
                                                for (g, &ov) in dv_row.iter_mut().zip(do_row) {
                                                    *g += pj * ov;
                                                }
                                            }
                                        }
                                    },
                                )
                            });
                        Ok((dq, dk, dv))
                    })
                })
            })
        })?;
        Ok((
            Some(tensor_from(dq, q.shape())?),
            Some(tensor_from(dk, k.shape())?),
            Some(tensor_from(dv, v.shape())?),
        ))
    }
}
