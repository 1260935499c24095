//! COPAL sensitivity (Malla, Choi, Choi, ICML 2024; COPAL.md §2).
//!
//! For a linear y = W x and a perturbation of weights and input,
//!   dy_t = S_W,t + S_x,t = f(W + ΔW, x_t) − y_t + f(W, x_t + Δx_t) − y_t = ΔW x_t + W Δx_t,
//! the loss L_t = ‖dy_t‖² has gradient ∇_t = 2 · dy_t x_tᵀ with respect to a weight
//! perturbation, and the importance accumulates the absolute directional derivative:
//!   W*_i = W*_{i−1} + Σ_t |W ⊙ ∇_t| = W*_{i−1} + 2 · |W| ⊙ (|dY|ᵀ |X|),
//! one GEMM of absolute values per batch (dY: tokens × out, X: tokens × in). Masks are always
//! taken from W*_i and applied to the **dense** W; W*_i is the state carried forward.
//!
//! Variants (off by default): L2 aggregation Σ_t (W ⊙ ∇_t)² instead of Σ_t |W ⊙ ∇_t|;
//! per-dataset normalisation of the increment by its mean; a decay γ on the prior
//! (W*_i = γ W*_{i−1} + increment_i).
//!
//! Perturbations:
//! - `scaled`: ΔW = ε_W W, Δx_t = ε_x x_t, so dy_t = (ε_W + ε_x) y_t; ε only scales the score.
//! - `gaussian`: ΔW = ε_W σ_row(W) Z, Δx_t = ε_x σ(x_t) Z′_t (σ = RMS of the row / token,
//!   Z, Z′ standard normal from a generator seeded by seed, dataset, tensor and window).

use super::mask::{Group, Pattern};
use super::pruner::{f32_rows, mask_by_score, LayerPruner, Pruned};
use super::rows;
use super::update::UpdateConfig;
use crate::rng::{derive_seed, gaussian};
use anyhow::{ensure, Result};
use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

/// How the weights and inputs are perturbed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PerturbationKind {
    /// ΔW = ε_W·W, Δx = ε_x·x (deterministic; the ranking does not depend on ε).
    Scaled,
    /// Seeded Gaussian noise scaled by the RMS of each weight row and input token.
    Gaussian,
}

/// How the per-token sensitivities are summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// Σ_t |W ⊙ ∇_t| (the paper).
    #[default]
    L1,
    /// Σ_t (W ⊙ ∇_t)², ranked as its square root (same order).
    L2,
}

/// COPAL variants beyond the paper's defaults (all off by default).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CopalVariant {
    pub agg: Aggregation,
    /// Divide each dataset's increment by its mean over the matrix, so that a dataset with
    /// larger activations does not dominate the sum.
    pub normalize: bool,
    /// W*_i = decay · W*_{i−1} + increment_i (1 = no decay).
    pub decay: f64,
}

impl Default for CopalVariant {
    fn default() -> Self {
        Self {
            agg: Aggregation::L1,
            normalize: false,
            decay: 1.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Perturbation {
    pub kind: PerturbationKind,
    pub eps_w: f64,
    pub eps_x: f64,
}

crate::display_as_value!(PerturbationKind, Aggregation);

/// COPAL's settings that shape its accumulated importance (all of its own: the perturbation
/// and ε set dy, the aggregation, normalisation and decay how the increments add up).
pub const SHAPES_STATE: &[&str] = &[
    "perturbation",
    "eps_w",
    "eps_x",
    "agg",
    "normalize",
    "decay",
];

/// COPAL's settings (`--method copal`), named as in an experiment file (the flags are
/// `--perturbation`, `--eps-w`, `--eps-x`, `--copal-agg`, `--copal-normalize`, `--decay`, and
/// `--update`, `--percdamp`, `--blocksize` for the reconstruction of the kept weights).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CopalConfig {
    pub perturbation: PerturbationKind,
    pub eps_w: f64,
    pub eps_x: f64,
    pub agg: Aggregation,
    pub normalize: bool,
    pub decay: f64,
    #[serde(flatten)]
    pub update: UpdateConfig,
}

impl Default for CopalConfig {
    /// The measured defaults: `scaled` (docs/method.md, "Choosing COPAL's defaults"), ε 0.01, the
    /// paper's L1 sum, no normalisation or decay.
    fn default() -> Self {
        Self {
            perturbation: PerturbationKind::Scaled,
            eps_w: 0.01,
            eps_x: 0.01,
            agg: Aggregation::L1,
            normalize: false,
            decay: 1.0,
            update: UpdateConfig::default(),
        }
    }
}

impl CopalConfig {
    /// Checks the values (usage errors naming `eps_w`, `eps_x` or `decay`).
    pub fn validate(&self) -> Result<()> {
        for (setting, v) in [("eps_w", self.eps_w), ("eps_x", self.eps_x)] {
            crate::usage_ensure!(
                v.is_finite() && v >= 0.0,
                setting,
                "must be a finite number ≥ 0, got {v}"
            );
        }
        crate::usage_ensure!(
            self.eps_w + self.eps_x > 0.0,
            "eps_w",
            "and eps_x cannot both be 0: dy would vanish"
        );
        crate::usage_ensure!(
            self.decay > 0.0 && self.decay <= 1.0,
            "decay",
            "must be in (0, 1], got {}",
            self.decay
        );
        self.update.validate()
    }

    pub fn perturbation(&self) -> Perturbation {
        Perturbation {
            kind: self.perturbation,
            eps_w: self.eps_w,
            eps_x: self.eps_x,
        }
    }

    pub fn variant(&self) -> CopalVariant {
        CopalVariant {
            agg: self.agg,
            normalize: self.normalize,
            decay: self.decay,
        }
    }

    /// The pruner of one linear; `seed` from [`noise_seed`].
    pub fn pruner(&self, w: &Tensor, prior: Option<Tensor>, seed: u64) -> Result<CopalPruner> {
        Ok(CopalPruner::new(w, prior, self.perturbation(), seed)?.with_variant(self.variant()))
    }

    /// FLOPs of the importance increment of one linear over `windows` windows of `t` tokens:
    /// one |dY|ᵀ|X| GEMM (2·tokens·out·in), two more to form the Gaussian dY.
    pub fn flops(&self, out: usize, inp: usize, windows: f64, t: f64) -> f64 {
        let (o, i) = (out as f64, inp as f64);
        match self.perturbation {
            PerturbationKind::Scaled => windows * 2.0 * t * o * i,
            PerturbationKind::Gaussian => windows * 6.0 * t * o * i,
        }
    }
}

/// COPAL's pruner for one linear.
pub struct CopalPruner {
    w: Tensor,
    prior: Option<Tensor>,
    /// Σ over windows of |dY|ᵀ|X| (out × in, f32).
    g: rows::Sum,
    pert: Perturbation,
    /// Seed for this (seed, dataset, tensor); ΔW and each window's Z′ derive from it.
    seed: u64,
    delta_w: Option<Tensor>,
    /// Windows observed so far (the calibration step feeds one window per `observe`).
    window: usize,
    variant: CopalVariant,
}

impl CopalPruner {
    /// `w`: the dense weight; `prior`: W*_{i−1} (None on the first dataset);
    /// `seed`: from [`noise_seed`].
    pub fn new(w: &Tensor, prior: Option<Tensor>, pert: Perturbation, seed: u64) -> Result<Self> {
        if let Some(p) = &prior {
            ensure!(
                p.dims() == w.dims(),
                "prior importance has shape {:?}, weight {:?}",
                p.dims(),
                w.dims()
            );
        }
        Ok(Self {
            w: w.to_dtype(DType::F32)?,
            prior,
            g: rows::Sum::default(),
            pert,
            seed,
            delta_w: None,
            window: 0,
            variant: CopalVariant::default(),
        })
    }

    pub fn with_variant(mut self, v: CopalVariant) -> Self {
        self.variant = v;
        self
    }

    /// dY for one batch (tokens × out), as the chosen perturbation defines it.
    pub fn delta_y(&mut self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        match self.pert.kind {
            PerturbationKind::Scaled => Ok((f32_rows(y)? * (self.pert.eps_w + self.pert.eps_x))?),
            PerturbationKind::Gaussian => {
                if self.delta_w.is_none() {
                    self.delta_w = Some(gaussian_delta_w(&self.w, self.pert.eps_w, self.seed)?);
                }
                let dw = self.delta_w.as_ref().expect("set above");
                let dx = gaussian_delta_x(
                    x,
                    self.pert.eps_x,
                    derive_seed(self.seed, &format!("dx/{}", self.window)),
                )?;
                // dY = X ΔWᵀ + ΔX Wᵀ
                Ok((x.matmul(&dw.t()?)? + dx.matmul(&self.w.t()?)?)?)
            }
        }
    }
}

/// The per-tensor noise seed for one dataset step.
pub fn noise_seed(seed: u64, dataset: &str, tensor: &str) -> u64 {
    derive_seed(seed, &format!("{dataset}/{tensor}"))
}

/// ΔW = ε_W · σ_row(W) · Z with σ_row the RMS of each row.
pub fn gaussian_delta_w(w: &Tensor, eps: f64, seed: u64) -> Result<Tensor> {
    let (o, i) = w.dims2()?;
    let z = Tensor::from_vec(gaussian(derive_seed(seed, "dW"), o * i), (o, i), w.device())?;
    let rms = w.sqr()?.mean_keepdim(D::Minus1)?.sqrt()?;
    Ok((z.broadcast_mul(&rms)? * eps)?)
}

/// ΔX = ε_x · σ(x_t) · Z′ with σ(x_t) the RMS of each token's input.
pub fn gaussian_delta_x(x: &Tensor, eps: f64, seed: u64) -> Result<Tensor> {
    let (t, i) = x.dims2()?;
    let z = Tensor::from_vec(gaussian(seed, t * i), (t, i), x.device())?;
    let rms = x.sqr()?.mean_keepdim(D::Minus1)?.sqrt()?;
    Ok((z.broadcast_mul(&rms)? * eps)?)
}

impl LayerPruner for CopalPruner {
    fn observe(&mut self, x: &Tensor, y: &Tensor) -> Result<()> {
        let x = f32_rows(x)?;
        // |dY|ᵀ |X| (L1) or (dY²)ᵀ (X²) (L2): (out × tokens)(tokens × in), one GEMM; the
        // transposed view goes to the GEMM as is. Scaled L1, the default, forms |dY| =
        // |(ε_W + ε_x) Y| in one pass.
        let (dy, x) = match (self.variant.agg, self.pert.kind) {
            (Aggregation::L1, PerturbationKind::Scaled) => (
                rows::abs_scaled(y, self.pert.eps_w + self.pert.eps_x)?,
                rows::abs_scaled(&x, 1.0)?,
            ),
            (Aggregation::L1, _) => (self.delta_y(&x, y)?.abs()?, x.abs()?),
            (Aggregation::L2, _) => (self.delta_y(&x, y)?.sqr()?, x.sqr()?),
        };
        self.g.add_tn(&dy, &x)?;
        self.window += 1;
        Ok(())
    }

    fn finish(self: Box<Self>, pattern: &Pattern, group: Group) -> Result<Pruned> {
        let CopalPruner {
            w,
            g,
            prior,
            variant: v,
            ..
        } = *self;
        // L1: increment = 2 |W| ⊙ Σ|dY|ᵀ|X| = Σ_t |W ⊙ 2 dy_t x_tᵀ|;
        // L2: increment = 4 W² ⊙ Σ(dY²)ᵀ(X²) = Σ_t (W ⊙ 2 dy_t x_tᵀ)².
        let mut inc = match (g.into_tensor()?, v.agg) {
            (Some(g), Aggregation::L1) => (w.abs()? * 2.0)?.mul(&g)?,
            (Some(g), Aggregation::L2) => (w.sqr()? * 4.0)?.mul(&g)?,
            (None, _) => w.zeros_like()?,
        };
        if v.normalize {
            let mean = inc.mean_all()?.to_scalar::<f32>()?;
            if mean > 0.0 {
                inc = (inc / mean as f64)?;
            }
        }
        // W*_i = decay · W*_{i−1} + increment_i
        let importance = match prior {
            Some(p) if v.decay == 1.0 => (p + inc)?,
            Some(p) => ((p * v.decay)? + inc)?,
            None => inc,
        };
        let (weight, mask) = mask_by_score(&w, &importance, pattern, group)?;
        Ok(Pruned {
            weight,
            mask,
            state: Some(importance),
            recon_error: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn rand(shape: (usize, usize), seed: u64) -> Tensor {
        let z = gaussian(seed, shape.0 * shape.1);
        Tensor::from_vec(z, shape, &Device::Cpu).unwrap()
    }

    /// Σ_t |W ⊙ 2 dy_t x_tᵀ| (L1) or Σ_t (W ⊙ 2 dy_t x_tᵀ)² (L2) by explicit loops.
    fn brute_force(
        w: &[Vec<f32>],
        dy: &[Vec<f32>],
        x: &[Vec<f32>],
        agg: Aggregation,
    ) -> Vec<Vec<f64>> {
        let (o, i) = (w.len(), w[0].len());
        let mut s = vec![vec![0f64; i]; o];
        for t in 0..x.len() {
            for r in 0..o {
                for c in 0..i {
                    let grad = 2.0 * dy[t][r] as f64 * x[t][c] as f64;
                    let d = w[r][c] as f64 * grad;
                    s[r][c] += match agg {
                        Aggregation::L1 => d.abs(),
                        Aggregation::L2 => d * d,
                    };
                }
            }
        }
        s
    }

    fn check(kind: PerturbationKind, variant: CopalVariant) {
        let (o, i, t) = (6, 5, 7);
        let w = rand((o, i), 1);
        let pert = Perturbation {
            kind,
            eps_w: 0.01,
            eps_x: 0.02,
        };
        // A prior importance, as left by an earlier dataset.
        let prior = rand((o, i), 99).abs().unwrap();
        let mut p = CopalPruner::new(&w, Some(prior.clone()), pert, 42)
            .unwrap()
            .with_variant(variant);
        let mut inc = vec![vec![0f64; i]; o];
        for batch in 0..2 {
            let x = rand((t, i), 10 + batch);
            let y = x.matmul(&w.t().unwrap()).unwrap();
            // dY by the definition dy_t = f(W+ΔW, x_t) − y_t + f(W, x_t+Δx_t) − y_t.
            let (dw, dx) = match kind {
                PerturbationKind::Scaled => ((&w * 0.01).unwrap(), (&x * 0.02).unwrap()),
                PerturbationKind::Gaussian => (
                    gaussian_delta_w(&w, 0.01, 42).unwrap(),
                    gaussian_delta_x(&x, 0.02, derive_seed(42, &format!("dx/{batch}"))).unwrap(),
                ),
            };
            let s_w = (x.matmul(&(&w + &dw).unwrap().t().unwrap()).unwrap() - &y).unwrap();
            let s_x = ((&x + &dx).unwrap().matmul(&w.t().unwrap()).unwrap() - &y).unwrap();
            let dy = (s_w + s_x).unwrap();
            let bf = brute_force(
                &w.to_vec2().unwrap(),
                &dy.to_vec2().unwrap(),
                &x.to_vec2().unwrap(),
                variant.agg,
            );
            for r in 0..o {
                for c in 0..i {
                    inc[r][c] += bf[r][c];
                }
            }
            p.observe(&x, &y).unwrap();
        }
        if variant.normalize {
            let mean = inc.iter().flatten().sum::<f64>() / (o * i) as f64;
            inc.iter_mut().flatten().for_each(|v| *v /= mean);
        }
        let prior = prior.to_vec2::<f32>().unwrap();
        let pruned = Box::new(p)
            .finish(&Pattern::Unstructured { percent: 50.0 }, Group::Matrix)
            .unwrap();
        let got: Vec<Vec<f32>> = pruned.state.unwrap().to_vec2().unwrap();
        let mut max_rel = 0f64;
        for r in 0..o {
            for c in 0..i {
                let e = variant.decay * prior[r][c] as f64 + inc[r][c];
                max_rel = max_rel.max((got[r][c] as f64 - e).abs() / e.abs().max(1e-12));
            }
        }
        assert!(
            max_rel < 1e-4,
            "{kind:?} {variant:?}: max relative |Δ| = {max_rel}"
        );
    }

    #[test]
    fn scaled_increment_equals_per_token_loop() {
        check(PerturbationKind::Scaled, CopalVariant::default());
    }

    #[test]
    fn gaussian_increment_equals_per_token_loop() {
        check(PerturbationKind::Gaussian, CopalVariant::default());
    }

    #[test]
    fn variants_equal_per_token_loops() {
        for kind in [PerturbationKind::Scaled, PerturbationKind::Gaussian] {
            for agg in [Aggregation::L1, Aggregation::L2] {
                for normalize in [false, true] {
                    for decay in [1.0, 0.5] {
                        check(
                            kind,
                            CopalVariant {
                                agg,
                                normalize,
                                decay,
                            },
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn scaled_ranking_does_not_depend_on_eps() {
        let w = rand((8, 12), 3);
        let x = rand((20, 12), 4);
        let y = x.matmul(&w.t().unwrap()).unwrap();
        let masks: Vec<_> = [1e-4, 1e-1, 3.0]
            .iter()
            .map(|&e| {
                let pert = Perturbation {
                    kind: PerturbationKind::Scaled,
                    eps_w: e,
                    eps_x: e / 2.0,
                };
                let mut p = CopalPruner::new(&w, None, pert, 0).unwrap();
                p.observe(&x, &y).unwrap();
                Box::new(p)
                    .finish(&Pattern::Unstructured { percent: 50.0 }, Group::Matrix)
                    .unwrap()
                    .mask
            })
            .collect();
        assert_eq!(masks[0], masks[1]);
        assert_eq!(masks[0], masks[2]);
    }

    #[test]
    fn masks_come_from_the_dense_weights() {
        // Step 1's data makes weight (0,0) unimportant; step 2's data revives it. A method
        // that pruned the previous step's pruned weights could never bring it back.
        let w = Tensor::new(&[[1.0f32, 1.0]], &Device::Cpu).unwrap();
        let pert = Perturbation {
            kind: PerturbationKind::Scaled,
            eps_w: 0.5,
            eps_x: 0.5,
        };
        let half = Pattern::Unstructured { percent: 50.0 };
        let step = |prior: Option<Tensor>, x: [f32; 2]| {
            let x = Tensor::new(&[x], &Device::Cpu).unwrap();
            let y = x.matmul(&w.t().unwrap()).unwrap();
            let mut p = CopalPruner::new(&w, prior, pert, 0).unwrap();
            p.observe(&x, &y).unwrap();
            Box::new(p).finish(&half, Group::Matrix).unwrap()
        };
        let s1 = step(None, [0.1, 1.0]);
        assert_eq!(s1.mask.pruned, vec![true, false]);
        let s2 = step(s1.state, [10.0, 0.0]);
        assert_eq!(
            s2.mask.pruned,
            vec![false, true],
            "weight 0 is kept again after step 2"
        );
        assert_eq!(s2.weight.to_vec2::<f32>().unwrap(), vec![vec![1.0, 0.0]]);
    }
}
