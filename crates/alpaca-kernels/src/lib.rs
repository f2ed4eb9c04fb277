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
pub mod causal_attention;
pub mod cross_entropy;
pub mod dropout;
pub mod gelu;
pub mod layer_norm;
pub mod linear;
pub(crate) mod math;
pub mod rms_norm;
pub mod rope;
pub mod silu_mul;
pub mod softmax;
pub(crate) mod util;

pub use adamw::{adamw_step, scale_in_place, squared_norm, AdamWParams};
pub use causal_attention::causal_attention;
pub use cross_entropy::cross_entropy;
pub use dropout::dropout;
pub use gelu::{bias_gelu, gelu};
pub use layer_norm::layer_norm;
pub use linear::{linear, linear_no_bias};
pub use rms_norm::rms_norm;
pub use rope::{rope, RopeTables};
pub use silu_mul::silu_mul;
pub use softmax::masked_softmax;

/// Which SIMD extensions this CPU offers at runtime, for the CLI's startup line,
/// e.g. `"avx512f=yes avx2=yes fma=yes"`.
pub fn cpu_features() -> String {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        let yn = |b: bool| if b { "yes" } else { "no" };
        format!(
            "avx512f={} avx2={} fma={}",
            yn(std::arch::is_x86_feature_detected!("avx512f")),
            yn(std::arch::is_x86_feature_detected!("avx2")),
            yn(std::arch::is_x86_feature_detected!("fma")),
        )
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    {
        format!("arch={} (no x86 SIMD)", std::env::consts::ARCH)
    }
}
