//! Attention between the projections as one op, taking and returning the projections' own
//! token-major layout [B, T, H·D]: LLaMA's (rotary embedding of queries and keys, causal,
//! grouped-query heads) and BERT's (bidirectional), both with the key padding mask.
//!
//! Why: composed from candle ops the same work is a dozen graph nodes per layer (per q, k and
//! v a reshape, a transpose and a copy; LLaMA's two ropes; the products and softmax; a
//! transpose, a copy and a reshape back), and candle's backward allocates a zeroed gradient
//! and adds into it at every node: a dozen full-size passes per layer besides the strided
//! copies, which candle runs on one thread. Here the layout changes are parallel copies into
//! the op's own buffers, and backward visits one node. The numbers are those of
//! [`crate::rope`] followed by [`crate::causal_attention`]: the same code runs on the
//! head-major copies.
//!
//! Training and scoring only (all T positions at once, offset 0); decoding with a KV cache
//! keeps the composed ops, whose cache holds rotated keys.

use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use crate::causal_attention::{check_head_groups, check_operands, key_mask, CausalAttention, Dims};
use crate::dropout::Dropout;
use crate::packed_tokens::{PackedTokens, NO_ROW};
use crate::rope::{Rope, RopeTables};
use crate::util::{par_new, slice_f32, tensor_from, with_f32};

/// q [B, T, Hq·D], k and v [B, T, Hkv·D] (Hq a multiple of Hkv, D the tables' head size) →
/// attention output [B, T, Hq·D], with rope applied to q and k at positions 0..T, the
/// optional key padding `mask` [B, T] (1 = token) and score `scale`. Differentiable w.r.t.
/// q, k and v.
pub fn rotary_causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    tables: &RopeTables,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let d = tables.head_dim();
    let t = q.dims().get(1).copied().unwrap_or(0);
    if t > tables.positions() {
        bail!(
            "rotary causal attention: {t} positions exceed the {} of the tables (max_position_embeddings)",
            tables.positions()
        )
    }
    let attention = Attention {
        d,
        rope: Some(tables),
        causal: true,
        keys: Keys::Padded(mask),
        scale,
        dropout: None,
    };
    token_major_attention(q, k, v, attention)
}

/// Dropout on attention probabilities: each element kept with probability 1 − `probability`
/// (and scaled by 1/(1 − p)), its mask a function of `seed` and its place in [B, H, T, T].
#[derive(Debug, Clone, Copy)]
pub struct AttentionDropout {
    pub probability: f32,
    pub seed: u64,
}

/// BERT's self-attention on packed tokens: q, k and v [1, n, H·D] (the n real tokens of a
/// batch, laid out by `tokens`) with `heads` = H → [1, n, H·D], every query over every token
/// of its own sequence, scores scaled by `scale`, and when training `dropout` on the
/// probabilities (the masks `dropout` would draw over the padded [B, H, T, T] probabilities
/// with the same seed). Differentiable w.r.t. q, k and v.
pub fn bidirectional_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    tokens: &PackedTokens,
    scale: f64,
    dropout: Option<AttentionDropout>,
) -> Result<Tensor> {
    let width = q.dims().last().copied().unwrap_or(0);
    if heads == 0 || !width.is_multiple_of(heads) {
        bail!(
            "bidirectional attention: q {:?} does not split into {heads} heads",
            q.shape()
        )
    }
    let dropout = match dropout {
        Some(d) => Dropout::active("bidirectional attention", d.probability, d.seed)?,
        None => None,
    };
    let attention = Attention {
        d: width / heads,
        rope: None,
        causal: false,
        keys: Keys::Packed(tokens),
        scale,
        dropout,
    };
    token_major_attention(q, k, v, attention)
}

/// What a token-major attention call computes, besides its operands.
struct Attention<'a> {
    /// head size
    d: usize,
    rope: Option<&'a RopeTables>,
    causal: bool,
    keys: Keys<'a>,
    scale: f64,
    dropout: Option<Dropout>,
}

/// How the operands lay out the batch, and so which keys each query may see.
enum Keys<'a> {
    /// [B, T, width] with an optional key padding mask [B, T] (padding computed, not seen).
    Padded(Option<&'a Tensor>),
    /// [1, n, width]: only the real tokens, keys within each one's own sequence.
    Packed(&'a PackedTokens),
}

fn token_major_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    attention: Attention,
) -> Result<Tensor> {
    let Attention {
        d,
        rope,
        causal,
        keys,
        scale,
        dropout,
    } = attention;
    const OP: &str = "attention";
    check_operands(OP, q, k, v)?;
    let dims3 = |t: &Tensor, what: &str| {
        t.dims3().map_err(|_| {
            candle_core::Error::Msg(format!(
                "{OP}: {what} must be [batch, seq, heads·head_dim], got {:?}",
                t.shape()
            ))
        })
    };
    let (qb, qt, q_width) = dims3(q, "q")?;
    let (kb, kt, kv_width) = dims3(k, "k")?;
    if (kb, kt) != (qb, qt) {
        bail!(
            "{OP}: k {:?} must match q {:?} in batch and length",
            k.shape(),
            q.shape()
        )
    }
    // t: the padded length the kernel works on.
    let (t, mask, packing) = match keys {
        Keys::Padded(mask) => (qt, key_mask(OP, mask, qb, qt)?, None),
        Keys::Packed(tokens) => {
            if (qb, qt) != (1, tokens.rows()) {
                bail!(
                    "{OP}: packed q {:?} must be [1, {}, heads·head_dim]",
                    q.shape(),
                    tokens.rows()
                )
            }
            let mask = Arc::new(tokens.key_mask());
            (tokens.length(), Some(mask), Some(tokens.clone()))
        }
    };
    if !q_width.is_multiple_of(d) || !kv_width.is_multiple_of(d) || kv_width == 0 {
        bail!(
            "{OP}: q {:?} and k {:?} must be whole heads of head_dim {d}",
            q.shape(),
            k.shape()
        )
    }
    let (hq, hkv) = (q_width / d, kv_width / d);
    check_head_groups(OP, hq, hkv)?;
    let attention = CausalAttention {
        mask,
        scale: scale as f32,
        dropout,
    };
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        TokenMajorAttention {
            attention,
            rope: rope.cloned(),
            packing,
            dims: Dims {
                hq,
                hkv,
                tq: t,
                tk: t,
                d,
                causal,
            },
        },
    )
}

struct TokenMajorAttention {
    attention: CausalAttention,
    /// LLaMA's rotary embedding of q and k, when given.
    rope: Option<RopeTables>,
    /// The operands hold only these tokens ([`Keys::Packed`]).
    packing: Option<PackedTokens>,
    dims: Dims,
}

/// [O, M, N, D] → [O, N, M, D]: between token-major [batch, T, H, D] and head-major
/// [batch, H, T, D], either way.
fn swap_middle(x: &[f32], m: usize, n: usize, d: usize) -> Vec<f32> {
    par_new(x.len(), m * d, |outer_and_j, rows| {
        let (outer, j) = (outer_and_j / n, outer_and_j % n);
        for (i, row) in rows.chunks_exact_mut(d).enumerate() {
            row.copy_from_slice(&x[((outer * m + i) * n + j) * d..][..d]);
        }
    })
}

/// [B, T, H, D] → [B, H, T, D], `heads` = H.
fn to_head_major(x: &[f32], t: usize, heads: usize, d: usize) -> Vec<f32> {
    swap_middle(x, t, heads, d)
}

/// [B, H, T, D] → [B, T, H, D], `heads` = H.
fn to_token_major(x: &[f32], t: usize, heads: usize, d: usize) -> Vec<f32> {
    swap_middle(x, heads, t, d)
}

/// Packed rows [n, H, D] → head-major [B, H, T, D], padding slots zero.
fn packed_to_head_major(x: &[f32], tokens: &PackedTokens, heads: usize, d: usize) -> Vec<f32> {
    let t = tokens.length();
    par_new(
        tokens.batch() * heads * t * d,
        t * d,
        |batch_and_head, rows| {
            let (batch, head) = (batch_and_head / heads, batch_and_head % heads);
            for (i, row) in rows.chunks_exact_mut(d).enumerate() {
                let packed = tokens.row_of_slot(batch * t + i);
                if packed != NO_ROW {
                    row.copy_from_slice(&x[(packed as usize * heads + head) * d..][..d]);
                }
            }
        },
    )
}

/// Head-major [B, H, T, D] → packed rows [n, H, D] (padding slots dropped).
fn head_major_to_packed(x: &[f32], tokens: &PackedTokens, heads: usize, d: usize) -> Vec<f32> {
    let t = tokens.length();
    let slots = tokens.slots();
    par_new(tokens.rows() * heads * d, heads * d, |packed, row| {
        let slot = slots[packed] as usize;
        let (batch, i) = (slot / t, slot % t);
        for (head, part) in row.chunks_exact_mut(d).enumerate() {
            part.copy_from_slice(&x[((batch * heads + head) * t + i) * d..][..d]);
        }
    })
}

impl TokenMajorAttention {
    fn rope(&self, inverse: bool) -> Option<Rope> {
        self.rope.as_ref().map(|tables| Rope {
            tables: tables.clone(),
            offset: 0,
            inverse,
        })
    }

    /// An operand (or its gradient) in the kernel's head-major layout.
    fn to_kernel_layout(&self, x: &[f32], heads: usize) -> Vec<f32> {
        let Dims { tq: t, d, .. } = self.dims;
        match &self.packing {
            Some(tokens) => packed_to_head_major(x, tokens, heads, d),
            None => to_head_major(x, t, heads, d),
        }
    }

    /// A head-major result in the operands' layout.
    fn to_operand_layout(&self, x: &[f32], heads: usize) -> Vec<f32> {
        let Dims { tq: t, d, .. } = self.dims;
        match &self.packing {
            Some(tokens) => head_major_to_packed(x, tokens, heads, d),
            None => to_token_major(x, t, heads, d),
        }
    }

    /// The head-major q, k (rotated, with rope) and v the attention kernel works on.
    fn head_major(&self, q: &[f32], k: &[f32], v: &[f32]) -> [Vec<f32>; 3] {
        let Dims { hq, hkv, tq: t, .. } = self.dims;
        let (q, k) = (self.to_kernel_layout(q, hq), self.to_kernel_layout(k, hkv));
        let (q, k) = match self.rope(false) {
            Some(rope) => (rope.apply(&q, t), rope.apply(&k, t)),
            None => (q, k),
        };
        [q, k, self.to_kernel_layout(v, hkv)]
    }
}

impl CustomOp3 for TokenMajorAttention {
    fn name(&self) -> &'static str {
        "alpaca-token-major-attention"
    }

    fn cpu_fwd(
        &self,
        q_storage: &CpuStorage,
        q_layout: &Layout,
        k_storage: &CpuStorage,
        k_layout: &Layout,
        v_storage: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let [q, k, v] = self.head_major(
            slice_f32(name, q_storage, q_layout)?,
            slice_f32(name, k_storage, k_layout)?,
            slice_f32(name, v_storage, v_layout)?,
        );
        let out = self.attention.forward(self.dims, &q, &k, &v);
        Ok((
            CpuStorage::F32(self.to_operand_layout(&out, self.dims.hq)),
            q_layout.shape().clone(),
        ))
    }

    // backward: q, k, v brought to head-major (and rotated) again as in the forward, the
    // attention's backward, then dq and dk rotated back (rope's transpose) and all three
    // returned to token-major.
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let Dims { hq, hkv, tq: t, .. } = self.dims;
        let (dq, dk, dv) = with_f32(name, q, |q| {
            with_f32(name, k, |k| {
                with_f32(name, v, |v| {
                    with_f32(name, grad_out, |dout| {
                        let [q, k, v] = self.head_major(q, k, v);
                        let dout = self.to_kernel_layout(dout, hq);
                        let (dq, dk, dv) = self.attention.backward(self.dims, &q, &k, &v, &dout);
                        let (dq, dk) = match self.rope(true) {
                            Some(inverse) => (inverse.apply(&dq, t), inverse.apply(&dk, t)),
                            None => (dq, dk),
                        };
                        Ok((
                            self.to_operand_layout(&dq, hq),
                            self.to_operand_layout(&dk, hkv),
                            self.to_operand_layout(&dv, hkv),
                        ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::{gradients, max_difference};
    use crate::{causal_attention, rope};
    use candle_core::{Device, Var};

    /// Against the composed ops the LLaMA layer used (split heads, rope, causal_attention,
    /// merge heads): output and the gradients of q, k and v, with grouped-query heads and a
    /// padded row.
    #[test]
    fn equals_rope_then_causal_attention() {
        let device = &Device::Cpu;
        let (b, t, hq, hkv, d) = (2, 11, 4, 2, 8);
        let tables = RopeTables::new(d, 10_000.0, 32).unwrap();
        let variable = |heads: usize| {
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, heads * d), device).unwrap()).unwrap()
        };
        let (q, k, v) = (variable(hq), variable(hkv), variable(hkv));
        let mut mask = vec![1.0f32; b * t];
        mask[t + 7..].fill(0.0); // the second row has 7 tokens
        let mask = Tensor::from_vec(mask, (b, t), device).unwrap();
        let upstream = Tensor::randn(0f32, 1.0, (b, t, hq * d), device).unwrap();

        let fused = rotary_causal_attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            &tables,
            Some(&mask),
            0.3,
        )
        .unwrap();
        let split = |x: &Tensor, heads: usize| {
            x.reshape((b, t, heads, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let composed = causal_attention(
            &rope(&split(q.as_tensor(), hq), &tables, 0).unwrap(),
            &rope(&split(k.as_tensor(), hkv), &tables, 0).unwrap(),
            &split(v.as_tensor(), hkv),
            Some(&mask),
            0.3,
        )
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, t, hq * d))
        .unwrap();
        assert!(max_difference(&fused, &composed) < 1e-5);

        let inputs = [q.as_tensor(), k.as_tensor(), v.as_tensor()];
        let fused = gradients(&fused, &upstream, inputs);
        for (fused, composed) in fused.iter().zip(&gradients(&composed, &upstream, inputs)) {
            assert!(max_difference(fused, composed) < 1e-4);
            assert!(
                fused
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.01
            );
        }
    }

    /// Against BERT's composed attention on the padded batch (split heads, Q Kᵀ,
    /// masked_softmax, dropout, · V, merge heads): the real tokens' outputs and the gradients
    /// of q, k and v through packing, with a padded row, without and with dropout on the
    /// probabilities (the same masks from the same seed).
    #[test]
    fn bidirectional_equals_the_composed_bert_attention() {
        for probability in [0.0f32, 0.25] {
            let device = &Device::Cpu;
            let (b, t, h, d) = (2, 9, 3, 8);
            let variable = || {
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, h * d), device).unwrap()).unwrap()
            };
            let (q, k, v) = (variable(), variable(), variable());
            let mut mask = vec![1.0f32; b * t];
            mask[t + 5..].fill(0.0); // the second row has 5 tokens
            let mask = Tensor::from_vec(mask, (b, t), device).unwrap();
            let tokens = PackedTokens::from_mask(&mask).unwrap();
            let on_tokens = |x: &Tensor| x.broadcast_mul(&mask.unsqueeze(2).unwrap()).unwrap();
            // Padding's outputs are not the op's business: no gradient flows from them.
            let upstream = on_tokens(&Tensor::randn(0f32, 1.0, (b, t, h * d), device).unwrap());
            let dropout = AttentionDropout {
                probability,
                seed: 99,
            };

            let pack = |x: &Var| tokens.pack(x.as_tensor()).unwrap();
            let fused = bidirectional_attention(
                &pack(&q),
                &pack(&k),
                &pack(&v),
                h,
                &tokens,
                0.35,
                Some(dropout),
            )
            .and_then(|packed| tokens.unpack(&packed))
            .unwrap();
            let split = |x: &Tensor| {
                x.reshape((b, t, h, d))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap()
            };
            let scores = split(q.as_tensor())
                .matmul(&split(k.as_tensor()).t().unwrap())
                .unwrap();
            let probabilities = crate::masked_softmax(&scores, &mask, 0.35).unwrap();
            let probabilities = crate::dropout(&probabilities, probability, dropout.seed).unwrap();
            let composed = probabilities
                .matmul(&split(v.as_tensor()))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((b, t, h * d))
                .unwrap();
            assert!(
                max_difference(&fused, &on_tokens(&composed)) < 1e-5,
                "p {probability}"
            );

            let inputs = [q.as_tensor(), k.as_tensor(), v.as_tensor()];
            let fused = gradients(&fused, &upstream, inputs);
            for (fused, composed) in fused.iter().zip(&gradients(&composed, &upstream, inputs)) {
                assert!(max_difference(fused, composed) < 1e-4, "p {probability}");
            }
        }
    }

    #[test]
    fn bidirectional_refuses_bad_heads_and_dropout() {
        let device = &Device::Cpu;
        let x = Tensor::zeros((1, 3, 12), candle_core::DType::F32, device).unwrap();
        let tokens = PackedTokens::dense(1, 3).unwrap();
        let error = bidirectional_attention(&x, &x, &x, 5, &tokens, 1.0, None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("does not split into 5 heads"), "{error}");
        let dropout = AttentionDropout {
            probability: 1.0,
            seed: 0,
        };
        let error = bidirectional_attention(&x, &x, &x, 3, &tokens, 1.0, Some(dropout))
            .unwrap_err()
            .to_string();
        assert!(error.contains("not in [0, 1)"), "{error}");
        let other = PackedTokens::dense(2, 3).unwrap();
        let error = bidirectional_attention(&x, &x, &x, 3, &other, 1.0, None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("must be [1, 6,"), "{error}");
    }

    #[test]
    fn shapes_that_are_not_whole_heads_are_errors() {
        let device = &Device::Cpu;
        let tables = RopeTables::new(4, 10_000.0, 8).unwrap();
        let zeros =
            |width: usize| Tensor::zeros((1, 3, width), candle_core::DType::F32, device).unwrap();
        let error = rotary_causal_attention(&zeros(8), &zeros(6), &zeros(6), &tables, None, 1.0)
            .unwrap_err()
            .to_string();
        assert!(error.contains("whole heads"), "{error}");
        let error = rotary_causal_attention(&zeros(12), &zeros(8), &zeros(8), &tables, None, 1.0)
            .unwrap_err()
            .to_string();
        assert!(error.contains("multiple of key/value heads"), "{error}");
        let long = Tensor::zeros((1, 9, 4), candle_core::DType::F32, device).unwrap();
        let error = rotary_causal_attention(&long, &long, &long, &tables, None, 1.0)
            .unwrap_err()
            .to_string();
        assert!(error.contains("exceed"), "{error}");
    }
}
