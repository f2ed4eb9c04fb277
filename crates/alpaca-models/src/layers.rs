//! The building blocks shared by the architectures: linear, layer norm, embedding.

use std::sync::Arc;

use alpaca_kernels::{GradientSink, PackedLinear, WeightBiasSinks};
use candle_core::{Tensor, Var};

use crate::checkpoint::{Init, WeightLoader};
use crate::error::Result;

/// `y = x Wᵀ + b` with HF's weight layout `[out, in]`.
pub struct Linear {
    pub weight: Var,
    pub bias: Option<Var>,
    /// Weight and bias packed for inference ([`Linear::pack_for_inference`]): when present,
    /// `forward` uses them and the layer no longer trains.
    packed: Option<Arc<PackedLinear>>,
    /// Where the weight and bias gradients go instead of candle's store, reported by
    /// [`crate::Parameters::gradients`] (`alpaca_kernels::WeightBiasSinks`).
    sinks: Option<WeightBiasSinks>,
}

impl Linear {
    pub fn new(weight: Var, bias: Option<Var>) -> Self {
        Self {
            weight,
            bias,
            packed: None,
            sinks: None,
        }
    }

    /// Packs the weight and bias as they are now for prediction (`alpaca_kernels::packed_linear`:
    /// no per-call packing, no horizontal sums). From then on `forward` computes no gradients
    /// for them; the Vars stay, for saving. Returns the bytes packed. In the run-wide bf16 mode
    /// it packs nothing and returns 0: the packed products are f32, and the bf16 ones are
    /// faster (a CoNLL dev pass 7.2 s against 10.5).
    pub fn pack_for_inference(&mut self) -> Result<usize> {
        if alpaca_kernels::linear::precision() == alpaca_kernels::Precision::Bf16 {
            return Ok(0);
        }
        let packed = PackedLinear::new(
            self.weight.as_tensor(),
            self.bias.as_ref().map(|bias| bias.as_tensor()),
        )?;
        let bytes = packed.size_in_bytes();
        self.packed = Some(packed);
        Ok(bytes)
    }

    /// Whether [`Linear::pack_for_inference`] was called.
    pub fn is_packed(&self) -> bool {
        self.packed.is_some()
    }

    pub fn load(
        loader: &mut WeightLoader,
        prefix: &str,
        in_features: usize,
        out_features: usize,
        initializer_range: f64,
    ) -> Result<Self> {
        let weight = loader.take(
            &format!("{prefix}.weight"),
            &[out_features, in_features],
            Init::Normal(initializer_range),
        )?;
        let bias = loader.take(&format!("{prefix}.bias"), &[out_features], Init::Zeros)?;
        Ok(Self {
            sinks: weight_bias_sinks(loader, prefix),
            ..Self::new(weight, Some(bias))
        })
    }

    /// `x Wᵀ` without the bias, for callers that fuse the bias into the next op.
    /// x: [..., in] → [..., out]
    pub fn forward_without_bias(&self, x: &Tensor) -> Result<Tensor> {
        let weight = self.weight.as_tensor();
        Ok(match &self.sinks {
            Some(sinks) => alpaca_kernels::linear_with_sinks(x, weight, None, sinks)?,
            None => alpaca_kernels::linear_no_bias(x, weight)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(packed) = &self.packed {
            return Ok(alpaca_kernels::packed_linear(x, packed)?);
        }
        let (weight, bias) = (self.weight.as_tensor(), self.bias.as_ref());
        Ok(match (bias, &self.sinks) {
            (Some(bias), Some(sinks)) => {
                alpaca_kernels::linear_with_sinks(x, weight, Some(bias.as_tensor()), sinks)?
            }
            (Some(bias), None) => alpaca_kernels::linear(x, weight, bias.as_tensor())?,
            (None, _) => self.forward_without_bias(x)?,
        })
    }
}

/// Sinks for the gradients of parameters `{prefix}.weight` and `{prefix}.bias` (None unless
/// the loader's registry holds both).
fn weight_bias_sinks(loader: &mut WeightLoader, prefix: &str) -> Option<WeightBiasSinks> {
    let weight = loader.gradient_sink(&format!("{prefix}.weight"))?;
    let bias = loader.gradient_sink(&format!("{prefix}.bias"))?;
    Some(WeightBiasSinks { weight, bias })
}

/// Layer normalisation over the last dimension (fused kernel with its own backward).
pub struct LayerNorm {
    pub weight: Var,
    pub bias: Var,
    pub eps: f64,
    /// Where [`LayerNorm::forward_residual`] sends the weight and bias gradients.
    sinks: Option<WeightBiasSinks>,
}

impl LayerNorm {
    pub fn load(loader: &mut WeightLoader, prefix: &str, size: usize, eps: f64) -> Result<Self> {
        let weight = loader.take(&format!("{prefix}.weight"), &[size], Init::Ones)?;
        let bias = loader.take(&format!("{prefix}.bias"), &[size], Init::Zeros)?;
        Ok(Self {
            weight,
            bias,
            eps,
            sinks: weight_bias_sinks(loader, prefix),
        })
    }

    /// `LayerNorm(dropout(x) + residual)`, with dropout `probability` at `site` in training:
    /// one op (`alpaca_kernels::residual_layer_norm`) when the parameters have sinks.
    pub fn forward_residual(
        &self,
        x: &Tensor,
        residual: &Tensor,
        probability: f64,
        mode: crate::Mode,
        site: u64,
    ) -> Result<Tensor> {
        let Some(sinks) = &self.sinks else {
            return self.forward(&(dropout(x, probability, mode, site)? + residual)?);
        };
        let dropout = active_dropout(probability, mode, site).unwrap_or((0.0, 0));
        let parameters = (self.weight.as_tensor(), self.bias.as_tensor());
        Ok(alpaca_kernels::residual_layer_norm(
            x, residual, parameters, self.eps, dropout, sinks,
        )?)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(alpaca_kernels::layer_norm(
            x,
            self.weight.as_tensor(),
            self.bias.as_tensor(),
            self.eps,
        )?)
    }
}

/// A lookup table `[count, size]`; its gradient is a scatter-add (candle's index_select), or
/// with a sink the touched rows ([`Embedding::with_row_gradients`]).
pub struct Embedding {
    pub weight: Var,
    row_gradients: Option<GradientSink>,
}

impl Embedding {
    pub fn load(
        loader: &mut WeightLoader,
        name: &str,
        count: usize,
        size: usize,
        initializer_range: f64,
    ) -> Result<Self> {
        Self::load_with_padding(loader, name, count, size, initializer_range, None)
    }

    /// As [`Embedding::load`]; a new table's `padding_idx` row starts at zero, as torch's
    /// `nn.Embedding(padding_idx=…)` does. (Its lookup gradient needs no masking: padded
    /// positions reach no loss.)
    pub fn load_with_padding(
        loader: &mut WeightLoader,
        name: &str,
        count: usize,
        size: usize,
        initializer_range: f64,
        padding_idx: Option<usize>,
    ) -> Result<Self> {
        let init = match padding_idx {
            Some(row) if row < count => Init::NormalZeroRow {
                std: initializer_range,
                row,
            },
            _ => Init::Normal(initializer_range),
        };
        Ok(Self {
            weight: loader.take(name, &[count, size], init)?,
            row_gradients: None,
        })
    }

    /// Makes the lookup's table gradient the rows it touched, reported by
    /// [`crate::Parameters::gradients`]: for large vocabularies, where the dense gradient is
    /// most of the cost (alpaca_kernels::embedding).
    pub fn with_row_gradients(mut self, loader: &mut WeightLoader, name: &str) -> Self {
        self.row_gradients = loader.gradient_sink(name);
        self
    }

    /// ids: [b, t] u32 → [b, t, size]
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        if let Some(sink) = &self.row_gradients {
            return Ok(alpaca_kernels::embedding(
                self.weight.as_tensor(),
                ids,
                sink,
            )?);
        }
        let (batch, length) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        let rows = self.weight.as_tensor().index_select(&flat, 0)?;
        Ok(rows.reshape((batch, length, rows.dim(1)?))?)
    }
}

/// Inverted dropout when training, identity otherwise.
pub fn dropout(x: &Tensor, probability: f64, mode: crate::Mode, site: u64) -> Result<Tensor> {
    match active_dropout(probability, mode, site) {
        Some((probability, seed)) => Ok(alpaca_kernels::dropout(x, probability, seed)?),
        None => Ok(x.clone()),
    }
}

/// The (probability, seed) of the dropout at `site`: none outside training or at 0.
fn active_dropout(probability: f64, mode: crate::Mode, site: u64) -> Option<(f32, u64)> {
    (mode.train && probability > 0.0).then(|| (probability as f32, mode.site_seed(site)))
}
