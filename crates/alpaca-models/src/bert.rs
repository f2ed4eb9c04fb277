//! BERT encoder (Devlin et al. 2019) as laid out by Hugging Face `BertModel`.
//!
//! Shapes: b = batch, t = sequence length, H = hidden size, h = heads, d = H / h.

use alpaca_kernels::PackedTokens;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::checkpoint::WeightLoader;
use crate::error::{ModelError, Result};
use crate::layers::{dropout, Embedding, LayerNorm, Linear};
use crate::Mode;

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_positions() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_init() -> f64 {
    0.02
}
fn default_eps() -> f64 {
    1e-12
}
fn default_position_type() -> String {
    "absolute".into()
}

/// HF's `BertConfig`, read from config.json as is (unknown keys are kept in `extra` and written
/// back when saving).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
}

impl BertConfig {
    /// Checks what this implementation supports, naming the offending field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act {:?} is not supported (expected \"gelu\")",
                self.hidden_act
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type {:?} is not supported (expected \"absolute\")",
                self.position_embedding_type
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }

    pub fn head_size(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

struct Embeddings {
    words: Embedding,
    positions: Embedding,
    token_types: Embedding,
    layer_norm: LayerNorm,
}

struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    layer_norm: LayerNorm,
}

struct FeedForward {
    intermediate: Linear,
    output: Linear,
    layer_norm: LayerNorm,
}

struct Layer {
    attention: SelfAttention,
    feed_forward: FeedForward,
}

pub struct BertModel {
    pub config: BertConfig,
    embeddings: Embeddings,
    layers: Vec<Layer>,
}

impl BertModel {
    /// Builds the encoder from parameters named `{prefix}.embeddings…`, `{prefix}.encoder…`.
    pub fn load(loader: &mut WeightLoader, prefix: &str, config: &BertConfig) -> Result<Self> {
        config
            .validate()
            .map_err(|m| ModelError::checkpoint("config.json", m))?;
        let hidden = config.hidden_size;
        let init = config.initializer_range;
        let eps = config.layer_norm_eps;
        let words_name = format!("{prefix}.embeddings.word_embeddings.weight");
        let embeddings = Embeddings {
            words: Embedding::load_with_padding(
                loader,
                &words_name,
                config.vocab_size,
                hidden,
                init,
                Some(config.pad_token_id as usize),
            )?
            .with_row_gradients(loader, &words_name),
            positions: Embedding::load(
                loader,
                &format!("{prefix}.embeddings.position_embeddings.weight"),
                config.max_position_embeddings,
                hidden,
                init,
            )?,
            token_types: Embedding::load(
                loader,
                &format!("{prefix}.embeddings.token_type_embeddings.weight"),
                config.type_vocab_size,
                hidden,
                init,
            )?,
            layer_norm: LayerNorm::load(
                loader,
                &format!("{prefix}.embeddings.LayerNorm"),
                hidden,
                eps,
            )?,
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for index in 0..config.num_hidden_layers {
            let p = format!("{prefix}.encoder.layer.{index}");
            let attention = SelfAttention {
                query: Linear::load(
                    loader,
                    &format!("{p}.attention.self.query"),
                    hidden,
                    hidden,
                    init,
                )?,
                key: Linear::load(
                    loader,
                    &format!("{p}.attention.self.key"),
                    hidden,
                    hidden,
                    init,
                )?,
                value: Linear::load(
                    loader,
                    &format!("{p}.attention.self.value"),
                    hidden,
                    hidden,
                    init,
                )?,
                output: Linear::load(
                    loader,
                    &format!("{p}.attention.output.dense"),
                    hidden,
                    hidden,
                    init,
                )?,
                layer_norm: LayerNorm::load(
                    loader,
                    &format!("{p}.attention.output.LayerNorm"),
                    hidden,
                    eps,
                )?,
            };
            let feed_forward = FeedForward {
                intermediate: Linear::load(
                    loader,
                    &format!("{p}.intermediate.dense"),
                    hidden,
                    config.intermediate_size,
                    init,
                )?,
                output: Linear::load(
                    loader,
                    &format!("{p}.output.dense"),
                    config.intermediate_size,
                    hidden,
                    init,
                )?,
                layer_norm: LayerNorm::load(loader, &format!("{p}.output.LayerNorm"), hidden, eps)?,
            };
            layers.push(Layer {
                attention,
                feed_forward,
            });
        }
        Ok(Self {
            config: config.clone(),
            embeddings,
            layers,
        })
    }

    /// Packs every linear layer for prediction ([`Linear::pack_for_inference`]); the model
    /// then no longer trains. Returns the bytes packed.
    pub fn pack_for_inference(&mut self) -> Result<usize> {
        let mut bytes = 0;
        for layer in &mut self.layers {
            let attention = &mut layer.attention;
            let feed_forward = &mut layer.feed_forward;
            for linear in [
                &mut attention.query,
                &mut attention.key,
                &mut attention.value,
                &mut attention.output,
                &mut feed_forward.intermediate,
                &mut feed_forward.output,
            ] {
                bytes += linear.pack_for_inference()?;
            }
        }
        Ok(bytes)
    }

    /// The word-embedding table [vocab, H], which the masked-LM decoder reuses (tied).
    pub fn word_embeddings(&self) -> &candle_core::Var {
        &self.embeddings.words.weight
    }

    /// input_ids, type_ids: [b, t] u32; attention_mask: [b, t] f32 (1 = token, 0 = padding).
    /// Returns the last hidden states [b, t, H], zeros at padding.
    ///
    /// Only the real tokens are computed: they are packed into [1, n, H] rows before the
    /// embeddings and unpacked at the end (`PackedTokens`); attention alone needs the batch's
    /// layout. Padding's states in transformers' padded computation are never read (masked as
    /// keys, ignored by every head), so the tokens' states are the same.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        type_ids: &Tensor,
        attention_mask: &Tensor,
        mode: Mode,
    ) -> Result<Tensor> {
        let (batch, length) = input_ids.dims2()?;
        if length > self.config.max_position_embeddings {
            return Err(ModelError::checkpoint(
                "config.json",
                format!(
                    "sequence of {length} tokens exceeds max_position_embeddings {}",
                    self.config.max_position_embeddings
                ),
            ));
        }
        if attention_mask.dims() != [batch, length] || type_ids.dims() != [batch, length] {
            return Err(ModelError::Candle(candle_core::Error::Msg(format!(
                "BERT: input_ids {:?}, token_type_ids {:?} and attention_mask {:?} must all be \
                 [batch, length]",
                input_ids.shape(),
                type_ids.shape(),
                attention_mask.shape()
            ))));
        }
        let tokens = PackedTokens::from_mask(attention_mask)?;
        // [1, n] ids of the real tokens → [1, n, H]
        let positions = tokens.positions(input_ids.device())?;
        let hidden = (self.embeddings.words.forward(&tokens.pack(input_ids)?)?
            + self.embeddings.positions.forward(&positions)?)?;
        let hidden = (hidden
            + self
                .embeddings
                .token_types
                .forward(&tokens.pack(type_ids)?)?)?;
        let hidden = self.embeddings.layer_norm.forward(&hidden)?;
        let mut hidden = dropout(&hidden, self.config.hidden_dropout_prob, mode, 0)?;
        for (index, layer) in self.layers.iter().enumerate() {
            hidden = self.layer_forward(layer, &hidden, &tokens, mode, 1 + 3 * index as u64)?;
        }
        Ok(tokens.unpack(&hidden)?)
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        tokens: &PackedTokens,
        mode: Mode,
        site: u64,
    ) -> Result<Tensor> {
        let config = &self.config;
        let heads = config.num_attention_heads;
        let head_size = config.head_size();
        let attention = &layer.attention;
        let query = attention.query.forward(x)?;
        let key = attention.key.forward(x)?;
        let value = attention.value.forward(x)?;
        let scale = 1.0 / (head_size as f64).sqrt();
        let probability = config.attention_probs_dropout_prob;
        let probabilities_dropout =
            (mode.train && probability > 0.0).then(|| alpaca_kernels::AttentionDropout {
                probability: probability as f32,
                seed: mode.site_seed(site),
            });
        // context [1, n, H]: one op on the projections' packed layout (docs/engine.md)
        let context = alpaca_kernels::bidirectional_attention(
            &query,
            &key,
            &value,
            heads,
            tokens,
            scale,
            probabilities_dropout,
        )?;
        let attended = attention.output.forward(&context)?;
        let hidden_dropout = config.hidden_dropout_prob;
        let x = (attention.layer_norm).forward_residual(
            &attended,
            x,
            hidden_dropout,
            mode,
            site + 1,
        )?;

        let feed_forward = &layer.feed_forward;
        let intermediate = if feed_forward.intermediate.is_packed() {
            // The packed product adds the bias itself.
            alpaca_kernels::gelu(&feed_forward.intermediate.forward(&x)?)?
        } else {
            alpaca_kernels::bias_gelu(
                &feed_forward.intermediate.forward_without_bias(&x)?,
                feed_forward
                    .intermediate
                    .bias
                    .as_ref()
                    .expect("BERT linears have biases")
                    .as_tensor(),
            )?
        };
        let output = feed_forward.output.forward(&intermediate)?;
        (feed_forward.layer_norm).forward_residual(&output, &x, hidden_dropout, mode, site + 2)
    }
}
