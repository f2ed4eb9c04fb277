//! `y = x Wᵀ` for a weight that does not train (LoRA's frozen base projections, a frozen output
//! head): the forward, and the input gradient `dx = dy W` that backward still needs to reach
//! the adapters below, in bf16 or f32.
//!
//! Why a separate op: a frozen weight never changes, so for bf16 it is converted and packed
//! for the two products once ([`FrozenWeight::pack`]) and every step only converts
//! activations; the products then run at the bf16 rate (twice f32's on AVX512-BF16, see
//! [`crate::bf16_gemm`]), with the numerics of `torch.autocast(bfloat16)`: operands rounded to
//! bf16, f32 sums. In f32 ([`FrozenWeight::in_f32`]) the products read the weight itself; the
//! op then exists so that the fused ops built on it (a LoRA adapter, the head's loss) serve
//! both precisions.

use std::sync::{Arc, OnceLock};

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use crate::bf16_gemm::{gemm, PackedB};
use crate::linear::gemm_into;
use crate::util::{check_f32_cpu, slice_f32, tensor_from, with_f32};
use crate::Precision;

/// A frozen weight W [out, in] ready for `x Wᵀ` and `dy W`: converted to bf16 and packed
/// (2 bytes per weight for inference, 4 once a backward has run), or the f32 weight as it is.
pub struct FrozenWeight {
    out_features: usize,
    in_features: usize,
    /// The bf16 panels; none when the products run in f32 on `weight`.
    bf16: Option<Bf16Panels>,
    /// The f32 weight (the same storage as the model's, not a copy).
    weight: Tensor,
}

struct Bf16Panels {
    /// Wᵀ as B [in, out].
    forward: PackedB,
    /// W as B [out, in], packed when a backward first needs it (generation never does).
    backward: OnceLock<PackedB>,
}

impl FrozenWeight {
    /// `weight` [out, in], which must not change while this lives, for products in
    /// `precision`.
    pub fn new(weight: &Tensor, precision: Precision) -> Result<Arc<Self>> {
        match precision {
            Precision::Bf16 => Self::pack(weight),
            Precision::Fp32 => Self::in_f32(weight),
        }
    }

    /// Converts `weight` [out, in] to bf16 and packs it for the forward product.
    pub fn pack(weight: &Tensor) -> Result<Arc<Self>> {
        let mut frozen = Self::unpacked(weight)?;
        let dims = frozen.dims();
        let forward = with_f32("frozen linear", &frozen.weight, |w| {
            Ok(PackedB::transposed_weight(w, dims))
        })?;
        frozen.bf16 = Some(Bf16Panels {
            forward,
            backward: OnceLock::new(),
        });
        Ok(Arc::new(frozen))
    }

    /// `weight` [out, in] for products in f32, read in place.
    pub fn in_f32(weight: &Tensor) -> Result<Arc<Self>> {
        Ok(Arc::new(Self::unpacked(weight)?))
    }

    fn unpacked(weight: &Tensor) -> Result<Self> {
        check_f32_cpu("frozen linear", "weight", weight)?;
        let (out_features, in_features) = weight.dims2()?;
        // The same storage, not a copy: a frozen weight does not change (whoever changes it,
        // as merging adapters does, must drop the FrozenWeight).
        Ok(Self {
            out_features,
            in_features,
            bf16: None,
            weight: weight.contiguous()?,
        })
    }

    /// W as B [out, in] for the bf16 input gradient, packed on first use.
    fn backward<'a>(&self, panels: &'a Bf16Panels) -> Result<&'a PackedB> {
        if let Some(packed) = panels.backward.get() {
            return Ok(packed);
        }
        let dims = self.dims();
        let packed = with_f32("frozen linear", &self.weight, |w| {
            Ok(PackedB::weight(w, dims))
        })?;
        Ok(panels.backward.get_or_init(|| packed))
    }

    /// (out, in)
    pub fn dims(&self) -> (usize, usize) {
        (self.out_features, self.in_features)
    }

    /// The precision of the products.
    pub fn precision(&self) -> Precision {
        match self.bf16 {
            Some(_) => Precision::Bf16,
            None => Precision::Fp32,
        }
    }

    /// y [rows, out] = x [rows, in] · Wᵀ, overwriting y.
    pub(crate) fn forward_into(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        let (out_features, in_features) = self.dims();
        let rows = x.len() / in_features;
        match &self.bf16 {
            Some(panels) => gemm(y, rows, false, x, (in_features, 1), &panels.forward),
            // A few rows (decoding): register-blocked dot products, as `linear` does, since
            // gemm would pack the whole weight for them.
            None if crate::few_rows::suits(rows, in_features, out_features) => {
                with_f32("frozen linear", &self.weight, |w| {
                    y.copy_from_slice(&crate::few_rows::product(
                        x,
                        w,
                        None,
                        in_features,
                        out_features,
                    ));
                    Ok(())
                })?
            }
            None => with_f32("frozen linear", &self.weight, |w| {
                gemm_into(
                    y,
                    (rows, out_features, in_features),
                    false,
                    x,
                    (in_features, 1),
                    w,
                    (1, in_features),
                    1.0,
                );
                Ok(())
            })?,
        }
        Ok(())
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
        let (out_features, in_features) = self.dims();
        let rows = dy.len() / out_features;
        match &self.bf16 {
            Some(panels) => gemm(
                dx,
                rows,
                false,
                dy,
                (out_features, 1),
                self.backward(panels)?,
            ),
            None => with_f32("frozen linear", &self.weight, |w| {
                gemm_into(
                    dx,
                    (rows, in_features, out_features),
                    false,
                    dy,
                    (out_features, 1),
                    w,
                    (in_features, 1),
                    1.0,
                );
                Ok(())
            })?,
        }
        Ok(())
    }

    /// Bytes of the packed layouts made so far (0 in f32: the weight is the model's own).
    pub fn size_in_bytes(&self) -> usize {
        self.bf16.as_ref().map_or(0, |panels| {
            panels.forward.size_in_bytes() + panels.backward.get().map_or(0, PackedB::size_in_bytes)
        })
    }
}

/// x [..., in] → x Wᵀ [..., out] in the weight's precision (f32 sums). Backward returns dx only.
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
        weight.forward_into(x, &mut y)?;
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

    /// In f32 the op is the plain product, for many rows (gemm) and for few (dot products).
    #[test]
    fn f32_products_equal_the_plain_product() {
        for rows in [3, 70] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (rows, 40), &Device::Cpu).unwrap())
                .unwrap();
            let w = Tensor::randn(0f32, 0.2, (24, 40), &Device::Cpu).unwrap();
            let frozen = FrozenWeight::in_f32(&w).unwrap();
            assert_eq!(
                (frozen.precision(), frozen.size_in_bytes()),
                (Precision::Fp32, 0)
            );
            let y = frozen_linear(x.as_tensor(), &frozen).unwrap();
            let expected = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
            assert!(crate::util::max_difference(&y, &expected) < 1e-5);
            let dx = y.sum_all().unwrap().backward().unwrap();
            let dx = dx.get(x.as_tensor()).unwrap();
            let expected = Tensor::ones((rows, 24), candle_core::DType::F32, &Device::Cpu)
                .unwrap()
                .matmul(&w)
                .unwrap();
            assert!(crate::util::max_difference(dx, &expected) < 1e-5);
        }
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
