//! Scalar math written so that loops calling it auto-vectorise: no libm calls, no
//! float->int `as` casts (they scalarise), fixed-width lane accumulators for reductions.

/// Lanes used by the reduction helpers (one AVX-512 register of f32).
pub(crate) const LANES: usize = 16;

/// e^x for f32, Cephes-style: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial for e^r,
/// 2^n built from the exponent bits. Relative error ~1e-7 on [-87, 88]; inputs outside
/// are clamped (so e^-100 returns ~1e-38, not 0).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * 0.693_359_4 - n * (-2.121_944_4e-4);
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // The low mantissa bits of t hold n (two's complement); 2^n = (n + 127) << 23.
    let n_bits = t.to_bits().wrapping_sub(0x4B40_0000);
    let pow2 = f32::from_bits(n_bits.wrapping_add(127) << 23);
    er * pow2
}

/// Returns (Φ(x), φ(x)): the standard normal CDF and density. Φ uses
/// erfc(z) ≈ poly(t)·e^{-z²}, t = 1/(1+pz) (Abramowitz–Stegun 7.1.26, |error| ≤ 1.5e-7),
/// which keeps good relative accuracy in the lower tail.
#[inline(always)]
pub(crate) fn normal_cdf_pdf(x: f32) -> (f32, f32) {
    const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let z = x.abs() * FRAC_1_SQRT_2;
    let e = exp(-0.5 * x * x); // = e^{-z²}
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    let half_erfc = 0.5 * poly * e;
    let cdf = if x >= 0.0 { 1.0 - half_erfc } else { half_erfc };
    (cdf, e * INV_SQRT_2PI)
}

/// GELU (exact-erf form): x·Φ(x).
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    x * normal_cdf_pdf(x).0
}

/// d/dx GELU = Φ(x) + x·φ(x).
#[inline(always)]
pub(crate) fn gelu_grad(x: f32) -> f32 {
    let (cdf, pdf) = normal_cdf_pdf(x);
    cdf + x * pdf
}

/// Σ xs, with LANES independent accumulators (vectorises; order differs from a plain loop).
#[inline(always)]
pub(crate) fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rem.iter().sum::<f32>()
}

/// Σ a·b.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// max xs (−∞ for an empty slice).
#[inline(always)]
pub(crate) fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in acc.iter().chain(rem) {
        m = if v > m { v } else { m };
    }
    m
}

/// Runs `f` compiled for the widest SIMD this CPU has (AVX-512 / AVX2+FMA / baseline).
/// `f` must be a small `#[inline(always)]` closure around the hot loop so that LLVM inlines
/// it into the target-feature wrapper and vectorises it with the wider registers. Results
/// are identical on every path (Rust never contracts a·b+c into an FMA by itself).
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the features were detected at runtime (`simd_level`).
        match simd_level() {
            2 => return unsafe { run_avx512(f) },
            1 => return unsafe { run_avx2(f) },
            _ => {}
        }
    }
    f()
}

/// Whether this CPU runs the AVX-512 code paths (F, BW, DQ, VL and FMA); false off x86-64.
pub(crate) fn has_avx512() -> bool {
    simd_level() == 2
}

/// Whether this CPU runs the AVX2 code paths (AVX2 and FMA; true on AVX-512 CPUs too); false
/// off x86-64.
pub(crate) fn has_avx2() -> bool {
    simd_level() >= 1
}

/// 2: AVX-512 (F, BW, DQ, VL) with FMA; 1: AVX2 with FMA; 0: baseline (and every other
/// architecture). Detected once.
fn simd_level() -> u8 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static LEVEL: OnceLock<u8> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("fma")
            {
                2
            } else if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                1
            } else {
                0
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn run_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_matches_std() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = ((super::exp(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
    }

    #[test]
    fn cdf_matches_erf() {
        // Φ(x) via f64 erfc from a high-accuracy series is not in std; compare to a
        // numerical integral of φ instead.
        let mut worst = 0.0f64;
        for i in -600..=600 {
            let x = i as f64 / 100.0;
            // Simpson integral of φ from -12 to x.
            let n = 20_000;
            let a = -12.0;
            let h = (x - a) / n as f64;
            let phi = |t: f64| (-0.5 * t * t).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let mut s = phi(a) + phi(x);
            for k in 1..n {
                let w = if k % 2 == 1 { 4.0 } else { 2.0 };
                s += w * phi(a + k as f64 * h);
            }
            let exact = s * h / 3.0;
            let (cdf, pdf) = super::normal_cdf_pdf(x as f32);
            worst = worst.max((cdf as f64 - exact).abs());
            assert!((pdf as f64 - phi(x)).abs() < 1e-7);
        }
        assert!(worst < 4e-7, "worst abs error {worst}");
    }
}
