//! A frozen projection with its LoRA adapter as one op:
//!
//!   y = x Wᵀ + s · (dropout(x) Aᵀ) Bᵀ,     W [out, in] frozen (bf16, packed once),
//!                                         A [r, in], B [out, r] trained (f32), s = alpha / r.
//!
//! Why fused: composed from candle ops the adapter's term costs a dropout copy, two products,
//! a scaling and an add on the forward, and about as many full-size passes and allocations on
//! the backward, plus one more gradient for candle to add up at x, for a term whose products
//! are r/out of the base's. Here the low-rank products accumulate straight into y and dx, the
//! dropout mask is recomputed from its seed instead of stored, and nothing [N, in]-sized
//! outlives the call.
//!
//! Backward, with xd = dropout(x), low = xd Aᵀ [N, r], t = dy B [N, r]:
//!   dx = dy W + s · mask · (t A) / (1 − p)
//!   dA = s · tᵀ xd,      dB = s · dyᵀ low

use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use crate::dropout::Dropout;
use crate::frozen_linear::FrozenWeight;
use crate::linear::gemm_into;
use crate::util::{check_f32_cpu, slice_f32, tensor_from, with_f32};

/// The adapter's scalars: `scaling` = alpha / r, and the dropout on its input (`probability`
/// 0 for none, e.g. when evaluating) with the seed of its mask.
#[derive(Debug, Clone, Copy)]
pub struct LoraBranch {
    pub scaling: f32,
    pub dropout: f32,
    pub seed: u64,
}

/// x [..., in] → x Wᵀ + s · dropout(x) Aᵀ Bᵀ [..., out]. Backward returns dx, dA and dB.
pub fn frozen_linear_with_lora(
    x: &Tensor,
    weight: &Arc<FrozenWeight>,
    a: &Tensor,
    b: &Tensor,
    branch: LoraBranch,
) -> Result<Tensor> {
    const OP: &str = "frozen linear with LoRA";
    check_f32_cpu(OP, "x", x)?;
    check_f32_cpu(OP, "lora A", a)?;
    check_f32_cpu(OP, "lora B", b)?;
    let (out_features, in_features) = weight.dims();
    let (r, a_in) = a.dims2()?;
    let (b_out, b_r) = b.dims2()?;
    if x.dims().last() != Some(&in_features) || a_in != in_features {
        bail!(
            "{OP}: x {:?} and A {:?} must end in the weight's input size {in_features}",
            x.shape(),
            a.shape()
        )
    }
    if b_out != out_features || b_r != r {
        bail!(
            "{OP}: B must be [{out_features}, {r}] (the weight's outputs × A's rank), got {:?}",
            b.shape()
        )
    }
    let dropout = Dropout::active(OP, branch.dropout, branch.seed)?;
    x.contiguous()?.apply_op3(
        &a.contiguous()?,
        &b.contiguous()?,
        FrozenLinearWithLora {
            weight: weight.clone(),
            scaling: branch.scaling,
            dropout,
        },
    )
}

struct FrozenLinearWithLora {
    weight: Arc<FrozenWeight>,
    scaling: f32,
    /// On the adapter's input; none for probability 0 (or evaluation).
    dropout: Option<Dropout>,
}

impl FrozenLinearWithLora {
    /// dropout(x), or None when there is no dropout (x itself is the adapter's input).
    fn dropped(&self, x: &[f32]) -> Option<Vec<f32>> {
        self.dropout.as_ref().map(|dropout| dropout.run(x))
    }
}

/// low [N, r] = xd [N, in] · Aᵀ
fn low_rank(xd: &[f32], a: &[f32], r: usize, in_features: usize) -> Vec<f32> {
    let rows = xd.len() / in_features;
    let mut low = vec![0.0f32; rows * r];
    gemm_into(
        &mut low,
        (rows, r, in_features),
        false,
        xd,
        (in_features, 1),
        a,
        (1, in_features),
        1.0,
    );
    low
}

impl CustomOp3 for FrozenLinearWithLora {
    fn name(&self) -> &'static str {
        "alpaca-frozen-linear-lora"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        a_storage: &CpuStorage,
        a_layout: &Layout,
        b_storage: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(self.name(), x_storage, x_layout)?;
        let a = slice_f32(self.name(), a_storage, a_layout)?;
        let b = slice_f32(self.name(), b_storage, b_layout)?;
        let (out_features, in_features) = self.weight.dims();
        let r = a_layout.shape().dims2()?.0;
        let rows = x.len() / in_features;
        let mut y = vec![0.0f32; rows * out_features];
        self.weight.forward_into(x, &mut y)?;
        let dropped = self.dropped(x);
        let low = low_rank(dropped.as_deref().unwrap_or(x), a, r, in_features);
        // y += s · low Bᵀ
        gemm_into(
            &mut y,
            (rows, out_features, r),
            true,
            &low,
            (r, 1),
            b,
            (1, r),
            self.scaling,
        );
        let mut dims = x_layout.shape().dims().to_vec();
        *dims.last_mut().expect("x has a last dim") = out_features;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        const OP: &str = "frozen linear with LoRA backward";
        let (out_features, in_features) = self.weight.dims();
        let r = a.dims2()?.0;
        let scaling = self.scaling;
        with_f32(OP, x, |xs| {
            with_f32(OP, a, |a_values| {
                with_f32(OP, b, |b_values| {
                    with_f32(OP, dy, |dys| {
                        let rows = xs.len() / in_features;
                        let mut dx = self.weight.input_gradient(dys)?;
                        // t [N, r] = dy [N, out] · B [out, r]
                        let mut t = vec![0.0f32; rows * r];
                        gemm_into(
                            &mut t,
                            (rows, r, out_features),
                            false,
                            dys,
                            (out_features, 1),
                            b_values,
                            (r, 1),
                            1.0,
                        );
                        let mut dropped = self.dropped(xs);
                        let xd = dropped.as_deref().unwrap_or(xs);
                        let low = low_rank(xd, a_values, r, in_features);
                        // dB [out, r] = s · dyᵀ low
                        let mut db = vec![0.0f32; out_features * r];
                        gemm_into(
                            &mut db,
                            (out_features, r, rows),
                            false,
                            dys,
                            (1, out_features),
                            &low,
                            (r, 1),
                            scaling,
                        );
                        // dA [r, in] = s · tᵀ xd
                        let mut da = vec![0.0f32; r * in_features];
                        gemm_into(
                            &mut da,
                            (r, in_features, rows),
                            false,
                            &t,
                            (1, r),
                            xd,
                            (in_features, 1),
                            scaling,
                        );
                        // dx += s · (t A), through the same dropout mask as the forward.
                        match (dropped.as_mut(), &self.dropout) {
                            (Some(through_mask), Some(dropout)) => {
                                // xd is no longer needed: its buffer takes s · t A.
                                gemm_into(
                                    through_mask,
                                    (rows, in_features, r),
                                    false,
                                    &t,
                                    (r, 1),
                                    a_values,
                                    (in_features, 1),
                                    scaling,
                                );
                                dropout.accumulate(through_mask, &mut dx);
                            }
                            _ => gemm_into(
                                &mut dx,
                                (rows, in_features, r),
                                true,
                                &t,
                                (r, 1),
                                a_values,
                                (in_features, 1),
                                scaling,
                            ),
                        }
                        Ok((
                            Some(tensor_from(dx, x.shape())?),
                            Some(tensor_from(da, (r, in_features))?),
                            Some(tensor_from(db, (out_features, r))?),
                        ))
                    })
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::{gradients, max_difference};
    use crate::{dropout, frozen_linear, linear_no_bias, Precision};
    use candle_core::{Device, Var};

    /// The fused op against the same computation from the separately tested ops: forward and
    /// the gradients of x, A and B, with and without dropout, over a bf16 and an f32 base.
    #[test]
    fn equals_the_composed_ops() {
        for (probability, precision) in [
            (0.0f32, Precision::Bf16),
            (0.3, Precision::Bf16),
            (0.3, Precision::Fp32),
        ] {
            let device = &Device::Cpu;
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 9, 40), device).unwrap()).unwrap();
            let a = Var::from_tensor(&Tensor::randn(0f32, 0.3, (4, 40), device).unwrap()).unwrap();
            let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, (24, 4), device).unwrap()).unwrap();
            let w = Tensor::randn(0f32, 0.2, (24, 40), device).unwrap();
            let upstream = Tensor::randn(0f32, 1.0, (2, 9, 24), device).unwrap();
            let packed = FrozenWeight::new(&w, precision).unwrap();
            let branch = LoraBranch {
                scaling: 2.0,
                dropout: probability,
                seed: 17,
            };

            let fused = frozen_linear_with_lora(
                x.as_tensor(),
                &packed,
                a.as_tensor(),
                b.as_tensor(),
                branch,
            )
            .unwrap();
            let dropped = dropout(x.as_tensor(), probability, branch.seed).unwrap();
            let term = linear_no_bias(
                &linear_no_bias(&dropped, a.as_tensor()).unwrap(),
                b.as_tensor(),
            )
            .unwrap()
            .affine(branch.scaling as f64, 0.0)
            .unwrap();
            let composed = (frozen_linear(x.as_tensor(), &packed).unwrap() + term).unwrap();
            assert!(max_difference(&fused, &composed) < 1e-5, "p {probability}");

            let inputs = [x.as_tensor(), a.as_tensor(), b.as_tensor()];
            let [fused_x, fused_a, fused_b] = gradients(&fused, &upstream, inputs);
            let [composed_x, composed_a, composed_b] = gradients(&composed, &upstream, inputs);
            assert!(
                max_difference(&fused_x, &composed_x) < 1e-4,
                "dx, p {probability}"
            );
            assert!(
                max_difference(&fused_a, &composed_a) < 1e-4,
                "dA, p {probability}"
            );
            assert!(
                max_difference(&fused_b, &composed_b) < 1e-4,
                "dB, p {probability}"
            );
            assert!(
                fused_b
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.1
            );
        }
    }

    #[test]
    fn mismatched_adapter_shapes_are_errors() {
        let device = &Device::Cpu;
        let packed =
            FrozenWeight::pack(&Tensor::zeros((6, 5), candle_core::DType::F32, device).unwrap())
                .unwrap();
        let x = Tensor::zeros((3, 5), candle_core::DType::F32, device).unwrap();
        let a = Tensor::zeros((2, 5), candle_core::DType::F32, device).unwrap();
        let branch = LoraBranch {
            scaling: 1.0,
            dropout: 0.0,
            seed: 0,
        };
        let wrong_b = Tensor::zeros((6, 3), candle_core::DType::F32, device).unwrap();
        let error = frozen_linear_with_lora(&x, &packed, &a, &wrong_b, branch)
            .unwrap_err()
            .to_string();
        assert!(error.contains("B must be [6, 2]"), "{error}");
        let wrong_a = Tensor::zeros((2, 4), candle_core::DType::F32, device).unwrap();
        let b = Tensor::zeros((6, 2), candle_core::DType::F32, device).unwrap();
        let error = frozen_linear_with_lora(&x, &packed, &wrong_a, &b, branch)
            .unwrap_err()
            .to_string();
        assert!(error.contains("input size 5"), "{error}");
    }
}
