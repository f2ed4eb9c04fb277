//! `y = x Wᵀ` for a weight that does not train (LoRA's frozen base projections, a frozen output
//! head), with both of its products in bf16: the forward, and the input gradient
//! `dx = dy W` that backward still needs to reach the adapters below.
//!
//! Why a separate op: a frozen weight never changes, so it is converted to bf16 and packed for
//! the two products once ([`FrozenWeight::pack`]) and every step only converts activations;
//! the products then run at the bf16 rate (twice f32's on AVX512-BF16, see [`crate::bf16_gemm`]).
//! Numerics are those of `torch.autocast(bfloat16)`: operands rounded to bf16, f32 sums.

use std::sync::{Arc, OnceLock};

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use crate::bf16_gemm::{gemm, PackedB};
use crate::util::{check_f32_cpu, slice_f32, tensor_from, with_f32};

/// A weight W [out, in] converted to bf16, packed for `x Wᵀ` and, at the first backward, for
/// `dy W`: 2 bytes per weight for inference, 4 when training.
pub struct FrozenWeight {
    out_features: usize,
    in_features: usize,
    /// Wᵀ as B [in, out].
    forward: PackedB,
    /// W as B [out, in], packed when a backward first needs it (generation never does).
    backward: OnceLock<PackedB>,
    /// The f32 weight the backward layout is packed from.
    weight: Tensor,
}

impl FrozenWeight {
    /// Packs `weight` [out, in], which must not change while this lives.
    pub fn pack(weight: &Tensor) -> Result<Arc<Self>> {
        check_f32_cpu("frozen linear", "weight", weight)?;
        let (out_features, in_features) = weight.dims2()?;
        // The same storage, not a copy: a frozen weight does not change (whoever changes it,
        // as merging adapters does, must drop the packed weight).
        let weight = weight.clone();
        with_f32("frozen linear", &weight, |w| {
            Ok(Arc::new(Self {
                out_features,
                in_features,
                forward: PackedB::transposed_weight(w, (out_features, in_features)),
                backward: OnceLock::new(),
                weight: weight.clone(),
            }))
        })
    }

    /// W as B [out, in] for the input gradient, packed on first use.
    fn backward(&self) -> Result<&PackedB> {
        if let Some(packed) = self.backward.get() {
            return Ok(packed);
        }
        let (out_features, in_features) = (self.out_features, self.in_features);
        let packed = with_f32("frozen linear", &self.weight, |w| {
            Ok(PackedB::weight(w, (out_features, in_features)))
        })?;
        Ok(self.backward.get_or_init(|| packed))
    }

    /// (out, in)
    pub fn dims(&self) -> (usize, usize) {
        (self.out_features, self.in_features)
    }

    /// y [rows, out] = x [rows, in] · Wᵀ, overwriting y.
    pub(crate) fn forward_into(&self, x: &[f32], y: &mut [f32]) {
        let rows = x.len() / self.in_features;
        gemm(y, rows, false, x, (self.in_features, 1), &self.forward);
    }

    /// dx [rows, in] = dy [rows, out] · W.
    pub(crate) fn input_gradient(&self, dy: &[f32]) -> Result<Vec<f32>> {
        let rows = dy.len() / self.out_features;
        let mut dx = vec![0.0f32; rows * self.in_features];
        self.input_gradient_into(dy, &mut dx)?;
        Ok(dx)
    }

    /// dx [rows, in] = dy [rows, out] · W, overwriting dx.
    pub(crate) fn input_gradient_into(&self, dy: &[f32], dx: &mut [f32]) -> Result<()> {
        let rows = dy.len() / self.out_features;
        gemm(
            dx,
            rows,
            false,
            dy,
            (self.out_features, 1),
            self.backward()?,
        );
        Ok(())
    }

    /// Bytes of the packed layouts made so far.
    pub fn size_in_bytes(&self) -> usize {
        self.forward.size_in_bytes() + self.backward.get().map_or(0, PackedB::size_in_bytes)
    }
}

/// x [..., in] → x Wᵀ [..., out] in bf16 with f32 accumulation. Backward returns dx only.
pub fn frozen_linear(x: &Tensor, weight: &Arc<FrozenWeight>) -> Result<Tensor> {
    check_f32_cpu("frozen linear", "x", x)?;
    if x.dims().last() != Some(&weight.in_features) {
        bail!(
            "frozen linear: x {:?} must end in the weight's input size {} (weight [{}, {}])",
            x.shape(),
            weight.in_features,
            weight.out_features,
            weight.in_features
        )
    }
    x.contiguous()?.apply_op1(FrozenLinear(weight.clone()))
}

struct FrozenLinear(Arc<FrozenWeight>);

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "alpaca-frozen-linear-bf16"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(self.name(), storage, layout)?;
        let weight = &self.0;
        let rows = x.len() / weight.in_features;
        let mut y = vec![0.0f32; rows * weight.out_features];
        weight.forward_into(x, &mut y);
        let mut dims = layout.shape().dims().to_vec();
        *dims.last_mut().expect("x has a last dim") = weight.out_features;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    /// dx [N, in] = dy [N, out] · W [out, in]
    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        with_f32(self.name(), dy, |dys| {
            Ok(Some(tensor_from(self.0.input_gradient(dys)?, x.shape())?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The same product in f32 from bf16-rounded operands.
    fn rounded(t: &Tensor) -> Tensor {
        t.to_dtype(candle_core::DType::BF16)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
    }

    #[test]
    fn forward_and_input_gradient_equal_the_rounded_f32_products() {
        let x =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 7, 40), &Device::Cpu).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 0.2, (24, 40), &Device::Cpu).unwrap();
        let upstream = Tensor::randn(0f32, 1.0, (3, 7, 24), &Device::Cpu).unwrap();
        let packed = FrozenWeight::pack(&w).unwrap();
        assert_eq!(packed.dims(), (24, 40));
        let y = frozen_linear(x.as_tensor(), &packed).unwrap();
        let gradients = (&y * &upstream)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let dx = gradients.get(x.as_tensor()).unwrap();

        let expected_y = rounded(x.as_tensor())
            .broadcast_matmul(&rounded(&w).t().unwrap())
            .unwrap();
        let expected_dx = rounded(&upstream).broadcast_matmul(&rounded(&w)).unwrap();
        let y_error = (y - expected_y).unwrap().abs().unwrap().max_all().unwrap();
        let dx_error = (dx - expected_dx)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(y_error.to_scalar::<f32>().unwrap() < 1e-4);
        assert!(dx_error.to_scalar::<f32>().unwrap() < 1e-4);
    }

    #[test]
    fn a_wrong_input_size_is_an_error() {
        let w = Tensor::zeros((4, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        let x = Tensor::zeros((2, 6), candle_core::DType::F32, &Device::Cpu).unwrap();
        let packed = FrozenWeight::pack(&w).unwrap();
        let error = frozen_linear(&x, &packed).unwrap_err().to_string();
        assert!(error.contains("input size 5"), "{error}");
    }
}
