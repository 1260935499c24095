//! SparseGPT (Frantar & Alistarh 2023): one-shot OBS pruning with weight reconstruction
//! ([`super::obs`]), the mask chosen as the columns are reached.
//!
//! H ∝ XᵀX over the calibration tokens. Dead inputs (H_jj = 0) get H_jj = 1 and W[:, j] = 0.
//! Columns are processed in blocks of `blocksize`: the mask of a block is chosen from
//! w² / U_jj² (U the upper Cholesky factor of H⁻¹; for unstructured sparsity exactly
//! ⌊s · rows · block⌋ weights of the block with group `matrix`, the default, or ⌊s · block⌋ of
//! each row's slice of it with group `row`; the N lowest of each aligned M for N:M, chosen when
//! the row reaches the group, from the already-updated weights), and each pruned weight's
//! error is spread over the remaining columns of its row by the OBS update.

use super::mask::{Group, Pattern};
use super::obs::{add_gram, reconstruct, MaskChoice, ObsConfig};
use super::pruner::{LayerPruner, Pruned};
use anyhow::{bail, ensure, Result};
use candle_core::{DType, Tensor};

/// SparseGPT's settings (`--method sparsegpt`): the OBS update's.
pub type SparseGptConfig = ObsConfig;

pub struct SparseGptPruner {
    w: Tensor,
    /// Σ_t x_t x_tᵀ (in × in), f32.
    xtx: super::rows::Sum,
    cfg: SparseGptConfig,
}

impl SparseGptPruner {
    pub fn new(w: &Tensor, cfg: SparseGptConfig) -> Result<Self> {
        ensure!(cfg.blocksize > 0, "SparseGPT block size must be positive");
        ensure!(
            cfg.percdamp >= 0.0 && cfg.percdamp.is_finite(),
            "⟨percdamp⟩ must be ≥ 0"
        );
        Ok(Self {
            w: w.to_dtype(DType::F32)?,
            xtx: Default::default(),
            cfg,
        })
    }

    /// Starts from Σ x xᵀ of earlier datasets (`--mode accumulate`): H is the sum over all
    /// datasets, i.e. each weighted by its token count.
    pub fn with_prior(mut self, prior: Option<Tensor>) -> Result<Self> {
        if let Some(p) = prior {
            let i = self.w.dim(1)?;
            ensure!(
                p.dims() == [i, i],
                "SparseGPT prior has shape {:?}",
                p.dims()
            );
            self.xtx.add(&p)?;
        }
        Ok(self)
    }
}

impl LayerPruner for SparseGptPruner {
    fn observe(&mut self, x: &Tensor, _y: &Tensor) -> Result<()> {
        add_gram(&mut self.xtx, x)
    }

    fn finish(self: Box<Self>, pattern: &Pattern, group: Group) -> Result<Pruned> {
        let Some(xtx) = self.xtx.into_tensor()? else {
            bail!("SparseGPT saw no calibration tokens")
        };
        let r = reconstruct(
            &self.w,
            &xtx,
            self.cfg,
            MaskChoice::Select { pattern, group },
        )?;
        Ok(Pruned {
            weight: r.weight,
            mask: r.mask,
            state: Some(xtx),
            recon_error: Some(r.recon_error),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::block::max_abs;
    use crate::rng::gaussian;
    use candle_core::Device;

    /// Inputs with strongly correlated columns: x = z A with A random mixing.
    fn correlated(t: usize, n: usize, seed: u64) -> Tensor {
        let z = Tensor::from_vec(gaussian(seed, t * n), (t, n), &Device::Cpu).unwrap();
        let a = Tensor::from_vec(gaussian(seed + 1, n * n), (n, n), &Device::Cpu).unwrap();
        z.matmul(&a).unwrap()
    }

    fn output_error(x: &Tensor, w0: &Tensor, w: &Tensor) -> f64 {
        let d = (x.matmul(&w0.t().unwrap()).unwrap() - x.matmul(&w.t().unwrap()).unwrap()).unwrap();
        d.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    }

    #[test]
    fn reconstruction_beats_masking_alone() {
        let (o, i, t) = (16, 64, 512);
        let w = Tensor::from_vec(gaussian(5, o * i), (o, i), &Device::Cpu).unwrap();
        let x = correlated(t, i, 9);
        for pattern in [
            Pattern::Unstructured { percent: 50.0 },
            Pattern::NM { n: 2, m: 4 },
        ] {
            let mut p = SparseGptPruner::new(
                &w,
                SparseGptConfig {
                    percdamp: 0.01,
                    blocksize: 16,
                },
            )
            .unwrap();
            p.observe(&x, &x).unwrap();
            let done = Box::new(p).finish(&pattern, Group::Matrix).unwrap();
            // Exact count and zeros exactly on the mask.
            let wv = done.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (k, &pr) in done.mask.pruned.iter().enumerate() {
                if pr {
                    assert_eq!(wv[k], 0.0);
                }
            }
            assert_eq!(done.mask.count(), o * i / 2, "{pattern}");
            if let Pattern::NM { n, m } = pattern {
                for g in done.mask.pruned.chunks(m) {
                    assert_eq!(g.iter().filter(|&&b| b).count(), n);
                }
            }
            // The same mask without the update.
            let keep = Tensor::from_vec(done.mask.keep_f32(), (o, i), &Device::Cpu).unwrap();
            let masked = (&w * keep).unwrap();
            let e_sgpt = output_error(&x, &w, &done.weight);
            let e_mask = output_error(&x, &w, &masked);
            assert!(
                e_sgpt < 0.8 * e_mask,
                "{pattern}: SparseGPT {e_sgpt} vs mask only {e_mask}"
            );
            let rel = done.recon_error.unwrap();
            let direct = e_sgpt
                / x.matmul(&w.t().unwrap())
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap() as f64;
            assert!(
                (rel - direct).abs() < 1e-3 * direct.max(1e-6) + 1e-6,
                "{rel} vs {direct}"
            );
        }
    }

    #[test]
    fn dead_inputs_give_finite_weights() {
        let (o, i, t) = (4, 8, 32);
        let w = Tensor::from_vec(gaussian(1, o * i), (o, i), &Device::Cpu).unwrap();
        let mut xv = gaussian(2, t * i);
        for r in 0..t {
            xv[r * i + 3] = 0.0; // input column 3 is always zero
        }
        let x = Tensor::from_vec(xv, (t, i), &Device::Cpu).unwrap();
        let mut p = SparseGptPruner::new(&w, SparseGptConfig::default()).unwrap();
        p.observe(&x, &x).unwrap();
        let done = Box::new(p)
            .finish(&Pattern::Unstructured { percent: 50.0 }, Group::Matrix)
            .unwrap();
        let v = done.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| x.is_finite()));
        for r in 0..o {
            assert_eq!(v[r * i + 3], 0.0, "dead column is zeroed");
        }
    }

    #[test]
    fn hessian_sums_carried_through_a_prior_equal_one_pass() {
        let (o, i) = (8, 16);
        let w = Tensor::from_vec(gaussian(1, o * i), (o, i), &Device::Cpu).unwrap();
        let a = correlated(40, i, 3);
        let b = correlated(60, i, 5);
        let cfg = SparseGptConfig {
            percdamp: 0.01,
            blocksize: 8,
        };
        let half = Pattern::Unstructured { percent: 50.0 };
        let mut first = SparseGptPruner::new(&w, cfg).unwrap();
        first.observe(&a, &a).unwrap();
        let s1 = Box::new(first).finish(&half, Group::Matrix).unwrap().state;
        let mut second = SparseGptPruner::new(&w, cfg)
            .unwrap()
            .with_prior(s1)
            .unwrap();
        second.observe(&b, &b).unwrap();
        let two = Box::new(second).finish(&half, Group::Matrix).unwrap();
        let mut once = SparseGptPruner::new(&w, cfg).unwrap();
        once.observe(&Tensor::cat(&[&a, &b], 0).unwrap(), &a)
            .unwrap();
        let one = Box::new(once).finish(&half, Group::Matrix).unwrap();
        let max_diff = |a: Tensor, b: Tensor| max_abs(&(a - b).unwrap()).unwrap();
        let d = max_diff(two.state.unwrap(), one.state.unwrap());
        assert!(d < 1e-3, "Σxxᵀ differs by {d}");
        assert_eq!(two.mask, one.mask);
        // Pruning from the dense weights each time: the result does not depend on history.
        let dw = max_diff(two.weight, one.weight);
        assert!(dw < 1e-3, "weights differ by {dw}");
    }

    #[test]
    fn row_group_prunes_each_rows_share_of_every_block() {
        // Rows of very different scale: a block-wide threshold prunes the small rows almost
        // entirely, a per-row one takes exactly half of each row's slice of each block.
        let (o, i, t, bs) = (8, 32, 256, 8);
        let mut wv = gaussian(3, o * i);
        for (k, v) in wv.iter_mut().enumerate() {
            *v *= (1 + k / i) as f32;
        }
        let w = Tensor::from_vec(wv, (o, i), &Device::Cpu).unwrap();
        let x = correlated(t, i, 4);
        let cfg = SparseGptConfig {
            percdamp: 0.01,
            blocksize: bs,
        };
        let run = |group| {
            let mut p = SparseGptPruner::new(&w, cfg).unwrap();
            p.observe(&x, &x).unwrap();
            Box::new(p)
                .finish(&Pattern::Unstructured { percent: 50.0 }, group)
                .unwrap()
        };
        let row = run(Group::Row);
        for (r, rm) in row.mask.pruned.chunks(i).enumerate() {
            for (b, blk) in rm.chunks(bs).enumerate() {
                let n = blk.iter().filter(|&&p| p).count();
                assert_eq!(n, bs / 2, "row {r}, block {b}");
            }
        }
        let matrix = run(Group::Matrix);
        assert_eq!(matrix.mask.count(), o * i / 2);
        let row0 = matrix.mask.pruned[..i].iter().filter(|&&p| p).count();
        assert!(
            row0 > i / 2,
            "the smallest row loses more than half: {row0}"
        );
        let wv = row.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(row
            .mask
            .pruned
            .iter()
            .zip(&wv)
            .all(|(&p, &v)| !p || v == 0.0));
    }

    #[test]
    fn a_shared_input_statistic_prunes_like_observing_the_input() {
        // k and v read q's input: starting k from q's accumulated Σ x xᵀ (what the step does)
        // must give exactly what k observing the same inputs gives.
        let (i, t) = (16, 64);
        let wq = Tensor::from_vec(gaussian(1, 8 * i), (8, i), &Device::Cpu).unwrap();
        let wk = Tensor::from_vec(gaussian(2, 4 * i), (4, i), &Device::Cpu).unwrap();
        let (x1, x2) = (correlated(t, i, 3), correlated(t, i, 7));
        let cfg = SparseGptConfig {
            percdamp: 0.01,
            blocksize: 8,
        };
        let half = Pattern::Unstructured { percent: 50.0 };
        let mut q = SparseGptPruner::new(&wq, cfg).unwrap();
        let mut k_own = SparseGptPruner::new(&wk, cfg).unwrap();
        for x in [&x1, &x2] {
            q.observe(x, x).unwrap();
            k_own.observe(x, x).unwrap();
        }
        let shared = Box::new(q).finish(&half, Group::Matrix).unwrap().state;
        let k_shared = SparseGptPruner::new(&wk, cfg)
            .unwrap()
            .with_prior(shared)
            .unwrap();
        let a = Box::new(k_own).finish(&half, Group::Matrix).unwrap();
        let b = Box::new(k_shared).finish(&half, Group::Matrix).unwrap();
        assert_eq!(a.mask, b.mask);
        let (va, vb) = (
            a.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(va, vb, "bit-identical weights");
    }

    #[test]
    fn given_sparsegpts_own_mask_the_update_reproduces_its_weights() {
        let (o, i, t) = (12, 48, 256);
        let w = Tensor::from_vec(gaussian(7, o * i), (o, i), &Device::Cpu).unwrap();
        let x = correlated(t, i, 3);
        let cfg = ObsConfig {
            percdamp: 0.01,
            blocksize: 16,
        };
        for pattern in [
            Pattern::Unstructured { percent: 50.0 },
            Pattern::NM { n: 2, m: 4 },
        ] {
            let mut p = SparseGptPruner::new(&w, cfg).unwrap();
            p.observe(&x, &x).unwrap();
            let sgpt = Box::new(p).finish(&pattern, Group::Matrix).unwrap();
            let mut gram = crate::prune::rows::Sum::default();
            add_gram(&mut gram, &x).unwrap();
            let gram = gram.into_tensor().unwrap().unwrap();
            let r = reconstruct(&w, &gram, cfg, MaskChoice::Given(&sgpt.mask)).unwrap();
            assert_eq!(r.mask, sgpt.mask);
            assert_eq!(
                r.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                sgpt.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "{pattern}: bit-identical weights"
            );
            assert_eq!(r.recon_error, sgpt.recon_error.unwrap());
        }
    }
}
