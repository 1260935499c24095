//! SparseGPT (Frantar & Alistarh 2023): one-shot OBS pruning with weight reconstruction.
//!
//! H ∝ XᵀX over the calibration tokens (statistics in f32, algebra in f64). Dead inputs
//! (H_jj = 0) get H_jj = 1 and W[:, j] = 0; then H += λI with λ = percdamp · mean(diag H).
//! With U the upper Cholesky factor of H⁻¹, columns are processed in blocks of `blocksize`:
//! the mask of a block is chosen from w² / U_jj² (for unstructured sparsity exactly
//! ⌊s · rows · block⌋ weights of the block with group `matrix`, the default, or ⌊s · block⌋ of
//! each row's slice of it with group `row`; the N lowest of each aligned M for N:M, chosen when the
//! row reaches the group, from the already-updated weights), and each pruned weight's error
//! (w − q) / U_jj is spread over the remaining columns of the row with U's row (the OBS update):
//!   W[:, j:] −= ((w − q) / U_jj) · U[j, j:].
//! If the Cholesky factorisation fails, the damping is raised tenfold and retried.

use super::linalg::{upper_cholesky_of_inverse, Mat};
use super::mask::{self, Group, Mask, Pattern};
use super::pruner::{f32_rows, LayerPruner, Pruned};
use anyhow::{bail, ensure, Result};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// SparseGPT's settings (`--method sparsegpt`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SparseGptConfig {
    /// Damping as a fraction of the mean Hessian diagonal.
    pub percdamp: f64,
    /// Columns per lazy-update block.
    pub blocksize: usize,
}

impl SparseGptConfig {
    /// Checks the values (usage errors naming `percdamp` or `blocksize`).
    pub fn validate(&self) -> Result<()> {
        crate::usage_ensure!(
            self.percdamp.is_finite() && self.percdamp >= 0.0,
            "percdamp",
            "must be a finite number ≥ 0, got {}",
            self.percdamp
        );
        crate::usage_ensure!(self.blocksize > 0, "blocksize", "must be at least 1");
        Ok(())
    }

    /// FLOPs of one linear's statistics and solve, for `windows` windows of `t` tokens: Σ x xᵀ
    /// (2·tokens·in², only where the linear keeps its own: see [`super::Method::keeps_stats`]),
    /// the factorisations ≈ (2/3)·in³ and the OBS update ≈ 2·out·in².
    pub fn flops(&self, out: usize, inp: usize, windows: f64, t: f64, own_gram: bool) -> f64 {
        let (o, i) = (out as f64, inp as f64);
        let gram = if own_gram {
            windows * 2.0 * t * i * i
        } else {
            0.0
        };
        gram + 2.0 / 3.0 * i * i * i + 2.0 * o * i * i
    }
}

impl Default for SparseGptConfig {
    fn default() -> Self {
        Self {
            percdamp: 0.01,
            blocksize: 128,
        }
    }
}

pub struct SparseGptPruner {
    w: Tensor,
    /// Σ_t x_t x_tᵀ (in × in), f32.
    xtx: Option<Tensor>,
    cfg: SparseGptConfig,
}

impl SparseGptPruner {
    pub fn new(w: &Tensor, cfg: SparseGptConfig) -> Result<Self> {
        ensure!(cfg.blocksize > 0, "SparseGPT block size must be positive");
        ensure!(
            cfg.percdamp >= 0.0 && cfg.percdamp.is_finite(),
            "--percdamp must be ≥ 0"
        );
        Ok(Self {
            w: w.to_dtype(DType::F32)?,
            xtx: None,
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
            self.xtx = Some(p);
        }
        Ok(self)
    }
}

impl LayerPruner for SparseGptPruner {
    fn observe(&mut self, x: &Tensor, _y: &Tensor) -> Result<()> {
        let x = f32_rows(x)?;
        let s = x.t()?.matmul(&x)?;
        self.xtx = Some(match self.xtx.take() {
            None => s,
            Some(a) => (a + s)?,
        });
        Ok(())
    }

    fn finish(self: Box<Self>, pattern: &Pattern, group: Group) -> Result<Pruned> {
        let Some(xtx) = self.xtx else {
            bail!("SparseGPT saw no calibration tokens")
        };
        let state = xtx.clone();
        let (rows, cols) = self.w.dims2()?;
        // H = XᵀX: the OBS update, the mask scores and the relative damping are all invariant
        // to the scale of H, so the anchors' 2/n factor is left out (sums then merge by addition).
        let hf = xtx.flatten_all()?.to_vec1::<f32>()?;
        let mut w = self.w.flatten_all()?.to_vec1::<f32>()?;
        let w0 = self.w.clone();
        let dead: Vec<bool> = (0..cols).map(|j| hf[j * cols + j] == 0.0).collect();
        for (j, _) in dead.iter().enumerate().filter(|(_, d)| **d) {
            for r in 0..rows {
                w[r * cols + j] = 0.0;
            }
        }
        let diag = |j: usize| {
            if dead[j] {
                1.0
            } else {
                hf[j * cols + j] as f64
            }
        };
        let mean_diag = (0..cols).map(diag).sum::<f64>() / cols as f64;
        // The damped f64 H is built afresh for each try and consumed by the factorisation, so
        // only one n × n f64 copy of H exists at a time (at LLaMA-7B's down_proj, 0.97 GB each).
        let damped = |damp: f64| {
            let mut a: Vec<f64> = hf.par_iter().map(|&v| v as f64).collect();
            for j in 0..cols {
                a[j * cols + j] = diag(j) + damp;
            }
            Mat { n: cols, a }
        };
        let mut damp = self.cfg.percdamp * mean_diag;
        let mut tries = 0;
        let u = loop {
            match upper_cholesky_of_inverse(damped(damp)) {
                Ok(u) => break u,
                Err(e) if tries < 6 => {
                    let next = if damp > 0.0 {
                        damp * 10.0
                    } else {
                        1e-6 * mean_diag.max(1e-12)
                    };
                    crate::ui::info(format!(
                        "warning: SparseGPT Cholesky failed ({e}); raising damping from {damp:e} to {next:e}"
                    ));
                    damp = next;
                    tries += 1;
                }
                Err(e) => {
                    bail!("SparseGPT: H is not positive definite even with damping {damp:e}: {e}")
                }
            }
        };
        drop(hf);
        let u32: Vec<f32> = u.a.iter().map(|&v| v as f32).collect();
        drop(u);
        let mut pruned = vec![false; rows * cols];
        let bs = match pattern {
            Pattern::NM { m, .. } => {
                ensure!(
                    cols % m == 0,
                    "the {pattern} pattern needs an input width divisible by {m}, got {cols}"
                );
                // Blocks must hold whole N:M groups.
                self.cfg.blocksize.div_ceil(*m) * m
            }
            _ => self.cfg.blocksize,
        };
        let mut i1 = 0;
        while i1 < cols {
            let i2 = (i1 + bs).min(cols);
            let b = i2 - i1;
            let diag: Vec<f32> = (i1..i2).map(|j| u32[j * cols + j]).collect();
            // Block mask for unstructured sparsity, from the current (updated) weights.
            let mut block_mask = vec![false; rows * b];
            if let Pattern::Unstructured { percent } = pattern {
                let score: Vec<f32> = (0..rows * b)
                    .map(|k| {
                        let (r, c) = (k / b, k % b);
                        let v = w[r * cols + i1 + c];
                        v * v / (diag[c] * diag[c])
                    })
                    .collect();
                // The group applies within the block: `matrix` = the whole block over all
                // rows (the reference implementation), `row` = each row's slice of the block.
                let m = mask::select(
                    &score,
                    rows,
                    b,
                    &Pattern::Unstructured { percent: *percent },
                    group,
                )?;
                block_mask = m.pruned;
            }
            // Rows are independent inside a block.
            let mut err = vec![0f32; rows * b];
            w.par_chunks_mut(cols)
                .zip(block_mask.par_chunks_mut(b))
                .zip(err.par_chunks_mut(b))
                .for_each(|((row, bm), e)| {
                    for i in 0..b {
                        if let Pattern::NM { n, m } = pattern {
                            if i % m == 0 {
                                let s: Vec<f32> = (i..i + m)
                                    .map(|c| row[i1 + c] * row[i1 + c] / (diag[c] * diag[c]))
                                    .collect();
                                let mut idx: Vec<usize> = (0..*m).collect();
                                idx.sort_by(|&a, &b| s[a].total_cmp(&s[b]).then(a.cmp(&b)));
                                for &k in &idx[..*n] {
                                    bm[i + k] = true;
                                }
                            }
                        }
                        let wv = row[i1 + i];
                        let q = if bm[i] { 0.0 } else { wv };
                        let d = diag[i];
                        let ev = (wv - q) / d;
                        let urow = &u32[(i1 + i) * cols + i1 + i..(i1 + i) * cols + i2];
                        for (k, uv) in urow.iter().enumerate() {
                            row[i1 + i + k] -= ev * uv;
                        }
                        row[i1 + i] = q;
                        e[i] = ev;
                    }
                });
            for r in 0..rows {
                for c in 0..b {
                    pruned[r * cols + i1 + c] = block_mask[r * b + c];
                }
            }
            // Lazy batch update of the columns right of the block: W[:, i2:] −= Err · U[i1:i2, i2:].
            if i2 < cols {
                let rest = cols - i2;
                let e = Tensor::from_vec(err, (rows, b), &Device::Cpu)?;
                let mut ublk = Vec::with_capacity(b * rest);
                for j in i1..i2 {
                    ublk.extend_from_slice(&u32[j * cols + i2..(j + 1) * cols]);
                }
                let ublk = Tensor::from_vec(ublk, (b, rest), &Device::Cpu)?;
                let upd = e.matmul(&ublk)?.flatten_all()?.to_vec1::<f32>()?;
                w.par_chunks_mut(cols)
                    .zip(upd.par_chunks(rest))
                    .for_each(|(row, u)| {
                        for (a, d) in row[i2..].iter_mut().zip(u) {
                            *a -= d;
                        }
                    });
            }
            i1 = i2;
        }
        let weight = Tensor::from_vec(w, (rows, cols), &Device::Cpu)?.to_device(self.w.device())?;
        let recon_error = relative_output_error(&w0, &weight, &state.to_device(&Device::Cpu)?)?;
        Ok(Pruned {
            weight,
            mask: Mask { rows, cols, pruned },
            state: Some(state),
            recon_error: Some(recon_error),
        })
    }
}

/// ‖X W₀ᵀ − X Wᵀ‖² / ‖X W₀ᵀ‖² = tr(ΔW H ΔWᵀ) / tr(W₀ H W₀ᵀ), with H ∝ XᵀX.
pub fn relative_output_error(w0: &Tensor, w: &Tensor, h: &Tensor) -> Result<f64> {
    let w0 = w0.to_device(&Device::Cpu)?;
    let w = w.to_device(&Device::Cpu)?;
    let d = (&w0 - &w)?;
    let num = d.matmul(h)?.mul(&d)?.sum_all()?.to_scalar::<f32>()? as f64;
    let den = w0.matmul(h)?.mul(&w0)?.sum_all()?.to_scalar::<f32>()? as f64;
    Ok(if den > 0.0 { num / den } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::block::max_abs;
    use crate::prune::noise::gaussian;

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
}
