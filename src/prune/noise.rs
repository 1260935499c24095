//! Seeded standard-normal noise that is the same on every machine and thread count.
//!
//! SplitMix64 draws (fixed 4096-value blocks, each with its own seed, so blocks can be filled
//! in parallel without changing the result) turned into normals by Box–Muller.

use crate::data::sampler::fnv1a64;
use crate::data::SplitMix64;
use rayon::prelude::*;

const BLOCK: usize = 4096;

/// A seed derived from a base seed and a label (dataset, tensor, batch, …).
pub fn derive_seed(seed: u64, label: &str) -> u64 {
    seed ^ fnv1a64(label.as_bytes()).rotate_left(17)
}

/// `n` standard-normal f32 values for `seed`.
pub fn gaussian(seed: u64, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    out.par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(b, chunk)| {
            let mut rng = SplitMix64::new(seed ^ (b as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
            let unit =
                |r: &mut SplitMix64| ((r.next() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
            for pair in chunk.chunks_mut(2) {
                // Box–Muller: u1 in (0, 1], so ln(u1) is finite.
                let (u1, u2) = (unit(&mut rng), unit(&mut rng));
                let r = (-2.0 * u1.ln()).sqrt();
                let t = 2.0 * std::f64::consts::PI * u2;
                pair[0] = (r * t.cos()) as f32;
                if pair.len() > 1 {
                    pair[1] = (r * t.sin()) as f32;
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_and_determinism() {
        let z = gaussian(7, 200_001);
        let n = z.len() as f64;
        let mean = z.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = z.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
        assert_eq!(z, gaussian(7, 200_001));
        assert_ne!(z[..10], gaussian(8, 10)[..]);
    }
}
