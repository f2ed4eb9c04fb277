//! alpaca-kernels: fused CPU kernels for training, each with its forward and its
//! hand-written backward side by side (llm.c style), exposed as candle custom ops.
//!
//! Why: candle-nn's fused `layer_norm`/`softmax_last_dim` have no backward, and the
//! composed candle ops are slow on CPU (scalar `erf`, single-threaded reductions).
//! Every op here is f32 on the CPU, parallel over rows with rayon, and written so the
//! inner loops auto-vectorise (fixed-width lane accumulators, polynomial `exp`).
//!
//! Every op accepts non-contiguous inputs (they are made contiguous first, which keeps the
//! autograd graph intact) and returns an error, not a panic, for other dtypes/devices.

pub mod adamw;
pub mod bf16_gemm;
pub mod causal_attention;
pub mod cross_entropy;
pub mod dropout;
pub mod embedding;
mod few_rows;
pub mod frozen_head_loss;
pub mod frozen_linear;
pub mod gelu;
pub mod gradient;
pub mod layer_norm;
pub mod linear;
pub mod lora_linear;
pub(crate) mod math;
pub mod onednn;
pub mod packed_linear;
pub mod packed_tokens;
pub mod rms_norm;
pub mod rope;
pub mod silu_mul;
pub mod softmax;
pub mod token_major_attention;
pub(crate) mod util;

pub use adamw::{
    adamw_step, adamw_step_gradient, adamw_step_rows, scale_in_place, squared_norm, touched_rows,
    AdamWParams,
};
pub use causal_attention::causal_attention;
pub use cross_entropy::cross_entropy;
pub use dropout::dropout;
pub use embedding::embedding;
pub use frozen_head_loss::frozen_head_cross_entropy;
pub use frozen_linear::{frozen_linear, FrozenWeight};
pub use gelu::{bias_gelu, gelu};
pub use gradient::{Gradient, GradientSink, RowGradient, WeightBiasSinks};
pub use layer_norm::{layer_norm, residual_layer_norm};
pub use linear::{linear, linear_no_bias, linear_with_sinks};
pub use lora_linear::{frozen_linear_with_lora, LoraBranch};
pub use packed_linear::{packed_linear, PackedLinear};
pub use packed_tokens::PackedTokens;
pub use rms_norm::rms_norm;
pub use rope::{rope, RopeTables};
pub use silu_mul::silu_mul;
pub use softmax::masked_softmax;
pub use token_major_attention::{
    bidirectional_attention, rotary_causal_attention, AttentionDropout,
};

/// The number format of the large matrix products. Master weights, optimiser state, norms,
/// softmax and losses stay f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Fp32,
    /// bf16 operands, f32 accumulation (as `torch.autocast(bfloat16)`).
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "fp32" | "f32" | "float32" => Ok(Precision::Fp32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(format!("precision {other:?}: expected fp32 or bf16")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl Precision {
    /// What this CPU runs: bf16 needs AVX512-BF16 (a portable bf16 kernel exists for tests but
    /// is far slower than f32), so without it bf16 falls back to fp32 with the reason. Where
    /// bf16 runs, the notice says which engine does the products when that is not the
    /// expected one: oneDNN on AMX (`onednn` feature), our AVX512-BF16 kernel otherwise.
    pub fn on_this_cpu(self) -> (Precision, Option<&'static str>) {
        match self {
            Precision::Bf16 if !bf16_gemm::has_avx512_bf16() => (
                Precision::Fp32,
                Some("this CPU has no AVX512-BF16; running the matrix products in fp32"),
            ),
            Precision::Bf16 if onednn::in_use() => (
                self,
                (!onednn::cpu_has_amx()).then_some(
                    "bf16 products run through oneDNN (ALPACA_ONEDNN=1) on a CPU without AMX",
                ),
            ),
            Precision::Bf16 if onednn::cpu_has_amx() => (
                self,
                Some(if cfg!(feature = "onednn") {
                    "this CPU has AMX but oneDNN is switched off (ALPACA_ONEDNN=0); bf16 products run on alpaca's AVX512-BF16 kernel"
                } else {
                    "this CPU has AMX, which this build cannot use (build with --features onednn and libdnnl-dev); bf16 products run on alpaca's AVX512-BF16 kernel"
                }),
            ),
            other => (other, None),
        }
    }
}

/// Which SIMD extensions this CPU offers at runtime, for the CLI's startup line,
/// e.g. `"avx512f=yes avx512bf16=yes amx=no avx2=yes fma=yes onednn=not built"`.
pub fn cpu_features() -> String {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        let yn = |b: bool| if b { "yes" } else { "no" };
        let onednn = match (cfg!(feature = "onednn"), onednn::in_use()) {
            (true, true) => "in use",
            (true, false) => "built, not used",
            (false, _) => "not built",
        };
        format!(
            "avx512f={} avx512bf16={} amx={} avx2={} fma={} onednn={}",
            yn(std::arch::is_x86_feature_detected!("avx512f")),
            yn(bf16_gemm::has_avx512_bf16()),
            yn(onednn::cpu_has_amx()),
            yn(std::arch::is_x86_feature_detected!("avx2")),
            yn(std::arch::is_x86_feature_detected!("fma")),
            onednn,
        )
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    {
        format!("arch={} (no x86 SIMD)", std::env::consts::ARCH)
    }
}
