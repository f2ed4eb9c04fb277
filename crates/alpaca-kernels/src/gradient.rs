//! Gradients that bypass candle's gradient store: a parameter's gradient as a tensor or as
//! the touched rows of a table, and the sink an op's backward leaves it in.
//!
//! Why: candle's backward accumulates every gradient into a zero-filled tensor of the
//! parameter's size (`GradStore::or_insert`, then an add), even the first and only one. For
//! the 30,522 × 384 word-embedding table that is a 47 MB zero-fill, a copy (`index_add`
//! copies its destination) and an add per step for a gradient that is zero outside ~300
//! rows. An op holding a [`GradientSink`] hands its parameter's gradient there instead and
//! returns none to candle; `alpaca_models::Parameters::gradients` collects the sinks with the
//! store. Linear layers and layer norms send their weight and bias gradients the same way
//! ([`WeightBiasSinks`]): the store's zero-fill and add for them ran single-threaded, ~3% of
//! a CoNLL-shaped bf16 step.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{bail, Result, Tensor};

use crate::adamw::squared_norm;
use crate::util::tensor_from;

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
        // Both gradients' rows as one lookup: rows present in both are summed.
        Ok(Self::from_lookup(
            self.table_rows,
            self.width,
            &[&self.rows[..], &other.rows[..]].concat(),
            &[&self.values[..], &other.values[..]].concat(),
        ))
    }

    /// Σ g² (f64), as the dense gradient's.
    pub fn squared_norm(&self) -> f64 {
        self.values.iter().map(|&g| (g as f64) * (g as f64)).sum()
    }

    /// `dense` [V, H] plus these rows, as a new tensor: one copy of the table and the rows'
    /// adds (a tied table: the masked-LM decoder's dense gradient and the lookup's rows).
    pub fn added_to(&self, dense: &Tensor) -> Result<Tensor> {
        if dense.dims() != [self.table_rows, self.width] {
            bail!(
                "a row gradient of a [{}, {}] table does not add to {:?}",
                self.table_rows,
                self.width,
                dense.shape()
            )
        }
        let mut sum = dense.flatten_all()?.to_vec1::<f32>()?;
        for (&row, values) in self.rows.iter().zip(self.values.chunks_exact(self.width)) {
            let target = &mut sum[row as usize * self.width..][..self.width];
            for (t, &v) in target.iter_mut().zip(values) {
                *t += v;
            }
        }
        tensor_from(sum, dense.shape())
    }

    /// The dense [V, H] tensor (tests).
    pub fn to_dense(&self) -> Result<Tensor> {
        let mut dense = vec![0.0f32; self.table_rows * self.width];
        for (&row, values) in self.rows.iter().zip(self.values.chunks_exact(self.width)) {
            dense[row as usize * self.width..][..self.width].copy_from_slice(values);
        }
        tensor_from(dense, (self.table_rows, self.width))
    }
}

/// A parameter's gradient: a tensor of its shape, or the touched rows of a table
/// ([`crate::embedding`]).
#[derive(Debug, Clone)]
pub enum Gradient {
    Dense(Tensor),
    Rows(RowGradient),
}

impl Gradient {
    /// Σ g² (f64).
    pub fn squared_norm(&self) -> Result<f64> {
        match self {
            Gradient::Dense(tensor) => squared_norm(tensor),
            Gradient::Rows(rows) => Ok(rows.squared_norm()),
        }
    }

    /// The sum of two gradients of one parameter (dense if either is).
    pub fn add(&self, other: &Gradient) -> Result<Gradient> {
        Ok(match (self, other) {
            (Gradient::Rows(a), Gradient::Rows(b)) => Gradient::Rows(a.add(b)?),
            (Gradient::Dense(a), Gradient::Dense(b)) => Gradient::Dense((a + b)?),
            (Gradient::Dense(dense), Gradient::Rows(rows))
            | (Gradient::Rows(rows), Gradient::Dense(dense)) => {
                Gradient::Dense(rows.added_to(dense)?)
            }
        })
    }

    pub fn to_dense(&self) -> Result<Tensor> {
        match self {
            Gradient::Dense(tensor) => Ok(tensor.clone()),
            Gradient::Rows(rows) => rows.to_dense(),
        }
    }
}

/// Where an op's backward leaves a parameter's gradient, summed over backward passes until
/// [`GradientSink::take`]n. Clones share the sink.
#[derive(Debug, Clone, Default)]
pub struct GradientSink(Arc<Mutex<Option<Gradient>>>);

impl GradientSink {
    /// The gradient gathered since the last take (None: no backward reached the op).
    pub fn take(&self) -> Option<Gradient> {
        self.0.lock().ok().and_then(|mut pending| pending.take())
    }

    pub(crate) fn add(&self, gradient: Gradient) -> Result<()> {
        let mut pending = self
            .0
            .lock()
            .map_err(|_| candle_core::Error::Msg("gradient sink poisoned".into()))?;
        *pending = Some(match pending.take() {
            Some(sum) => sum.add(&gradient)?,
            None => gradient,
        });
        Ok(())
    }
}

/// Where a layer's weight and bias gradients go instead of candle's gradient store (linear
/// layers, layer norms).
///
/// Why: the store accumulates each gradient into a zero-filled tensor of the parameter's size
/// and then adds (`GradStore::or_insert`), single-threaded, even for the first and only
/// gradient: for BERT's 10.6M linear weights that was a zero-fill, a read of two tensors and a
/// write of a third per step while the other threads waited. A sink takes the tensor the
/// backward made as it is.
#[derive(Debug, Clone, Default)]
pub struct WeightBiasSinks {
    pub weight: GradientSink,
    pub bias: GradientSink,
}

/// Hands a parameter gradient to its sink when there is one; returns what candle should get.
pub(crate) fn route(
    gradient: Option<Tensor>,
    sink: Option<&GradientSink>,
) -> Result<Option<Tensor>> {
    match (gradient, sink) {
        (Some(gradient), Some(sink)) => {
            sink.add(Gradient::Dense(gradient))?;
            Ok(None)
        }
        (gradient, _) => Ok(gradient),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::max_difference;
    use candle_core::Device;

    /// Every combination adds up to the sum of the dense tensors.
    #[test]
    fn gradients_of_either_kind_add_up() {
        let device = &Device::Cpu;
        let rows =
            RowGradient::from_lookup(6, 3, &[4, 1, 4], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
        let other = RowGradient::from_lookup(6, 3, &[0, 1], &[1., 1., 1., 2., 2., 2.]);
        let dense = Tensor::randn(0f32, 1.0, (6, 3), device).unwrap();
        let (r, o, d) = (
            Gradient::Rows(rows.clone()),
            Gradient::Rows(other.clone()),
            Gradient::Dense(dense.clone()),
        );
        let expected = |a: &Tensor, b: &Tensor| (a + b).unwrap();
        let rows_dense = rows.to_dense().unwrap();
        let other_dense = other.to_dense().unwrap();
        for (sum, want) in [
            (r.add(&o).unwrap(), expected(&rows_dense, &other_dense)),
            (r.add(&d).unwrap(), expected(&rows_dense, &dense)),
            (d.add(&r).unwrap(), expected(&rows_dense, &dense)),
            (d.add(&d).unwrap(), expected(&dense, &dense)),
        ] {
            let got = sum.to_dense().unwrap();
            assert!(max_difference(&got, &want) < 1e-6);
            let norm = crate::squared_norm(&want).unwrap();
            assert!((sum.squared_norm().unwrap() - norm).abs() < 1e-6 * (1.0 + norm));
        }
        assert!(matches!(r.add(&o).unwrap(), Gradient::Rows(_)));
        // Row 4 was looked up twice: its gradient is the sum.
        assert_eq!(rows.rows, vec![1, 4]);
        assert_eq!(rows.values, vec![4., 5., 6., 8., 10., 12.]);
        let wrong = Tensor::zeros((5, 3), candle_core::DType::F32, device).unwrap();
        assert!(rows.added_to(&wrong).is_err());
    }
}
