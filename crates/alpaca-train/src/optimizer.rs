//! AdamW over named parameters, with HF's decay groups and global-norm gradient clipping.

use alpaca_kernels::adamw::{adamw_step_gradient, touched_rows, AdamWParams};
use alpaca_kernels::Gradient;
use alpaca_models::Parameters;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// transformers' Trainer puts biases and LayerNorm weights in the no-decay group.
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("LayerNorm") || name.contains("layer_norm"))
}

pub struct AdamW {
    /// The model's registry (sharing its row-gradient sinks), for [`AdamW::gradients`].
    registry: Parameters,
    parameters: Vec<(String, Var)>,
    first_moments: Vec<Vec<f32>>,
    second_moments: Vec<Vec<f32>>,
    /// Per lookup table (a parameter with row gradients), which rows have nonzero moments
    /// (`alpaca_kernels::adamw_step_rows`); empty until its first row gradient, then derived
    /// from the moments, so a resumed run starts from the saved ones.
    touched: Vec<Vec<bool>>,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
    step: u64,
}

impl AdamW {
    pub fn new(registry: &Parameters, weight_decay: f64) -> Self {
        let parameters: Vec<(String, Var)> = registry
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect();
        let zeros = |v: &Var| vec![0f32; v.elem_count()];
        Self {
            registry: registry.clone(),
            first_moments: parameters.iter().map(|(_, v)| zeros(v)).collect(),
            second_moments: parameters.iter().map(|(_, v)| zeros(v)).collect(),
            touched: vec![Vec::new(); parameters.len()],
            parameters,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay,
            step: 0,
        }
    }

    pub fn parameters(&self) -> impl Iterator<Item = &Var> {
        self.parameters.iter().map(|(_, v)| v)
    }

    /// Each parameter's gradient from a backward pass, in the order [`AdamW::step`] takes
    /// (lookup tables' as rows: [`Parameters::gradients`]).
    pub fn gradients(&self, store: &GradStore) -> candle_core::Result<Vec<Option<Gradient>>> {
        self.registry.gradients(store)
    }

    /// The moment estimates as named tensors (`exp_avg.<param>`, `exp_avg_sq.<param>`, torch's
    /// names), for the resumable checkpoint.
    pub fn state_tensors(&self) -> candle_core::Result<Vec<(String, Tensor)>> {
        let device = candle_core::Device::Cpu;
        let mut tensors = Vec::with_capacity(2 * self.parameters.len());
        for (index, (name, var)) in self.parameters.iter().enumerate() {
            let shape = var.shape().clone();
            let first = Tensor::from_slice(&self.first_moments[index], shape.clone(), &device)?;
            let second = Tensor::from_slice(&self.second_moments[index], shape, &device)?;
            tensors.push((format!("exp_avg.{name}"), first));
            tensors.push((format!("exp_avg_sq.{name}"), second));
        }
        Ok(tensors)
    }

    /// Restores what `state_tensors` saved and the step count; every parameter's moments
    /// must be present with its shape.
    pub fn load_state(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
        steps: u64,
    ) -> Result<(), String> {
        for (index, (name, var)) in self.parameters.iter().enumerate() {
            for (prefix, target) in [
                ("exp_avg", &mut self.first_moments[index]),
                ("exp_avg_sq", &mut self.second_moments[index]),
            ] {
                let key = format!("{prefix}.{name}");
                let tensor = tensors
                    .get(&key)
                    .ok_or_else(|| format!("optimizer state lacks {key}"))?;
                if tensor.dims() != var.dims() {
                    return Err(format!(
                        "optimizer state {key} has shape {:?}, the parameter {:?}",
                        tensor.dims(),
                        var.dims()
                    ));
                }
                *target = tensor
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|e| format!("{key}: {e}"))?;
            }
        }
        self.touched.iter_mut().for_each(Vec::clear);
        self.step = steps;
        Ok(())
    }

    /// Number of optimiser steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Applies one update. `gradients[i]` belongs to the i-th parameter (None = no gradient,
    /// parameter left as is). Gradients are scaled by `gradient_scale` (clipping) inside the
    /// update, not copied scaled.
    pub fn step(
        &mut self,
        gradients: &[Option<Gradient>],
        learning_rate: f64,
        gradient_scale: f64,
    ) -> candle_core::Result<()> {
        self.step += 1;
        for (index, (name, var)) in self.parameters.iter().enumerate() {
            let Some(gradient) = &gradients[index] else {
                continue;
            };
            let params = AdamWParams {
                learning_rate,
                beta1: self.beta1,
                beta2: self.beta2,
                epsilon: self.epsilon,
                weight_decay: if decays(name) { self.weight_decay } else { 0.0 },
                step: self.step,
                gradient_scale,
            };
            let (m, v) = (
                &mut self.first_moments[index],
                &mut self.second_moments[index],
            );
            let touched = &mut self.touched[index];
            if let Gradient::Rows(rows) = gradient {
                if touched.is_empty() {
                    *touched = touched_rows((m, v), rows.width);
                }
            }
            adamw_step_gradient(var.as_tensor(), gradient, (m, v), touched, params)?;
        }
        Ok(())
    }
}

/// The L2 norm of all gradients together (what `clip_grad_norm_` returns).
pub fn global_norm(gradients: &[Option<Gradient>]) -> candle_core::Result<f64> {
    let mut total = 0.0;
    for gradient in gradients.iter().flatten() {
        total += gradient.squared_norm()?;
    }
    Ok(total.sqrt())
}

/// The factor `clip_grad_norm_` multiplies gradients by: 1 when under the limit.
pub fn clip_scale(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_groups_follow_transformers() {
        assert!(decays("bert.encoder.layer.0.attention.self.query.weight"));
        assert!(!decays("bert.encoder.layer.0.attention.self.query.bias"));
        assert!(!decays("bert.embeddings.LayerNorm.weight"));
        assert!(decays("classifier.weight"));
        // Masked LM: the (tied) word embeddings decay, the decoder bias does not.
        assert!(decays("bert.embeddings.word_embeddings.weight"));
        assert!(decays("bert.embeddings.position_embeddings.weight"));
        assert!(!decays("cls.predictions.bias"));
        assert!(!decays("cls.predictions.transform.LayerNorm.weight"));
    }

    #[test]
    fn clipping_scales_only_above_the_limit() {
        assert_eq!(clip_scale(0.5, 1.0), 1.0);
        assert!((clip_scale(4.0, 1.0) - 0.25).abs() < 1e-6);
        assert_eq!(clip_scale(4.0, 0.0), 1.0);
    }
}
