//! Shared plumbing: dtype/device checks and borrowing a tensor's f32 data as a slice.

use std::mem::MaybeUninit;

use candle_core::{bail, CpuStorage, DType, Device, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Rows handed to one rayon task: enough work to amortise scheduling.
pub(crate) fn rows_per_task(row_len: usize) -> usize {
    (16 * 1024 / row_len.max(1)).max(1)
}

/// Errors unless `t` is an f32 tensor on the CPU.
pub(crate) fn check_f32_cpu(op: &str, what: &str, t: &Tensor) -> Result<()> {
    if !matches!(t.device(), Device::Cpu) {
        bail!(
            "{op}: {what} must be on the CPU (alpaca-kernels are CPU kernels), got {:?}",
            t.device().location()
        )
    }
    if t.dtype() != DType::F32 {
        bail!("{op}: {what} must be f32, got {:?}", t.dtype())
    }
    Ok(())
}

/// The contiguous f32 slice described by `layout` inside `storage`.
pub(crate) fn slice_f32<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{op}: internal error, input is not contiguous"),
    }
}

/// Calls `f` with the f32 data of `t` (made contiguous first if needed).
pub(crate) fn with_f32<R>(op: &str, t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    check_f32_cpu(op, "tensor", t)?;
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    let Storage::Cpu(cs) = &*s else {
        bail!("{op}: tensor is not on the CPU")
    };
    f(slice_f32(op, cs, l)?)
}

/// Zeroes `values` and returns them as initialised.
pub(crate) fn zeroed<T: Copy + Default>(values: &mut [MaybeUninit<T>]) -> &mut [T] {
    for value in values.iter_mut() {
        value.write(T::default());
    }
    // SAFETY: every element was just written; MaybeUninit<T> has T's layout.
    unsafe { &mut *(values as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// A new vector of `len` values made in parallel: chunk `i` (elements `i·chunk..`) is zeroed
/// and handed to `fill(i, values)` by the task that fills it.
///
/// Why not `vec![0.0; len]` and `par_chunks_mut`: that zero-fills the whole output in the
/// calling thread first, a serial pass the other threads wait for; at a BERT step's sizes
/// there were several per layer. Zeroing chunk by chunk runs in parallel, in cache.
pub(crate) fn par_new(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    par_new_reduce(len, chunk, fill, || (), |(), ()| ()).0
}

/// `len` zeros written by all threads (an output to accumulate into).
pub(crate) fn par_zeros(len: usize) -> Vec<f32> {
    par_new(len, 1 << 14, |_, _| {})
}

/// [`par_new`] whose chunks each return a value, combined with `reduce` from `identity`
/// (the per-task partial sums of a bias gradient).
pub(crate) fn par_new_reduce<T: Send>(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [f32]) -> T + Sync,
    identity: impl Fn() -> T + Sync + Send,
    reduce: impl Fn(T, T) -> T + Sync + Send,
) -> (Vec<f32>, T) {
    let mut values: Vec<f32> = Vec::with_capacity(len);
    let result = values.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .map(|(index, part)| fill(index, zeroed(part)))
        .reduce(identity, reduce);
    // SAFETY: the chunks cover all len elements and every one was zeroed (a rayon `map` over
    // an indexed iterator visits every chunk).
    unsafe { values.set_len(len) };
    (values, result)
}

/// A new CPU f32 tensor from `data` with `shape`.
pub(crate) fn tensor_from(data: Vec<f32>, shape: impl Into<Shape>) -> Result<Tensor> {
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// The largest absolute element-wise difference of two tensors (tests).
#[cfg(test)]
pub(crate) fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensors of one shape")
}

/// Asserts y [rows, out] = x [rows, in] · w [out, in]ᵀ + b against f64 sums, to 1e-4 relative
/// (tests of the product kernels).
#[cfg(test)]
pub(crate) fn assert_product(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y: &[f32],
    (rows, in_features): (usize, usize),
) {
    let out_features = b.len();
    assert_eq!(y.len(), rows * out_features);
    for n in 0..rows {
        for o in 0..out_features {
            let exact: f64 = (0..in_features)
                .map(|i| x[n * in_features + i] as f64 * w[o * in_features + i] as f64)
                .sum::<f64>()
                + b[o] as f64;
            let got = y[n * out_features + o] as f64;
            assert!(
                (got - exact).abs() <= 1e-4 * (1.0 + exact.abs()),
                "rows {rows} in {in_features} out {out_features}: y[{n}, {o}] = {got}, expected {exact}"
            );
        }
    }
}

/// The gradients of Σ y · upstream with respect to each of `inputs` (tests of fused ops
/// against the composed ones).
#[cfg(test)]
pub(crate) fn gradients<const N: usize>(
    y: &Tensor,
    upstream: &Tensor,
    inputs: [&Tensor; N],
) -> [Tensor; N] {
    let store = (y * upstream)
        .and_then(|product| product.sum_all())
        .and_then(|total| total.backward())
        .expect("backward of a test graph");
    inputs.map(|x| store.get(x).expect("every input gets a gradient").clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element is made, the last chunk short, each from zero; the reduction sees every
    /// chunk once; an empty vector has no chunks.
    #[test]
    fn parallel_vectors_are_whole() {
        let (values, chunks) = par_new_reduce(
            1003,
            100,
            |chunk, part| {
                assert!(part.iter().all(|&v| v == 0.0));
                part.iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v = (chunk * 100 + i) as f32);
                part.len()
            },
            || 0,
            |a, b| a + b,
        );
        assert_eq!(chunks, 1003);
        assert!(values.iter().enumerate().all(|(i, &v)| v == i as f32));
        assert!(par_new(0, 8, |_, _| unreachable!()).is_empty());
        assert_eq!(par_new(5, 2, |_, _| {}), vec![0.0; 5]);
    }
}
