//! Comparisons the unit tests of the models share.

use candle_core::Tensor;

/// The largest absolute value of `t`.
pub(crate) fn largest(t: &Tensor) -> f32 {
    t.abs()
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.max(0))
        .and_then(|t| t.to_scalar::<f32>())
        .expect("an f32 tensor")
}

/// The largest absolute element-wise difference of two tensors of one shape.
pub(crate) fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
    largest(&(a - b).expect("tensors of one shape"))
}
