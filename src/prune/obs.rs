//! The OBS weight update (Frantar & Alistarh's SparseGPT): prune the columns of W left to
//! right in blocks, and spread each pruned weight's error over the columns not yet reached,
//! so that XŴᵀ stays close to XWᵀ.
//!
//! H = XᵀX over the calibration tokens (statistics in f32, algebra in f64). Dead inputs
//! (H_jj = 0) get H_jj = 1; then H += λI with λ = percdamp · mean(diag H), raised tenfold and
//! retried if the Cholesky factorisation fails. With U the upper Cholesky factor of H⁻¹, for
//! each column j with error e = (w_j − q_j) / U_jj (q_j = 0 where pruned, w_j otherwise):
//!   W[:, j:] −= e · U[j, j:]
//! (within a block at once, and for the columns right of the block as one GEMM,
//! W[:, i2:] −= Err · U[i1:i2, i2:]).
//!
//! The mask is either chosen as the columns are reached, from the already-updated weights
//! (SparseGPT: per block from w² / U_jj², or N of each aligned M), or **given** (`--update obs`
//! after a mask-only method chose it from its own score): then the mask is exactly the given
//! one and only the kept weights move.

use super::linalg::{upper_cholesky_of_inverse, Mat};
use super::mask::{self, Group, Mask, Pattern};
use super::pruner::f32_rows;
use crate::device::{gemm, MatView, Store};
use anyhow::{bail, ensure, Result};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The OBS update's settings (SparseGPT's, and `--update obs`'s).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObsConfig {
    /// Damping as a fraction of the mean Hessian diagonal.
    pub percdamp: f64,
    /// Columns per lazy-update block.
    pub blocksize: usize,
}

impl Default for ObsConfig {
    fn default() -> Self {
        Self {
            percdamp: 0.01,
            blocksize: 128,
        }
    }
}

impl ObsConfig {
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

    /// FLOPs of one linear's XᵀX and solve, for `windows` windows of `t` tokens: Σ x xᵀ
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

/// The state's name for the XᵀX of a weight's input (`update obs`; SparseGPT stores its XᵀX
/// under the weight's own name, being its only statistic).
pub fn gram_key(weight: &str) -> String {
    format!("{weight}.xtx")
}

/// Adds Σ_t x_t x_tᵀ of the rows `x` (tokens × in) to `acc`.
pub fn add_gram(acc: &mut super::rows::Sum, x: &Tensor) -> Result<()> {
    let x = f32_rows(x)?;
    acc.add_tn(&x, &x)
}

/// `update obs`'s input statistic: Σ x xᵀ over the windows, after the state's.
pub struct Gram(super::rows::Sum);

impl Gram {
    pub fn new(prior: Option<Tensor>) -> Result<Self> {
        let mut sum = super::rows::Sum::default();
        if let Some(p) = prior {
            sum.add(&p)?;
        }
        Ok(Self(sum))
    }
}

impl super::pruner::InputStatistic for Gram {
    fn observe(&mut self, x: &Tensor) -> Result<()> {
        add_gram(&mut self.0, x)
    }

    fn finish(self: Box<Self>) -> Result<Option<Tensor>> {
        self.0.into_tensor()
    }
}

/// `update obs`: the method's mask stays, its kept weights move to fit XWᵀ again; `done`'s
/// weight and reconstruction error are replaced, and the masked weight's error reported.
pub fn apply_given(
    dense: &Tensor,
    done: &mut super::pruner::Pruned,
    xtx: &Tensor,
    cfg: ObsConfig,
) -> Result<super::pruner::Applied> {
    let r = reconstruct(dense, xtx, cfg, MaskChoice::Given(&done.mask))?;
    let masked_diff = (dense.to_dtype(DType::F32)? - done.weight.to_dtype(DType::F32)?)?;
    let mask_error = ratio(output_energy(&masked_diff, xtx)?, r.dense_energy);
    done.weight = r.weight;
    done.recon_error = Some(r.recon_error);
    Ok(super::pruner::Applied {
        mask_error: Some(mask_error),
    })
}

/// How the mask of the OBS update is decided.
#[derive(Debug, Clone, Copy)]
pub enum MaskChoice<'a> {
    /// As the columns are reached (SparseGPT).
    Select { pattern: &'a Pattern, group: Group },
    /// Given beforehand (a mask-only method's).
    Given(&'a Mask),
}

/// The reconstructed weight, its mask, and ‖XWᵀ − XŴᵀ‖² / ‖XWᵀ‖².
#[derive(Debug)]
pub struct Reconstructed {
    pub weight: Tensor,
    pub mask: Mask,
    pub recon_error: f64,
    /// ‖XWᵀ‖² of the dense weight, the error's denominator.
    pub dense_energy: f64,
}

/// Prunes `w_dense` (out × in) with the OBS update from `xtx` = Σ x xᵀ (in × in). H = XᵀX:
/// the update, the mask scores and the relative damping are all invariant to the scale of H,
/// so the anchors' 2/n factor is left out (sums then merge by addition).
pub fn reconstruct(
    w_dense: &Tensor,
    xtx: &Tensor,
    cfg: ObsConfig,
    choice: MaskChoice,
) -> Result<Reconstructed> {
    let w_dense = w_dense.to_dtype(DType::F32)?;
    let (rows, cols) = w_dense.dims2()?;
    ensure!(
        xtx.dims() == [cols, cols],
        "XᵀX has shape {:?}, the weight {rows} × {cols}",
        xtx.dims()
    );
    if let MaskChoice::Given(m) = &choice {
        ensure!(
            (m.rows, m.cols) == (rows, cols),
            "the mask is {} × {}, the weight {rows} × {cols}",
            m.rows,
            m.cols
        );
    }
    let hf = xtx.flatten_all()?.to_vec1::<f32>()?;
    let mut w = w_dense.flatten_all()?.to_vec1::<f32>()?;
    let dead: Vec<bool> = (0..cols).map(|j| hf[j * cols + j] == 0.0).collect();
    // SparseGPT zeroes the weights of dead inputs (they meet no data); a given mask keeps
    // them, and with H_jj = 1 and no coupling a kept dead weight stays as it is.
    if matches!(choice, MaskChoice::Select { .. }) {
        for (j, _) in dead.iter().enumerate().filter(|(_, d)| **d) {
            for r in 0..rows {
                w[r * cols + j] = 0.0;
            }
        }
    }
    let (u, damp) = inverse_factor(hf, cols, &dead, cfg.percdamp)?;
    let w_start = w.clone();
    // The N:M pattern whose groups the blocks must hold whole (selected; a given mask is
    // taken as it is).
    let nm = match choice {
        MaskChoice::Select {
            pattern: Pattern::NM { n, m },
            ..
        } => Some((*n, *m)),
        _ => None,
    };
    let bs = match nm {
        Some((n, m)) => {
            ensure!(
                cols % m == 0,
                "the {n}:{m} pattern needs an input width divisible by {m}, got {cols}"
            );
            cfg.blocksize.div_ceil(m) * m
        }
        None => cfg.blocksize,
    };
    let mut pruned = vec![false; rows * cols];
    // Σ e² over every column's errors: the output error under the damped H (below).
    let mut err_sq = 0f64;
    let mut i1 = 0;
    while i1 < cols {
        let i2 = (i1 + bs).min(cols);
        let b = i2 - i1;
        let mut block_mask = block_mask(&choice, &w, &u, (rows, cols), (i1, i2))?;
        let err = prune_block(&mut w, &mut block_mask, &u, cols, (i1, i2), nm);
        err_sq += err.iter().map(|&e| e as f64 * e as f64).sum::<f64>();
        for r in 0..rows {
            pruned[r * cols + i1..r * cols + i2].copy_from_slice(&block_mask[r * b..(r + 1) * b]);
        }
        update_right_of_block(&mut w, &err, &u, (rows, cols), (i1, i2));
        i1 = i2;
    }
    // The output error without a second GEMM. Every update moves a row by e_j · U[j, :], so
    // D = W_start − Ŵ = E U (E the rows × cols errors), and with Uᵀ U = H_d⁻¹ (H_d = H' + λI,
    // H' being H with the dead inputs' diagonal set to 1): D H_d Dᵀ = E U H_d Uᵀ Eᵀ = E Eᵀ.
    // So tr(D H Dᵀ) = Σ e² − λ ‖D‖² − ‖D_dead‖² (a dead input has no coupling in H'), and
    // D H Dᵀ = ‖X Dᵀ‖² = ‖X (W₀ − Ŵ)ᵀ‖² because X is zero on the dead inputs.
    let (mut d_sq, mut d_dead_sq) = (0f64, 0f64);
    for (k, (a, b)) in w_start.iter().zip(&w).enumerate() {
        let d = (*a as f64 - *b as f64).powi(2);
        d_sq += d;
        if dead[k % cols] {
            d_dead_sq += d;
        }
    }
    // (Within 4e-6 of the direct tr(D H Dᵀ) on every linear of the test model, SparseGPT
    // unstructured and 2:4 and `--update obs`, with λ‖D‖² up to 0.91 of Σ e².)
    let num = (err_sq - damp * d_sq - d_dead_sq).max(0.0);
    let dense_energy = output_energy(&w_dense, xtx)?;
    let weight = Tensor::from_vec(w, (rows, cols), &Device::Cpu)?.to_device(w_dense.device())?;
    Ok(Reconstructed {
        weight,
        mask: Mask { rows, cols, pruned },
        recon_error: ratio(num, dense_energy),
        dense_energy,
    })
}

/// U, the upper Cholesky factor of (H + λI)⁻¹ (f32, n × n), from H = `hf`: dead inputs get
/// H_jj = 1, λ = percdamp · mean(diag H), raised tenfold (at most six times) while the
/// factorisation fails.
fn inverse_factor(
    hf: Vec<f32>,
    cols: usize,
    dead: &[bool],
    percdamp: f64,
) -> Result<(Vec<f32>, f64)> {
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
    let mut damp = percdamp * mean_diag;
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
                    "warning: OBS update: the Cholesky factorisation of XᵀX failed ({e}); \
                     raising the damping from {damp:e} to {next:e}"
                ));
                damp = next;
                tries += 1;
            }
            Err(e) => {
                bail!("OBS update: XᵀX is not positive definite even with damping {damp:e}: {e}")
            }
        }
    };
    Ok((u.a.iter().map(|&v| v as f32).collect(), damp))
}

/// The mask of columns i1..i2 (rows × b) before the block is pruned: the given one, or for
/// unstructured sparsity chosen from the current (updated) weights by w² / U_jj² (the group
/// applies within the block: `matrix` = the whole block over all rows, as the reference
/// implementation does; `row` = each row's slice of it). N:M is chosen column by column in
/// [`prune_block`].
fn block_mask(
    choice: &MaskChoice,
    w: &[f32],
    u: &[f32],
    (rows, cols): (usize, usize),
    (i1, i2): (usize, usize),
) -> Result<Vec<bool>> {
    let b = i2 - i1;
    match *choice {
        MaskChoice::Given(m) => {
            let mut out = vec![false; rows * b];
            for r in 0..rows {
                out[r * b..(r + 1) * b].copy_from_slice(&m.pruned[r * cols + i1..r * cols + i2]);
            }
            Ok(out)
        }
        MaskChoice::Select {
            pattern: Pattern::Unstructured { percent },
            group,
        } => {
            let score: Vec<f32> = (0..rows * b)
                .map(|k| {
                    let (r, c) = (k / b, k % b);
                    let (v, d) = (w[r * cols + i1 + c], u[(i1 + c) * cols + i1 + c]);
                    v * v / (d * d)
                })
                .collect();
            let p = Pattern::Unstructured { percent: *percent };
            Ok(mask::select(&score, rows, b, &p, group)?.pruned)
        }
        MaskChoice::Select { .. } => Ok(vec![false; rows * b]),
    }
}

/// Rows per task of [`prune_block`]: a chunk's slice of the block (64 × 128 f32, 32 KiB)
/// stays in the L1 cache while its columns are swept.
const ROW_CHUNK: usize = 64;

/// Prunes columns i1..i2 of every row one column at a time (rows are independent inside a
/// block): with e = (w_j − q_j) / U_jj, W[r, j:i2] −= e · U[j, j:i2]. Returns the errors e
/// (rows × b) for the columns right of the block. N:M groups are chosen here, as each group's
/// first column is reached, from the updated weights.
///
/// Each task takes `ROW_CHUNK` rows and holds their slice of the block column-major, so that
/// the update of a later column k is one long vectorised axpy over the chunk's rows,
/// W[:, k] −= e · U[j, k]. Every weight gets the same products subtracted in the same order
/// as in the row-by-row form, so the result does not depend on the chunking.
fn prune_block(
    w: &mut [f32],
    block_mask: &mut [bool],
    u: &[f32],
    cols: usize,
    (i1, i2): (usize, usize),
    nm: Option<(usize, usize)>,
) -> Vec<f32> {
    let b = i2 - i1;
    let diag: Vec<f32> = (i1..i2).map(|j| u[j * cols + j]).collect();
    let mut err = vec![0f32; block_mask.len()];
    w.par_chunks_mut(cols * ROW_CHUNK)
        .zip(block_mask.par_chunks_mut(b * ROW_CHUNK))
        .zip(err.par_chunks_mut(b * ROW_CHUNK))
        .for_each(|((wc, bm), ec)| {
            let chunk = Chunk {
                w: wc,
                mask: bm,
                err: ec,
            };
            #[cfg(target_arch = "x86_64")]
            if crate::device::has_avx512() {
                // SAFETY: the CPU has the features the function is compiled for.
                return unsafe { sweep_chunk_avx512(chunk, u, &diag, cols, (i1, i2), nm) };
            }
            sweep_chunk(chunk, u, &diag, cols, (i1, i2), nm)
        });
    err
}

/// One task's rows of [`prune_block`]: their weights (whole rows), and their slices of the
/// block's mask and errors.
struct Chunk<'a> {
    w: &'a mut [f32],
    mask: &'a mut [bool],
    err: &'a mut [f32],
}

/// [`prune_block`] on one chunk of rows. Plain loops that the compiler vectorises; compiled
/// once more for AVX-512 and chosen at run time where the CPU has it (no fused multiply-add:
/// Rust does not contract `x − e·u`, so the rounding is the same either way).
#[inline(always)]
fn sweep_chunk(
    chunk: Chunk,
    u: &[f32],
    diag: &[f32],
    cols: usize,
    (i1, i2): (usize, usize),
    nm: Option<(usize, usize)>,
) {
    let Chunk {
        w: wc,
        mask: bm,
        err: ec,
    } = chunk;
    let b = i2 - i1;

    let nr = wc.len() / cols;
    // wt[k · nr + r] = W[r, i1 + k].
    let mut wt = vec![0f32; b * nr];
    for (r, row) in wc.chunks(cols).enumerate() {
        for (k, v) in row[i1..i2].iter().enumerate() {
            wt[k * nr + r] = *v;
        }
    }
    let mut e = vec![0f32; nr];
    let (mut stack, mut heap) = ([0f32; 64], Vec::new());
    for i in 0..b {
        if let Some((n, m)) = nm.filter(|(_, m)| i % m == 0) {
            let s: &mut [f32] = if m <= stack.len() {
                &mut stack[..m]
            } else {
                heap.resize(m, 0.0);
                &mut heap
            };
            for r in 0..nr {
                for (c, v) in s.iter_mut().enumerate() {
                    let x = wt[(i + c) * nr + r];
                    *v = x * x / (diag[i + c] * diag[i + c]);
                }
                mask::prune_lowest_in_group(s, n, &mut bm[r * b + i..r * b + i + m]);
            }
        }
        let (done, later) = wt.split_at_mut((i + 1) * nr);
        for (r, (wv, ev)) in done[i * nr..].iter_mut().zip(e.iter_mut()).enumerate() {
            let q = if bm[r * b + i] { 0.0 } else { *wv };
            *ev = (*wv - q) / diag[i];
            ec[r * b + i] = *ev;
            *wv = q;
        }
        let urow = &u[(i1 + i) * cols + i1 + i + 1..(i1 + i) * cols + i2];
        for (wk, uv) in later.chunks_mut(nr).zip(urow) {
            for (x, ev) in wk.iter_mut().zip(&e) {
                *x -= ev * uv;
            }
        }
    }
    for (r, row) in wc.chunks_mut(cols).enumerate() {
        for (k, v) in row[i1..i2].iter_mut().enumerate() {
            *v = wt[k * nr + r];
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,fma")]
unsafe fn sweep_chunk_avx512(
    chunk: Chunk,
    u: &[f32],
    diag: &[f32],
    cols: usize,
    block: (usize, usize),
    nm: Option<(usize, usize)>,
) {
    sweep_chunk(chunk, u, diag, cols, block, nm)
}

/// The lazy batch update of the columns right of the block: W[:, i2:] −= Err · U[i1:i2, i2:],
/// one GEMM reading U and writing W in place.
fn update_right_of_block(
    w: &mut [f32],
    err: &[f32],
    u: &[f32],
    (rows, cols): (usize, usize),
    (i1, i2): (usize, usize),
) {
    if i2 >= cols {
        return;
    }
    let (b, rest) = (i2 - i1, cols - i2);
    gemm(
        w,
        MatView::rows(i2, rows, rest, cols),
        (err, MatView::rows(0, rows, b, b)),
        (u, MatView::rows(i1 * cols + i2, b, rest, cols)),
        Store::Sub,
        true,
    );
}

/// tr(W H Wᵀ) = ‖X Wᵀ‖² for H = XᵀX, computed where H lives.
fn output_energy(w: &Tensor, h: &Tensor) -> Result<f64> {
    let w = w.to_dtype(DType::F32)?.to_device(h.device())?;
    Ok(w.matmul(h)?.mul(&w)?.sum_all()?.to_scalar::<f32>()? as f64)
}

/// `num / den`, 0 for a weight whose output is zero.
fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

/// ‖X W₀ᵀ − X Wᵀ‖² / ‖X W₀ᵀ‖² = tr(ΔW H ΔWᵀ) / tr(W₀ H W₀ᵀ), with H ∝ XᵀX, computed where H
/// lives (on a GPU the two out × in × in products stay there; H is not copied).
pub fn relative_output_error(w0: &Tensor, w: &Tensor, h: &Tensor) -> Result<f64> {
    let w0 = w0.to_dtype(DType::F32)?.to_device(h.device())?;
    let d = (&w0 - w.to_dtype(DType::F32)?.to_device(h.device())?)?;
    Ok(ratio(output_energy(&d, h)?, output_energy(&w0, h)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::gaussian;

    fn correlated(t: usize, n: usize, seed: u64) -> Tensor {
        let z = Tensor::from_vec(gaussian(seed, t * n), (t, n), &Device::Cpu).unwrap();
        let a = Tensor::from_vec(gaussian(seed + 1, n * n), (n, n), &Device::Cpu).unwrap();
        z.matmul(&a).unwrap()
    }

    /// The row-by-row form of [`prune_block`]: each row's columns in order, the update of
    /// the block's later columns as the row's own axpy.
    fn prune_block_by_rows(
        w: &mut [f32],
        bm: &mut [bool],
        u: &[f32],
        cols: usize,
        (i1, i2): (usize, usize),
        nm: Option<(usize, usize)>,
    ) -> Vec<f32> {
        let b = i2 - i1;
        let mut err = vec![0f32; bm.len()];
        for (r, row) in w.chunks_mut(cols).enumerate() {
            for i in 0..b {
                if let Some((n, m)) = nm.filter(|(_, m)| i % m == 0) {
                    let s: Vec<f32> = (i..i + m)
                        .map(|c| {
                            let d = u[(i1 + c) * cols + i1 + c];
                            row[i1 + c] * row[i1 + c] / (d * d)
                        })
                        .collect();
                    mask::prune_lowest_in_group(&s, n, &mut bm[r * b + i..r * b + i + m]);
                }
                let j = i1 + i;
                let q = if bm[r * b + i] { 0.0 } else { row[j] };
                let e = (row[j] - q) / u[j * cols + j];
                for k in j..i2 {
                    row[k] -= e * u[j * cols + k];
                }
                row[j] = q;
                err[r * b + i] = e;
            }
        }
        err
    }

    #[test]
    fn the_chunked_block_sweep_equals_the_row_by_row_one() {
        // 150 rows: two full chunks of ROW_CHUNK and a partial one; a block inside the matrix.
        let (rows, cols, i1, i2) = (150, 48, 8, 40);
        let u: Vec<f32> = (0..cols * cols)
            .map(|k| {
                let (r, c) = (k / cols, k % cols);
                match c.cmp(&r) {
                    std::cmp::Ordering::Less => 0.0,
                    std::cmp::Ordering::Equal => 1.0 + (r % 5) as f32 * 0.1,
                    std::cmp::Ordering::Greater => ((k * 37) % 19) as f32 * 0.01 - 0.09,
                }
            })
            .collect();
        let w0 = gaussian(31, rows * cols);
        for nm in [None, Some((2, 4))] {
            let b = i2 - i1;
            let mut bm0: Vec<bool> = (0..rows * b).map(|k| nm.is_none() && k % 3 == 0).collect();
            let (mut w, mut bm) = (w0.clone(), bm0.clone());
            let err = prune_block(&mut w, &mut bm, &u, cols, (i1, i2), nm);
            let mut wr = w0.clone();
            let err_r = prune_block_by_rows(&mut wr, &mut bm0, &u, cols, (i1, i2), nm);
            assert_eq!(bm, bm0, "{nm:?}: masks");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&w), bits(&wr), "{nm:?}: weights bit for bit");
            assert_eq!(bits(&err), bits(&err_r), "{nm:?}: errors bit for bit");
        }
    }

    #[test]
    fn the_reported_error_is_the_direct_output_error() {
        // Σ e² − λ‖D‖² − ‖D_dead‖² against tr(D H Dᵀ) by GEMMs: with dead inputs, heavy
        // damping (λ‖D‖² a large share of Σ e²), chosen and given masks.
        let (o, i, t) = (24, 64, 300);
        let w = Tensor::from_vec(gaussian(21, o * i), (o, i), &Device::Cpu).unwrap();
        let mut xv = correlated(t, i, 8)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // Small inputs, so that the dead inputs' H'_jj = 1 weighs as much as the live ones.
        xv.iter_mut().for_each(|v| *v *= 0.01);
        for r in 0..t {
            xv[r * i + 5] = 0.0;
            xv[r * i + 40] = 0.0;
        }
        let x = Tensor::from_vec(xv, (t, i), &Device::Cpu).unwrap();
        let mut gram = super::super::rows::Sum::default();
        add_gram(&mut gram, &x).unwrap();
        let gram = gram.into_tensor().unwrap().unwrap();
        let score: Vec<f32> = (0..o * i).map(|k| ((k * 7919) % 101) as f32).collect();
        let half = Pattern::Unstructured { percent: 50.0 };
        let given = mask::select(&score, o, i, &half, Group::Row).unwrap();
        let two_four = Pattern::NM { n: 2, m: 4 };
        for percdamp in [0.01, 1.0] {
            let cfg = ObsConfig {
                percdamp,
                blocksize: 16,
            };
            for (name, choice) in [
                (
                    "50%",
                    MaskChoice::Select {
                        pattern: &half,
                        group: Group::Matrix,
                    },
                ),
                (
                    "2:4",
                    MaskChoice::Select {
                        pattern: &two_four,
                        group: Group::Matrix,
                    },
                ),
                ("given", MaskChoice::Given(&given)),
            ] {
                let r = reconstruct(&w, &gram, cfg, choice).unwrap();
                let direct = relative_output_error(&w, &r.weight, &gram).unwrap();
                assert!(
                    (r.recon_error - direct).abs() <= 1e-5 * direct,
                    "{name}, percdamp {percdamp}: {} vs {direct}",
                    r.recon_error
                );
            }
        }
    }

    #[test]
    fn a_given_mask_is_kept_and_the_error_falls() {
        let (o, i, t) = (8, 32, 200);
        let w = Tensor::from_vec(gaussian(11, o * i), (o, i), &Device::Cpu).unwrap();
        let x = correlated(t, i, 5);
        // Any mask: here the smallest half of |W| per row.
        let score = w
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let half = Pattern::Unstructured { percent: 50.0 };
        let m = mask::select(&score, o, i, &half, Group::Row).unwrap();
        let mut gram = super::super::rows::Sum::default();
        add_gram(&mut gram, &x).unwrap();
        let gram = gram.into_tensor().unwrap().unwrap();
        let r = reconstruct(&w, &gram, ObsConfig::default(), MaskChoice::Given(&m)).unwrap();
        assert_eq!(r.mask, m);
        let v = r.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (k, &pruned) in m.pruned.iter().enumerate() {
            assert_eq!(
                pruned,
                v[k] == 0.0,
                "weight {k}: zero exactly where the mask prunes"
            );
        }
        let keep = Tensor::from_vec(m.keep_f32(), (o, i), &Device::Cpu).unwrap();
        let masked = (&w * keep).unwrap();
        let e_mask = relative_output_error(&w, &masked, &gram).unwrap();
        assert!(
            r.recon_error < 0.8 * e_mask,
            "reconstructed {} vs masked {e_mask}",
            r.recon_error
        );
    }
}
