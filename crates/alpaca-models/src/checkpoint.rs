//! Reading and writing checkpoints in the Hugging Face layout.
//!
//! Loading maps HF parameter names onto ours (old `gamma`/`beta` LayerNorm names, bodies saved
//! with or without the `bert.` prefix), creates fresh parameters for what the checkpoint lacks
//! (a new task head) and reports missing and unexpected keys the way transformers does.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::parameters::Parameters;

/// A model directory in the HF layout, checked for the files we need.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub path: PathBuf,
}

impl ModelDir {
    /// Resolves `model` (a directory or a hub id in the local cache) and checks that
    /// config.json and model.safetensors are there.
    pub fn open(model: &str) -> Result<Self> {
        let path = crate::hub::resolve_model(model)?;
        let dir = ModelDir { path };
        dir.require("config.json")?;
        dir.require("model.safetensors")?;
        Ok(dir)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The path of `name`, or an error listing what the directory holds instead.
    pub fn require(&self, name: &str) -> Result<PathBuf> {
        let file = self.file(name);
        if file.is_file() {
            return Ok(file);
        }
        let mut present: Vec<String> = std::fs::read_dir(&self.path)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        present.sort();
        let hint = if name == "model.safetensors"
            && present.iter().any(|f| f == "pytorch_model.bin")
        {
            " (only pytorch_model.bin is present: convert it with `python -c \"from transformers import AutoModel; AutoModel.from_pretrained('DIR').save_pretrained('DIR', safe_serialization=True)\"`)"
        } else {
            ""
        };
        Err(ModelError::checkpoint(
            &self.path,
            format!(
                "checkpoint directory lacks {name}{hint}; it contains: {}",
                if present.is_empty() {
                    "nothing".to_string()
                } else {
                    present.join(", ")
                }
            ),
        ))
    }

    pub fn config_value(&self) -> Result<Value> {
        let path = self.require("config.json")?;
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text)
            .map_err(|e| ModelError::checkpoint(&path, format!("invalid JSON: {e}")))
    }

    /// All tensors of model.safetensors as f32 (integer buffers are dropped), names mapped.
    pub fn load_weights(&self) -> Result<HashMap<String, Tensor>> {
        let path = self.require("model.safetensors")?;
        let raw = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| ModelError::checkpoint(&path, format!("cannot read safetensors: {e}")))?;
        let mut tensors = HashMap::new();
        for (name, tensor) in raw {
            let tensor = match tensor.dtype() {
                DType::F32 => tensor,
                DType::F16 | DType::BF16 | DType::F64 => tensor.to_dtype(DType::F32)?,
                // Integer buffers such as `embeddings.position_ids` are not parameters.
                _ => continue,
            };
            tensors.insert(canonical_name(&name), tensor);
        }
        Ok(tensors)
    }
}

/// Our name for an HF parameter name: old TF-style LayerNorm names become weight/bias.
pub fn canonical_name(name: &str) -> String {
    if let Some(stem) = name.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = name.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        name.to_string()
    }
}

/// What loading found, as transformers reports it.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct LoadReport {
    /// Parameters the model needs that the checkpoint lacks (freshly initialised).
    pub missing: Vec<String>,
    /// Checkpoint tensors the model did not use (e.g. an MLM head when fine-tuning for NER).
    pub unexpected: Vec<String>,
}

impl LoadReport {
    pub fn summary(&self) -> String {
        let list = |names: &[String]| {
            if names.len() > 6 {
                format!("{} … ({} in all)", names[..6].join(", "), names.len())
            } else {
                names.join(", ")
            }
        };
        let mut lines = Vec::new();
        if !self.missing.is_empty() {
            lines.push(format!("newly initialised: {}", list(&self.missing)));
        }
        if !self.unexpected.is_empty() {
            lines.push(format!(
                "unused checkpoint weights: {}",
                list(&self.unexpected)
            ));
        }
        lines.join("\n")
    }
}

/// How a parameter absent from the checkpoint is initialised (as HF's `_init_weights`).
#[derive(Debug, Clone, Copy)]
pub enum Init {
    Normal(f64),
    /// Normal with standard deviation `std`, row `row` of the [rows, width] table zero: an
    /// embedding's padding row (torch's `nn.Embedding(padding_idx=…)`, kept by HF's
    /// `_init_weights`).
    NormalZeroRow {
        std: f64,
        row: usize,
    },
    Zeros,
    Ones,
}

/// Hands out parameters by name: from the checkpoint when it has them (shape checked),
/// freshly initialised otherwise.
pub struct WeightLoader {
    source: PathBuf,
    tensors: HashMap<String, Tensor>,
    used: BTreeSet<String>,
    missing: Vec<String>,
    rng: StdRng,
    parameters: Parameters,
}

impl WeightLoader {
    pub fn new(source: &Path, tensors: HashMap<String, Tensor>, seed: u64) -> Self {
        Self {
            source: source.to_path_buf(),
            tensors,
            used: BTreeSet::new(),
            missing: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            parameters: Parameters::default(),
        }
    }

    /// A loader with no checkpoint: every parameter is initialised.
    pub fn fresh(seed: u64) -> Self {
        Self::new(Path::new("<new model>"), HashMap::new(), seed)
    }

    /// Adds `prefix.` to checkpoint names that start with one of `body_roots` and lack it
    /// (a bare `BertModel` checkpoint loaded into a model with a head).
    pub fn add_prefix(&mut self, prefix: &str, body_roots: &[&str]) {
        let renamed: HashMap<String, Tensor> = self
            .tensors
            .drain()
            .map(|(name, tensor)| {
                if body_roots.iter().any(|root| name.starts_with(root)) {
                    (format!("{prefix}.{name}"), tensor)
                } else {
                    (name, tensor)
                }
            })
            .collect();
        self.tensors = renamed;
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Marks a checkpoint tensor as accounted for without making it a parameter (a tied
    /// weight stored twice, like `cls.predictions.decoder.weight`).
    pub fn skip(&mut self, name: &str) {
        if self.tensors.contains_key(name) {
            self.used.insert(name.to_string());
        }
    }

    /// See [`crate::Parameters::gradient_sink`]: for a parameter already taken.
    pub fn gradient_sink(&mut self, name: &str) -> Option<alpaca_kernels::GradientSink> {
        self.parameters.gradient_sink(name)
    }

    pub fn take(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        let var = match self.tensors.get(name) {
            Some(tensor) => {
                if tensor.dims() != shape {
                    return Err(ModelError::checkpoint(
                        &self.source,
                        format!(
                            "tensor {name} has shape {:?} but the config implies {shape:?}",
                            tensor.dims()
                        ),
                    ));
                }
                self.used.insert(name.to_string());
                Var::from_tensor(&tensor.contiguous()?)?
            }
            None => {
                self.missing.push(name.to_string());
                self.initialise(shape, init)?
            }
        };
        self.parameters.insert(name.to_string(), var.clone());
        Ok(var)
    }

    /// Like `take`, but always initialises fresh (a new head whose label set differs).
    pub fn fresh_parameter(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        self.used.insert(name.to_string());
        self.missing.push(name.to_string());
        let var = self.initialise(shape, init)?;
        self.parameters.insert(name.to_string(), var.clone());
        Ok(var)
    }

    fn initialise(&mut self, shape: &[usize], init: Init) -> Result<Var> {
        let count: usize = shape.iter().product();
        let mut normal = |std: f64| -> Vec<f32> {
            (0..count)
                .map(|_| {
                    // Box–Muller: two uniforms give one standard normal.
                    let u1: f64 = self.rng.gen_range(f64::MIN_POSITIVE..1.0);
                    let u2: f64 = self.rng.gen();
                    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
                })
                .collect()
        };
        let values: Vec<f32> = match init {
            Init::Zeros => vec![0.0; count],
            Init::Ones => vec![1.0; count],
            Init::Normal(std) => normal(std),
            Init::NormalZeroRow { std, row } => {
                let mut values = normal(std);
                let width = shape.last().copied().unwrap_or(1);
                if let Some(padding) = values.chunks_mut(width.max(1)).nth(row) {
                    padding.fill(0.0);
                }
                values
            }
        };
        Ok(Var::from_tensor(&Tensor::from_vec(
            values,
            shape,
            &Device::Cpu,
        )?)?)
    }

    pub fn finish(self) -> (Parameters, LoadReport) {
        let mut unexpected: Vec<String> = self
            .tensors
            .keys()
            .filter(|name| !self.used.contains(*name))
            .cloned()
            .collect();
        unexpected.sort();
        (
            self.parameters,
            LoadReport {
                missing: self.missing,
                unexpected,
            },
        )
    }
}

/// Writes tensors as model.safetensors (with `format: pt` metadata, which transformers
/// expects), atomically.
pub fn save_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let values = tensor
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.push((name.clone(), bytes, tensor.dims().to_vec()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(name, bytes, shape)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| ModelError::checkpoint(path, format!("cannot serialise: {e}")))?;
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let bytes = safetensors::tensor::serialize(views, metadata)
        .map_err(|e| ModelError::checkpoint(path, format!("cannot serialise: {e}")))?;
    alpaca_track::write_atomic(path, &bytes).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Replaces directory `target` with the one `fill` writes, so that a run killed half-way
/// leaves the previous checkpoint intact: fill `target.partial`, then swap it in.
pub fn write_dir_atomic(target: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    let partial = target.with_file_name(format!(".{name}.partial"));
    let old = target.with_file_name(format!(".{name}.old"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
    }
    std::fs::create_dir_all(&partial).map_err(io(&partial))?;
    fill(&partial)?;
    if target.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        std::fs::rename(target, &old).map_err(io(target))?;
    }
    std::fs::rename(&partial, target).map_err(io(target))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(())
}

/// Copies the tokenizer files that transformers' AutoTokenizer reads, when present.
pub fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<()> {
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
    ] {
        let source = from.join(name);
        if source.is_file() {
            std::fs::copy(&source, to.join(name)).map_err(|e| ModelError::Io {
                path: source.clone(),
                source: e,
            })?;
        }
    }
    Ok(())
}
