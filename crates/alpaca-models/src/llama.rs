//! LLaMA decoder (Touvron et al. 2023) as laid out by Hugging Face `LlamaModel`: RMSNorm,
//! rotary embeddings ("rotate_half"), grouped-query causal attention and a SwiGLU MLP, each
//! from an alpaca-kernels op with a tested backward.
//!
//! Shapes: b = batch, t = tokens in this call, H = hidden size, hq/hkv = query/key-value heads,
//! d = head_dim, F = intermediate size, P = tokens already in the KV cache.

use std::sync::Arc;

use alpaca_kernels::{FrozenWeight, Precision};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checkpoint::{Init, WeightLoader};
use crate::error::{ModelError, Result};
use crate::layers::{Embedding, Linear};
use crate::Mode;

fn default_act() -> String {
    "silu".into()
}
fn default_positions() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-6
}
fn default_init() -> f64 {
    0.02
}

/// One token id or several (`eos_token_id` is a list in some configs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

/// HF's `LlamaConfig`, read from config.json as is. Both the transformers 4 key `rope_theta`
/// and the transformers 5 `rope_parameters: {rope_theta, rope_type}` are understood.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); absent means one per query head.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Absent means hidden_size / num_attention_heads.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

impl LlamaConfig {
    pub fn key_value_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_size(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The rotary base: `rope_parameters.rope_theta` (transformers 5), else `rope_theta`,
    /// else LLaMA's 10000.
    pub fn rope_base(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .or(self.rope_theta)
            .unwrap_or(10_000.0)
    }

    /// The end-of-sequence ids (empty when the config names none).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            None => Vec::new(),
            Some(TokenIds::One(id)) => vec![*id],
            Some(TokenIds::Many(ids)) => ids.clone(),
        }
    }

    /// Checks what this implementation supports, naming the offending field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.key_value_heads()),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(format!("{field} must be positive, got 0"));
            }
        }
        if self.hidden_act != "silu" {
            return Err(format!(
                "hidden_act {:?} is not supported (expected \"silu\")",
                self.hidden_act
            ));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.key_value_heads())
        {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.key_value_heads()
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {} (and no head_dim is given)",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.head_size() == 0 || !self.head_size().is_multiple_of(2) {
            return Err(format!(
                "head_dim {} must be even and positive (rotary embeddings rotate pairs)",
                self.head_size()
            ));
        }
        if self.attention_bias || self.mlp_bias {
            return Err("attention_bias and mlp_bias must be false (LLaMA has no biases)".into());
        }
        if self.attention_dropout != 0.0 {
            return Err(format!(
                "attention_dropout {} is not supported (expected 0.0)",
                self.attention_dropout
            ));
        }
        let rope_type = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let scaled = self.rope_scaling.as_ref().is_some_and(|s| !s.is_null());
        if rope_type != "default" || scaled {
            return Err(format!(
                "rope scaling ({}) is not supported; only plain rotary embeddings (rope_type \"default\")",
                if scaled {
                    self.rope_scaling.as_ref().map(Value::to_string).unwrap_or_default()
                } else {
                    format!("rope_type {rope_type:?}")
                }
            ));
        }
        let theta = self.rope_base();
        if !(theta.is_finite() && theta > 0.0) {
            return Err(format!("rope_theta must be a positive number, got {theta}"));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(format!(
                "rms_norm_eps must be a non-negative number, got {}",
                self.rms_norm_eps
            ));
        }
        Ok(())
    }
}

/// The tensor a parameter enters the graph as: itself, or when `frozen` a detached view of
/// the same storage, so backward neither computes nor stores a gradient for it (LoRA trains
/// adapters only; the base's gradients would cost as much as the whole backward).
fn live(parameter: &Var, frozen: bool) -> Tensor {
    if frozen {
        parameter.as_tensor().detach()
    } else {
        parameter.as_tensor().clone()
    }
}

/// What a LoRA (or any other) adapter adds to a projection's output.
pub trait ProjectionAdapter: Send + Sync {
    /// x [.., in] → the term added to x Wᵀ, [.., out].
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor>;

    /// The whole projection, x Wᵀ plus the term, as one op over the packed frozen weight, for
    /// adapters that have such an op; `None` composes [`ProjectionAdapter::forward`] with the
    /// base product instead.
    fn forward_fused(
        &self,
        _x: &Tensor,
        _weight: &Arc<FrozenWeight>,
        _mode: Mode,
    ) -> Option<Result<Tensor>> {
        None
    }
}

/// One of a decoder layer's seven projections (q/k/v/o, gate/up/down): `x Wᵀ` with HF's weight
/// layout [out, in] and no bias, plus an optional adapter's term. Adapters are attached after
/// loading through `LlamaModel::projections_mut`, so the base weights stay untouched.
pub struct Projection {
    /// HF name without `.weight`, e.g. `model.layers.0.self_attn.q_proj`.
    pub name: String,
    pub linear: Linear,
    pub adapter: Option<Box<dyn ProjectionAdapter>>,
    /// The base weight takes no gradient (see [`LlamaModel::freeze`]).
    pub frozen: bool,
    /// The frozen weight prepared for its products (bf16 panels or the f32 weight, see
    /// [`LlamaModel::pack_frozen`]); it replaces `linear.weight` in forward, and lets an
    /// adapter run fused with it.
    pub frozen_weight: Option<Arc<FrozenWeight>>,
}

impl Projection {
    fn load(
        loader: &mut WeightLoader,
        name: String,
        in_features: usize,
        out_features: usize,
        initializer_range: f64,
    ) -> Result<Self> {
        let weight = loader.take(
            &format!("{name}.weight"),
            &[out_features, in_features],
            Init::Normal(initializer_range),
        )?;
        Ok(Self {
            name,
            linear: Linear::new(weight, None),
            adapter: None,
            frozen: false,
            frozen_weight: None,
        })
    }

    /// The last part of the name (`q_proj`, …, `down_proj`), what LoRA targets select by.
    pub fn kind(&self) -> &str {
        self.name.rsplit('.').next().unwrap_or(&self.name)
    }

    /// x [.., in] → [.., out]
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if let (Some(packed), Some(adapter)) = (&self.frozen_weight, &self.adapter) {
            if let Some(fused) = adapter.forward_fused(x, packed, mode) {
                return fused;
            }
        }
        let base = match &self.frozen_weight {
            Some(packed) => alpaca_kernels::frozen_linear(x, packed)?,
            None => alpaca_kernels::linear_no_bias(x, &live(&self.linear.weight, self.frozen))?,
        };
        match &self.adapter {
            Some(adapter) => Ok((base + adapter.forward(x, mode)?)?),
            None => Ok(base),
        }
    }
}

/// `LlamaRMSNorm`: x / rms(x) · weight over the last dimension (fused kernel).
pub struct RmsNorm {
    pub weight: Var,
    pub eps: f64,
    pub frozen: bool,
}

impl RmsNorm {
    fn load(loader: &mut WeightLoader, name: &str, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: loader.take(&format!("{name}.weight"), &[size], Init::Ones)?,
            eps,
            frozen: false,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(alpaca_kernels::rms_norm(
            x,
            &live(&self.weight, self.frozen),
            self.eps,
        )?)
    }
}

pub struct Attention {
    pub q_proj: Projection,
    pub k_proj: Projection,
    pub v_proj: Projection,
    pub o_proj: Projection,
}

pub struct Mlp {
    pub gate_proj: Projection,
    pub up_proj: Projection,
    pub down_proj: Projection,
}

pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

/// Keys and values of the tokens seen so far, per layer, for decoding one token at a time.
/// Rows of a batch must all be real tokens (no padding): positions are shared by the batch.
#[derive(Default, Clone)]
pub struct KvCache {
    /// per layer: (keys, values), each [b, hkv, P, d]
    layers: Vec<Option<(Tensor, Tensor)>>,
    length: usize,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// P: tokens already cached (the position of the next token).
    pub fn len(&self) -> usize {
        self.length
    }

    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    pub fn clear(&mut self) {
        self.layers.clear();
        self.length = 0;
    }
}

pub struct LlamaModel {
    pub config: LlamaConfig,
    pub embed_tokens: Embedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    rope: alpaca_kernels::RopeTables,
    /// The embedding table takes no gradient (see [`LlamaModel::freeze`]).
    frozen: bool,
}

impl LlamaModel {
    /// Builds the decoder from parameters named `{prefix}.embed_tokens…`, `{prefix}.layers.N…`,
    /// `{prefix}.norm…` (prefix `model` in HF checkpoints).
    pub fn load(loader: &mut WeightLoader, prefix: &str, config: &LlamaConfig) -> Result<Self> {
        config
            .validate()
            .map_err(|m| ModelError::checkpoint("config.json", m))?;
        let hidden = config.hidden_size;
        let init = config.initializer_range;
        let eps = config.rms_norm_eps;
        let (heads, kv_heads, d) = (
            config.num_attention_heads,
            config.key_value_heads(),
            config.head_size(),
        );
        let ffn = config.intermediate_size;
        let embed_tokens = Embedding::load(
            loader,
            &format!("{prefix}.embed_tokens.weight"),
            config.vocab_size,
            hidden,
            init,
        )?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for index in 0..config.num_hidden_layers {
            let p = format!("{prefix}.layers.{index}");
            let mut projection = |name: &str, input: usize, output: usize| {
                Projection::load(loader, format!("{p}.{name}"), input, output, init)
            };
            let self_attn = Attention {
                q_proj: projection("self_attn.q_proj", hidden, heads * d)?,
                k_proj: projection("self_attn.k_proj", hidden, kv_heads * d)?,
                v_proj: projection("self_attn.v_proj", hidden, kv_heads * d)?,
                o_proj: projection("self_attn.o_proj", heads * d, hidden)?,
            };
            let mlp = Mlp {
                gate_proj: projection("mlp.gate_proj", hidden, ffn)?,
                up_proj: projection("mlp.up_proj", hidden, ffn)?,
                down_proj: projection("mlp.down_proj", ffn, hidden)?,
            };
            layers.push(DecoderLayer {
                input_layernorm: RmsNorm::load(
                    loader,
                    &format!("{p}.input_layernorm"),
                    hidden,
                    eps,
                )?,
                self_attn,
                post_attention_layernorm: RmsNorm::load(
                    loader,
                    &format!("{p}.post_attention_layernorm"),
                    hidden,
                    eps,
                )?,
                mlp,
            });
        }
        let norm = RmsNorm::load(loader, &format!("{prefix}.norm"), hidden, eps)?;
        let rope =
            alpaca_kernels::RopeTables::new(d, config.rope_base(), config.max_position_embeddings)?;
        Ok(Self {
            config: config.clone(),
            embed_tokens,
            layers,
            norm,
            rope,
            frozen: false,
        })
    }

    /// Every projection of every layer, for attaching adapters (LoRA) by `Projection::kind`.
    pub fn projections_mut(&mut self) -> impl Iterator<Item = &mut Projection> {
        self.layers.iter_mut().flat_map(|layer| {
            let DecoderLayer { self_attn, mlp, .. } = layer;
            [
                &mut self_attn.q_proj,
                &mut self_attn.k_proj,
                &mut self_attn.v_proj,
                &mut self_attn.o_proj,
                &mut mlp.gate_proj,
                &mut mlp.up_proj,
                &mut mlp.down_proj,
            ]
        })
    }

    /// input_ids: [b, t] u32; attention_mask: [b, t] f32 (1 = token, 0 = padding; right
    /// padding, as positions count from 0 in every row) or none. Returns the final hidden
    /// states [b, t, H] (after the last RMSNorm). For training: every op has a backward.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (batch, length) = input_ids.dims2()?;
        if let Some(mask) = attention_mask {
            if mask.dims() != [batch, length] {
                return Err(ModelError::checkpoint(
                    "attention_mask",
                    format!(
                        "must be [{batch}, {length}] like input_ids, got {:?}",
                        mask.dims()
                    ),
                ));
            }
        }
        self.check_positions(0, length)?;
        let mut hidden = self.embed(input_ids)?;
        for layer in &self.layers {
            hidden = self.layer_forward(layer, &hidden, attention_mask, None, mode)?;
        }
        self.norm.forward(&hidden)
    }

    /// Forward for the next `t` tokens of every row ([b, t] u32) after the `cache.len()` cached
    /// ones; appends their keys and values to `cache`. Returns hidden states [b, t, H].
    /// Meant for generation (no gradient is needed, though the ops have one).
    pub fn forward_with_cache(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (batch, length) = input_ids.dims2()?;
        if cache.layers.len() != self.layers.len() {
            cache.layers = vec![None; self.layers.len()];
            cache.length = 0;
        }
        if let Some(Some((keys, _))) = cache.layers.first() {
            if keys.dim(0)? != batch {
                return Err(ModelError::checkpoint(
                    "KvCache",
                    format!(
                        "holds {} sequences but input_ids has {batch} rows; clear the cache first",
                        keys.dim(0)?
                    ),
                ));
            }
        }
        let offset = cache.length;
        self.check_positions(offset, length)?;
        let mut hidden = self.embed(input_ids)?;
        for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
            hidden = self.layer_forward(layer, &hidden, None, Some((slot, offset)), Mode::EVAL)?;
        }
        cache.length += length;
        self.norm.forward(&hidden)
    }

    /// ids [b, t] → [b, t, H], refusing ids outside the vocabulary (no panic in index_select).
    fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        if input_ids.elem_count() > 0 {
            let largest = input_ids
                .flatten_all()?
                .to_dtype(candle_core::DType::U32)?
                .max(0)?
                .to_scalar::<u32>()? as usize;
            if largest >= self.config.vocab_size {
                return Err(ModelError::checkpoint(
                    "input_ids",
                    format!(
                        "token id {largest} is outside the vocabulary of {} (config.json vocab_size)",
                        self.config.vocab_size
                    ),
                ));
            }
        }
        let (batch, length) = input_ids.dims2()?;
        let table = live(&self.embed_tokens.weight, self.frozen);
        let rows = table.index_select(&input_ids.flatten_all()?, 0)?;
        Ok(rows.reshape((batch, length, rows.dim(1)?))?)
    }

    /// Stops gradients into every base parameter (embeddings, norms, projections); adapters
    /// attached to the projections still train. Used by LoRA.
    pub fn freeze(&mut self) {
        self.frozen = true;
        self.norm.frozen = true;
        for layer in &mut self.layers {
            layer.input_layernorm.frozen = true;
            layer.post_attention_layernorm.frozen = true;
        }
        for projection in self.projections_mut() {
            projection.frozen = true;
        }
    }

    /// Prepares every frozen projection's weight for its products (forward and input
    /// gradient) in `precision`: in bf16 converted and packed once, so LoRA's base runs at the
    /// bf16 rate; in either precision the adapters then run fused with their base. Returns the
    /// bytes the packed copies hold. Call after [`freeze`](Self::freeze); a weight changed
    /// afterwards must be packed again.
    pub fn pack_frozen(&mut self, precision: Precision) -> Result<usize> {
        let mut bytes = 0;
        for projection in self.projections_mut() {
            if projection.frozen {
                let packed = FrozenWeight::new(projection.linear.weight.as_tensor(), precision)?;
                bytes += packed.size_in_bytes();
                projection.frozen_weight = Some(packed);
            }
        }
        Ok(bytes)
    }

    fn check_positions(&self, offset: usize, length: usize) -> Result<()> {
        if offset + length > self.config.max_position_embeddings {
            return Err(ModelError::checkpoint(
                "config.json",
                format!(
                    "{} tokens ({offset} cached + {length} new) exceed max_position_embeddings {}",
                    offset + length,
                    self.config.max_position_embeddings
                ),
            ));
        }
        Ok(())
    }

    /// One decoder layer, x [b, t, H] → [b, t, H]:
    ///   x = x + o_proj(attention(rope(q), rope(k), v))   on input_layernorm(x)
    ///   x = x + down_proj(silu(gate_proj(n)) · up_proj(n)),  n = post_attention_layernorm(x)
    /// With `cache` (slot, P), the new keys/values are appended to the slot and the queries
    /// attend to all P + t of them.
    fn layer_forward(
        &self,
        layer: &DecoderLayer,
        x: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<(&mut Option<(Tensor, Tensor)>, usize)>,
        mode: Mode,
    ) -> Result<Tensor> {
        let config = &self.config;
        let (batch, length, hidden) = x.dims3()?;
        let (heads, kv_heads, d) = (
            config.num_attention_heads,
            config.key_value_heads(),
            config.head_size(),
        );
        let attention = &layer.self_attn;
        let normed = layer.input_layernorm.forward(x)?;
        let query = attention.q_proj.forward(&normed, mode)?;
        let key = attention.k_proj.forward(&normed, mode)?;
        let value = attention.v_proj.forward(&normed, mode)?;
        let scale = 1.0 / (d as f64).sqrt();
        // context [b, t, hq·d]
        let context = match cache {
            // All positions at once (training, scoring): one op on the projections' layout.
            None => alpaca_kernels::rotary_causal_attention(
                &query,
                &key,
                &value,
                &self.rope,
                attention_mask,
                scale,
            )?,
            Some((slot, offset)) => {
                // [b, t, n·d] → [b, n, t, d], the layout the cache keeps.
                let split_heads = |y: Tensor, n: usize| -> Result<Tensor> {
                    Ok(y.reshape((batch, length, n, d))?
                        .transpose(1, 2)?
                        .contiguous()?)
                };
                let query = alpaca_kernels::rope(&split_heads(query, heads)?, &self.rope, offset)?;
                let key = alpaca_kernels::rope(&split_heads(key, kv_heads)?, &self.rope, offset)?;
                let value = split_heads(value, kv_heads)?;
                // keys/values [b, hkv, P + t, d]
                let (key, value) = match slot.take() {
                    Some((past_key, past_value)) => (
                        Tensor::cat(&[&past_key, &key], 2)?,
                        Tensor::cat(&[&past_value, &value], 2)?,
                    ),
                    None => (key, value),
                };
                *slot = Some((key.clone(), value.clone()));
                alpaca_kernels::causal_attention(&query, &key, &value, attention_mask, scale)?
                    .transpose(1, 2)?
                    .contiguous()?
                    .reshape((batch, length, heads * d))?
            }
        };
        let x = (x + attention.o_proj.forward(&context, mode)?)?;

        let mlp = &layer.mlp;
        let normed = layer.post_attention_layernorm.forward(&x)?;
        // [b, t, F]
        let gated = alpaca_kernels::silu_mul(
            &mlp.gate_proj.forward(&normed, mode)?,
            &mlp.up_proj.forward(&normed, mode)?,
        )?;
        debug_assert_eq!(x.dim(2)?, hidden);
        Ok((x + mlp.down_proj.forward(&gated, mode)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(extra: Value) -> LlamaConfig {
        let mut value = json!({
            "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 16
        });
        for (key, field) in extra.as_object().unwrap() {
            value[key] = field.clone();
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn both_rope_theta_spellings_and_defaults() {
        assert_eq!(config(json!({})).rope_base(), 10_000.0);
        assert_eq!(config(json!({"rope_theta": 1e5})).rope_base(), 1e5);
        let v5 = config(json!({"rope_parameters": {"rope_theta": 5e5, "rope_type": "default"}}));
        assert_eq!(v5.rope_base(), 5e5);
        assert!(v5.validate().is_ok());
        let plain = config(json!({"num_key_value_heads": null}));
        assert_eq!((plain.key_value_heads(), plain.head_size()), (4, 4));
        assert_eq!(config(json!({"head_dim": 8})).head_size(), 8);
        assert_eq!(
            config(json!({"eos_token_id": [2, 7]})).eos_token_ids(),
            [2, 7]
        );
        assert_eq!(config(json!({"eos_token_id": 2})).eos_token_ids(), [2]);
        assert!(!config(json!({})).tie_word_embeddings);
    }

    #[test]
    fn validate_names_the_field() {
        let cases = [
            (json!({"hidden_act": "gelu"}), "hidden_act"),
            (json!({"num_key_value_heads": 3}), "num_key_value_heads"),
            (json!({"hidden_size": 18}), "hidden_size"),
            (json!({"head_dim": 5}), "head_dim"),
            (json!({"mlp_bias": true}), "mlp_bias"),
            (
                json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}),
                "rope scaling",
            ),
            (
                json!({"rope_parameters": {"rope_theta": 1e4, "rope_type": "yarn"}}),
                "yarn",
            ),
            (json!({"vocab_size": 0}), "vocab_size"),
        ];
        for (extra, expected) in cases {
            let message = config(extra.clone()).validate().unwrap_err();
            assert!(message.contains(expected), "{extra}: {message}");
        }
        assert!(config(json!({"rope_scaling": null})).validate().is_ok());
    }

    /// An adapter that adds a constant, standing in for LoRA.
    struct AddOne;
    impl ProjectionAdapter for AddOne {
        fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
            let out = x.dims().to_vec();
            let mut shape = out.clone();
            *shape.last_mut().unwrap() = 16; // q_proj's output size in `config`
            Ok(Tensor::ones(shape, x.dtype(), x.device())?)
        }
    }

    #[test]
    fn adapters_attach_by_projection_kind() {
        let mut loader = WeightLoader::fresh(1);
        let mut model = LlamaModel::load(&mut loader, "model", &config(json!({}))).unwrap();
        let kinds: Vec<String> = model
            .projections_mut()
            .map(|p| p.kind().to_string())
            .collect();
        assert_eq!(
            kinds,
            [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj"
            ]
        );
        let ids = Tensor::new(&[[1u32, 5, 7]], &candle_core::Device::Cpu).unwrap();
        let before = model.forward(&ids, None, Mode::EVAL).unwrap();
        for projection in model.projections_mut().filter(|p| p.kind() == "q_proj") {
            projection.adapter = Some(Box::new(AddOne));
        }
        let after = model.forward(&ids, None, Mode::EVAL).unwrap();
        let change = (after - before)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(change > 0.0, "the adapter's term must reach the output");
    }
}
