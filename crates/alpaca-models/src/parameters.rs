//! Named trainable parameters, in the order the model created them.
//!
//! Names are the Hugging Face names the parameter is saved under (e.g.
//! `bert.encoder.layer.0.attention.self.query.weight`), so saving is a plain dump.

use std::collections::HashMap;

use alpaca_kernels::{Gradient, GradientSink};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// Clones share the gradient sinks (the optimiser keeps a clone).
#[derive(Default, Clone)]
pub struct Parameters {
    entries: Vec<(String, Var)>,
    index: HashMap<String, usize>,
    /// Parameters whose ops leave their gradient here rather than in candle's gradient
    /// store (`alpaca_kernels::gradient`), by entry.
    sinks: HashMap<usize, GradientSink>,
}

impl Parameters {
    pub fn insert(&mut self, name: String, var: Var) {
        if let Some(&position) = self.index.get(&name) {
            self.entries[position].1 = var;
        } else {
            self.index.insert(name.clone(), self.entries.len());
            self.entries.push((name, var));
        }
    }

    /// The sink for parameter `name`'s gradient, for the ops that leave it there rather than
    /// in candle's store (`alpaca_kernels::embedding`); [`Parameters::gradients`] reports it.
    /// None if there is no such parameter.
    pub fn gradient_sink(&mut self, name: &str) -> Option<GradientSink> {
        let position = *self.index.get(name)?;
        Some(self.sinks.entry(position).or_default().clone())
    }

    /// Every parameter's gradient after a backward pass, in order: what `store` holds and
    /// what its ops left in its sink (taken, so each backward pass is reported once), summed
    /// when there are both (a tied table: looked up, and the masked-LM decoder).
    pub fn gradients(&self, store: &GradStore) -> candle_core::Result<Vec<Option<Gradient>>> {
        self.entries
            .iter()
            .enumerate()
            .map(|(position, (_, var))| {
                let dense = store.get(var.as_tensor()).cloned().map(Gradient::Dense);
                let sunk = self.sinks.get(&position).and_then(|sink| sink.take());
                Ok(match (dense, sunk) {
                    (Some(dense), Some(sunk)) => Some(dense.add(&sunk)?),
                    (dense, sunk) => dense.or(sunk),
                })
            })
            .collect()
    }

    /// [`Parameters::gradients`] by name (tests and diagnostics).
    pub fn gradients_by_name(
        &self,
        store: &GradStore,
    ) -> candle_core::Result<HashMap<String, Gradient>> {
        let gradients = self.gradients(store)?;
        Ok(self
            .entries
            .iter()
            .zip(gradients)
            .filter_map(|((name, _), gradient)| Some((name.clone(), gradient?)))
            .collect())
    }

    pub fn get(&self, name: &str) -> Option<&Var> {
        self.index.get(name).map(|&i| &self.entries[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total number of scalar values.
    pub fn count(&self) -> usize {
        self.entries.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The current values, by name, for saving.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.entries
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }
}
