//! Linear layer `y = x Wᵀ + b` with HF's weight layout W: [out, in], as one GEMM call each way.
//!
//! Why not `x.matmul(&w.t())` + `broadcast_add`: candle's backward for that chain transposes the
//! weight gradient back (a strided copy), sums the bias gradient single-threaded and allocates
//! several temporaries. Here the transposes are only strides handed to `gemm`, the bias is
//! written into the output before the GEMM accumulates onto it, and the bias gradient is a
//! parallel column sum.
//!
//! Shapes: x [..., in] viewed as [N, in]; W [out, in]; b [out]; y [..., out].

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::bf16_gemm::{self, PackedB};
use crate::few_rows;
use crate::gradient::{route, WeightBiasSinks};
use crate::onednn;
use crate::packed_linear::PackedLinear;
use crate::util::{check_f32_cpu, par_new, par_zeros, slice_f32, tensor_from, with_f32};
use crate::Precision;

/// Whether the products of [`linear`] and [`linear_no_bias`] run in bf16 (operands rounded to
/// bf16, f32 sums, f32 results; the weight converted at each call since it trains). A run-wide
/// mode, as `torch.autocast` is, so that every architecture's linear layers follow one switch
/// instead of a flag threaded through each model. Frozen weights have their own op,
/// [`crate::frozen_linear`], which converts them once.
static BF16_PRODUCTS: AtomicBool = AtomicBool::new(false);

/// Sets the precision of every following `linear` / `linear_no_bias` product in this process.
/// Pass what [`Precision::on_this_cpu`] returned: bf16 on a CPU without AVX512-BF16 works but
/// is slow.
pub fn set_precision(precision: Precision) {
    BF16_PRODUCTS.store(precision == Precision::Bf16, Ordering::Relaxed);
}

/// The precision `linear` products currently run in.
pub fn precision() -> Precision {
    if BF16_PRODUCTS.load(Ordering::Relaxed) {
        Precision::Bf16
    } else {
        Precision::Fp32
    }
}

/// `x Wᵀ + b`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    check(x, weight, Some(bias))?;
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        Linear { sinks: None },
    )
}

/// `x Wᵀ` (for callers that fuse the bias into the next op, e.g. bias+GELU).
pub fn linear_no_bias(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    check(x, weight, None)?;
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, LinearNoBias { sinks: None })
}

/// [`linear`] (with a bias) or [`linear_no_bias`], whose weight and bias gradients go to
/// `sinks`; x's gradient still goes through candle.
pub fn linear_with_sinks(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    sinks: &WeightBiasSinks,
) -> Result<Tensor> {
    check(x, weight, bias)?;
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    let sinks = Some(sinks.clone());
    match bias {
        Some(bias) => x.apply_op3(&weight, &bias.contiguous()?, Linear { sinks }),
        None => x.apply_op2(&weight, LinearNoBias { sinks }),
    }
}

fn check(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<()> {
    const OP: &str = "linear";
    check_f32_cpu(OP, "x", x)?;
    check_f32_cpu(OP, "weight", weight)?;
    let (out_features, in_features) = weight.dims2()?;
    if x.dims().last() != Some(&in_features) {
        bail!(
            "{OP}: x {:?} must end in the weight's input size {in_features} (weight {:?})",
            x.shape(),
            weight.shape()
        )
    }
    if let Some(bias) = bias {
        check_f32_cpu(OP, "bias", bias)?;
        if bias.dims() != [out_features] {
            bail!(
                "{OP}: bias must have shape [{out_features}], got {:?}",
                bias.shape()
            )
        }
    }
    Ok(())
}

fn output_shape(x: &Layout, out_features: usize) -> Shape {
    let mut dims = x.shape().dims().to_vec();
    *dims.last_mut().expect("x has a last dim") = out_features;
    Shape::from(dims)
}

fn parallelism() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// dst[m, n] (row-major, contiguous) = accumulate·dst + scale · Σ_k lhs[m, k] · rhs[k, n],
/// with the operands given by (row stride, column stride) so transposes cost nothing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    scale: f32,
) {
    assert!(dst.len() >= m * n, "gemm_into: destination too small");
    assert!(m == 0 || k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(k == 0 || n == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the asserts above keep every index gemm computes from these strides inside the
    // slices; dst is exclusively borrowed and does not alias lhs or rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism(),
        )
    }
}

/// A matrix with its element strides (row, column).
type Strided<'a> = (&'a [f32], (usize, usize));

/// A new C [m, n] = A [m, k] · B [k, n] (+ bias) in bf16: through oneDNN where it is in use
/// (AMX), else on our kernel with B packed by `pack`.
fn bf16_product(
    (m, n, k): (usize, usize, usize),
    (a, a_strides): Strided,
    (b, b_strides): Strided,
    bias: Option<&[f32]>,
    pack: impl FnOnce() -> PackedB,
) -> Vec<f32> {
    if let Some(c) = onednn::product((m, n, k), a, a_strides, b, b_strides, bias) {
        return c;
    }
    bf16_gemm::product(m, a, a_strides, &pack(), bias)
}

/// Rows of a product's output each task starts (zeroes or fills with the bias).
const START_ROWS: usize = 64;

/// y [N, out] = x [N, in] · Wᵀ (+ b broadcast over rows).
fn forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    in_features: usize,
    out_features: usize,
) -> Vec<f32> {
    let rows = x.len() / in_features;
    let bf16 = precision() == Precision::Bf16;
    // In bf16 mode only a few rows (decoding) stay f32; past them the products are bf16, as
    // the backward's are.
    let blocked = if bf16 {
        rows <= few_rows::FEW
    } else {
        few_rows::suits(rows, in_features, out_features)
    };
    if blocked {
        return few_rows::product(x, weight, bias, in_features, out_features);
    }
    if !bf16 && in_features >= 4 * out_features && crate::math::has_avx512() {
        // BERT's FFN output (1536→384): on AVX-512, gemm is slow on this shape (3.4 ms for
        // 350 rows, 13.2 for 2,048), packing the weight into panels at each call and running
        // the prediction kernel takes 2.3 and 11.9 (`cargo test --release -p alpaca-kernels
        // --lib packed_linear -- --ignored --nocapture`). On AVX2 (Zen 3) the packing is not
        // won back: 3.5 against gemm's 2.9 ms, 17.7 against 15.5.
        let dims = (out_features, in_features);
        return PackedLinear::from_slices(weight, bias, dims).product(x);
    }
    if bf16 {
        // Wᵀ as a [in, out] matrix: element (i, o) is weight[o·in + i].
        let dims = (rows, out_features, in_features);
        let (a, b) = ((x, (in_features, 1)), (weight, (1, in_features)));
        let pack = || PackedB::transposed_weight(weight, (out_features, in_features));
        return bf16_product(dims, a, b, bias, pack);
    }
    // The starting values (bias rows or zeros) are written in parallel: serially they were
    // a pass over the whole output the other threads waited for.
    let mut y = par_new(
        rows * out_features,
        START_ROWS * out_features,
        |_, chunk| {
            if let Some(b) = bias {
                chunk
                    .chunks_exact_mut(out_features)
                    .for_each(|row| row.copy_from_slice(b));
            }
        },
    );
    // Wᵀ as a [in, out] matrix: element (i, o) is weight[o·in + i].
    gemm_into(
        &mut y,
        (rows, out_features, in_features),
        bias.is_some(),
        x,
        (in_features, 1),
        weight,
        (1, in_features),
        1.0,
    );
    y
}

/// dx [N, in] = dy [N, out] · W [out, in]
/// dW [out, in] = dyᵀ [out, N] · x [N, in]
/// db [out] = Σ_n dy[n, :]
///
/// A weight that is not a variable (a frozen base weight under LoRA, passed as a detached
/// tensor) gets no dW: that gemm is as large as the forward's and nobody would read it.
fn backward(
    x: &Tensor,
    weight: &Tensor,
    dy: &Tensor,
    with_bias: bool,
) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
    const OP: &str = "linear backward";
    let (out_features, in_features) = weight.dims2()?;
    with_f32(OP, x, |xs| {
        with_f32(OP, weight, |ws| {
            with_f32(OP, dy, |dys| {
                let rows = xs.len() / in_features;
                let bf16 = precision() == Precision::Bf16;
                let dx = if bf16 {
                    let dims = (rows, in_features, out_features);
                    let (a, b) = ((dys, (out_features, 1)), (ws, (in_features, 1)));
                    let pack = || PackedB::weight(ws, (out_features, in_features));
                    bf16_product(dims, a, b, None, pack)
                } else {
                    let mut dx = par_zeros(rows * in_features);
                    gemm_into(
                        &mut dx,
                        (rows, in_features, out_features),
                        false,
                        dys,
                        (out_features, 1),
                        ws,
                        (in_features, 1),
                        1.0,
                    );
                    dx
                };
                let dw = if weight.track_op() {
                    let dw = if bf16 {
                        // dW = dyᵀ x: dy read transposed by strides.
                        let dims = (out_features, in_features, rows);
                        let (a, b) = ((dys, (1, out_features)), (xs, (in_features, 1)));
                        let pack = || PackedB::pack(xs, (rows, in_features), (in_features, 1));
                        bf16_product(dims, a, b, None, pack)
                    } else {
                        let mut dw = par_zeros(out_features * in_features);
                        gemm_into(
                            &mut dw,
                            (out_features, in_features, rows),
                            false,
                            dys,
                            (1, out_features),
                            xs,
                            (in_features, 1),
                            1.0,
                        );
                        dw
                    };
                    Some(tensor_from(dw, (out_features, in_features))?)
                } else {
                    None
                };
                let db = with_bias.then(|| column_sums(dys, out_features));
                let dx = tensor_from(dx, x.shape())?;
                let db = db.map(|db| tensor_from(db, out_features)).transpose()?;
                Ok((dx, dw, db))
            })
        })
    })
}

/// Σ over rows of a row-major [N, C] matrix, in parallel over blocks of rows.
fn column_sums(values: &[f32], columns: usize) -> Vec<f32> {
    let rows_per_block = 64;
    values
        .par_chunks(rows_per_block * columns)
        .map(|block| {
            let mut sums = vec![0.0f32; columns];
            for row in block.chunks_exact(columns) {
                for (s, &v) in sums.iter_mut().zip(row) {
                    *s += v;
                }
            }
            sums
        })
        .reduce(
            || vec![0.0f32; columns],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    *x += y;
                }
                a
            },
        )
}

struct Linear {
    sinks: Option<WeightBiasSinks>,
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "alpaca-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(self.name(), s1, l1)?;
        let w = slice_f32(self.name(), s2, l2)?;
        let b = slice_f32(self.name(), s3, l3)?;
        let (out_features, in_features) = l2.shape().dims2()?;
        let y = forward(x, w, Some(b), in_features, out_features);
        Ok((CpuStorage::F32(y), output_shape(l1, out_features)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = backward(x, weight, dy, true)?;
        let sinks = self.sinks.as_ref();
        let dw = route(dw, sinks.map(|s| &s.weight))?;
        // A frozen bias (a detached tensor) gets no gradient, as candle would give it none.
        let db = route(db.filter(|_| bias.track_op()), sinks.map(|s| &s.bias))?;
        Ok((Some(dx), dw, db))
    }
}

struct LinearNoBias {
    sinks: Option<WeightBiasSinks>,
}

impl CustomOp2 for LinearNoBias {
    fn name(&self) -> &'static str {
        "alpaca-linear-no-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(self.name(), s1, l1)?;
        let w = slice_f32(self.name(), s2, l2)?;
        let (out_features, in_features) = l2.shape().dims2()?;
        let y = forward(x, w, None, in_features, out_features);
        Ok((CpuStorage::F32(y), output_shape(l1, out_features)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = backward(x, weight, dy, false)?;
        Ok((Some(dx), route(dw, self.sinks.as_ref().map(|s| &s.weight))?))
    }
}
