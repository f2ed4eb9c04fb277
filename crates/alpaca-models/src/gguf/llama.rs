//! A llama-architecture GGUF (llama.cpp's `llama` arch: LLaMA, SmolLM, TinyLlama, ...) turned
//! into Hugging Face `LlamaForCausalLM`: config.json from the metadata, f32 weights under HF's
//! names with llama.cpp's rope row permutation of Q and K undone, and the tokenizer rebuilt.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde_json::{json, Value};

use super::tokenizer::{build_tokenizer, GgufTokenizer};
use super::{unpermute_for_rope, GgufFile};
use crate::checkpoint::{save_safetensors, write_dir_atomic};
use crate::error::{ModelError, Result};

/// The architectures whose tensors and metadata follow llama.cpp's `llama` layout.
const ARCHITECTURE: &str = "llama";

/// A llama GGUF read into memory in the HF layout.
pub struct GgufLlama {
    /// The file it came from.
    pub source: PathBuf,
    /// HF `LlamaForCausalLM` config.json.
    pub config: Value,
    /// f32 weights under HF names (`model.layers.0.self_attn.q_proj.weight`, ...); no
    /// `lm_head.weight` when the embeddings are tied.
    pub tensors: HashMap<String, Tensor>,
    pub tokenizer: GgufTokenizer,
    /// generation_config.json.
    pub generation_config: Value,
}

/// What a conversion wrote, for the command line to report.
#[derive(Debug, Clone)]
pub struct ConversionSummary {
    pub output: PathBuf,
    pub tensors: usize,
    pub parameters: usize,
    /// Tensor count per GGUF type name (`Q4_1`, `F32`, ...), as stored in the file.
    pub source_types: BTreeMap<String, usize>,
    pub vocab_size: usize,
    pub tied_embeddings: bool,
}

/// The shape numbers of a llama checkpoint, from `llama.*` metadata keys.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaHyperparameters {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub context_length: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// `{"type": "linear", "factor": f}` when the file asks for linear rope scaling.
    pub rope_scaling: Option<Value>,
}

impl LlamaHyperparameters {
    pub fn read(file: &GgufFile) -> Result<Self> {
        let architecture = file.string("general.architecture")?;
        if architecture != ARCHITECTURE {
            return Err(file.error(format!(
                "general.architecture is {architecture:?}; alpaca converts {ARCHITECTURE:?} \
                 (LlamaForCausalLM) GGUF files only"
            )));
        }
        let key = |name: &str| format!("{ARCHITECTURE}.{name}");
        let count = |name: &str| -> Result<usize> { Ok(file.unsigned(&key(name))? as usize) };
        let hidden_size = count("embedding_length")?;
        let heads = count("attention.head_count")?;
        let kv_heads = match file.optional_unsigned(&key("attention.head_count_kv"))? {
            Some(kv_heads) => kv_heads as usize,
            None => heads,
        };
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(file.error(format!(
                "{heads} attention heads cannot share {kv_heads} key/value heads \
                 ({} and {})",
                key("attention.head_count"),
                key("attention.head_count_kv")
            )));
        }
        let head_dim = match file.optional_unsigned(&key("attention.key_length"))? {
            Some(length) => length as usize,
            None => hidden_size / heads,
        };
        if let Some(rope_dims) = file.optional_unsigned(&key("rope.dimension_count"))? {
            if rope_dims as usize != head_dim {
                return Err(file.error(format!(
                    "{} is {rope_dims} but the head dimension is {head_dim}: partial rotary \
                     embeddings have no LlamaForCausalLM equivalent",
                    key("rope.dimension_count")
                )));
            }
        }
        let rope_scaling = match file.optional_string(&key("rope.scaling.type"))? {
            None | Some("none") => None,
            Some("linear") => Some(json!({
                "type": "linear",
                "rope_type": "linear",
                "factor": file.float(&key("rope.scaling.factor"))?,
            })),
            Some(other) => {
                return Err(file.error(format!(
                    "{} is {other:?}; alpaca converts files without rope scaling or with \
                     linear scaling",
                    key("rope.scaling.type")
                )))
            }
        };
        Ok(LlamaHyperparameters {
            hidden_size,
            intermediate_size: count("feed_forward_length")?,
            layers: count("block_count")?,
            heads,
            kv_heads,
            head_dim,
            context_length: count("context_length")?,
            rms_norm_eps: file.float(&key("attention.layer_norm_rms_epsilon"))?,
            // llama.cpp's default when the key is absent.
            rope_theta: file
                .optional_float(&key("rope.freq_base"))?
                .unwrap_or(10_000.0),
            rope_scaling,
        })
    }
}

/// The HF name of a GGUF tensor of the `llama` layout, or None for a name that has no
/// LlamaForCausalLM counterpart.
pub fn hf_name(gguf_name: &str) -> Option<String> {
    match gguf_name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf_part = match part {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.bias" => "self_attn.o_proj.bias",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_part}"))
}

/// The shape HF expects for a tensor, so that a file whose metadata and tensors disagree is
/// refused by name instead of producing a checkpoint transformers cannot load.
fn expected_shape(
    hf: &str,
    sizes: &LlamaHyperparameters,
    vocab_size: usize,
    layer: Option<usize>,
) -> Vec<usize> {
    let q_rows = sizes.heads * sizes.head_dim;
    let kv_rows = sizes.kv_heads * sizes.head_dim;
    let suffix = match layer {
        Some(layer) => hf.trim_start_matches(&format!("model.layers.{layer}.")),
        None => hf,
    };
    match suffix {
        "model.embed_tokens.weight" | "lm_head.weight" => vec![vocab_size, sizes.hidden_size],
        "model.norm.weight" | "input_layernorm.weight" | "post_attention_layernorm.weight" => {
            vec![sizes.hidden_size]
        }
        "self_attn.q_proj.weight" => vec![q_rows, sizes.hidden_size],
        "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => vec![kv_rows, sizes.hidden_size],
        "self_attn.o_proj.weight" => vec![sizes.hidden_size, q_rows],
        "self_attn.q_proj.bias" => vec![q_rows],
        "self_attn.k_proj.bias" | "self_attn.v_proj.bias" => vec![kv_rows],
        "self_attn.o_proj.bias" => vec![sizes.hidden_size],
        "mlp.gate_proj.weight" | "mlp.up_proj.weight" => {
            vec![sizes.intermediate_size, sizes.hidden_size]
        }
        "mlp.down_proj.weight" => vec![sizes.hidden_size, sizes.intermediate_size],
        _ => vec![],
    }
}

fn layer_of(hf: &str) -> Option<usize> {
    hf.strip_prefix("model.layers.")?
        .split_once('.')?
        .0
        .parse()
        .ok()
}

/// Reads a llama GGUF: config, f32 weights under HF names (Q/K rows back in HF's order) and
/// tokenizer. Errors name the file and the key or tensor at fault.
pub fn load_llama(path: &Path) -> Result<GgufLlama> {
    let mut file = GgufFile::open(path)?;
    let sizes = LlamaHyperparameters::read(&file)?;
    let tokenizer = build_tokenizer(&file, sizes.context_length)?;
    let (_, embedding_shape) = file
        .tensor_type_and_shape("token_embd.weight")
        .ok_or_else(|| file.error("tensor token_embd.weight is missing"))?;
    let vocab_size = embedding_shape[0];
    if let Some(declared) = file.optional_unsigned("llama.vocab_size")? {
        if declared as usize != vocab_size {
            return Err(file.error(format!(
                "llama.vocab_size is {declared} but token_embd.weight has {vocab_size} rows"
            )));
        }
    }
    if tokenizer.vocab_size > vocab_size {
        return Err(file.error(format!(
            "the tokenizer has {} tokens but token_embd.weight has only {vocab_size} rows",
            tokenizer.vocab_size
        )));
    }

    let mut tensors = HashMap::new();
    for name in file.tensor_names() {
        let hf = hf_name(&name).ok_or_else(|| {
            file.error(format!(
                "tensor {name} has no LlamaForCausalLM counterpart (alpaca converts token_embd, \
                 blk.N.attn_q/k/v/output, blk.N.ffn_gate/up/down, blk.N.attn_norm/ffn_norm, \
                 output_norm and output)"
            ))
        })?;
        let layer = layer_of(&hf);
        if let Some(layer) = layer {
            if layer >= sizes.layers {
                return Err(file.error(format!(
                    "tensor {name} belongs to layer {layer}, but llama.block_count is {}",
                    sizes.layers
                )));
            }
        }
        let expected = expected_shape(&hf, &sizes, vocab_size, layer);
        let (dtype, shape) = file
            .tensor_type_and_shape(&name)
            .expect("the name came from the file's tensor list");
        if shape != expected {
            return Err(file.error(format!(
                "tensor {name} ({}) has shape {shape:?}; the metadata implies {expected:?}",
                super::type_name(dtype)
            )));
        }
        let mut tensor = file.dequantize(&name)?;
        // llama.cpp interleaves each Q/K head's rows for its pairwise rope (see
        // `permute_for_rope`); HF rotates halves, so put the rows back.
        if hf.contains("self_attn.q_proj.") {
            tensor = unpermute_for_rope(&tensor, sizes.heads)?;
        } else if hf.contains("self_attn.k_proj.") {
            tensor = unpermute_for_rope(&tensor, sizes.kv_heads)?;
        }
        tensors.insert(hf, tensor);
    }
    check_complete(&file, &tensors, sizes.layers)?;
    let tied = !tensors.contains_key("lm_head.weight");
    let attention_bias = tensors.contains_key("model.layers.0.self_attn.q_proj.bias");
    let config = hf_config(&sizes, vocab_size, tied, attention_bias, &tokenizer);
    let generation_config = generation_config(&tokenizer);
    Ok(GgufLlama {
        source: path.to_path_buf(),
        config,
        tensors,
        tokenizer,
        generation_config,
    })
}

/// Every tensor a LlamaForCausalLM layer needs must be present (biases are optional).
fn check_complete(file: &GgufFile, tensors: &HashMap<String, Tensor>, layers: usize) -> Result<()> {
    let mut required = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".to_string(),
    ];
    for layer in 0..layers {
        for part in [
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
            "input_layernorm.weight",
            "post_attention_layernorm.weight",
        ] {
            required.push(format!("model.layers.{layer}.{part}"));
        }
    }
    let missing: Vec<&String> = required
        .iter()
        .filter(|name| !tensors.contains_key(*name))
        .collect();
    if !missing.is_empty() {
        return Err(file.error(format!(
            "{} tensor(s) missing for a {layers}-layer llama, first: {}",
            missing.len(),
            missing[0]
        )));
    }
    // HF's `attention_bias` switches on all four projection biases at once.
    let bias_parts = [
        "self_attn.q_proj.bias",
        "self_attn.k_proj.bias",
        "self_attn.v_proj.bias",
        "self_attn.o_proj.bias",
    ];
    let present = (0..layers)
        .flat_map(|layer| bias_parts.iter().map(move |part| (layer, part)))
        .filter(|(layer, part)| tensors.contains_key(&format!("model.layers.{layer}.{part}")))
        .count();
    if present != 0 && present != layers * bias_parts.len() {
        return Err(file.error(format!(
            "{present} of the {} attention bias tensors are present; LlamaForCausalLM \
             (attention_bias) needs all of q/k/v/o in every layer or none",
            layers * bias_parts.len()
        )));
    }
    Ok(())
}

fn hf_config(
    sizes: &LlamaHyperparameters,
    vocab_size: usize,
    tied: bool,
    attention_bias: bool,
    tokenizer: &GgufTokenizer,
) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": sizes.hidden_size,
        "intermediate_size": sizes.intermediate_size,
        "num_attention_heads": sizes.heads,
        "num_key_value_heads": sizes.kv_heads,
        "num_hidden_layers": sizes.layers,
        "head_dim": sizes.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": sizes.rms_norm_eps,
        "rope_theta": sizes.rope_theta,
        "rope_scaling": sizes.rope_scaling,
        "max_position_embeddings": sizes.context_length,
        "vocab_size": vocab_size,
        "tie_word_embeddings": tied,
        "attention_bias": attention_bias,
        "mlp_bias": false,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": true,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
        "torch_dtype": "float32",
    })
}

fn generation_config(tokenizer: &GgufTokenizer) -> Value {
    json!({
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
    })
}

impl GgufLlama {
    /// Writes the HF layout into `output` atomically (a temporary sibling directory renamed
    /// into place): config.json, generation_config.json, model.safetensors (f32),
    /// tokenizer.json, tokenizer_config.json, special_tokens_map.json.
    pub fn save(&self, output: &Path) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .map(|(name, tensor)| (name.clone(), tensor.clone()))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        write_dir_atomic(output, |dir| {
            write_json(&dir.join("config.json"), &self.config)?;
            write_json(&dir.join("generation_config.json"), &self.generation_config)?;
            save_safetensors(&dir.join("model.safetensors"), &named)?;
            self.tokenizer.save(dir)
        })
    }

    pub fn parameter_count(&self) -> usize {
        self.tensors
            .values()
            .map(|tensor| tensor.elem_count())
            .sum()
    }
}

pub(crate) fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| ModelError::checkpoint(path, format!("cannot serialise: {e}")))?;
    text.push('\n');
    alpaca_track::write_atomic(path, text.as_bytes()).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Converts a llama GGUF into an HF `LlamaForCausalLM` directory at `output` (replaced
/// atomically if it exists; refusing a non-empty one is the caller's decision).
pub fn convert_to_hf_dir(gguf: &Path, output: &Path) -> Result<ConversionSummary> {
    let mut source_types = BTreeMap::new();
    {
        let file = GgufFile::open(gguf)?;
        for name in file.tensor_names() {
            if let Some((dtype, _)) = file.tensor_type_and_shape(&name) {
                *source_types
                    .entry(super::type_name(dtype).to_string())
                    .or_insert(0) += 1;
            }
        }
    }
    let model = load_llama(gguf)?;
    model.save(output)?;
    Ok(ConversionSummary {
        output: output.to_path_buf(),
        tensors: model.tensors.len(),
        parameters: model.parameter_count(),
        source_types,
        vocab_size: model.config["vocab_size"].as_u64().unwrap_or(0) as usize,
        tied_embeddings: !model.tensors.contains_key("lm_head.weight"),
    })
}
