//! bf16 products through oneDNN's matmul primitive (cargo feature `onednn`, Debian's
//! `libdnnl-dev`), used on CPUs with AMX, whose tile units oneDNN drives (brgemm) and our
//! AVX512-BF16 kernel cannot. Elsewhere [`product`] returns `None` and the caller runs
//! [`crate::bf16_gemm`].
//!
//! Rounding is the same as `bf16_gemm`'s and `torch.autocast`'s: A and B are rounded to bf16
//! (to nearest even) here, before the call; oneDNN sums the products in f32.
//!
//! `ALPACA_ONEDNN=1` uses oneDNN on any CPU oneDNN runs bf16 on (AVX-512 ones, to compare
//! it with our kernel), `ALPACA_ONEDNN=0` never; unset, it is used where oneDNN reports AMX.

/// Whether this CPU has AMX-BF16 (CPUID leaf 7, EDX bit 22), for the notice of builds
/// without the feature.
pub fn cpu_has_amx() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: cpuid leaf 7 exists on every x86-64 CPU this code runs on (it reports
        // zeros for unknown leaves otherwise).
        #[allow(unused_unsafe)]
        let features = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
        features.edx & (1 << 22) != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(feature = "onednn")]
pub use enabled::{in_use, product};

#[cfg(not(feature = "onednn"))]
/// Without the `onednn` feature there is no oneDNN: always `None`.
pub fn product(
    _dims: (usize, usize, usize),
    _a: &[f32],
    _a_strides: (usize, usize),
    _b: &[f32],
    _b_strides: (usize, usize),
    _bias: Option<&[f32]>,
) -> Option<Vec<f32>> {
    None
}

#[cfg(not(feature = "onednn"))]
/// Without the `onednn` feature: never.
pub fn in_use() -> bool {
    false
}

#[cfg(feature = "onednn")]
mod enabled {
    use std::ffi::{c_char, c_int, c_void, CStr};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::OnceLock;

    use rayon::prelude::*;

    use crate::bf16_gemm::bf16_bits;

    extern "C" {
        fn alpaca_onednn_matmul(
            m: i64,
            n: i64,
            k: i64,
            a: *const c_void,
            a_row: i64,
            a_column: i64,
            b: *const c_void,
            b_row: i64,
            b_column: i64,
            bf16: c_int,
            bias: *const f32,
            c: *mut f32,
            threads: c_int,
            message: *mut c_char,
            capacity: usize,
        ) -> c_int;
        fn alpaca_onednn_cpu_isa() -> c_int;
    }

    /// `dnnl_cpu_isa_avx512_core_amx`: the ISA bits oneDNN reports on CPUs with AMX.
    const ISA_AMX: c_int = 0x3e7;

    /// Cleared after a failed call, so one notice is printed and the run goes on without.
    static WORKING: AtomicBool = AtomicBool::new(true);

    /// Whether bf16 products go to oneDNN in this process.
    pub fn in_use() -> bool {
        static CHOSEN: OnceLock<bool> = OnceLock::new();
        let chosen = *CHOSEN.get_or_init(|| match std::env::var("ALPACA_ONEDNN").as_deref() {
            Ok("1") => true,
            Ok("0") => false,
            // SAFETY: a plain query without arguments.
            _ => (unsafe { alpaca_onednn_cpu_isa() } & ISA_AMX) == ISA_AMX,
        });
        chosen && WORKING.load(Ordering::Relaxed)
    }

    /// A new `[m, n]` C = A [m, k] · B [k, n] (+ `bias` in every row) in bf16 through oneDNN, with A's
    /// element (i, j) at `a[i·a_strides.0 + j·a_strides.1]` and B's likewise; `None` when
    /// oneDNN is not in use (or just failed: then a one-line notice says why, once).
    pub fn product(
        (m, n, k): (usize, usize, usize),
        a: &[f32],
        a_strides: (usize, usize),
        b: &[f32],
        b_strides: (usize, usize),
        bias: Option<&[f32]>,
    ) -> Option<Vec<f32>> {
        if !in_use() || m == 0 || n == 0 || k == 0 {
            return None;
        }
        let (a, b) = (to_bf16(a), to_bf16(b));
        let operands = Operands::Bf16(&a, &b);
        match matmul((m, n, k), operands, a_strides, b_strides, bias) {
            Ok(c) => Some(c),
            Err(reason) => {
                if WORKING.swap(false, Ordering::Relaxed) {
                    eprintln!(
                        "notice: oneDNN matmul failed ({reason}); using alpaca's bf16 kernel"
                    );
                }
                None
            }
        }
    }

    /// The operands in the type the matmul reads.
    pub(super) enum Operands<'a> {
        Bf16(&'a [u16], &'a [u16]),
        #[cfg_attr(not(test), allow(dead_code))]
        F32(&'a [f32], &'a [f32]),
    }

    /// f32 → bf16 bits (nearest even), in parallel; the layout (and so the strides) is kept.
    fn to_bf16(values: &[f32]) -> Vec<u16> {
        let mut bits = vec![0u16; values.len()];
        bits.par_chunks_mut(1 << 14)
            .zip(values.par_chunks(1 << 14))
            .for_each(|(bits, values)| {
                for (bit, &value) in bits.iter_mut().zip(values) {
                    *bit = bf16_bits(value);
                }
            });
        bits
    }

    /// The checked call behind [`product`]: bounds of both operands against their strides.
    pub(super) fn matmul(
        (m, n, k): (usize, usize, usize),
        operands: Operands,
        a_strides: (usize, usize),
        b_strides: (usize, usize),
        bias: Option<&[f32]>,
    ) -> Result<Vec<f32>, String> {
        let last = |(rows, columns): (usize, usize), (row, column): (usize, usize)| {
            (rows - 1) * row + (columns - 1) * column
        };
        let (a_len, b_len, bf16, a_ptr, b_ptr) = match operands {
            Operands::Bf16(a, b) => (a.len(), b.len(), 1, a.as_ptr().cast(), b.as_ptr().cast()),
            Operands::F32(a, b) => (a.len(), b.len(), 0, a.as_ptr().cast(), b.as_ptr().cast()),
        };
        assert!(m > 0 && n > 0 && k > 0, "oneDNN matmul: empty product");
        assert!(
            a_len > last((m, k), a_strides),
            "oneDNN matmul: A too small"
        );
        assert!(
            b_len > last((k, n), b_strides),
            "oneDNN matmul: B too small"
        );
        if let Some(bias) = bias {
            assert_eq!(bias.len(), n, "oneDNN matmul: bias length");
        }
        let mut c = Vec::<f32>::with_capacity(m * n);
        let mut message = [0 as c_char; 512];
        // SAFETY: the operands hold every element the strides reach (asserted above), c has
        // room for m·n f32 which the matmul writes without reading, and
        // message is a writable buffer of the capacity passed.
        let status = unsafe {
            alpaca_onednn_matmul(
                m as i64,
                n as i64,
                k as i64,
                a_ptr,
                a_strides.0 as i64,
                a_strides.1 as i64,
                b_ptr,
                b_strides.0 as i64,
                b_strides.1 as i64,
                bf16,
                bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
                c.as_mut_ptr(),
                rayon::current_num_threads() as c_int,
                message.as_mut_ptr(),
                message.len(),
            )
        };
        if status != 0 {
            // SAFETY: the shim NUL-terminates the message within its capacity.
            let text = unsafe { CStr::from_ptr(message.as_ptr()) }.to_string_lossy();
            return Err(format!("status {status}: {text}"));
        }
        // SAFETY: the matmul succeeded, so all m·n elements were written.
        unsafe { c.set_len(m * n) };
        Ok(c)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::bf16_gemm::bf16_value;

        /// Deterministic values in [-1, 1).
        fn values(count: usize, seed: u64) -> Vec<f32> {
            let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            (0..count)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
                })
                .collect()
        }

        /// C = A · B (+ bias) in f64 over `round`ed operands, read through the strides.
        fn reference(
            (m, n, k): (usize, usize, usize),
            (a, a_strides): (&[f32], (usize, usize)),
            (b, b_strides): (&[f32], (usize, usize)),
            bias: Option<&[f32]>,
            round: impl Fn(f32) -> f32,
        ) -> Vec<f32> {
            let mut c = vec![0.0; m * n];
            for i in 0..m {
                for l in 0..n {
                    let mut sum = bias.map_or(0.0, |bias| f64::from(bias[l]));
                    for j in 0..k {
                        let x = round(a[i * a_strides.0 + j * a_strides.1]);
                        let y = round(b[j * b_strides.0 + l * b_strides.1]);
                        sum += f64::from(x) * f64::from(y);
                    }
                    c[i * n + l] = sum as f32;
                }
            }
            c
        }

        fn assert_close(found: &[f32], expected: &[f32], what: &str) {
            assert_eq!(found.len(), expected.len(), "{what}: length");
            for (index, (&x, &y)) in found.iter().zip(expected).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                    "{what}: element {index}: {x} vs {y}"
                );
            }
        }

        /// A's strides, B's strides, whether a bias is added.
        type Layout = ((usize, usize), (usize, usize), bool);

        /// Each layout the linear layer hands over: plain, A read transposed (dW = dyᵀ x),
        /// B read transposed (x Wᵀ), with and without a bias.
        fn layouts(m: usize, n: usize, k: usize) -> [Layout; 4] {
            [
                ((k, 1), (n, 1), false),
                ((1, m), (n, 1), false),
                ((k, 1), (1, k), true),
                ((1, m), (1, k), true),
            ]
        }

        #[test]
        fn f32_products_follow_the_strides_and_add_the_bias() {
            let (m, n, k) = (37, 19, 23);
            let (a, b, bias) = (values(m * k, 1), values(k * n, 2), values(n, 3));
            for (a_strides, b_strides, with_bias) in layouts(m, n, k) {
                let bias = with_bias.then_some(&bias[..]);
                let found = matmul((m, n, k), Operands::F32(&a, &b), a_strides, b_strides, bias)
                    .expect("oneDNN runs f32 matmul on every CPU");
                let expected = reference((m, n, k), (&a, a_strides), (&b, b_strides), bias, |x| x);
                assert_close(
                    &found,
                    &expected,
                    &format!("f32 {a_strides:?} {b_strides:?}"),
                );
            }
        }

        /// bf16 where oneDNN runs it (CPUs with AVX-512: it needs avx512_core), rounded as
        /// autocast does; elsewhere the failure is an error with oneDNN's reason (which makes
        /// `product` fall back), not a crash.
        #[test]
        fn bf16_products_round_both_operands_or_fail_cleanly() {
            let (m, n, k) = (29, 40, 33);
            let (a, b, bias) = (values(m * k, 4), values(k * n, 5), values(n, 6));
            let (a16, b16) = (to_bf16(&a), to_bf16(&b));
            let supported = std::arch::is_x86_feature_detected!("avx512bw");
            for (a_strides, b_strides, with_bias) in layouts(m, n, k) {
                let bias = with_bias.then_some(&bias[..]);
                let result = matmul(
                    (m, n, k),
                    Operands::Bf16(&a16, &b16),
                    a_strides,
                    b_strides,
                    bias,
                );
                match result {
                    Ok(found) => {
                        let round = |x: f32| bf16_value(bf16_bits(x));
                        let expected =
                            reference((m, n, k), (&a, a_strides), (&b, b_strides), bias, round);
                        assert_close(
                            &found,
                            &expected,
                            &format!("bf16 {a_strides:?} {b_strides:?}"),
                        );
                    }
                    Err(reason) => {
                        assert!(!supported, "oneDNN bf16 failed on an AVX-512 CPU: {reason}");
                        assert!(reason.contains("status"), "{reason}");
                    }
                }
            }
        }
    }
}
