//! LoRA (Hu et al. 2021) on the LLaMA projections, laid out as PEFT lays it out so adapters
//! move between alpaca and `peft`:
//! `y = x Wᵀ + (alpha / r) · dropout(x) Aᵀ Bᵀ`, A [r, in] initialised as PEFT does
//! (Kaiming-uniform with a = √5, i.e. U(±1/√in)), B [out, r] zeros, so training starts from the
//! base model exactly. The base stays frozen (no gradient, no optimiser state); only A and B
//! train, and only they are saved: `adapter_model.safetensors` with PEFT's names
//! (`base_model.model.<module>.lora_A.weight`) and `adapter_config.json`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use alpaca_kernels::{FrozenWeight, LoraBranch};

use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::causal_lm::LlamaForCausalLM;
use crate::checkpoint::{save_safetensors, write_dir_atomic};
use crate::error::{ModelError, Result};
use crate::layers::dropout;
use crate::llama::ProjectionAdapter;
use crate::parameters::Parameters;
use crate::Mode;

/// The projection kinds LoRA can target; `all-linear` means all of them (PEFT's meaning: every
/// linear layer but the output head).
pub const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Dropout sites of adapters start here, clear of the decoder's own sites.
const FIRST_DROPOUT_SITE: u64 = 50_000;

/// The adapter's shape and where it goes (adapter_config.json's fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    /// Projection kinds (`q_proj`, …) or `["all-linear"]`.
    pub target_modules: Vec<String>,
}

impl LoraConfig {
    /// `alpha / r`, the factor on the adapter's term.
    pub fn scaling(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }

    /// The projection kinds targeted, checked.
    pub fn kinds(&self) -> std::result::Result<Vec<&'static str>, String> {
        if self.r == 0 {
            return Err("lora r must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(format!(
                "lora dropout {} is not in [0, 1)",
                self.lora_dropout
            ));
        }
        if self.target_modules.iter().any(|t| t == "all-linear") {
            return Ok(PROJECTIONS.to_vec());
        }
        let mut kinds = Vec::new();
        for target in &self.target_modules {
            match PROJECTIONS.iter().find(|p| **p == target.as_str()) {
                Some(kind) => kinds.push(*kind),
                None => {
                    return Err(format!(
                        "unknown LoRA target {target:?}; expected some of {} or all-linear",
                        PROJECTIONS.join(", ")
                    ))
                }
            }
        }
        if kinds.is_empty() {
            return Err("no LoRA targets given".into());
        }
        Ok(kinds)
    }
}

/// One projection's A and B.
struct LoraAdapter {
    a: Var,
    b: Var,
    scaling: f64,
    dropout: f64,
    site: u64,
}

impl ProjectionAdapter for LoraAdapter {
    /// x [.., in] → (alpha/r) · dropout(x) Aᵀ Bᵀ [.., out]
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let x = dropout(x, self.dropout, mode, self.site)?;
        let low = alpaca_kernels::linear_no_bias(&x, self.a.as_tensor())?;
        let up = alpaca_kernels::linear_no_bias(&low, self.b.as_tensor())?;
        Ok(up.affine(self.scaling, 0.0)?)
    }

    fn forward_fused(
        &self,
        x: &Tensor,
        weight: &Arc<FrozenWeight>,
        mode: Mode,
    ) -> Option<Result<Tensor>> {
        let branch = LoraBranch {
            scaling: self.scaling as f32,
            dropout: if mode.train { self.dropout as f32 } else { 0.0 },
            seed: mode.site_seed(self.site),
        };
        Some(
            alpaca_kernels::frozen_linear_with_lora(
                x,
                weight,
                self.a.as_tensor(),
                self.b.as_tensor(),
                branch,
            )
            .map_err(Into::into),
        )
    }
}

/// The PEFT name of a projection's A or B: `base_model.model.<module>.lora_A.weight`.
fn peft_name(module: &str, matrix: &str) -> String {
    format!("base_model.model.{module}.lora_{matrix}.weight")
}

/// Freezes the model and attaches fresh adapters (A random from `seed`, B zero) to every
/// targeted projection. Returns the trainable parameters, by PEFT name.
pub fn attach_lora(
    model: &mut LlamaForCausalLM,
    config: &LoraConfig,
    seed: u64,
) -> Result<Parameters> {
    attach(model, config, |_, _, _| Ok(None), seed)
}

fn attach(
    model: &mut LlamaForCausalLM,
    config: &LoraConfig,
    // (module name, out, in) → given (A, B), or None for fresh ones.
    mut source: impl FnMut(&str, usize, usize) -> Result<Option<(Tensor, Tensor)>>,
    seed: u64,
) -> Result<Parameters> {
    let kinds = config
        .kinds()
        .map_err(|m| ModelError::checkpoint("adapter_config.json", m))?;
    model.freeze();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut parameters = Parameters::default();
    let mut site = FIRST_DROPOUT_SITE;
    for projection in model.model.projections_mut() {
        if !kinds.contains(&projection.kind()) {
            continue;
        }
        let (out_features, in_features) = projection.linear.weight.as_tensor().dims2()?;
        let given = source(&projection.name, out_features, in_features)?;
        let (a, b) = match given {
            Some((a, b)) => (a, b),
            None => {
                let bound = 1.0 / (in_features as f64).sqrt();
                let values: Vec<f32> = (0..config.r * in_features)
                    .map(|_| rng.gen_range(-bound..bound) as f32)
                    .collect();
                (
                    Tensor::from_vec(values, (config.r, in_features), &Device::Cpu)?,
                    Tensor::zeros((out_features, config.r), DType::F32, &Device::Cpu)?,
                )
            }
        };
        let a = Var::from_tensor(&a)?;
        let b = Var::from_tensor(&b)?;
        parameters.insert(peft_name(&projection.name, "A"), a.clone());
        parameters.insert(peft_name(&projection.name, "B"), b.clone());
        projection.adapter = Some(Box::new(LoraAdapter {
            a,
            b,
            scaling: config.scaling(),
            dropout: config.lora_dropout,
            site,
        }));
        site += 1;
    }
    if parameters.is_empty() {
        return Err(ModelError::checkpoint(
            "adapter_config.json",
            "the LoRA targets match no projection of this model",
        ));
    }
    Ok(parameters)
}

/// Writes `adapter_model.safetensors` and `adapter_config.json` (PEFT's format) into `target`,
/// replacing it atomically.
pub fn save_adapter(
    target: &Path,
    parameters: &Parameters,
    config: &LoraConfig,
    base_model: &str,
) -> Result<()> {
    let adapter_config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "target_modules": config.target_modules,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "use_rslora": false,
        "use_dora": false,
    });
    write_dir_atomic(target, |dir| {
        save_safetensors(
            &dir.join("adapter_model.safetensors"),
            &parameters.tensors(),
        )?;
        let text = serde_json::to_string_pretty(&adapter_config).expect("JSON");
        std::fs::write(dir.join("adapter_config.json"), text + "\n").map_err(|source| {
            ModelError::Io {
                path: dir.join("adapter_config.json"),
                source,
            }
        })
    })
}

/// Reads an adapter directory written by alpaca or PEFT and attaches it to `model` (which it
/// freezes). Returns the adapter's config and parameters.
pub fn load_adapter(model: &mut LlamaForCausalLM, dir: &Path) -> Result<(LoraConfig, Parameters)> {
    let config_path = dir.join("adapter_config.json");
    if !config_path.is_file() {
        return Err(ModelError::checkpoint(
            dir,
            "not a LoRA adapter directory: it has no adapter_config.json (give runs/<name>/best \
             of `alpaca train instruct`, or a PEFT adapter)",
        ));
    }
    let text = std::fs::read_to_string(&config_path).map_err(|source| ModelError::Io {
        path: config_path.clone(),
        source,
    })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::checkpoint(&config_path, format!("not JSON: {e}")))?;
    if value["peft_type"].as_str().is_some_and(|t| t != "LORA") {
        return Err(ModelError::checkpoint(
            &config_path,
            format!("peft_type {} is not LORA", value["peft_type"]),
        ));
    }
    let mut config: LoraConfig = serde_json::from_value(value.clone())
        .map_err(|e| ModelError::checkpoint(&config_path, format!("not a LoRA config: {e}")))?;
    // PEFT also accepts a single string (a regular expression, or "all-linear").
    if config.target_modules.is_empty() {
        if let Some(target) = value["target_modules"].as_str() {
            config.target_modules = vec![target.to_string()];
        }
    }
    let weights_path = dir.join("adapter_model.safetensors");
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(&weights_path, &Device::Cpu)
            .map_err(|e| ModelError::checkpoint(&weights_path, e.to_string()))?;
    let expected_rank = config.r;
    let parameters = attach(
        model,
        &config,
        |module, out_features, in_features| {
            let mut take = |matrix: &str, shape: (usize, usize)| -> Result<Tensor> {
                // PEFT of some versions keeps the adapter name (".default") in the key.
                let name = peft_name(module, matrix);
                let alternative = name.replace(".weight", ".default.weight");
                let tensor = tensors
                    .remove(&name)
                    .or_else(|| tensors.remove(&alternative))
                    .ok_or_else(|| {
                        ModelError::checkpoint(&weights_path, format!("no tensor {name}"))
                    })?;
                if tensor.dims2()? != shape {
                    return Err(ModelError::checkpoint(
                        &weights_path,
                        format!("{name} has shape {:?}, expected {shape:?}", tensor.dims()),
                    ));
                }
                Ok(tensor.to_dtype(DType::F32)?)
            };
            let a = take("A", (expected_rank, in_features))?;
            let b = take("B", (out_features, expected_rank))?;
            Ok(Some((a, b)))
        },
        0,
    )?;
    if !tensors.is_empty() {
        let mut left: Vec<&String> = tensors.keys().collect();
        left.sort();
        return Err(ModelError::checkpoint(
            &weights_path,
            format!("tensors that match no targeted projection: {left:?}"),
        ));
    }
    Ok((config, parameters))
}

/// Folds every attached adapter into its base weight (W ← W + (alpha/r)·B·A) and removes it,
/// so the model is a plain LLaMA again (to save full weights).
pub fn merge_adapters(model: &mut LlamaForCausalLM) -> Result<()> {
    for projection in model.model.projections_mut() {
        let Some(adapter) = projection.adapter.take() else {
            continue;
        };
        // Only LoraAdapters are attached by this module; read A and B back through a forward
        // of the identity: x = I [in, in] gives (alpha/r) · (B·A)ᵀ [in, out].
        let (_, in_features) = projection.linear.weight.as_tensor().dims2()?;
        let identity = Tensor::eye(in_features, DType::F32, &Device::Cpu)?;
        let delta = adapter.forward(&identity, Mode::EVAL)?.t()?;
        let merged = (projection.linear.weight.as_tensor() + delta)?;
        projection.linear.weight.set(&merged)?;
        // A bf16 copy of the old weight would hide the merge.
        projection.frozen_weight = None;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::LlamaConfig;
    use crate::test_util::{largest, max_difference};

    fn tiny() -> LlamaForCausalLM {
        let config: LlamaConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 50, "hidden_size": 32, "intermediate_size": 48,
            "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
            "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "tie_word_embeddings": true
        }))
        .unwrap();
        LlamaForCausalLM::new_random(config, 3).unwrap()
    }

    fn ids() -> Tensor {
        Tensor::from_slice(&[1u32, 7, 9, 4, 22, 31, 5, 8], (2, 4), &Device::Cpu).unwrap()
    }

    fn logits(model: &LlamaForCausalLM) -> Tensor {
        model.forward(&ids(), None, Mode::EVAL).unwrap()
    }

    fn config(targets: &[&str], r: usize) -> LoraConfig {
        LoraConfig {
            r,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            target_modules: targets.iter().map(|t| t.to_string()).collect(),
        }
    }

    /// Gives every B random values, as training would.
    fn perturb(parameters: &Parameters) {
        for (index, (name, var)) in parameters.iter().enumerate() {
            if name.contains("lora_B") {
                let shape = var.as_tensor().shape().clone();
                let noise = Tensor::randn(0f32, 0.05, shape, &Device::Cpu).unwrap();
                var.set(&(noise + index as f64 * 1e-3).unwrap()).unwrap();
            }
        }
    }

    #[test]
    fn a_fresh_adapter_leaves_the_model_unchanged() {
        let mut model = tiny();
        let before = logits(&model);
        let parameters = attach_lora(&mut model, &config(&["q_proj", "v_proj"], 4), 1).unwrap();
        assert_eq!(parameters.len(), 2 * 2 * 2);
        assert_eq!(max_difference(&before, &logits(&model)), 0.0);
    }

    #[test]
    fn only_adapters_get_gradients() {
        let mut model = tiny();
        let parameters = attach_lora(&mut model, &config(&["all-linear"], 2), 1).unwrap();
        assert_eq!(parameters.len(), 2 * 7 * 2);
        perturb(&parameters);
        let labels = ids().to_dtype(DType::I64).unwrap();
        let loss =
            LlamaForCausalLM::loss(&model.forward(&ids(), None, Mode::EVAL).unwrap(), &labels)
                .unwrap();
        let gradients = loss.backward().unwrap();
        for (name, var) in model.parameters.iter() {
            assert!(
                gradients.get(var.as_tensor()).is_none(),
                "base {name} got a gradient"
            );
        }
        for (name, var) in parameters.iter() {
            let gradient = gradients
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}"));
            let largest = gradient
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap();
            assert!(
                largest.to_scalar::<f32>().unwrap() > 0.0,
                "{name}: zero gradient"
            );
        }
    }

    #[test]
    fn merged_weights_give_the_adapted_logits() {
        for r in [2, 32] {
            // r = 32 is full rank for the 32-wide projections.
            let mut model = tiny();
            let parameters = attach_lora(&mut model, &config(&["all-linear"], r), 5).unwrap();
            perturb(&parameters);
            let adapted = logits(&model);
            merge_adapters(&mut model).unwrap();
            assert!(model.model.projections_mut().all(|p| p.adapter.is_none()));
            let merged = logits(&model);
            assert!(max_difference(&adapted, &merged) < 1e-4, "r {r}");
        }
    }

    /// The adapters' gradients, by name.
    fn adapter_gradients(model: &LlamaForCausalLM, parameters: &Parameters) -> Vec<Tensor> {
        let labels = ids().to_dtype(DType::I64).unwrap();
        let loss = LlamaForCausalLM::loss(&logits(model), &labels).unwrap();
        let gradients = loss.backward().unwrap();
        for (name, var) in model.parameters.iter() {
            assert!(gradients.get(var.as_tensor()).is_none(), "base {name}");
        }
        parameters
            .iter()
            .map(|(name, var)| {
                gradients
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{name}"))
                    .clone()
            })
            .collect()
    }

    #[test]
    fn bf16_base_products_follow_the_f32_model_and_merging_drops_them() {
        let mut model = tiny();
        let parameters = attach_lora(&mut model, &config(&["all-linear"], 4), 3).unwrap();
        perturb(&parameters);
        let f32_logits = logits(&model);
        let f32_gradients = adapter_gradients(&model, &parameters);

        let bytes = model.pack_frozen(alpaca_kernels::Precision::Bf16).unwrap();
        assert!(bytes > 0);
        let bf16_logits = logits(&model);
        // bf16 operands (8 significant bits): close to f32, but not equal (the packs are used).
        let difference = max_difference(&f32_logits, &bf16_logits);
        assert!(
            difference > 0.0 && difference < 0.02 * largest(&f32_logits),
            "{difference}"
        );
        let bf16_gradients = adapter_gradients(&model, &parameters);
        for ((name, _), (f32_gradient, bf16_gradient)) in parameters
            .iter()
            .zip(f32_gradients.iter().zip(&bf16_gradients))
        {
            let error = max_difference(f32_gradient, bf16_gradient);
            assert!(
                error <= 0.03 * largest(f32_gradient) + 1e-7,
                "{name}: {error}"
            );
        }

        // Merging changes the base weights: the bf16 copies of the old ones must go.
        merge_adapters(&mut model).unwrap();
        assert!(model
            .model
            .projections_mut()
            .all(|p| p.frozen_weight.is_none()));
        assert!(max_difference(&f32_logits, &logits(&model)) < 0.02 * largest(&f32_logits));
    }

    #[test]
    fn saved_adapters_load_onto_a_fresh_base() {
        let mut model = tiny();
        let lora = config(&["q_proj", "k_proj", "down_proj"], 4);
        let parameters = attach_lora(&mut model, &lora, 2).unwrap();
        perturb(&parameters);
        let adapted = logits(&model);
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("adapter");
        save_adapter(&target, &parameters, &lora, "tiny").unwrap();
        let names: Vec<String> =
            candle_core::safetensors::load(target.join("adapter_model.safetensors"), &Device::Cpu)
                .unwrap()
                .into_keys()
                .collect();
        assert!(names
            .contains(&"base_model.model.model.layers.1.mlp.down_proj.lora_B.weight".to_string()));
        let mut fresh = tiny();
        let (loaded, _) = load_adapter(&mut fresh, &target).unwrap();
        assert_eq!(loaded, lora);
        assert_eq!(max_difference(&adapted, &logits(&fresh)), 0.0);
        // An adapter for other targets than the config says is refused, naming the tensor.
        std::fs::write(
            target.join("adapter_config.json"),
            r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 16, "target_modules": ["q_proj"]}"#,
        )
        .unwrap();
        let error = load_adapter(&mut tiny(), &target)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("k_proj"), "{error}");
    }

    #[test]
    fn bad_configs_are_named() {
        let mut model = tiny();
        let error = attach_lora(&mut model, &config(&["query"], 4), 1)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("query") && error.contains("all-linear"),
            "{error}"
        );
        let error = attach_lora(&mut tiny(), &config(&["q_proj"], 0), 1)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("at least 1"), "{error}");
    }
}
