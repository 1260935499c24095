//! Dense symmetric positive-definite linear algebra for SparseGPT, in f64.
//!
//! SparseGPT needs U, the upper Cholesky factor of H⁻¹ (Uᵀ U = H⁻¹). With J the reversal
//! permutation and J H J = M Mᵀ (M lower), H = R Rᵀ with R = J M J upper, so
//! H⁻¹ = R⁻ᵀ R⁻¹ = Uᵀ U with U = R⁻¹ = J M⁻¹ J: one Cholesky and one triangular inverse,
//! instead of the reference's Cholesky, full inverse and second Cholesky.
//! The O(n³) trailing updates run as blocked GEMMs, in place ([`crate::device::gemm`]).

use crate::device::{gemm, MatView, Store};
use anyhow::{bail, Result};
use rayon::prelude::*;

const BLOCK: usize = 128;
/// Rows (Cholesky trailing update) or columns (triangular inverse) per GEMM.
const PANEL: usize = 512;

/// Row-major square matrix of f64.
#[derive(Debug, Clone, PartialEq)]
pub struct Mat {
    pub n: usize,
    pub a: Vec<f64>,
}

impl Mat {
    pub fn zeros(n: usize) -> Self {
        Self {
            n,
            a: vec![0.0; n * n],
        }
    }
    #[inline]
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.a[i * self.n + j]
    }
    fn block(&self, r0: usize, r1: usize, c0: usize, c1: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity((r1 - r0) * (c1 - c0));
        for i in r0..r1 {
            out.extend_from_slice(&self.a[i * self.n + c0..i * self.n + c1]);
        }
        out
    }
}

/// In-place lower Cholesky factor (upper triangle zeroed). Fails on a non-positive pivot.
pub fn cholesky(m: &mut Mat) -> Result<()> {
    let n = m.n;
    let mut k0 = 0;
    while k0 < n {
        let k1 = (k0 + BLOCK).min(n);
        // 1. Factor the diagonal block, right-looking on a copy: once column k is final, every
        //    later element takes off l_ik·l_jk (a_ij −= l_ik l_jk, k ascending): the same
        //    subtractions in the same order as the dot-product form, as axpys along a row.
        let b = k1 - k0;
        let mut blk = m.block(k0, k1, k0, k1);
        let mut col = vec![0.0; b];
        for k in 0..b {
            let d = blk[k * b + k];
            if d.is_nan() || d <= 0.0 || !d.is_finite() {
                bail!(
                    "matrix is not positive definite (pivot {} is {d:e})",
                    k0 + k
                );
            }
            let d = d.sqrt();
            blk[k * b + k] = d;
            for i in k + 1..b {
                blk[i * b + k] /= d;
                col[i] = blk[i * b + k];
            }
            for i in k + 1..b {
                let lik = col[i];
                for (a, l) in blk[i * b + k + 1..=i * b + i]
                    .iter_mut()
                    .zip(&col[k + 1..=i])
                {
                    *a -= lik * l;
                }
            }
        }
        for i in 0..b {
            m.a[(k0 + i) * n + k0..=(k0 + i) * n + k0 + i].copy_from_slice(&blk[i * b..=i * b + i]);
        }
        // 2. Panel below the block: L21 = A21 L11⁻ᵀ, row by row (rows are independent).
        //    Forward substitution in column order: once x_k = a_k / L_kk is known, it is taken
        //    off every later a_j (a_j −= x_k L_jk, k ascending). Each a_j sees the same
        //    subtractions in the same order as the dot-product form, so the bits are the same,
        //    but the inner loop is a vectorisable axpy over a column of L11 (kept transposed).
        let mut l11t = vec![0.0; b * b];
        for j in 0..b {
            for k in 0..b {
                l11t[k * b + j] = m.a[(k0 + j) * n + k0 + k];
            }
        }
        m.a[k1 * n..].par_chunks_mut(n).for_each(|row| {
            let x = &mut row[k0..k1];
            for k in 0..b {
                let xk = x[k] / l11t[k * b + k];
                x[k] = xk;
                for (a, l) in x[k + 1..].iter_mut().zip(&l11t[k * b + k + 1..(k + 1) * b]) {
                    *a -= xk * l;
                }
            }
        });
        // 3. Trailing update A22 -= L21 L21ᵀ, lower triangle only, as GEMMs over panels of
        //    rows straight into the matrix: rows p0..p1 need columns 0..p1 (half the FLOPs of
        //    the full product; the few entries above the diagonal a panel also writes are
        //    never read, and zeroed at the end). L21 is copied once (r × b) as the operands.
        if k1 < n {
            let r = n - k1;
            let l21 = m.block(k1, n, k0, k1);
            let mut p0 = 0;
            while p0 < r {
                let p1 = (p0 + PANEL).min(r);
                gemm(
                    &mut m.a,
                    MatView::rows((k1 + p0) * n + k1, p1 - p0, p1, n),
                    (&l21, MatView::rows(p0 * b, p1 - p0, b, b)),
                    (&l21, MatView::rows(0, p1, b, b).t()),
                    Store::Sub,
                    true,
                );
                p0 = p1;
            }
        }
        k0 = k1;
    }
    m.a.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        row[i + 1..].iter_mut().for_each(|v| *v = 0.0);
    });
    Ok(())
}

/// Inverse of a small lower-triangular matrix by forward substitution, columns in parallel.
/// Column j in column order: once x_k is known, l_ik·x_k is added to every later row's sum
/// (ascending k, from −0.0 as an iterator's sum starts), an axpy over a column of L (read
/// from Lᵀ); then x_i = −sum_i / l_ii.
fn lower_inverse_small(l: &[f64], n: usize) -> Vec<f64> {
    let mut lt = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..=i {
            lt[k * n + i] = l[i * n + k];
        }
    }
    let cols: Vec<Vec<f64>> = (0..n)
        .into_par_iter()
        .map(|j| {
            let mut x = vec![-0.0; n];
            x[j] = 1.0 / l[j * n + j];
            for k in j..n {
                if k > j {
                    x[k] = -x[k] / l[k * n + k];
                }
                let xk = x[k];
                for (s, lik) in x[k + 1..].iter_mut().zip(&lt[k * n + k + 1..(k + 1) * n]) {
                    *s += lik * xk;
                }
            }
            x
        })
        .collect();
    let mut inv = vec![0.0; n * n];
    for (j, c) in cols.iter().enumerate() {
        for i in j..n {
            inv[i * n + j] = c[i];
        }
    }
    inv
}

/// Inverse of a lower-triangular matrix (lower triangular), by block rows: with X = L⁻¹,
/// X_ii = L_ii⁻¹ and X[i, :i] = −L_ii⁻¹ · (L[i, :i] · X[:i, :i]), both products GEMMs.
pub fn lower_inverse(l: &Mat) -> Result<Mat> {
    let n = l.n;
    let mut x = Mat::zeros(n);
    let mut r0 = 0;
    while r0 < n {
        let r1 = (r0 + BLOCK).min(n);
        let b = r1 - r0;
        let inv_ii = lower_inverse_small(&l.block(r0, r1, r0, r1), b);
        for i in 0..b {
            x.a[(r0 + i) * n + r0..(r0 + i) * n + r1].copy_from_slice(&inv_ii[i * b..(i + 1) * b]);
        }
        if r0 > 0 {
            // L[i, :r0] · X[:r0, :r0] by panels of columns c0..c1; X is lower triangular, so
            // only rows c0..r0 of a panel are non-zero (half the FLOPs). Both operands are
            // read in place.
            let mut lx = vec![0.0; b * r0];
            let mut c0 = 0;
            while c0 < r0 {
                let c1 = (c0 + PANEL).min(r0);
                let (k, w) = (r0 - c0, c1 - c0);
                gemm(
                    &mut lx,
                    MatView::rows(c0, b, w, r0),
                    (&l.a, MatView::rows(r0 * n + c0, b, k, n)),
                    (&x.a, MatView::rows(c0 * n + c0, k, w, n)),
                    Store::Set,
                    true,
                );
                c0 = c1;
            }
            // X[i, :r0] = −L_ii⁻¹ · lx.
            gemm(
                &mut x.a,
                MatView::rows(r0 * n, b, r0, n),
                (&inv_ii, MatView::rows(0, b, b, b)),
                (&lx, MatView::rows(0, b, r0, r0)),
                Store::Neg,
                true,
            );
        }
        r0 = r1;
    }
    Ok(x)
}

/// U upper triangular with Uᵀ U = H⁻¹ (see the module docs).
/// Takes H by value and factorises it in place, so that at most two n × n matrices exist at
/// once (the factor and its inverse; the GEMMs inside work on panels of `PANEL`).
pub fn upper_cholesky_of_inverse(h: Mat) -> Result<Mat> {
    // For a row-major square matrix, J A J is the flat array reversed.
    let mut m = h;
    m.a.reverse();
    cholesky(&mut m)?;
    let mut x = lower_inverse(&m)?;
    drop(m);
    x.a.reverse();
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::gaussian;
    use candle_core::{Device, Tensor};

    fn spd(n: usize, seed: u64) -> Mat {
        // A = XᵀX/t + 0.1 I with X random: symmetric positive definite.
        let t = 3 * n;
        let x: Vec<f64> = gaussian(seed, t * n).into_iter().map(f64::from).collect();
        let x = Tensor::from_vec(x, (t, n), &Device::Cpu).unwrap();
        let g = x.t().unwrap().matmul(&x).unwrap();
        let mut m = Mat {
            n,
            a: g.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        };
        for i in 0..n {
            for j in 0..n {
                m.a[i * n + j] = m.a[i * n + j] / t as f64 + if i == j { 0.1 } else { 0.0 };
            }
        }
        m
    }

    fn tensor(m: &Mat) -> Tensor {
        Tensor::from_vec(m.a.clone(), (m.n, m.n), &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn factor_and_inverse_hold_across_panels() {
        // Wider than two GEMM panels and not a multiple of the block: every partial case.
        let n = 2 * PANEL + BLOCK / 2 + 11;
        let a = spd(n, 4);
        let mut l = a.clone();
        cholesky(&mut l).unwrap();
        let lt = tensor(&l);
        let llt = lt.matmul(&lt.t().unwrap()).unwrap();
        let d = max_abs_diff(&llt, &tensor(&a));
        assert!(d < 1e-9, "max |L Lᵀ − A| = {d:e}");
        let x = lower_inverse(&l).unwrap();
        let eye = Tensor::eye(n, candle_core::DType::F64, &Device::Cpu).unwrap();
        let d = max_abs_diff(&lt.matmul(&tensor(&x)).unwrap(), &eye);
        assert!(d < 1e-9, "max |L L⁻¹ − I| = {d:e}");
        for i in 0..n {
            assert!(x.a[i * n + i + 1..(i + 1) * n].iter().all(|v| *v == 0.0));
        }
    }

    #[test]
    fn cholesky_reconstructs_across_blocks() {
        let n = 300; // more than two blocks
        let a = spd(n, 1);
        let mut l = a.clone();
        cholesky(&mut l).unwrap();
        let mut max = 0f64;
        for i in 0..n {
            for j in 0..n {
                let s: f64 = (0..n).map(|k| l.at(i, k) * l.at(j, k)).sum();
                max = max.max((s - a.at(i, j)).abs());
            }
        }
        assert!(max < 1e-9, "max |L Lᵀ − A| = {max:e}");
    }

    #[test]
    fn upper_factor_of_inverse() {
        let n = 150;
        let h = spd(n, 2);
        let u = upper_cholesky_of_inverse(h.clone()).unwrap();
        // Upper triangular, and Uᵀ U H = I.
        for i in 0..n {
            for j in 0..i {
                assert_eq!(u.at(i, j), 0.0);
            }
        }
        let mut max = 0f64;
        for i in 0..n {
            for j in 0..n {
                let mut s = 0.0;
                for k in 0..n {
                    let utu: f64 = (0..=i.min(k)).map(|r| u.at(r, i) * u.at(r, k)).sum();
                    s += utu * h.at(k, j);
                }
                let want = if i == j { 1.0 } else { 0.0 };
                max = max.max((s - want).abs());
            }
        }
        assert!(max < 1e-8, "max |UᵀUH − I| = {max:e}");
    }

    #[test]
    fn blocked_lower_inverse_inverts() {
        let n = 300; // three blocks, the last partial
        let mut l = spd(n, 3);
        cholesky(&mut l).unwrap();
        let x = lower_inverse(&l).unwrap();
        let mut max = 0f64;
        for i in 0..n {
            for j in 0..n {
                let s: f64 = (0..n).map(|k| l.at(i, k) * x.at(k, j)).sum();
                max = max.max((s - if i == j { 1.0 } else { 0.0 }).abs());
                if j > i {
                    assert_eq!(x.at(i, j), 0.0, "L⁻¹ is lower triangular");
                }
            }
        }
        assert!(max < 1e-9, "max |L L⁻¹ − I| = {max:e}");
    }

    #[test]
    fn indefinite_matrix_is_an_error() {
        let mut m = Mat {
            n: 2,
            a: vec![1.0, 2.0, 2.0, 1.0],
        };
        assert!(cholesky(&mut m).is_err());
    }
}
