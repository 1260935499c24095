//! DSnoT (Zhang et al., ICLR 2024, "Dynamic Sparse No Training"): a training-free refinement of
//! a mask-only method's mask. Within each output row, pruned weights are grown back and kept
//! weights pruned, one pair per cycle, to shrink the row's expected reconstruction error; the
//! weights themselves are not changed (the dense values of the kept ones are written).
//!
//! From the input statistics over n calibration windows, x̄_j = Σ_t x_tj / n (the windows'
//! summed input, averaged over windows), ‖X_j‖² = Σ_t x_tj² / n and Var_j, the mean over the
//! windows of each window's population variance of input j:
//!   M_ij = W_ij · x̄_j                       (the output a weight contributes on average)
//!   e_i  = Σ_{j pruned} M_ij               (what the row's pruned weights take away)
//! Each cycle, while |e_i| > threshold (and at most `dsnot_cycles` times):
//!   grow  the pruned j whose M_ij / Var_j^p is largest if e_i > 0, smallest otherwise
//!         (each side taken in order, from the end of the ascending order of that ratio);
//!   prune the kept j with the smallest Wanda score |W_ij| · ‖X_j‖ among those whose M_ij has
//!         the sign that brings e_i back towards 0 (negative M if e_i ≥ 0, positive if e_i < 0);
//!   e_i += M_prune − M_grow.
//! The row keeps its number of pruned weights. As in the authors' code (zyxxmu/DSnoT), the
//! sign test between e before and after a swap is off, the MLP linears are left as the method
//! pruned them unless told otherwise (`dsnot_skip`), and the loop over cycles is shared by the
//! rows of a matrix (it ends when no row swaps any more): a row that stopped still receives
//! the mask writes of the later cycles, which only re-mark weights as they are, so each row
//! is refined on its own here (see [`refine_row`]). Unstructured sparsity only; the paper's N:M variant is not implemented.

use crate::prune::mask::Mask;
use crate::prune::pruner::{f32_rows, Pruned};

use crate::model::Linear;
use crate::prune::pruner::{Applied, InputStatistic};
use anyhow::{ensure, Context as _, Result};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Which linears DSnoT leaves as the method pruned them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Skip {
    /// gate, up and down (the authors' default).
    Mlp,
    /// q, k, v and o.
    Attn,
    /// Refine every linear.
    None,
}

crate::display_as_value!(Skip);

/// DSnoT's settings (`--update dsnot`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DsnotConfig {
    /// Most grow-and-prune cycles per matrix (the authors' `max_cycle_time`).
    pub dsnot_cycles: usize,
    /// A row stops once |e_i| is at most this (`update_threshold`).
    pub dsnot_threshold: f64,
    /// Power p of the variance dividing the growing score (`pow_of_var_regrowing`).
    pub dsnot_var_power: f64,
    /// Linears left unrefined (`skip_layer`).
    pub dsnot_skip: Skip,
}

impl Default for DsnotConfig {
    /// The authors' settings for LLaMA (their README and `main.py` defaults).
    fn default() -> Self {
        Self {
            dsnot_cycles: 50,
            dsnot_threshold: 0.1,
            dsnot_var_power: 1.0,
            dsnot_skip: Skip::Mlp,
        }
    }
}

impl DsnotConfig {
    pub fn validate(&self) -> Result<()> {
        crate::usage_ensure!(
            self.dsnot_threshold.is_finite() && self.dsnot_threshold >= 0.0,
            "dsnot_threshold",
            "must be a finite number ≥ 0, got {}",
            self.dsnot_threshold
        );
        crate::usage_ensure!(
            self.dsnot_var_power.is_finite(),
            "dsnot_var_power",
            "must be a finite number, got {}",
            self.dsnot_var_power
        );
        Ok(())
    }

    /// Refuses N:M patterns (the paper's N:M variant is not implemented).
    pub fn check(&self, pattern: &crate::prune::Pattern) -> Result<()> {
        if let crate::prune::Pattern::NM { .. } = pattern {
            crate::usage_bail!(
                "update",
                "dsnot refines unstructured masks only in copal; {pattern} is not supported \
                 with it (use update none or obs)"
            );
        }
        Ok(())
    }

    fn skips(&self, lin: Linear) -> bool {
        let mlp = matches!(lin, Linear::Gate | Linear::Up | Linear::Down);
        match self.dsnot_skip {
            Skip::Mlp => mlp,
            Skip::Attn => !mlp,
            Skip::None => false,
        }
    }

    /// FLOPs of one linear: the statistics (≈ 6 per input value, kept once per input source)
    /// and the scores and sorts of the refinement (≈ out · in · log₂ in).
    pub fn flops(&self, out: usize, inp: usize, windows: f64, t: f64, source: bool) -> f64 {
        let (o, i) = (out as f64, inp as f64);
        let stats = if source { 6.0 * windows * t * i } else { 0.0 };
        stats + o * i * (4.0 + 2.0 * i.log2())
    }
}

/// The state's name for DSnoT's input moments of a weight's input.
pub fn moments_key(weight: &str) -> String {
    format!("{weight}.moments")
}

/// DSnoT's input statistic, one (4, in) f32 tensor: Σ x, Σ x², Σ over windows of the window's
/// population variance, and (every entry) the number of windows. All four add across windows
/// and datasets, so a state continues them exactly.
pub struct Moments {
    sums: Option<[Vec<f64>; 4]>,
}

impl Moments {
    pub fn new(prior: Option<Tensor>) -> Result<Self> {
        let sums = match prior {
            Some(p) => {
                let (k, n) = p.dims2()?;
                ensure!(k == 4, "DSnoT's moments have {k} rows, expected 4");
                let v = p.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let row = |r: usize| v[r * n..(r + 1) * n].iter().map(|&x| x as f64).collect();
                Some([row(0), row(1), row(2), row(3)])
            }
            None => None,
        };
        Ok(Self { sums })
    }
}

impl InputStatistic for Moments {
    fn observe(&mut self, x: &Tensor) -> Result<()> {
        let x = f32_rows(x)?;
        let (t, n) = x.dims2()?;
        let v = x.flatten_all()?.to_vec1::<f32>()?;
        let sums = self
            .sums
            .get_or_insert_with(|| [vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]]);
        ensure!(
            sums[0].len() == n,
            "DSnoT's moments are {} wide, the input {n}",
            sums[0].len()
        );
        // Per input column: Σx, Σx² and the two-pass population variance of this window,
        // rows added in order. Tasks take blocks of columns and walk the rows, so that the
        // (tokens × in) window is read along its rows.
        const BLOCK: usize = 256;
        let blocks: Vec<Vec<(f64, f64, f64)>> = (0..n.div_ceil(BLOCK))
            .into_par_iter()
            .map(|b| {
                let (c0, c1) = (b * BLOCK, ((b + 1) * BLOCK).min(n));
                let (mut sum, mut sq) = (vec![0f64; c1 - c0], vec![0f64; c1 - c0]);
                for row in v.chunks(n) {
                    for (k, &a) in row[c0..c1].iter().enumerate() {
                        sum[k] += a as f64;
                        sq[k] += a as f64 * a as f64;
                    }
                }
                let mean: Vec<f64> = sum.iter().map(|s| s / t as f64).collect();
                let mut dev = vec![0f64; c1 - c0];
                for row in v.chunks(n) {
                    for (k, &a) in row[c0..c1].iter().enumerate() {
                        dev[k] += (a as f64 - mean[k]).powi(2);
                    }
                }
                (0..c1 - c0)
                    .map(|k| (sum[k], sq[k], dev[k] / t as f64))
                    .collect()
            })
            .collect();
        for (j, (s, q, var)) in blocks.into_iter().flatten().enumerate() {
            sums[0][j] += s;
            sums[1][j] += q;
            sums[2][j] += var;
            sums[3][j] += 1.0;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Option<Tensor>> {
        let Some(sums) = self.sums else {
            return Ok(None);
        };
        let n = sums[0].len();
        let flat: Vec<f32> = sums.iter().flatten().map(|&x| x as f32).collect();
        Ok(Some(Tensor::from_vec(flat, (4, n), &Device::Cpu)?))
    }
}

/// Refines `done`'s mask of `lin` (dense weight `dense`) from the input `moments`.
pub fn apply(
    cfg: &DsnotConfig,
    lin: Linear,
    dense: &Tensor,
    done: &mut Pruned,
    moments: &Tensor,
) -> Result<Applied> {
    if cfg.skips(lin) {
        return Ok(Applied::default());
    }
    let w = dense.to_dtype(DType::F32)?;
    let (rows, cols) = w.dims2()?;
    let m = moments.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
    ensure!(
        m.len() == 4 && m[0].len() == cols,
        "DSnoT's moments do not fit a {rows} × {cols} weight"
    );
    let n = m[3][0].max(1.0);
    let mean: Vec<f32> = m[0].iter().map(|s| s / n).collect();
    let norm: Vec<f32> = m[1].iter().map(|q| (q / n).sqrt()).collect();
    let var: Vec<f32> = m[2].iter().map(|v| v / n).collect();
    let wv = w.flatten_all()?.to_vec1::<f32>()?;
    let stats = Stats {
        mean: &mean,
        norm: &norm,
        var: &var,
    };
    let mut pruned = done.mask.pruned.clone();
    pruned
        .par_chunks_mut(cols)
        .zip(wv.par_chunks(cols))
        .for_each(|(p, w)| {
            refine_row(w, p, &stats, cfg);
        });
    let mask = Mask { rows, cols, pruned };
    let mut v = wv;
    mask.zero_pruned(&mut v);
    done.weight = Tensor::from_vec(v, (rows, cols), dense.device())?;
    done.mask = mask;
    done.recon_error = None;
    Ok(Applied::default())
}

struct Stats<'a> {
    mean: &'a [f32],
    norm: &'a [f32],
    var: &'a [f32],
}

/// Ascending order of `v`, ties by index, NaN last (torch's stable sort).
fn ascending(idx: &mut [u32], v: impl Fn(u32) -> f32) {
    idx.sort_by(|&a, &b| {
        let (x, y) = (v(a), v(b));
        x.is_nan().cmp(&y.is_nan()).then(x.total_cmp(&y))
    });
}

/// One row of the refinement, written as the authors' loop runs on it: `mask` (the row's
/// pruned flags, the method's on entry) is refined in place; returns the swaps made. The grow order covers
/// every column (kept ones score 0, as in their code); the prune order is the kept columns by
/// Wanda score, negatives of M first in that order, then positives in reverse (their
/// `return_reorder_indice`, whose zeros map to the first kept column). A side whose list is
/// used up stops the row (their code would index out of range).
///
/// One deviation keeps the sparsity asked for: a row also stops where its next swap would not
/// be one, growing a column that is not pruned (the kept columns' score-0 places in the grow
/// order, reached once a row has grown every pruned column of the needed sign) or pruning one
/// that is (the zero remap). The authors' code writes those too, pruning without growing (or
/// the reverse), which changes the row's count: on the tiny test model's 64-wide rows with 50
/// cycles it took Wanda's 50% to 53.3%. Rows as wide as SmolLM2's (576) or LLaMA's never get
/// there within 50 cycles, and there the two agree.
fn refine_row(w: &[f32], mask: &mut [bool], s: &Stats, cfg: &DsnotConfig) -> usize {
    let cols = w.len();
    // The scores and orders come from the method's mask; `mask` is what the swaps make of it.
    let pruned = mask.to_vec();
    let metric: Vec<f32> = (0..cols).map(|j| w[j] * s.mean[j]).collect();
    let mut e = (0..cols)
        .filter(|&j| pruned[j])
        .map(|j| metric[j] as f64)
        .sum::<f64>() as f32;
    let grow_score = |j: u32| {
        let j = j as usize;
        if pruned[j] {
            metric[j] / s.var[j].powf(cfg.dsnot_var_power as f32)
        } else {
            0.0
        }
    };
    let mut grow: Vec<u32> = (0..cols as u32).collect();
    ascending(&mut grow, grow_score);
    let mut kept: Vec<u32> = (0..cols as u32).filter(|&j| !pruned[j as usize]).collect();
    ascending(&mut kept, |j| w[j as usize].abs() * s.norm[j as usize]);
    let m_of = |j: u32| metric[j as usize];
    let neg = kept.iter().copied().filter(|&j| m_of(j) < 0.0);
    let zeros = kept.iter().filter(|&&j| m_of(j) == 0.0).map(|_| kept[0]);
    let pos = kept.iter().rev().copied().filter(|&j| m_of(j) > 0.0);
    let prune_order: Vec<u32> = neg.chain(zeros).chain(pos).collect();
    // Pointers into each order: [from the start, from the end].
    let mut g = [0i64, grow.len() as i64 - 1];
    let mut p = [0i64, prune_order.len() as i64 - 1];
    // Once a row stops, the authors' loop still writes its next pair each cycle, which for a
    // kept q and a pruned r changes nothing, so a stopped row ends here.
    let mut swaps = 0;
    for _ in 0..cfg.dsnot_cycles {
        let gs = usize::from(e > 0.0);
        let ps = usize::from(e < 0.0);
        let (gi, pi) = (g[gs], p[ps]);
        if gi < 0 || gi >= grow.len() as i64 || pi < 0 || pi >= prune_order.len() as i64 {
            break;
        }
        let (r, q) = (grow[gi as usize], prune_order[pi as usize]);
        g[gs] += if gs == 0 { 1 } else { -1 };
        p[ps] += if ps == 0 { 1 } else { -1 };
        let a_swap = mask[r as usize] && !mask[q as usize];
        if !(e.abs() > cfg.dsnot_threshold as f32 && a_swap) {
            break;
        }
        (mask[q as usize], mask[r as usize]) = (true, false);
        swaps += 1;
        e = (e + m_of(q)) - m_of(r);
    }
    swaps
}

/// A fresh moments statistic, starting from the state's.
pub fn statistic(prior: Option<Tensor>) -> Result<Box<dyn InputStatistic>> {
    Ok(Box::new(
        Moments::new(prior).context("reading DSnoT's carried moments")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::{mask, Group, Pattern};
    use crate::rng::gaussian;

    /// The authors' loop as they write it: whole matrix, one shared cycle counter, pointers per
    /// row into full sorts, the error updated where the row still swaps.
    fn naive(
        w: &[f32],
        rows: usize,
        cols: usize,
        start: &[bool],
        s: &Stats,
        cfg: &DsnotConfig,
    ) -> Vec<bool> {
        let mut mask = start.to_vec();
        let metric = |r: usize, j: usize| w[r * cols + j] * s.mean[j];
        let mut err: Vec<f32> = (0..rows)
            .map(|r| {
                (0..cols)
                    .filter(|&j| start[r * cols + j])
                    .map(|j| metric(r, j) as f64)
                    .sum::<f64>() as f32
            })
            .collect();
        let mut grow = Vec::new();
        let mut prune = Vec::new();
        for r in 0..rows {
            let score = |j: usize| {
                if start[r * cols + j] {
                    metric(r, j) / s.var[j]
                } else {
                    0.0
                }
            };
            let mut g: Vec<usize> = (0..cols).collect();
            g.sort_by(|&a, &b| score(a).total_cmp(&score(b)));
            grow.push(g);
            let wanda = |j: usize| {
                if start[r * cols + j] {
                    f32::INFINITY
                } else {
                    w[r * cols + j].abs() * s.norm[j]
                }
            };
            let mut k: Vec<usize> = (0..cols).collect();
            k.sort_by(|&a, &b| wanda(a).total_cmp(&wanda(b)));
            k.truncate(
                start[r * cols..(r + 1) * cols]
                    .iter()
                    .filter(|p| !**p)
                    .count(),
            );
            let mut order: Vec<usize> = k.iter().copied().filter(|&j| metric(r, j) < 0.0).collect();
            order.extend(k.iter().rev().copied().filter(|&j| metric(r, j) > 0.0));
            prune.push(order);
        }
        let mut gp: Vec<[usize; 2]> = grow.iter().map(|g| [0, g.len() - 1]).collect();
        let mut pp: Vec<[usize; 2]> = prune.iter().map(|p| [0, p.len() - 1]).collect();
        let mut upd = vec![true; rows];
        let mut cycle = 0;
        while upd.iter().any(|u| *u) && cycle < cfg.dsnot_cycles {
            cycle += 1;
            for r in 0..rows {
                let gs = usize::from(err[r] > 0.0);
                let gi = grow[r][gp[r][gs]];
                gp[r][gs] = if gs == 0 {
                    gp[r][gs] + 1
                } else {
                    gp[r][gs] - 1
                };
                let ps = usize::from(err[r] < 0.0);
                let pi = prune[r][pp[r][ps]];
                pp[r][ps] = if ps == 0 {
                    pp[r][ps] + 1
                } else {
                    pp[r][ps] - 1
                };
                // copal's one deviation (see `refine_row`): a pair that is not a swap stops
                // the row instead of changing its count.
                let a_swap = mask[r * cols + gi] && !mask[r * cols + pi];
                upd[r] = upd[r] && err[r].abs() > cfg.dsnot_threshold as f32 && a_swap;
                mask[r * cols + pi] = upd[r] || (mask[r * cols + pi] && !a_swap);
                mask[r * cols + gi] = !upd[r] && (mask[r * cols + gi] || a_swap);
                if upd[r] {
                    err[r] = (err[r] + metric(r, pi)) - metric(r, gi);
                }
            }
        }
        mask
    }

    #[test]
    fn refinement_equals_the_authors_loop_and_keeps_each_rows_count() {
        let (rows, cols) = (12, 96);
        let w = gaussian(3, rows * cols);
        let mean: Vec<f32> = gaussian(4, cols).iter().map(|x| x + 0.3).collect();
        let norm: Vec<f32> = gaussian(5, cols).iter().map(|x| x.abs() + 0.5).collect();
        let var: Vec<f32> = gaussian(6, cols).iter().map(|x| x.abs() + 0.1).collect();
        let s = Stats {
            mean: &mean,
            norm: &norm,
            var: &var,
        };
        let wanda: Vec<f32> = (0..rows * cols)
            .map(|k| w[k].abs() * norm[k % cols])
            .collect();
        let half = Pattern::Unstructured { percent: 50.0 };
        let start = mask::select(&wanda, rows, cols, &half, Group::Row).unwrap();
        let dense = Tensor::from_vec(w.clone(), (rows, cols), &Device::Cpu).unwrap();
        // A threshold that stops some rows early, and none.
        for threshold in [0.0, 0.4] {
            let cfg = DsnotConfig {
                dsnot_cycles: 20,
                dsnot_threshold: threshold,
                dsnot_skip: Skip::None,
                ..Default::default()
            };
            let want = naive(&w, rows, cols, &start.pruned, &s, &cfg);
            let n = 3.0f32;
            let moments: Vec<f32> = [
                mean.iter().map(|m| m * n).collect::<Vec<_>>(),
                norm.iter().map(|q| q * q * n).collect(),
                var.iter().map(|v| v * n).collect(),
                vec![n; cols],
            ]
            .concat();
            let moments = Tensor::from_vec(moments, (4, cols), &Device::Cpu).unwrap();
            let mut done = Pruned {
                weight: dense.clone(),
                mask: start.clone(),
                state: None,
                recon_error: None,
            };
            apply(&cfg, Linear::Q, &dense, &mut done, &moments).unwrap();
            assert_ne!(
                done.mask.pruned, start.pruned,
                "threshold {threshold}: nothing swapped"
            );
            let diff = (0..rows * cols)
                .filter(|&k| done.mask.pruned[k] != want[k])
                .count();
            // The moments pass through f32 sums, so a score may differ in its last bit.
            assert!(
                diff <= 2,
                "threshold {threshold}: {diff} mask entries differ from the loop"
            );
            for r in 0..rows {
                let count = |m: &[bool]| m[r * cols..(r + 1) * cols].iter().filter(|p| **p).count();
                assert_eq!(count(&done.mask.pruned), count(&start.pruned), "row {r}");
            }
            let v = done.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for k in 0..rows * cols {
                assert_eq!(v[k], if done.mask.pruned[k] { 0.0 } else { w[k] });
            }
        }
        // The MLP is left alone by default.
        let mut done = Pruned {
            weight: dense.clone(),
            mask: start.clone(),
            state: None,
            recon_error: None,
        };
        let m = Tensor::ones((4, cols), DType::F32, &Device::Cpu).unwrap();
        apply(&DsnotConfig::default(), Linear::Down, &dense, &mut done, &m).unwrap();
        assert_eq!(done.mask, start);
    }

    /// Rows narrower than the cycles: the grow order runs past the pruned columns, where the
    /// authors' loop would prune without growing; each row keeps its count.
    #[test]
    fn narrow_rows_keep_their_count() {
        let (rows, cols) = (16, 12);
        let w = gaussian(7, rows * cols);
        let mean: Vec<f32> = gaussian(8, cols).iter().map(|x| x + 0.2).collect();
        let norm = vec![1f32; cols];
        let var = vec![1f32; cols];
        let wanda: Vec<f32> = w.iter().map(|x| x.abs()).collect();
        let half = Pattern::Unstructured { percent: 50.0 };
        let start = mask::select(&wanda, rows, cols, &half, Group::Row).unwrap();
        let cfg = DsnotConfig {
            dsnot_cycles: 50,
            dsnot_threshold: 0.0,
            dsnot_skip: Skip::None,
            ..Default::default()
        };
        let s = Stats {
            mean: &mean,
            norm: &norm,
            var: &var,
        };
        let mut moved = 0;
        for r in 0..rows {
            let row = r * cols..(r + 1) * cols;
            let mut m = start.pruned[row.clone()].to_vec();
            let swaps = refine_row(&w[row], &mut m, &s, &cfg);
            assert_eq!(m.iter().filter(|p| **p).count(), cols / 2, "row {r}");
            moved += usize::from(swaps > 0);
        }
        assert!(moved > 0, "no row swapped at all");
    }

    #[test]
    fn moments_add_up_window_by_window() {
        let (t, n) = (7, 5);
        let a = Tensor::from_vec(gaussian(1, t * n), (t, n), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(gaussian(2, t * n), (t, n), &Device::Cpu).unwrap();
        let mut m = Box::new(Moments::new(None).unwrap());
        m.observe(&a).unwrap();
        let first = (m as Box<dyn InputStatistic>).finish().unwrap().unwrap();
        let mut m = Box::new(Moments::new(Some(first)).unwrap());
        m.observe(&b).unwrap();
        let got = (m as Box<dyn InputStatistic>)
            .finish()
            .unwrap()
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for j in 0..n {
            let col = |x: &Tensor| -> Vec<f64> {
                x.to_vec2::<f32>()
                    .unwrap()
                    .iter()
                    .map(|r| r[j] as f64)
                    .collect()
            };
            let (ca, cb) = (col(&a), col(&b));
            let var = |c: &[f64]| {
                let mu = c.iter().sum::<f64>() / c.len() as f64;
                c.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / c.len() as f64
            };
            let sum: f64 = ca.iter().chain(&cb).sum();
            let sq: f64 = ca.iter().chain(&cb).map(|x| x * x).sum();
            assert!((got[0][j] as f64 - sum).abs() < 1e-5);
            assert!((got[1][j] as f64 - sq).abs() < 1e-4);
            assert!((got[2][j] as f64 - (var(&ca) + var(&cb))).abs() < 1e-5);
            assert_eq!(got[3][j], 2.0);
        }
    }
}
