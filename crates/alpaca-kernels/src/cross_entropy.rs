//! Cross-entropy with an ignore index, mean over counted rows, forward and backward.
//!
//! logits [N, C], targets [N] (i64 or u32) -> loss [] (scalar)
//!   loss = (1/M) Σ_{n counted} (logsumexp(logits[n]) − logits[n, t_n]),
//!   M = number of rows whose target ≠ ignore_index; loss = 0 when M = 0.

use crate::math;
use crate::util::{check_f32_cpu, slice_f32, tensor_from, with_f32};
use candle_core::{bail, CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Mean cross-entropy of `logits` [N, C] against class indices `targets` [N] (I64 or U32),
/// skipping rows whose target equals `ignore_index`. Returns a scalar tensor (shape []).
/// Differentiable w.r.t. `logits`. A target outside [0, C) that is not `ignore_index` is an error.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, ignore_index: i64) -> Result<Tensor> {
    const OP: &str = "cross_entropy";
    check_f32_cpu(OP, "logits", logits)?;
    let (n, c) = logits.dims2().map_err(|_| {
        candle_core::Error::Msg(format!(
            "{OP}: logits must be [N, C], got {:?}",
            logits.shape()
        ))
    })?;
    check_targets(OP, targets, n)?;
    if c == 0 {
        bail!("{OP}: logits have zero classes")
    }
    logits
        .contiguous()?
        .apply_op2(&targets.contiguous()?, CrossEntropy { ignore_index })
}

struct CrossEntropy {
    ignore_index: i64,
}

/// Errors unless `targets` is `rows` i64 or u32 class indices on the CPU.
pub(crate) fn check_targets(op: &str, targets: &Tensor, rows: usize) -> Result<()> {
    if !matches!(targets.device(), Device::Cpu) {
        bail!("{op}: targets must be on the CPU")
    }
    if !matches!(targets.dtype(), DType::I64 | DType::U32) {
        bail!(
            "{op}: targets must be i64 or u32 class indices, got {:?}",
            targets.dtype()
        )
    }
    if targets.dims() != [rows] {
        bail!(
            "{op}: targets must be [{rows}], one per row, got {:?}",
            targets.shape()
        )
    }
    Ok(())
}

/// [`class_targets`] of a (checked) targets tensor.
pub(crate) fn read_targets(
    op: &str,
    targets: &Tensor,
    c: usize,
    ignore_index: i64,
) -> Result<Vec<Option<usize>>> {
    let targets = targets.contiguous()?;
    let (storage, layout) = targets.storage_and_layout();
    let candle_core::Storage::Cpu(storage) = &*storage else {
        bail!("{op}: targets must be on the CPU")
    };
    class_targets(op, storage, layout, c, ignore_index)
}

/// Class indices from i64 or u32 `targets` (`None` = `ignore_index`), each checked against
/// [0, C).
pub(crate) fn class_targets(
    op: &str,
    s: &CpuStorage,
    l: &Layout,
    c: usize,
    ignore_index: i64,
) -> Result<Vec<Option<usize>>> {
    let (a, b) = match l.contiguous_offsets() {
        Some(o) => o,
        None => bail!("{op}: internal error, targets not contiguous"),
    };
    let raw: Vec<i64> = match s {
        CpuStorage::I64(v) => v[a..b].to_vec(),
        CpuStorage::U32(v) => v[a..b].iter().map(|&t| t as i64).collect(),
        _ => bail!("{op}: targets must be i64 or u32"),
    };
    raw.iter()
        .enumerate()
        .map(|(row, &t)| {
            if t == ignore_index {
                Ok(None)
            } else if t < 0 || t as u64 >= c as u64 {
                bail!(
                    "{op}: target {t} at row {row} is outside [0, {c}) and is not the ignore index {ignore_index}"
                )
            } else {
                Ok(Some(t as usize))
            }
        })
        .collect()
}

impl CrossEntropy {
    fn targets(&self, s: &CpuStorage, l: &Layout, c: usize) -> Result<Vec<Option<usize>>> {
        class_targets("cross_entropy", s, l, c, self.ignore_index)
    }
}

/// log Σ exp(row), stable.
#[inline(always)]
pub(crate) fn logsumexp(row: &[f32]) -> f32 {
    let m = math::max(row);
    let mut acc = [0.0f32; math::LANES];
    let chunks = row.chunks_exact(math::LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| math::exp(v - m)).sum();
    for ch in chunks {
        for i in 0..math::LANES {
            acc[i] += math::exp(ch[i] - m);
        }
    }
    m + (acc.iter().sum::<f32>() + tail).ln()
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "alpaca-cross-entropy"
    }

    // forward: loss = Σ_{counted n} (lse_n − logits[n, t_n]) / M      (f64 accumulation)
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let logits = slice_f32(self.name(), s1, l1)?;
        let c = l1.dims()[1];
        let targets = self.targets(s2, l2, c)?;
        let count = targets.iter().filter(|t| t.is_some()).count();
        let total: f64 = logits
            .par_chunks(c)
            .zip(targets.par_iter())
            .map(|(row, t)| match t {
                Some(t) => {
                    (math::simd(
                        #[inline(always)]
                        || logsumexp(row),
                    ) - row[*t]) as f64
                }
                None => 0.0,
            })
            .sum();
        let loss = if count == 0 {
            0.0
        } else {
            (total / count as f64) as f32
        };
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    // backward: dlogits[n, :] = g · (softmax(logits[n]) − onehot(t_n)) / M  for counted rows,
    //           0 for ignored rows (and everywhere when M = 0).        g = dloss (scalar)
    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let c = logits.dims()[1];
        let targets = read_targets("cross_entropy", targets, c, self.ignore_index)?;
        let count = targets.iter().filter(|t| t.is_some()).count();
        let g = with_f32(name, grad_res, |g| Ok(g.first().copied().unwrap_or(0.0)))?;
        let coef = if count == 0 { 0.0 } else { g / count as f32 };
        let dl = with_f32(name, logits, |logits| {
            let mut dl = vec![0.0f32; logits.len()];
            dl.par_chunks_mut(c)
                .zip(logits.par_chunks(c))
                .zip(targets.par_iter())
                .for_each(|((dr, row), t)| {
                    if let Some(t) = *t {
                        math::simd(
                            #[inline(always)]
                            || {
                                let lse = logsumexp(row);
                                for (o, &v) in dr.iter_mut().zip(row) {
                                    *o = coef * math::exp(v - lse);
                                }
                            },
                        );
                        dr[t] -= coef;
                    }
                });
            Ok(dl)
        })?;
        Ok((Some(tensor_from(dl, logits.shape())?), None))
    }
}
