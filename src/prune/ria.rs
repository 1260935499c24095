//! RIA, Relative Importance and Activations (Zhang et al., ICLR 2024): the score of weight
//! (i, j) of an out × in matrix is its relative importance within its row and its column,
//! weighted by the input's norm to the power a:
//!
//!   S_ij = ( |W_ij| / Σ_k |W_kj|  +  |W_ij| / Σ_k |W_ik| ) · ‖X_j‖₂^a,   a = 0.5 by default.
//!
//! ‖X_j‖₂² is Wanda's Σ_t x_tj², so RIA keeps, accumulates and stores exactly Wanda's
//! statistic (the reference code's mean instead of the sum scales every score of a matrix by
//! one factor, which changes no ranking). copal compares RIA's scores per output row by
//! default; the reference code's default is the whole matrix (`--group matrix`). No weight
//! update.

use super::mask::{Group, Pattern};
use super::pruner::{mask_by_score, LayerPruner, Pruned};
use super::update::UpdateConfig;
use super::wanda::WandaPruner;
use anyhow::Result;
use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

/// RIA's settings (`--method ria`; the flag is `--ria-a`, and `--update` and its OBS settings).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RiaConfig {
    /// Exponent of the input norm ‖X_j‖₂.
    pub a: f64,
    #[serde(flatten)]
    pub update: UpdateConfig,
}

impl Default for RiaConfig {
    fn default() -> Self {
        Self {
            a: 0.5,
            update: UpdateConfig::default(),
        }
    }
}

impl RiaConfig {
    /// Checks the values (a usage error naming `a`).
    pub fn validate(&self) -> Result<()> {
        crate::usage_ensure!(
            self.a.is_finite() && self.a >= 0.0,
            "a",
            "must be a finite number ≥ 0, got {}",
            self.a
        );
        self.update.validate()
    }

    /// The pruner of one linear, starting from Σ x² of earlier datasets if given.
    pub fn pruner(&self, w: &Tensor, prior: Option<Tensor>) -> Result<RiaPruner> {
        Ok(RiaPruner {
            stats: WandaPruner::new(w)?.with_prior(prior)?,
            w: w.to_dtype(DType::F32)?,
            a: self.a,
        })
    }
}

/// RIA's pruner: Wanda's statistic, RIA's score.
pub struct RiaPruner {
    stats: WandaPruner,
    w: Tensor,
    a: f64,
}

/// S = (|W| / column sums + |W| / row sums) · (Σx²)^(a/2), for W (out × in), Σx² (in).
pub fn score(w: &Tensor, sumsq: &Tensor, a: f64) -> Result<Tensor> {
    let aw = w.abs()?;
    // Σ_k |W_kj| over the output rows (one per input column), and Σ_k |W_ik| over a row.
    // An all-zero row or column has |W| = 0 everywhere: its scores are 0, not 0/0.
    let tiny = f32::MIN_POSITIVE as f64;
    let col = aw.sum_keepdim(0)?.clamp(tiny, f64::INFINITY)?;
    let row = aw.sum_keepdim(D::Minus1)?.clamp(tiny, f64::INFINITY)?;
    let ri = (aw.broadcast_div(&col)? + aw.broadcast_div(&row)?)?;
    // ‖X_j‖₂^a = (Σx²)^(a/2).
    let act = sumsq.powf(a / 2.0)?.unsqueeze(0)?;
    Ok(ri.broadcast_mul(&act)?)
}

impl LayerPruner for RiaPruner {
    fn observe(&mut self, x: &Tensor, y: &Tensor) -> Result<()> {
        self.stats.observe(x, y)
    }

    fn finish(self: Box<Self>, pattern: &Pattern, group: Group) -> Result<Pruned> {
        let Some(sumsq) = self.stats.sumsq().cloned() else {
            anyhow::bail!("RIA saw no calibration tokens")
        };
        let s = score(&self.w, &sumsq, self.a)?;
        let (weight, mask) = mask_by_score(&self.w, &s, pattern, group)?;
        Ok(Pruned {
            weight,
            mask,
            state: Some(sumsq),
            recon_error: None,
        })
    }
}

/// FLOPs of RIA's statistic (Wanda's Σx²) for one linear over `windows` windows of `t` tokens.
pub fn flops(inp: usize, windows: f64, t: f64) -> f64 {
    super::wanda::flops(inp, windows, t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::gaussian;
    use candle_core::Device;

    #[test]
    fn score_equals_the_formula_by_loops() {
        let (o, i, t) = (5, 7, 11);
        let w = Tensor::from_vec(gaussian(1, o * i), (o, i), &Device::Cpu).unwrap();
        let x = Tensor::from_vec(gaussian(2, t * i), (t, i), &Device::Cpu).unwrap();
        let a = 0.5;
        let mut p = RiaConfig {
            a,
            ..Default::default()
        }
        .pruner(&w, None)
        .unwrap();
        p.observe(&x, &x).unwrap();
        let wv = w.to_vec2::<f32>().unwrap();
        let xv = x.to_vec2::<f32>().unwrap();
        let norm: Vec<f64> = (0..i)
            .map(|j| {
                (0..t)
                    .map(|r| (xv[r][j] as f64).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .collect();
        let mut want = vec![vec![0f64; i]; o];
        for r in 0..o {
            let row: f64 = (0..i).map(|j| (wv[r][j] as f64).abs()).sum();
            for c in 0..i {
                let col: f64 = (0..o).map(|k| (wv[k][c] as f64).abs()).sum();
                let v = (wv[r][c] as f64).abs();
                want[r][c] = (v / col + v / row) * norm[c].powf(a);
            }
        }
        let got = score(&w, p.stats.sumsq().unwrap(), a)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for r in 0..o {
            for c in 0..i {
                let rel = (got[r][c] as f64 - want[r][c]).abs() / want[r][c];
                assert!(rel < 1e-5, "({r}, {c}): {} vs {}", got[r][c], want[r][c]);
            }
        }
        // Per row, the lowest-scored half is pruned, exactly.
        let done = Box::new(p)
            .finish(&Pattern::Unstructured { percent: 50.0 }, Group::Row)
            .unwrap();
        for r in 0..o {
            let mut idx: Vec<usize> = (0..i).collect();
            idx.sort_by(|&a, &b| want[r][a].total_cmp(&want[r][b]));
            let pruned = &done.mask.pruned[r * i..(r + 1) * i];
            assert_eq!(pruned.iter().filter(|&&p| p).count(), 3, "row {r}");
            for &j in &idx[..3] {
                assert!(
                    pruned[j],
                    "row {r}: column {j} has one of the lowest scores"
                );
            }
        }
    }

    #[test]
    fn a_zero_exponent_ignores_the_activations() {
        let w = Tensor::from_vec(gaussian(3, 12), (3, 4), &Device::Cpu).unwrap();
        let s1 = Tensor::new(&[1f32, 4.0, 9.0, 16.0], &Device::Cpu).unwrap();
        let s2 = Tensor::new(&[7f32, 7.0, 7.0, 7.0], &Device::Cpu).unwrap();
        let (a, b) = (score(&w, &s1, 0.0).unwrap(), score(&w, &s2, 0.0).unwrap());
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    }
}
