//! Embedding lookup whose table gradient is kept as the few rows a batch touched.
//!
//! Why: through candle's autograd a lookup's gradient is the whole table: a batch of 300
//! tokens of a 30,522 × 384 vocabulary costs a zero-filled 47 MB tensor, a copy of it
//! (`index_add` copies its destination), another zero-fill and an add when the gradient store
//! accumulates it, then a read for the clipping norm and one more in AdamW — ~11% of a CoNLL
//! step. Here the op's backward sums the output's gradient into the touched rows (sorted,
//! unique) and hands them to a [`GradientSink`] the model owns; candle sees no gradient for
//! the table. The optimiser applies the rows ([`crate::adamw::adamw_step_rows`]): the
//! same update as for the dense gradient, whose other rows are zero.

use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use crate::gradient::{Gradient, GradientSink, RowGradient};
use crate::util::{check_f32_cpu, par_new, slice_f32, with_f32};

/// `table` [V, H] rows at `ids` [b, t] (u32) → [b, t, H]. Differentiable w.r.t. the table,
/// whose gradient goes to `sink` as rows (candle's gradient store gets none for it).
pub fn embedding(table: &Tensor, ids: &Tensor, sink: &GradientSink) -> Result<Tensor> {
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
    sink: GradientSink,
}

impl CustomOp1 for Lookup {
    fn name(&self) -> &'static str {
        "alpaca-embedding"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let table = slice_f32(self.name(), storage, layout)?;
        let width = self.width;
        let out = par_new(self.ids.len() * width, width, |index, row| {
            let id = self.ids[index] as usize;
            row.copy_from_slice(&table[id * width..][..width])
        });
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
        self.sink.add(Gradient::Rows(gradient))?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::max_difference;
    use candle_core::{Device, Var};

    #[test]
    fn equals_index_select_and_its_gradient() {
        let device = &Device::Cpu;
        let table = Var::from_tensor(&Tensor::randn(0f32, 1.0, (7, 4), device).unwrap()).unwrap();
        let ids = Tensor::new(&[[3u32, 1, 3], [0, 6, 3]], device).unwrap();
        let upstream = Tensor::randn(0f32, 1.0, (2, 3, 4), device).unwrap();
        let sink = GradientSink::default();

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
        let Some(Gradient::Rows(rows)) = sink.take() else {
            panic!("the backward left no rows")
        };
        assert_eq!(rows.rows, vec![0, 1, 3, 6]);
        let expected = (&theirs * &upstream)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let expected = expected.get(table.as_tensor()).unwrap();
        let difference = max_difference(&rows.to_dense().unwrap(), expected);
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
        let sink = GradientSink::default();
        for ids in [[[1u32, 2]], [[2, 4]]] {
            let ids = Tensor::new(&ids, device).unwrap();
            embedding(table.as_tensor(), &ids, &sink)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
        }
        let Some(Gradient::Rows(rows)) = sink.take() else {
            panic!("the backward left no rows")
        };
        assert_eq!(rows.rows, vec![1, 2, 4]);
        assert_eq!(rows.values, vec![1., 1., 2., 2., 1., 1.]);
    }

    #[test]
    fn bad_ids_and_shapes_are_errors() {
        let device = &Device::Cpu;
        let table = Tensor::zeros((5, 2), candle_core::DType::F32, device).unwrap();
        let sink = GradientSink::default();
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
