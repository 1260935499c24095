//! Causal attention on the CPU, block by block: only the scores on or below the diagonal are
//! computed, and each block's output is written straight into the layout the o_proj reads.
//!
//! For one window, query head j (key/value head g = j / rep) and a block of query rows
//! i ∈ [r0, r1), with keys k ∈ [lo, r1) (lo = 0, or r0 + 1 − W with a sliding window W):
//!
//!   S = Q[r0..r1] · K[lo..r1]ᵀ                               (two GEMMs per block, f32)
//!   P[i, k] = exp(c·S[i, k] − m_i) / Σ_{k'} exp(c·S[i, k'] − m_i)   for max(lo_i, lo) ≤ k ≤ i
//!   P[i, k] = 0 elsewhere                (lo_i = i + 1 − W with a window, else 0)
//!   O[r0..r1, j·d..(j+1)·d] = P · V[lo..r1]
//!
//! with c = 1/√d and m_i = max_k c·S[i, k] over the row's live keys: the softmax of
//! [`super::softmax`], on (r1 − lo) keys instead of t. The full-square path computes every
//! q·k product, half of them above the diagonal, then the (heads, t, t) scores, the
//! probabilities and a transposed copy of the output in separate passes; here a block's
//! scores are a few hundred KiB that stay in cache.
//!
//! Each block is one task of a rayon pool and runs its GEMMs on one thread
//! ([`crate::device::gemm`]), so the result does not depend on the thread count, and a
//! window's result does not depend on the other windows of its batch.

use crate::device::{gemm, with_f32_slice, MatView, Store};
use anyhow::{ensure, Result};
use candle_core::{DType, Tensor};
use rayon::prelude::*;

/// Query rows per task: 64 rows × up to t keys of f32 scores and probabilities (256 KiB at
/// t = 512) fit a core's L2 cache.
const ROWS: usize = 64;

/// The shapes of one call: `b` windows of `t` tokens, `h` query heads over `kvh` key/value
/// heads of `d` features.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub kvh: usize,
    pub d: usize,
}

/// softmax(c · q kᵀ + causal mask) v for q (b, h, t, d) and k, v (b, kvh, t, d), contiguous
/// f32 on the CPU, returned as (b·t, h·d): row w·t + i holds token i of window w, its heads
/// side by side. None where the fused CPU kernels do not apply (another device or dtype), for
/// the caller's generic path.
pub fn causal(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    s: Heads,
    scale: f32,
    window: Option<usize>,
) -> Result<Option<Tensor>> {
    ensure!(
        s.kvh > 0 && s.h % s.kvh == 0,
        "internal: {} query heads over {} key/value heads",
        s.h,
        s.kvh
    );
    ensure!(scale > 0.0, "internal: attention scale must be positive");
    ensure!(window != Some(0), "internal: an attention window of 0 keys");
    ensure!(
        q.dims() == [s.b, s.h, s.t, s.d]
            && k.dims() == [s.b, s.kvh, s.t, s.d]
            && v.dims() == k.dims(),
        "internal: attention shapes q {:?} k {:?} v {:?} for {s:?}",
        q.dims(),
        k.dims(),
        v.dims()
    );
    if q.dtype() != DType::F32 {
        return Ok(None);
    }
    let out = with_f32_slice(q, |qa| {
        with_f32_slice(k, |ka| {
            with_f32_slice(v, |va| run(qa, ka, va, s, scale, window))
        })
    })
    .flatten()
    .flatten();
    match out {
        Some(o) => Ok(Some(Tensor::from_vec(
            o,
            (s.b * s.t, s.h * s.d),
            q.device(),
        )?)),
        None => Ok(None),
    }
}

fn run(q: &[f32], k: &[f32], v: &[f32], s: Heads, c: f32, window: Option<usize>) -> Vec<f32> {
    let Heads { t, h, kvh, d, .. } = s;
    let rep = h / kvh;
    let w_keys = window.unwrap_or(usize::MAX);
    let row = h * d;
    let mut out = vec![0f32; s.b * t * row];
    // A task owns ROWS consecutive query rows of one window, for every head: a disjoint run
    // of output rows.
    out.par_chunks_mut(t * row).enumerate().for_each(|(w, ow)| {
        ow.par_chunks_mut(ROWS * row)
            .enumerate()
            .for_each(|(blk, ob)| {
                let r0 = blk * ROWS;
                let r1 = (r0 + ROWS).min(t);
                let lo = (r0 + 1).saturating_sub(w_keys);
                let (m, n) = (r1 - r0, r1 - lo);
                let mut scores = vec![0f32; m * n];
                let mut probs = vec![0f32; m * n];
                for j in 0..h {
                    let g = j / rep;
                    let qv = MatView::rows(((w * h + j) * t + r0) * d, m, d, d);
                    let kv = MatView::rows(((w * kvh + g) * t + lo) * d, n, d, d);
                    let sv = MatView::rows(0, m, n, n);
                    gemm(&mut scores, sv, (q, qv), (k, kv.t()), Store::Set, false);
                    for (ii, (srow, prow)) in scores.chunks(n).zip(probs.chunks_mut(n)).enumerate()
                    {
                        let i = r0 + ii;
                        // Live keys of row i, as indices into the block's key range.
                        let (a, e) = ((i + 1).saturating_sub(w_keys) - lo, i + 1 - lo);
                        let live = &srow[a..e];
                        let mx = super::expsum::max(live) * c;
                        let inv = 1.0 / super::expsum::exp_sum(live, &mut prow[a..e], c, mx);
                        prow[a..e].iter_mut().for_each(|p| *p *= inv);
                        prow[..a].fill(0.0);
                        prow[e..].fill(0.0);
                    }
                    let vv = MatView::rows(((w * kvh + g) * t + lo) * d, n, d, d);
                    let ov = MatView::rows(j * d, m, d, row);
                    let pv = MatView::rows(0, m, n, n);
                    gemm(ob, ov, (&probs, pv), (v, vv), Store::Set, false);
                }
            });
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    fn randn(seed: u64, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(crate::rng::gaussian(seed, n), shape, &Device::Cpu).unwrap()
    }

    /// The full-square composition: scores, scale, additive mask, softmax, product, heads
    /// side by side.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, s: Heads, c: f64, w: Option<usize>) -> Tensor {
        let rep = s.h / s.kvh;
        let (k, v) = (
            k.repeat_interleave_heads(rep),
            v.repeat_interleave_heads(rep),
        );
        let mask = super::super::softmax::causal_mask(s.t, w, &Device::Cpu).unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * c).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask).unwrap()).unwrap();
        p.matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((s.b * s.t, s.h * s.d))
            .unwrap()
    }

    trait Repeat {
        fn repeat_interleave_heads(&self, rep: usize) -> Tensor;
    }

    impl Repeat for Tensor {
        /// (b, kvh, t, d) → (b, kvh·rep, t, d), head g repeated rep times in place.
        fn repeat_interleave_heads(&self, rep: usize) -> Tensor {
            let (b, kvh, t, d) = self.dims4().unwrap();
            self.unsqueeze(2)
                .unwrap()
                .broadcast_as((b, kvh, rep, t, d))
                .unwrap()
                .reshape((b, kvh * rep, t, d))
                .unwrap()
        }
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
        let scale = b
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(D::Minus1)
            .unwrap();
        (diff.max(D::Minus1).unwrap() / scale)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Blocks that end mid-window (t not a multiple of ROWS), grouped-query heads, a sliding
    /// window shorter and longer than a block: the same as the full-square composition.
    #[test]
    fn blocks_equal_the_full_square() {
        for (t, h, kvh, w) in [
            (150, 6, 2, None),
            (64, 3, 3, None),
            (1, 4, 1, None),
            (150, 4, 2, Some(7)),
            (200, 2, 1, Some(90)),
        ] {
            let s = Heads {
                b: 2,
                t,
                h,
                kvh,
                d: 16,
            };
            let q = (randn(1, &[2, h, t, 16]) * 3.0).unwrap();
            let k = (randn(2, &[2, kvh, t, 16]) * 3.0).unwrap();
            let v = randn(3, &[2, kvh, t, 16]);
            let c = 0.25;
            let got = causal(&q, &k, &v, s, c as f32, w).unwrap().unwrap();
            let want = reference(&q, &k, &v, s, c, w);
            let rel = max_rel(&got, &want);
            assert!(rel < 1e-5, "t {t} h {h} kvh {kvh} window {w:?}: {rel}");
        }
    }

    /// A window's output does not depend on the other windows of its batch.
    #[test]
    fn a_window_is_computed_alone() {
        let s = Heads {
            b: 3,
            t: 130,
            h: 4,
            kvh: 2,
            d: 8,
        };
        let q = randn(4, &[3, 4, 130, 8]);
        let k = randn(5, &[3, 2, 130, 8]);
        let v = randn(6, &[3, 2, 130, 8]);
        let all = causal(&q, &k, &v, s, 0.3, None).unwrap().unwrap();
        let one = Heads { b: 1, ..s };
        let mid = |x: &Tensor| x.narrow(0, 1, 1).unwrap().contiguous().unwrap();
        let alone = causal(&mid(&q), &mid(&k), &mid(&v), one, 0.3, None)
            .unwrap()
            .unwrap();
        use crate::device::f32_bits as bits;
        assert_eq!(bits(&all.narrow(0, 130, 130).unwrap()), bits(&alone));
    }
}
