//! Every random number copal draws, in one place: SplitMix64 and FNV-1a (the calibration
//! sampler's generator, specified so that any implementation draws the same windows; see
//! `data::sampler`), and seeded standard-normal noise that is the same on every machine and
//! thread count (COPAL's Gaussian perturbation, synthetic checkpoints, the tests' data).
//!
//! The noise: SplitMix64 draws in fixed 4096-value blocks, each with its own seed, so blocks
//! can be filled in parallel without changing the result, turned into normals by Box–Muller.

use rayon::prelude::*;

/// SplitMix64 (Steele, Lea, Flood 2014), wrapping u64 arithmetic.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The generator for one dataset: seeded with `seed ^ fnv1a64(name)`.
    pub fn for_dataset(seed: u64, name: &str) -> Self {
        Self::new(seed ^ fnv1a64(name.as_bytes()))
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// FNV-1a, 64-bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

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
    fn splitmix64_reference_values() {
        // Reference outputs of SplitMix64 seeded with 0 (as in Vigna's splitmix64.c).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(r.next(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn fnv1a64_reference_values() {
        assert_eq!(fnv1a64(b""), 0xCBF2_9CE4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xAF63_DC4C_8601_EC8C);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_F739_67E8);
    }

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
