//! Embedding lookup whose table gradient is kept as the few rows a batch touched.
//!
//! Why: through candle's autograd a lookup's gradient is the whole table: a batch of 300
//! tokens of a 30,522 × 384 vocabulary costs a zero-filled 47 MB tensor, a copy of it
//! (`index_add` copies its destination), another zero-fill and an add when the gradient store
//! accumulates it, then a read for the clipping norm and one more in AdamW — ~11% of a CoNLL
//! step. Here the op's backward sums the output's gradient into the touched rows (sorted,
//! unique) and hands them to a [`RowGradientSink`] the model owns; candle sees no gradient
//! for the table. The optimiser applies the rows ([`crate::adamw::adamw_step_rows`]): the
//! same update as for the dense gradient, whose other rows are zero.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::util::{check_f32_cpu, slice_f32, tensor_from, with_f32};

/// The gradient of a [V, H] table that is zero outside `rows`.
#[derive(Debug, Clone, PartialEq)]
pub struct RowGradient {
    /// V, the table's row count.
    pub table_rows: usize,
    /// H, the row width.
    pub width: usize,
    /// The rows with a gradient, ascending and unique.
    pub rows: Vec<u32>,
    /// Their gradients, [rows.len(), H].
    pub values: Vec<f32>,
}

impl RowGradient {
    /// Σ over `ids` of `gradients`' rows: the table gradient of a lookup of `ids` whose
    /// output [ids.len(), H] received `gradients`.
    pub fn from_lookup(table_rows: usize, width: usize, ids: &[u32], gradients: &[f32]) -> Self {
        let mut sums: BTreeMap<u32, Vec<f32>> = BTreeMap::new();
        for (&id, gradient) in ids.iter().zip(gradients.chunks_exact(width)) {
            let sum = sums.entry(id).or_insert_with(|| vec![0.0; width]);
            for (s, &g) in sum.iter_mut().zip(gradient) {
                *s += g;
            }
        }
        let rows = sums.keys().copied().collect();
        Self {
            table_rows,
            width,
            rows,
            values: sums.into_values().flatten().collect(),
        }
    }

    /// The sum of two gradients of the same table.
    pub fn add(&self, other: &RowGradient) -> Result<RowGradient> {
        if (self.table_rows, self.width) != (other.table_rows, other.width) {
            bail!(
                "row gradients of [{}, {}] and [{}, {}] tables do not add",
                self.table_rows,
                self.width,
                other.table_rows,
                other.width
            )
        }
        let width = self.width;
        let mut sums: BTreeMap<u32, Vec<f32>> = BTreeMap::new();
        for gradient in [self, other] {
            for (&row, values) in gradient
                .rows
                .iter()
                .zip(gradient.values.chunks_exact(width))
            {
                let sum = sums.entry(row).or_insert_with(|| vec![0.0; width]);
                for (s, &v) in sum.iter_mut().zip(values) {
                    *s += v;
                }
            }
        }
        Ok(Self {
            table_rows: self.table_rows,
            width,
            rows: sums.keys().copied().collect(),
            values: sums.into_values().flatten().collect(),
        })
    }

    /// Σ g² (f64), as the dense gradient's.
    pub fn squared_norm(&self) -> f64 {
        self.values.iter().map(|&g| (g as f64) * (g as f64)).sum()
    }

    /// The dense [V, H] tensor (tests, and adding to a dense gradient of a tied table).
    pub fn to_dense(&self) -> Result<Tensor> {
        let mut dense = vec![0.0f32; self.table_rows * self.width];
        for (&row, values) in self.rows.iter().zip(self.values.chunks_exact(self.width)) {
            dense[row as usize * self.width..][..self.width].copy_from_slice(values);
        }
        tensor_from(dense, (self.table_rows, self.width))
    }
}

/// Where a lookup's backward leaves its table gradient, summed over backward passes until
/// [`RowGradientSink::take`]n. Clones share the sink.
#[derive(Debug, Clone, Default)]
pub struct RowGradientSink(Arc<Mutex<Option<RowGradient>>>);

impl RowGradientSink {
    /// The gradient gathered since the last take (None: no backward went through a lookup).
    pub fn take(&self) -> Option<RowGradient> {
        self.0.lock().ok().and_then(|mut pending| pending.take())
    }

    fn add(&self, gradient: RowGradient) -> Result<()> {
        let mut pending = self
            .0
            .lock()
            .map_err(|_| candle_core::Error::Msg("row gradient sink poisoned".into()))?;
        *pending = Some(match pending.take() {
            Some(sum) => sum.add(&gradient)?,
            None => gradient,
        });
        Ok(())
    }
}

/// `table` [V, H] rows at `ids` [b, t] (u32) → [b, t, H]. Differentiable w.r.t. the table,
/// whose gradient goes to `sink` as rows (candle's gradient store gets none for it).
pub fn embedding(table: &Tensor, ids: &Tensor, sink: &RowGradientSink) -> Result<Tensor> {
    const OP: &str = "embedding";
    check_f32_cpu(OP, "table", table)?;
    let (table_rows, width) = table.dims2().map_err(|_| {
        candle_core::Error::Msg(format!(
            "{OP}: the table must be [rows, width], got {:?}",
            table.shape()
        ))
    })?;
    let (batch, length) = ids.dims2().map_err(|_| {
        candle_core::Error::Msg(format!(
            "{OP}: ids must be [batch, length], got {:?}",
            ids.shape()
        ))
    })?;
    let flat: Vec<u32> = ids.flatten_all()?.to_vec1::<u32>()?;
    if let Some(&id) = flat.iter().find(|&&id| id as usize >= table_rows) {
        bail!("{OP}: id {id} is outside the table of {table_rows} rows")
    }
    let looked_up = table.contiguous()?.apply_op1(Lookup {
        ids: Arc::new(flat),
        table_rows,
        width,
        sink: sink.clone(),
    })?;
    looked_up.reshape((batch, length, width))
}

struct Lookup {
    ids: Arc<Vec<u32>>,
    table_rows: usize,
    width: usize,
    sink: RowGradientSink,
}

impl CustomOp1 for Lookup {
    fn name(&self) -> &'static str {
        "alpaca-embedding"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let table = slice_f32(self.name(), storage, layout)?;
        let width = self.width;
        let mut out = vec![0.0f32; self.ids.len() * width];
        out.par_chunks_mut(width)
            .zip(self.ids.par_iter())
            .for_each(|(row, &id)| row.copy_from_slice(&table[id as usize * width..][..width]));
        Ok((CpuStorage::F32(out), Shape::from((self.ids.len(), width))))
    }

    fn bwd(&self, _table: &Tensor, _out: &Tensor, grad_out: &Tensor) -> Result<Option<Tensor>> {
        let gradient = with_f32(self.name(), grad_out, |g| {
            Ok(RowGradient::from_lookup(
                self.table_rows,
                self.width,
                &self.ids,
                g,
            ))
        })?;
        self.sink.add(gradient)?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn equals_index_select_and_its_gradient() {
        let device = &Device::Cpu;
        let table = Var::from_tensor(&Tensor::randn(0f32, 1.0, (7, 4), device).unwrap()).unwrap();
        let ids = Tensor::new(&[[3u32, 1, 3], [0, 6, 3]], device).unwrap();
        let upstream = Tensor::randn(0f32, 1.0, (2, 3, 4), device).unwrap();
        let sink = RowGradientSink::default();

        let ours = embedding(table.as_tensor(), &ids, &sink).unwrap();
        let theirs = table
            .as_tensor()
            .index_select(&ids.flatten_all().unwrap(), 0)
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap();
        assert_eq!(
            ours.to_vec3::<f32>().unwrap(),
            theirs.to_vec3::<f32>().unwrap()
        );

        let store = (&ours * &upstream)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(store.get(table.as_tensor()).is_none());
        let rows = sink.take().expect("the backward left the rows");
        assert_eq!(rows.rows, vec![0, 1, 3, 6]);
        let expected = (&theirs * &upstream)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let expected = expected.get(table.as_tensor()).unwrap();
        let dense = rows.to_dense().unwrap();
        let difference = (dense - expected)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(difference < 1e-6, "{difference}");
        let norm = crate::squared_norm(expected).unwrap();
        assert!((rows.squared_norm() - norm).abs() < 1e-9 * (1.0 + norm));
        assert!(sink.take().is_none(), "taking empties the sink");
    }

    #[test]
    fn backward_passes_add_up_until_taken() {
        let device = &Device::Cpu;
        let table =
            Var::from_tensor(&Tensor::ones((5, 2), candle_core::DType::F32, device).unwrap())
                .unwrap();
        let sink = RowGradientSink::default();
        for ids in [[[1u32, 2]], [[2, 4]]] {
            let ids = Tensor::new(&ids, device).unwrap();
            embedding(table.as_tensor(), &ids, &sink)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
        }
        let rows = sink.take().unwrap();
        assert_eq!(rows.rows, vec![1, 2, 4]);
        assert_eq!(rows.values, vec![1., 1., 2., 2., 1., 1.]);
    }

    #[test]
    fn bad_ids_and_shapes_are_errors() {
        let device = &Device::Cpu;
        let table = Tensor::zeros((5, 2), candle_core::DType::F32, device).unwrap();
        let sink = RowGradientSink::default();
        let error = embedding(&table, &Tensor::new(&[[1u32, 5]], device).unwrap(), &sink)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("id 5 is outside the table of 5 rows"),
            "{error}"
        );
        assert!(embedding(&table, &Tensor::new(&[1u32], device).unwrap(), &sink).is_err());
        let other = RowGradient::from_lookup(6, 2, &[1], &[1.0, 2.0]);
        let mine = RowGradient::from_lookup(5, 2, &[1], &[1.0, 2.0]);
        assert!(mine.add(&other).is_err());
    }
}
