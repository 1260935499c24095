//! Vectorised exp-and-sum over rows, the inner loop of both softmaxes in evaluation (attention
//! probabilities and the LM head's log-softmax), and the MLP's SwiGLU, silu(g) ⊙ u.
//!
//! `std`'s `f32::exp` is a call per element (`expf`), which no compiler vectorises; on the test
//! model it was the largest single non-GEMM cost of evaluation. Here exp is the Cephes
//! polynomial (relative error ≈ 1e-7, as `expf` to within an ulp or two):
//!
//!   eˣ = 2ⁿ · eʳ,   n = round(x · log₂e),   r = x − n·ln2 ∈ [−ln2/2, ln2/2],
//!   eʳ ≈ 1 + r + r²·p(r)   (p of degree 5),
//!
//! with 2ⁿ built from the exponent bits. Written as plain loops over 16 lanes that the compiler
//! vectorises; compiled once for AVX-512 and chosen at run time where the CPU has it.

/// x below this gives 0 (e^−87.3 is the smallest normal f32).
const LO: f32 = -87.0;
/// x above this would overflow (n = 128 has no f32 exponent).
const HI: f32 = 88.0;
const LANES: usize = 16;

#[inline(always)]
fn exp_poly(x: f32) -> f32 {
    let x = x.clamp(LO, HI);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    // ln 2 split in a part exact in f32 and the rest, so that x − n·ln2 loses no bits.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x <= LO {
        0.0
    } else {
        er * two_n
    }
}

/// dst[j] = exp(c·src[j] − m) for every j; returns Σ dst (in f32, 16 partial sums).
#[inline(always)]
fn exp_sum_generic(src: &[f32], dst: &mut [f32], c: f32, m: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut s = src.chunks_exact(LANES);
    let mut d = dst.chunks_exact_mut(LANES);
    for (sv, dv) in (&mut s).zip(&mut d) {
        for k in 0..LANES {
            let e = exp_poly(sv[k] * c - m);
            dv[k] = e;
            acc[k] += e;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (&x, y) in s.remainder().iter().zip(d.into_remainder()) {
        *y = exp_poly(x * c - m);
        sum += *y;
    }
    sum
}

/// Σ exp(src[j] − m), nothing stored.
#[inline(always)]
fn sum_exp_generic(src: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut s = src.chunks_exact(LANES);
    for sv in &mut s {
        for k in 0..LANES {
            acc[k] += exp_poly(sv[k] - m);
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for &x in s.remainder() {
        sum += exp_poly(x - m);
    }
    sum
}

/// max over a slice (−∞ for an empty one), 16 lanes at a time.
#[inline(always)]
fn max_generic(src: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut s = src.chunks_exact(LANES);
    for sv in &mut s {
        for k in 0..LANES {
            acc[k] = if sv[k] > acc[k] { sv[k] } else { acc[k] };
        }
    }
    let mut m = acc.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for &x in s.remainder() {
        m = m.max(x);
    }
    m
}

/// dst[j] = silu(g[j]) · u[j], silu(x) = x / (1 + e⁻ˣ) (candle's formula, with exp_poly for
/// its `expf`).
#[inline(always)]
fn silu_mul_generic(g: &[f32], u: &[f32], dst: &mut [f32]) {
    let mut gs = g.chunks_exact(LANES);
    let mut us = u.chunks_exact(LANES);
    let mut ds = dst.chunks_exact_mut(LANES);
    for ((gv, uv), dv) in (&mut gs).zip(&mut us).zip(&mut ds) {
        for k in 0..LANES {
            dv[k] = gv[k] / (1.0 + exp_poly(-gv[k])) * uv[k];
        }
    }
    let rest = gs.remainder().iter().zip(us.remainder());
    for (d, (&g, &u)) in ds.into_remainder().iter_mut().zip(rest) {
        *d = g / (1.0 + exp_poly(-g)) * u;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,fma")]
    pub unsafe fn silu_mul(g: &[f32], u: &[f32], dst: &mut [f32]) {
        super::silu_mul_generic(g, u, dst)
    }
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,fma")]
    pub unsafe fn exp_sum(src: &[f32], dst: &mut [f32], c: f32, m: f32) -> f32 {
        super::exp_sum_generic(src, dst, c, m)
    }
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,fma")]
    pub unsafe fn sum_exp(src: &[f32], m: f32) -> f32 {
        super::sum_exp_generic(src, m)
    }
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,fma")]
    pub unsafe fn max(src: &[f32]) -> f32 {
        super::max_generic(src)
    }
}

#[cfg(target_arch = "x86_64")]
use crate::device::has_avx512;

/// dst[j] = exp(c·src[j] − m); returns Σ_j dst[j]. `src` and `dst` have the same length.
pub fn exp_sum(src: &[f32], dst: &mut [f32], c: f32, m: f32) -> f32 {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        return unsafe { avx512::exp_sum(src, dst, c, m) };
    }
    exp_sum_generic(src, dst, c, m)
}

/// Σ_j exp(src[j] − m).
pub fn sum_exp(src: &[f32], m: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: as in `exp_sum`.
        return unsafe { avx512::sum_exp(src, m) };
    }
    sum_exp_generic(src, m)
}

/// dst[j] = silu(g[j]) · u[j]; the three slices have the same length.
pub fn silu_mul(g: &[f32], u: &[f32], dst: &mut [f32]) {
    assert!(g.len() == dst.len() && u.len() == dst.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: as in `exp_sum`.
        return unsafe { avx512::silu_mul(g, u, dst) };
    }
    silu_mul_generic(g, u, dst)
}

/// max_j src[j]; −∞ for an empty slice. NaNs are not propagated (callers check finiteness).
pub fn max(src: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: as in `exp_sum`.
        return unsafe { avx512::max(src) };
    }
    max_generic(src)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_to_a_few_ulps() {
        let mut worst = 0f64;
        let mut x = -86.99f32;
        while x < 87.99 {
            let got = exp_poly(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max((got - want).abs() / want);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "largest relative error {worst:e}");
        assert_eq!(exp_poly(-1000.0), 0.0);
        assert_eq!(exp_poly(0.0), 1.0);
    }

    #[test]
    fn sums_and_max_match_scalar_loops() {
        // 37 = two full 16-lane chunks and a remainder of 5.
        let src: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 101) as f32 * 0.1 - 5.0)
            .collect();
        let (c, m) = (0.5f32, 1.25f32);
        let mut dst = vec![0f32; src.len()];
        let s = exp_sum(&src, &mut dst, c, m);
        let want: Vec<f64> = src.iter().map(|&x| ((x * c - m) as f64).exp()).collect();
        for (g, w) in dst.iter().zip(&want) {
            assert!((*g as f64 - w).abs() <= 3e-7 * w, "{g} vs {w}");
        }
        let total: f64 = want.iter().sum();
        assert!((s as f64 - total).abs() < 1e-6 * total);
        let s2 = sum_exp(&src, m) as f64;
        let want2: f64 = src.iter().map(|&x| ((x - m) as f64).exp()).sum();
        assert!((s2 - want2).abs() < 1e-6 * want2);
        let top = src.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(max(&src), top);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        let u: Vec<f32> = src.iter().map(|x| 0.3 - x).collect();
        let mut got = vec![0f32; src.len()];
        silu_mul(&src, &u, &mut got);
        for ((g, x), u) in got.iter().zip(&src).zip(&u) {
            let want = (*x as f64) / (1.0 + (-*x as f64).exp()) * *u as f64;
            assert!(
                (*g as f64 - want).abs() <= 1e-6 * want.abs().max(1e-30),
                "{g} vs {want}"
            );
        }
    }
}
