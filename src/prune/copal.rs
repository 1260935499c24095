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
//! Perturbations:
//! - `scaled`: ΔW = ε_W W, Δx_t = ε_x x_t, so dy_t = (ε_W + ε_x) y_t; ε only scales the score.
//! - `gaussian`: ΔW = ε_W σ_row(W) Z, Δx_t = ε_x σ(x_t) Z′_t (σ = RMS of the row / token,
//!   Z, Z′ standard normal from a generator seeded by seed, dataset, tensor and batch).

use super::noise::{derive_seed, gaussian};
use super::{f32_rows, mask_by_score, Group, LayerPruner, Pattern, Pruned};
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

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Perturbation {
    pub kind: PerturbationKind,
    pub eps_w: f64,
    pub eps_x: f64,
}

/// COPAL's pruner for one linear.
pub struct CopalPruner {
    w: Tensor,
    prior: Option<Tensor>,
    /// Σ over batches of |dY|ᵀ|X| (out × in, f32).
    g: Option<Tensor>,
    pert: Perturbation,
    /// Seed for this (seed, dataset, tensor); ΔW and each batch's Z′ derive from it.
    seed: u64,
    delta_w: Option<Tensor>,
    batch: usize,
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
            g: None,
            pert,
            seed,
            delta_w: None,
            batch: 0,
        })
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
                    derive_seed(self.seed, &format!("dx/{}", self.batch)),
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
        let dy = self.delta_y(&x, y)?;
        // |dY|ᵀ |X|: (out × tokens)(tokens × in), the transposed view goes to the GEMM as is.
        let inc = dy.abs()?.t()?.matmul(&x.abs()?)?;
        self.g = Some(match self.g.take() {
            None => inc,
            Some(g) => (g + inc)?,
        });
        self.batch += 1;
        Ok(())
    }

    fn finish(self: Box<Self>, pattern: &Pattern, group: Group) -> Result<Pruned> {
        let w = self.w;
        // W*_i = W*_{i−1} + 2 |W| ⊙ Σ|dY|ᵀ|X|
        let mut importance = match self.g {
            Some(g) => (w.abs()? * 2.0)?.mul(&g)?,
            None => w.zeros_like()?,
        };
        if let Some(p) = self.prior {
            importance = (p + importance)?;
        }
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

    /// Σ_t |W ⊙ 2 dy_t x_tᵀ| by explicit loops.
    fn brute_force(w: &[Vec<f32>], dy: &[Vec<f32>], x: &[Vec<f32>]) -> Vec<Vec<f64>> {
        let (o, i) = (w.len(), w[0].len());
        let mut s = vec![vec![0f64; i]; o];
        for t in 0..x.len() {
            for r in 0..o {
                for c in 0..i {
                    let grad = 2.0 * dy[t][r] as f64 * x[t][c] as f64;
                    s[r][c] += (w[r][c] as f64 * grad).abs();
                }
            }
        }
        s
    }

    fn check(kind: PerturbationKind) {
        let (o, i, t) = (6, 5, 7);
        let w = rand((o, i), 1);
        let pert = Perturbation {
            kind,
            eps_w: 0.01,
            eps_x: 0.02,
        };
        let mut p = CopalPruner::new(&w, None, pert, 42).unwrap();
        let mut expected = vec![vec![0f64; i]; o];
        for batch in 0..2 {
            let x = rand((t, i), 10 + batch);
            let y = x.matmul(&w.t().unwrap()).unwrap();
            // dY by the definition dy_t = f(W+ΔW, x_t) − y_t + f(W, x_t+Δx_t) − y_t.
            let dy = match kind {
                PerturbationKind::Scaled => {
                    let dw = (&w * 0.01).unwrap();
                    let dx = (&x * 0.02).unwrap();
                    let s_w = (x.matmul(&(&w + &dw).unwrap().t().unwrap()).unwrap() - &y).unwrap();
                    let s_x = ((&x + &dx).unwrap().matmul(&w.t().unwrap()).unwrap() - &y).unwrap();
                    (s_w + s_x).unwrap()
                }
                PerturbationKind::Gaussian => {
                    let dw = gaussian_delta_w(&w, 0.01, 42).unwrap();
                    let dx = gaussian_delta_x(&x, 0.02, derive_seed(42, &format!("dx/{batch}")))
                        .unwrap();
                    let s_w = (x.matmul(&(&w + &dw).unwrap().t().unwrap()).unwrap() - &y).unwrap();
                    let s_x = ((&x + &dx).unwrap().matmul(&w.t().unwrap()).unwrap() - &y).unwrap();
                    (s_w + s_x).unwrap()
                }
            };
            let bf = brute_force(
                &w.to_vec2().unwrap(),
                &dy.to_vec2().unwrap(),
                &x.to_vec2().unwrap(),
            );
            for r in 0..o {
                for c in 0..i {
                    expected[r][c] += bf[r][c];
                }
            }
            p.observe(&x, &y).unwrap();
        }
        let pruned = Box::new(p)
            .finish(&Pattern::Unstructured { percent: 50.0 }, Group::Matrix)
            .unwrap();
        let got: Vec<Vec<f32>> = pruned.state.unwrap().to_vec2().unwrap();
        let mut max_rel = 0f64;
        for r in 0..o {
            for c in 0..i {
                let e = expected[r][c];
                max_rel = max_rel.max((got[r][c] as f64 - e).abs() / e.abs().max(1e-12));
            }
        }
        assert!(max_rel < 1e-4, "{kind:?}: max relative |Δ| = {max_rel}");
    }

    #[test]
    fn scaled_increment_equals_per_token_loop() {
        check(PerturbationKind::Scaled);
    }

    #[test]
    fn gaussian_increment_equals_per_token_loop() {
        check(PerturbationKind::Gaussian);
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
