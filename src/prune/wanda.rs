//! Wanda (Sun et al. 2023): score S_ij = |W_ij| · ‖X_j‖₂ over the calibration tokens, compared
//! per output row by default, no weight update.
//!
//! The statistic is the raw sum Σ_t x_tj² in f32 plus the token count, so that batches and
//! datasets merge by addition (llama.cpp's imatrix lesson); the normaliser does not change a
//! per-row or per-matrix ranking.

use super::mask::{Group, Pattern};
use super::pruner::{f32_rows, mask_by_score, LayerPruner, Pruned};
use anyhow::Result;
use candle_core::{DType, Tensor};

pub struct WandaPruner {
    w: Tensor,
    /// Σ_t x_tj², shape (in,).
    sumsq: Option<Tensor>,
    pub tokens: usize,
}

impl WandaPruner {
    pub fn new(w: &Tensor) -> Result<Self> {
        Ok(Self {
            w: w.to_dtype(DType::F32)?,
            sumsq: None,
            tokens: 0,
        })
    }

    /// Starts from the sums of earlier datasets (`--mode accumulate`).
    pub fn with_prior(mut self, prior: Option<Tensor>) -> Result<Self> {
        if let Some(p) = prior {
            anyhow::ensure!(
                p.dims() == [self.w.dim(1)?],
                "Wanda prior has shape {:?}",
                p.dims()
            );
            self.sumsq = Some(p);
        }
        Ok(self)
    }

    /// The accumulated Σ_t x_tj².
    pub fn sumsq(&self) -> Option<&Tensor> {
        self.sumsq.as_ref()
    }
}

/// FLOPs of Σx² for one linear of `inp` inputs over `windows` windows of `t` tokens.
pub fn flops(inp: usize, windows: f64, t: f64) -> f64 {
    windows * 2.0 * t * inp as f64
}

impl LayerPruner for WandaPruner {
    fn observe(&mut self, x: &Tensor, _y: &Tensor) -> Result<()> {
        let x = f32_rows(x)?;
        let s = super::rows::column_sumsq(&x)?;
        self.sumsq = Some(match self.sumsq.take() {
            None => s,
            Some(acc) => (acc + s)?,
        });
        self.tokens += x.dim(0)?;
        Ok(())
    }

    fn finish(self: Box<Self>, pattern: &Pattern, group: Group) -> Result<Pruned> {
        let norm = match &self.sumsq {
            Some(s) => s.sqrt()?,
            None => anyhow::bail!("Wanda saw no calibration tokens"),
        };
        let score = self.w.abs()?.broadcast_mul(&norm.unsqueeze(0)?)?;
        let (weight, mask) = mask_by_score(&self.w, &score, pattern, group)?;
        Ok(Pruned {
            weight,
            mask,
            state: self.sumsq,
            recon_error: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::gaussian;
    use candle_core::Device;

    #[test]
    fn score_equals_brute_force_and_rows_are_exact() {
        let (o, i) = (6, 10);
        let w = Tensor::from_vec(gaussian(1, o * i), (o, i), &Device::Cpu).unwrap();
        let xs: Vec<Tensor> = [5usize, 3, 8]
            .iter()
            .enumerate()
            .map(|(k, &t)| {
                Tensor::from_vec(gaussian(10 + k as u64, t * i), (t, i), &Device::Cpu).unwrap()
            })
            .collect();
        let mut p = WandaPruner::new(&w).unwrap();
        for x in &xs {
            p.observe(x, x).unwrap();
        }
        // ‖X_j‖₂ by loops over every token of every batch.
        let mut norm = vec![0f64; i];
        for x in &xs {
            for row in x.to_vec2::<f32>().unwrap() {
                for (j, v) in row.iter().enumerate() {
                    norm[j] += (*v as f64).powi(2);
                }
            }
        }
        let wv = w.to_vec2::<f32>().unwrap();
        let sumsq = p.sumsq().unwrap().to_vec1::<f32>().unwrap();
        for j in 0..i {
            assert!(
                (sumsq[j] as f64 - norm[j]).abs() < 1e-4 * norm[j],
                "column {j}"
            );
        }
        let pruned = Box::new(p)
            .finish(&Pattern::Unstructured { percent: 40.0 }, Group::Row)
            .unwrap();
        for r in 0..o {
            let score: Vec<f64> = (0..i)
                .map(|j| (wv[r][j] as f64).abs() * norm[j].sqrt())
                .collect();
            let mut idx: Vec<usize> = (0..i).collect();
            idx.sort_by(|&a, &b| score[a].partial_cmp(&score[b]).unwrap());
            let row = &pruned.mask.pruned[r * i..(r + 1) * i];
            assert_eq!(row.iter().filter(|&&x| x).count(), 4, "row {r}");
            for &j in &idx[..4] {
                assert!(row[j], "row {r}: lowest-score column {j} not pruned");
            }
        }
    }

    #[test]
    fn sums_carried_through_a_prior_equal_one_pass() {
        let (o, i) = (4, 6);
        let w = Tensor::from_vec(gaussian(1, o * i), (o, i), &Device::Cpu).unwrap();
        let a = Tensor::from_vec(gaussian(2, 5 * i), (5, i), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(gaussian(3, 9 * i), (9, i), &Device::Cpu).unwrap();
        let half = Pattern::Unstructured { percent: 50.0 };
        let mut first = WandaPruner::new(&w).unwrap();
        first.observe(&a, &a).unwrap();
        let s1 = Box::new(first).finish(&half, Group::Row).unwrap().state;
        let mut second = WandaPruner::new(&w).unwrap().with_prior(s1).unwrap();
        second.observe(&b, &b).unwrap();
        let two = Box::new(second).finish(&half, Group::Row).unwrap();
        let mut once = WandaPruner::new(&w).unwrap();
        once.observe(&Tensor::cat(&[&a, &b], 0).unwrap(), &a)
            .unwrap();
        let one = Box::new(once).finish(&half, Group::Row).unwrap();
        let (x, y) = (
            two.state.unwrap().to_vec1::<f32>().unwrap(),
            one.state.unwrap().to_vec1::<f32>().unwrap(),
        );
        for (p, q) in x.iter().zip(&y) {
            assert!((p - q).abs() <= 1e-5 * q.abs(), "{p} vs {q}");
        }
        assert_eq!(two.mask, one.mask);
    }
}
