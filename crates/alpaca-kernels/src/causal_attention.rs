//! Causal self-attention with grouped-query heads (GQA), fused: scores, causal + padding mask,
//! softmax in f32 and the weighted sum of values per block of query rows; the backward
//! recomputes the probabilities (flash-attention style) instead of storing [T, T] per head.
//!
//! q [B, Hq, Tq, D], k/v [B, Hkv, Tk, D] with Hq = Hkv · G (query head h reads kv head h / G),
//! Tq ≤ Tk: the Tq queries are the last Tq positions, so with a KV cache (Tk − Tq past tokens)
//! query i sits at position P + i, P = Tk − Tq, and attends key j iff j ≤ P + i and
//! mask[b, j] ≠ 0 (mask [B, Tk], 1 = token, 0 = padding; none = all tokens).
//!   s_j = scale · q_i · k_j,  p = softmax(s) over the attended keys,  o_i = Σ_j p_j v_j
//! A query row that attends no key (all padded) gives o_i = 0 and zero gradients.
//!
//! How: per (batch, kv head) and block of `BLOCK` query positions, the rows of all G query
//! heads that share the kv head are gathered into one [G·rows, D] matrix; its scores against
//! the keys the block may see (up to the causal diagonal of its last position) are one `gemm`
//! call into a scratch [G·rows, Tk] buffer, masked and soft-maxed in place, and multiplied by
//! V in a second `gemm`; the backward does the same five products per block (S, dP, dQ, dK,
//! dV), dK and dV summed over the G heads inside the gemm. Blocks skip the keys above the
//! diagonal, so about half of the dense Tq·Tk work is done. Parallel over (batch, kv head);
//! scratch buffers per task, none per row. Cost: O(B · Hq · Tq · Tk · D).
//!
//! The same kernel serves BERT through [`crate::bidirectional_attention`]: a non-causal mode
//! (every unpadded key) and dropout on the probabilities (P_d = dropout(P) multiplies V; the
//! backward takes dV from P_d and dP = dropout(dP_d), masks recomputed from their index).

use std::sync::Arc;

use crate::dropout::Dropout;
use crate::math;
use crate::util::{check_f32_cpu, par_new, par_zeros, slice_f32, tensor_from, with_f32};
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
    check_operands(OP, q, k, v)?;
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
    if kb != b || kd != d {
        bail!(
            "{OP}: k {:?} must match q {:?} in batch and head_dim",
            k.shape(),
            q.shape()
        )
    }
    check_head_groups(OP, hq, hkv)?;
    if tq > tk {
        bail!("{OP}: more queries ({tq}) than keys ({tk}); queries are the last Tq positions")
    }
    let mask = key_mask(OP, mask, b, tk)?;
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        CausalAttention {
            mask,
            scale: scale as f32,
            dropout: None,
        },
    )
}

/// q, k and v are f32 on the CPU, and v has k's shape.
pub(crate) fn check_operands(op: &str, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<()> {
    check_f32_cpu(op, "q", q)?;
    check_f32_cpu(op, "k", k)?;
    check_f32_cpu(op, "v", v)?;
    if v.dims() != k.dims() {
        bail!(
            "{op}: v must have k's shape {:?}, got {:?}",
            k.shape(),
            v.shape()
        )
    }
    Ok(())
}

/// Query heads come in whole groups per key/value head.
pub(crate) fn check_head_groups(op: &str, hq: usize, hkv: usize) -> Result<()> {
    if hkv == 0 || !hq.is_multiple_of(hkv) {
        bail!("{op}: query heads {hq} must be a multiple of key/value heads {hkv}")
    }
    Ok(())
}

/// The key padding mask [B, Tk] as data, checked.
pub(crate) fn key_mask(
    op: &str,
    mask: Option<&Tensor>,
    b: usize,
    tk: usize,
) -> Result<Option<Arc<Vec<f32>>>> {
    let Some(m) = mask else { return Ok(None) };
    check_f32_cpu(op, "mask", m)?;
    if m.dims() != [b, tk] {
        bail!(
            "{op}: mask must be [{b}, {tk}] (batch, keys), got {:?}",
            m.shape()
        )
    }
    Ok(Some(Arc::new(m.flatten_all()?.to_vec1::<f32>()?)))
}

pub(crate) struct CausalAttention {
    /// [B, Tk], 1 = attend
    pub(crate) mask: Option<Arc<Vec<f32>>>,
    pub(crate) scale: f32,
    /// Dropout on the probabilities (BERT's attention_probs_dropout_prob when training).
    pub(crate) dropout: Option<Dropout>,
}

/// Sizes of one call.
#[derive(Clone, Copy)]
pub(crate) struct Dims {
    pub(crate) hq: usize,
    pub(crate) hkv: usize,
    pub(crate) tq: usize,
    pub(crate) tk: usize,
    pub(crate) d: usize,
    /// false: every query sees every (unpadded) key, as in BERT's encoder.
    pub(crate) causal: bool,
}

impl Dims {
    fn of(q: &[usize], k: &[usize]) -> Self {
        Dims {
            hq: q[1],
            tq: q[2],
            d: q[3],
            hkv: k[1],
            tk: k[2],
            causal: true,
        }
    }

    fn groups(&self) -> usize {
        self.hq / self.hkv
    }
}

/// Query positions per block: one gemm per block and product, over G·BLOCK rows. Smaller
/// blocks skip more of the masked upper triangle, larger ones run gemm at a better rate
/// (measured in examples/attention_bench.rs; docs/engine.md).
const BLOCK: usize = 64;

/// dst (row stride `dst_rs`) = [dst +] beta · lhs · rhs for an m × k by k × n product, with
/// every operand given by (row stride, column stride) so transposes cost nothing.
/// Single-threaded: the callers are already parallel over heads.
#[allow(clippy::too_many_arguments)]
#[inline]
fn gemm_block(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    beta: f32,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() > (m - 1) * dst_rs + (n - 1));
    assert!(k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(k == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the asserts keep every index gemm forms from these strides inside the slices;
    // dst is exclusively borrowed and does not alias lhs or rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// One block of query positions i0..i0+rows (of every head of a group); they see keys
/// 0..keys.
#[derive(Clone, Copy)]
struct Block {
    i0: usize,
    rows: usize,
    keys: usize,
}

impl Dims {
    /// The blocks of query positions.
    fn blocks(&self) -> impl Iterator<Item = Block> + '_ {
        let past = self.tk - self.tq;
        (0..self.tq).step_by(BLOCK).map(move |i0| {
            let rows = BLOCK.min(self.tq - i0);
            Block {
                i0,
                rows,
                keys: if self.causal {
                    (past + i0 + rows).min(self.tk)
                } else {
                    self.tk
                },
            }
        })
    }
}

/// Copies the block's rows of the G heads of a group ([G, Tq, D] at `group`) into `stacked`
/// ([G·rows, D], head-major), or back with `scatter`.
#[inline(always)]
fn gather(dims: Dims, block: Block, group: &[f32], stacked: &mut [f32]) {
    let (d, n) = (dims.d, block.rows * dims.d);
    for (g, rows) in stacked[..dims.groups() * n].chunks_exact_mut(n).enumerate() {
        rows.copy_from_slice(&group[(g * dims.tq + block.i0) * d..][..n]);
    }
}

#[inline(always)]
fn scatter(dims: Dims, block: Block, stacked: &[f32], group: &mut [f32]) {
    let (d, n) = (dims.d, block.rows * dims.d);
    for (g, rows) in stacked[..dims.groups() * n].chunks_exact(n).enumerate() {
        group[(g * dims.tq + block.i0) * d..][..n].copy_from_slice(rows);
    }
}

/// Per-task scratch: stacked rows of the G heads of a block.
struct Scratch {
    /// [G·BLOCK, Tk]: probabilities
    p: Vec<f32>,
    /// [G·BLOCK, Tk]: dP, then dS (backward only)
    ds: Vec<f32>,
    /// [G·BLOCK, D] each: Q rows, and the output rows (forward) or dO rows (backward)
    q: Vec<f32>,
    o: Vec<f32>,
    /// [G·BLOCK, D]: dQ rows (backward only)
    dq: Vec<f32>,
}

impl Scratch {
    fn new(dims: Dims, backward: bool) -> Self {
        let rows = dims.groups() * BLOCK.min(dims.tq);
        let grad = |n: usize| vec![0.0f32; if backward { n } else { 0 }];
        Scratch {
            p: vec![0.0; rows * dims.tk],
            ds: grad(rows * dims.tk),
            q: vec![0.0; rows * dims.d],
            o: vec![0.0; rows * dims.d],
            dq: grad(rows * dims.d),
        }
    }
}

impl CausalAttention {
    /// Scores → probabilities in place for one block: `s` holds [G·rows, keys] (row stride
    /// `keys`) of scale · q_i · k_j; masked keys become 0, each row is soft-maxed over the
    /// rest, a row that attends no key becomes all 0.
    #[inline(always)]
    fn softmax_block(&self, dims: Dims, batch: usize, block: Block, s: &mut [f32]) {
        let keys = block.keys;
        let past = dims.tk - dims.tq;
        let mask = self.mask.as_deref().map(|m| &m[batch * dims.tk..][..keys]);
        let rows = dims.groups() * block.rows;
        for (r, row) in s[..rows * keys].chunks_exact_mut(keys).enumerate() {
            // the last key this query may see
            let last = if dims.causal {
                past + block.i0 + r % block.rows
            } else {
                keys - 1
            };
            let visible = &mut row[..(last + 1).min(keys)];
            if let Some(mask) = mask {
                for (x, &m) in visible.iter_mut().zip(mask) {
                    *x = if m != 0.0 { *x } else { f32::NEG_INFINITY };
                }
            }
            let max = math::max(visible);
            if max == f32::NEG_INFINITY {
                row.fill(0.0);
                continue;
            }
            for x in visible.iter_mut() {
                *x = if *x == f32::NEG_INFINITY {
                    0.0
                } else {
                    math::exp(*x - max)
                };
            }
            let inverse = 1.0 / math::sum(visible);
            visible.iter_mut().for_each(|x| *x *= inverse);
            let n = visible.len();
            row[n..].fill(0.0);
        }
    }

    /// P = softmax(scale · Q Kᵀ) for one block's stacked rows `q` ([G·rows, D]) into `p`
    /// ([G·rows, keys], row stride keys).
    #[inline(always)]
    fn probabilities(
        &self,
        dims: Dims,
        batch: usize,
        block: Block,
        q: &[f32],
        k_head: &[f32],
        p: &mut [f32],
    ) {
        let d = dims.d;
        gemm_block(
            (dims.groups() * block.rows, block.keys, d),
            p,
            block.keys,
            false,
            self.scale,
            q,
            (d, 1),
            k_head,
            (1, d),
        );
        math::simd(
            #[inline(always)]
            || self.softmax_block(dims, batch, block, p),
        );
    }
}

impl CausalAttention {
    /// o [B, Hq, Tq, D] from contiguous q [B, Hq, Tq, D], k and v [B, Hkv, Tk, D].
    pub(crate) fn forward(&self, dims: Dims, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let (tq, tk, d, groups) = (dims.tq, dims.tk, dims.d, dims.groups());
        if q.is_empty() || tk == 0 {
            return vec![0.0f32; q.len()];
        }
        let group = groups * tq * d;
        par_new(q.len(), group, |task, o_group| {
            let q_group = &q[task * group..][..group];
            let batch = task / dims.hkv;
            let k_head = &k[task * tk * d..][..tk * d];
            let v_head = &v[task * tk * d..][..tk * d];
            let mut scratch = Scratch::new(dims, false);
            for block in dims.blocks() {
                gather(dims, block, q_group, &mut scratch.q);
                self.probabilities(dims, batch, block, &scratch.q, k_head, &mut scratch.p);
                self.drop_probabilities(dims, task, block, &mut scratch.p);
                gemm_block(
                    (groups * block.rows, d, block.keys),
                    &mut scratch.o,
                    d,
                    false,
                    1.0,
                    &scratch.p,
                    (block.keys, 1),
                    v_head,
                    (d, 1),
                );
                scatter(dims, block, &scratch.o, o_group);
            }
        })
    }

    /// (dq, dk, dv) in the layouts of q, k and v, from dout in o's.
    pub(crate) fn backward(
        &self,
        dims: Dims,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dout: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (tq, tk, d, groups) = (dims.tq, dims.tk, dims.d, dims.groups());
        // Zeroed by all threads: `vec![0.0; n]` would be three serial passes the other
        // threads wait for.
        let mut dq = par_zeros(q.len());
        let mut dk = par_zeros(k.len());
        let mut dv = par_zeros(v.len());
        if dq.is_empty() || dk.is_empty() {
            return (dq, dk, dv);
        }
        let group = groups * tq * d;
        dq.par_chunks_mut(group)
            .zip(dk.par_chunks_mut(tk * d))
            .zip(dv.par_chunks_mut(tk * d))
            .enumerate()
            .for_each(|(task, ((dq_group, dk_head), dv_head))| {
                let mut scratch = Scratch::new(dims, true);
                for block in dims.blocks() {
                    self.backward_block(
                        dims,
                        task,
                        block,
                        &mut scratch,
                        (
                            &q[task * group..][..group],
                            &k[task * tk * d..][..tk * d],
                            &v[task * tk * d..][..tk * d],
                            &dout[task * group..][..group],
                        ),
                        (&mut *dq_group, &mut *dk_head, &mut *dv_head),
                    );
                }
            });
        (dq, dk, dv)
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "alpaca-causal-attention"
    }

    // forward, per (b, kv head) in parallel and block of query positions, the G heads'
    // rows stacked:
    //   P = softmax over attended j of scale · Q Kᵀ;  O = P V      o [B, Hq, Tq, D]
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
        let out = self.forward(Dims::of(l1.dims(), l2.dims()), q, k, v);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    // backward, per (b, kv head) in parallel (it owns dk, dv of its kv head and dq of its G
    // query heads, so no two tasks write the same memory), per block of query positions with
    // the G heads' rows stacked (P recomputed):
    //   dP = dO Vᵀ;   dS = scale · P ∘ (dP − rowsum(P ∘ dP))
    //   dQ = dS K;   dK += dSᵀ Q;   dV += Pᵀ dO
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
        let (dq, dk, dv) = with_f32(name, q, |q| {
            with_f32(name, k, |k| {
                with_f32(name, v, |v| {
                    with_f32(
                        name,
                        grad_out,
                        |dout| Ok(self.backward(dims, q, k, v, dout)),
                    )
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

impl CausalAttention {
    /// Attention dropout, in place, on one block's stacked probabilities (or their gradient)
    /// `p` [G·rows, keys] of group `task` (batch · Hkv + kv head): element (head, i, j) keeps
    /// the mask of its index in a contiguous [B, Hq, Tq, Tk] tensor, as `dropout` over the
    /// composed probabilities would.
    fn drop_probabilities(&self, dims: Dims, task: usize, block: Block, p: &mut [f32]) {
        let Some(dropout) = &self.dropout else {
            return;
        };
        let keys = block.keys;
        let (batch, kv_head) = (task / dims.hkv, task % dims.hkv);
        let rows = dims.groups() * block.rows;
        math::simd(
            #[inline(always)]
            || {
                for (r, row) in p[..rows * keys].chunks_exact_mut(keys).enumerate() {
                    let head = kv_head * dims.groups() + r / block.rows;
                    let query = block.i0 + r % block.rows;
                    dropout.scale_kept(((batch * dims.hq + head) * dims.tq + query) * dims.tk, row);
                }
            },
        );
    }

    /// The backward of one block of query positions of one group (see `bwd`); with dropout
    /// P_d = dropout(P) is what multiplied V: dV from P_d, and dP = dropout(dP_d).
    #[allow(clippy::type_complexity)]
    fn backward_block(
        &self,
        dims: Dims,
        task: usize,
        block: Block,
        scratch: &mut Scratch,
        (q_group, k_head, v_head, do_group): (&[f32], &[f32], &[f32], &[f32]),
        (dq_group, dk_head, dv_head): (&mut [f32], &mut [f32], &mut [f32]),
    ) {
        let (d, keys) = (dims.d, block.keys);
        let rows = dims.groups() * block.rows;
        let Scratch {
            p,
            ds,
            q,
            o: dout,
            dq,
        } = scratch;
        gather(dims, block, q_group, q);
        gather(dims, block, do_group, dout);
        self.probabilities(dims, task / dims.hkv, block, q, k_head, p);
        // dP = dO Vᵀ  [rows, keys]
        gemm_block(
            (rows, keys, d),
            ds,
            keys,
            false,
            1.0,
            dout,
            (d, 1),
            v_head,
            (1, d),
        );
        self.drop_probabilities(dims, task, block, ds);
        // dS = scale · P ∘ (dP − Σ_j P dP), in place of dP
        let scale = self.scale;
        math::simd(
            #[inline(always)]
            || {
                for (p_row, ds_row) in p[..rows * keys]
                    .chunks_exact(keys)
                    .zip(ds[..rows * keys].chunks_exact_mut(keys))
                {
                    let weighted = math::dot(p_row, ds_row);
                    for (x, &pj) in ds_row.iter_mut().zip(p_row) {
                        *x = scale * pj * (*x - weighted);
                    }
                }
            },
        );
        // dQ = dS K  [rows, d]
        gemm_block(
            (rows, d, keys),
            dq,
            d,
            false,
            1.0,
            ds,
            (keys, 1),
            k_head,
            (d, 1),
        );
        scatter(dims, block, dq, dq_group);
        // dK[..keys] += dSᵀ Q  [keys, d], summed over the G heads' rows
        gemm_block(
            (keys, d, rows),
            dk_head,
            d,
            true,
            1.0,
            ds,
            (1, keys),
            q,
            (d, 1),
        );
        // dV[..keys] += P_dᵀ dO  [keys, d]  (P is not needed after dS)
        self.drop_probabilities(dims, task, block, p);
        gemm_block(
            (keys, d, rows),
            dv_head,
            d,
            true,
            1.0,
            p,
            (1, keys),
            dout,
            (d, 1),
        );
    }
}
