//! Named trainable parameters, in the order the model created them.
//!
//! Names are the Hugging Face names the parameter is saved under (e.g.
//! `bert.encoder.layer.0.attention.self.query.weight`), so saving is a plain dump.

use std::collections::HashMap;

use candle_core::{Tensor, Var};

#[derive(Default, Clone)]
pub struct Parameters {
    entries: Vec<(String, Var)>,
    index: HashMap<String, usize>,
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
