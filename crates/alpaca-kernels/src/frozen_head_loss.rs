//! A frozen output head and the cross-entropy over its logits as one op, without ever holding
//! the [P, vocab] logits:
//!
//!   loss = (1/M) Σ_{counted n} (logsumexp(h_n Wᵀ) − (h_n Wᵀ)[t_n]),   W [vocab, H] frozen (bf16)
//!   dh_n = g · (softmax(h_n Wᵀ) − onehot(t_n)) W / M                  (0 for ignored rows)
//!
//! Why: at a 49,152-word vocabulary a few hundred labelled positions make logits of hundreds
//! of MB, and composed ops write them, their gradient and candle's accumulated copy of that
//! gradient, each into freshly faulted-in pages, for a loss that needs one number per row.
//! Here rows go through in blocks whose logits stay in one reused buffer; the softmax
//! gradient is formed in that buffer and multiplied back through W at once, so the forward
//! already holds dh for g = 1 and the backward only scales it by g (the loss is a scalar, its
//! gradient linear in g). Products are those of [`crate::frozen_linear`] (bf16 operands, f32
//! sums), so the numbers equal the composed frozen_linear + cross_entropy.

use std::sync::{Arc, OnceLock};

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cross_entropy::{check_targets, logsumexp, read_targets};
use crate::frozen_linear::FrozenWeight;
use crate::math;
use crate::util::{check_f32_cpu, slice_f32, tensor_from, with_f32};

/// Rows per block: the bf16 GEMM's row block, so each block is one pass over W; the block's
/// logits (96 × vocab f32, 19 MB at 49,152 words) stay within the L3 cache of this class of CPU.
const BLOCK_ROWS: usize = 96;

/// Mean cross-entropy of `hidden` [P, H] · Wᵀ against `targets` [P] (i64 or u32), skipping
/// rows whose target is `ignore_index`; a scalar. With `with_gradient` the forward also forms
/// the gradient for `hidden` (backward then costs nothing); without it (evaluation) backward
/// is an error.
pub fn frozen_head_cross_entropy(
    hidden: &Tensor,
    weight: &Arc<FrozenWeight>,
    targets: &Tensor,
    ignore_index: i64,
    with_gradient: bool,
) -> Result<Tensor> {
    const OP: &str = "frozen head cross-entropy";
    check_f32_cpu(OP, "hidden", hidden)?;
    let (vocab, size) = weight.dims();
    let (rows, hidden_size) = hidden.dims2().map_err(|_| {
        candle_core::Error::Msg(format!(
            "{OP}: hidden must be [P, H], got {:?}",
            hidden.shape()
        ))
    })?;
    if hidden_size != size {
        bail!(
            "{OP}: hidden {:?} must end in the head's input size {size}",
            hidden.shape()
        )
    }
    check_targets(OP, targets, rows)?;
    let targets = read_targets(OP, targets, vocab, ignore_index)?;
    hidden.contiguous()?.apply_op1(FrozenHeadLoss {
        weight: weight.clone(),
        targets,
        with_gradient,
        unit_gradient: OnceLock::new(),
    })
}

struct FrozenHeadLoss {
    weight: Arc<FrozenWeight>,
    targets: Vec<Option<usize>>,
    with_gradient: bool,
    /// dloss/dhidden for an upstream gradient of 1, made by the forward.
    unit_gradient: OnceLock<Vec<f32>>,
}

impl CustomOp1 for FrozenHeadLoss {
    fn name(&self) -> &'static str {
        "alpaca-frozen-head-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let hidden = slice_f32(self.name(), storage, layout)?;
        let (vocab, size) = self.weight.dims();
        let count = self.targets.iter().filter(|t| t.is_some()).count();
        let coefficient = if count == 0 { 0.0 } else { 1.0 / count as f32 };
        let mut gradient = if self.with_gradient {
            vec![0.0f32; hidden.len()]
        } else {
            Vec::new()
        };
        let mut logits = vec![0.0f32; BLOCK_ROWS.min(self.targets.len()) * vocab];
        let mut total = 0.0f64;
        for (block, targets) in self.targets.chunks(BLOCK_ROWS).enumerate() {
            let first = block * BLOCK_ROWS;
            let rows = targets.len();
            let logits = &mut logits[..rows * vocab];
            self.weight
                .forward_into(&hidden[first * size..(first + rows) * size], logits)?;
            // Each row's loss term; with the gradient, the row becomes (softmax − onehot) / M.
            total += logits
                .par_chunks_mut(vocab)
                .zip(targets.par_iter())
                .map(|(row, target)| {
                    let Some(target) = *target else {
                        row.fill(0.0);
                        return 0.0;
                    };
                    let lse = math::simd(
                        #[inline(always)]
                        || logsumexp(row),
                    );
                    let term = (lse - row[target]) as f64;
                    if self.with_gradient {
                        math::simd(
                            #[inline(always)]
                            || {
                                for v in row.iter_mut() {
                                    *v = coefficient * math::exp(*v - lse);
                                }
                            },
                        );
                        row[target] -= coefficient;
                    }
                    term
                })
                .sum::<f64>();
            if self.with_gradient {
                self.weight.input_gradient_into(
                    logits,
                    &mut gradient[first * size..(first + rows) * size],
                )?;
            }
        }
        if self.with_gradient {
            // The forward of an op runs once; a second set would be a bug.
            self.unit_gradient
                .set(gradient)
                .map_err(|_| candle_core::Error::Msg(format!("{}: ran twice", self.name())))?;
        }
        let loss = if count == 0 {
            0.0
        } else {
            (total / count as f64) as f32
        };
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(&self, hidden: &Tensor, _loss: &Tensor, dloss: &Tensor) -> Result<Option<Tensor>> {
        let Some(unit) = self.unit_gradient.get() else {
            bail!(
                "{}: backward of a loss computed without its gradient (with_gradient = false)",
                self.name()
            )
        };
        let g = with_f32(self.name(), dloss, |g| {
            Ok(g.first().copied().unwrap_or(0.0))
        })?;
        let gradient = unit.par_iter().map(|&v| g * v).collect();
        Ok(Some(tensor_from(gradient, hidden.shape())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::max_difference;
    use crate::{cross_entropy, frozen_linear, Precision};
    use candle_core::{Device, Var};

    /// Against frozen_linear + cross_entropy: the loss and the gradient for hidden, over more
    /// rows than one block, with ignored rows, and scaled by an upstream gradient ≠ 1.
    #[test]
    fn equals_the_composed_ops() {
        for precision in [Precision::Bf16, Precision::Fp32] {
            equals_the_composed_ops_in(precision);
        }
    }

    fn equals_the_composed_ops_in(precision: Precision) {
        let device = &Device::Cpu;
        let rows = BLOCK_ROWS + 37;
        let hidden =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (rows, 48), device).unwrap()).unwrap();
        let weight = Tensor::randn(0f32, 0.5, (300, 48), device).unwrap();
        let packed = FrozenWeight::new(&weight, precision).unwrap();
        let targets: Vec<i64> = (0..rows as i64)
            .map(|i| if i % 7 == 3 { -100 } else { (i * 37) % 300 })
            .collect();
        let targets = Tensor::new(targets.as_slice(), device).unwrap();

        let fused =
            frozen_head_cross_entropy(hidden.as_tensor(), &packed, &targets, -100, true).unwrap();
        let composed = cross_entropy(
            &frozen_linear(hidden.as_tensor(), &packed).unwrap(),
            &targets,
            -100,
        )
        .unwrap();
        assert!(max_difference(&fused, &composed) < 1e-5);

        let gradient = |loss: &Tensor, upstream: f64| {
            (loss * upstream)
                .unwrap()
                .backward()
                .unwrap()
                .get(hidden.as_tensor())
                .unwrap()
                .clone()
        };
        let fused_gradient = gradient(&fused, 1.0);
        let composed_gradient = gradient(&composed, 1.0);
        assert!(max_difference(&fused_gradient, &composed_gradient) < 1e-6);
        // With g ≠ 1 the composed op scales dlogits before their bf16 rounding, the fused one
        // after the product: equal up to bf16's relative precision (2⁻⁸).
        let scaled = gradient(&fused, 3.0);
        let expected = gradient(&composed, 3.0);
        let largest = expected
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let difference = max_difference(&scaled, &expected);
        assert!(difference < 0.01 * largest, "{difference} vs {largest}");
        // Ignored rows get no gradient; counted ones do.
        let row = |i: usize| {
            fused_gradient
                .get(i)
                .unwrap()
                .abs()
                .unwrap()
                .max(0)
                .unwrap()
        };
        assert_eq!(row(3).to_scalar::<f32>().unwrap(), 0.0);
        assert!(row(4).to_scalar::<f32>().unwrap() > 0.0);
    }

    #[test]
    fn evaluation_losses_have_no_backward_and_bad_targets_are_errors() {
        let device = &Device::Cpu;
        let hidden = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 8), device).unwrap()).unwrap();
        let packed =
            FrozenWeight::pack(&Tensor::randn(0f32, 1.0, (10, 8), device).unwrap()).unwrap();
        let targets = Tensor::new(&[1u32, 2, 3, 4], device).unwrap();
        let loss =
            frozen_head_cross_entropy(hidden.as_tensor(), &packed, &targets, -100, false).unwrap();
        assert!(loss.to_scalar::<f32>().unwrap() > 0.0);
        let error = loss.backward().unwrap_err().to_string();
        assert!(error.contains("without its gradient"), "{error}");

        let outside = Tensor::new(&[1u32, 2, 10, 4], device).unwrap();
        let error = frozen_head_cross_entropy(hidden.as_tensor(), &packed, &outside, -100, true)
            .unwrap_err()
            .to_string();
        assert!(error.contains("target 10 at row 2"), "{error}");
    }
}
