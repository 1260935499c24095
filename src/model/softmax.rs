//! Causal, scaled softmax over attention scores in one pass on the CPU.
//!
//! For scores S = q kᵀ (rows = query positions i, columns = key positions j):
//!
//!   P[i, j] = exp(c·S[i, j] − m_i) / Σ_{j' ≤ i} exp(c·S[i, j'] − m_i)   for j ≤ i,   0 for j > i
//!
//! with c = 1/√d and m_i = max_{j ≤ i} c·S[i, j]. This is softmax(c·S + M) for the additive
//! causal mask M (0 on and below the diagonal, −∞ above), but without materialising c·S or
//! S + M, and without exponentials above the diagonal (half of them). The generic path (scale,
//! add the mask, softmax) makes three full passes over a (heads, T, T) tensor, one thread each.
//!
//! With a sliding window W (Mistral) row i sees only i − W < j ≤ i: the sums and the maximum
//! run over j from max(0, i + 1 − W), and P is 0 left of it too.

use anyhow::{ensure, Result};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

/// The fused op: input (…, T, T) f32 scores, output the same shape.
struct CausalSoftmax {
    scale: f32,
    window: Option<usize>,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(all) = storage else {
            candle_core::bail!("causal-softmax: f32 scores expected")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("causal-softmax: contiguous scores expected")
        };
        let dims = layout.dims();
        let t = dims[dims.len() - 1];
        if dims.len() < 2 || dims[dims.len() - 2] != t {
            candle_core::bail!("causal-softmax: square (…, T, T) scores expected, got {dims:?}")
        }
        let src = &all[start..end];
        let mut out = vec![0f32; src.len()];
        let c = self.scale;
        let window = self.window.unwrap_or(usize::MAX);
        // Tasks of ROWS rows: a window's attention is only kvh · rep matrices (9 on the test
        // model), too few to share evenly between threads one matrix each. Row i of a matrix
        // has i + 1 live entries; rayon's work stealing evens out the blocks' lengths.
        const ROWS: usize = 64;
        out.par_chunks_mut(t * ROWS)
            .zip(src.par_chunks(t * ROWS))
            .enumerate()
            .for_each(|(k, (o, s))| {
                // A block may run from one matrix into the next: a row's position i within
                // its matrix is its index over all rows, modulo t.
                let first = (k * ROWS) % t;
                for (r, (o, s)) in o.chunks_mut(t).zip(s.chunks(t)).enumerate() {
                    let i = (first + r) % t;
                    let lo = (i + 1).saturating_sub(window);
                    let row = &s[lo..i + 1];
                    let dst = &mut o[lo..i + 1];
                    let m = super::expsum::max(row) * c;
                    let inv = 1.0 / super::expsum::exp_sum(row, dst, c, m);
                    dst.iter_mut().for_each(|d| *d *= inv);
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// softmax(scale · scores + causal mask) over the last axis of (…, T, T) f32 scores.
///
/// On the CPU this is the fused pass above; elsewhere it is the generic composition, with
/// `mask` the additive (T, T) mask of [`causal_mask`] for the same `window`.
pub fn causal_softmax(
    scores: &Tensor,
    scale: f64,
    mask: &Tensor,
    window: Option<usize>,
) -> Result<Tensor> {
    ensure!(
        scores.dtype() == DType::F32,
        "causal_softmax: f32 scores expected"
    );
    if crate::device::fused_cpu(scores.device()) {
        // A positive scale keeps the row maximum where it is: max(c·x) = c·max(x).
        ensure!(scale > 0.0, "causal_softmax: scale must be positive");
        ensure!(window != Some(0), "causal_softmax: a window of 0 keys");
        Ok(scores.contiguous()?.apply_op1_no_bwd(&CausalSoftmax {
            scale: scale as f32,
            window,
        })?)
    } else {
        causal_softmax_generic(scores, scale, mask)
    }
}

/// softmax(scale · scores + mask) over the last axis, for any additive mask (T, T) that leaves
/// every row at least one key (the packed sequences of zero-shot scoring).
pub fn masked_softmax(scores: &Tensor, scale: f64, mask: &Tensor) -> Result<Tensor> {
    causal_softmax_generic(scores, scale, mask)
}

/// [`causal_softmax`] as candle ops (scale, add the mask, softmax), the path a GPU takes.
fn causal_softmax_generic(scores: &Tensor, scale: f64, mask: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax_last_dim(
        &(scores * scale)?.broadcast_add(mask)?,
    )?)
}

/// The additive causal mask (t, t) in f32: 0 where query i sees key j (j ≤ i, and i − j < W
/// with a `window` W), −∞ elsewhere.
pub fn causal_mask(t: usize, window: Option<usize>, device: &Device) -> Result<Tensor> {
    let w = window.unwrap_or(usize::MAX);
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..t).map(move |j| {
                if j > i || i - j >= w {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (t, t), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// max |a − b| over all elements.
    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(D::Minus1)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn mask(t: usize) -> Tensor {
        causal_mask(t, None, &Device::Cpu).unwrap()
    }

    /// With a window the fused pass equals the generic one on the windowed mask, and each row
    /// has exactly min(i + 1, W) live entries.
    #[test]
    fn sliding_window_matches_the_windowed_mask() {
        let dev = Device::Cpu;
        let (t, w) = (29, 7);
        let s = (Tensor::randn(0f32, 1.0, (2, t, t), &dev).unwrap() * 10.0).unwrap();
        let m = causal_mask(t, Some(w), &dev).unwrap();
        let fused = causal_softmax(&s, 0.3, &m, Some(w)).unwrap();
        let generic = causal_softmax_generic(&s, 0.3, &m).unwrap();
        let diff = max_diff(&fused, &generic);
        assert!(diff < 1e-6, "largest difference {diff}");
        let v = fused.reshape((2 * t, t)).unwrap().to_vec2::<f32>().unwrap();
        for (r, row) in v.iter().enumerate() {
            let i = r % t;
            let live = row.iter().filter(|&&x| x > 0.0).count();
            assert_eq!(live, (i + 1).min(w), "row {r}");
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn fused_matches_scale_mask_softmax() {
        let dev = Device::Cpu;
        let t = 37;
        // Large scores, so that a missing max subtraction would overflow exp.
        let s = (Tensor::randn(0f32, 1.0, (2, 3, t, t), &dev).unwrap() * 60.0).unwrap();
        let scale = 0.125;
        let fused = causal_softmax(&s, scale, &mask(t), None).unwrap();
        let generic = causal_softmax_generic(&s, scale, &mask(t)).unwrap();
        let diff = max_diff(&fused, &generic);
        assert!(diff < 1e-6, "largest difference {diff}");
        // Rows sum to one and nothing is above the diagonal.
        let v = fused
            .reshape((2 * 3 * t, t))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (r, row) in v.iter().enumerate() {
            let i = r % t;
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            assert!(
                row[i + 1..].iter().all(|&x| x == 0.0),
                "row {r} looks ahead"
            );
        }
    }

    #[test]
    fn refuses_non_square_scores() {
        let s = Tensor::zeros((2, 4, 5), DType::F32, &Device::Cpu).unwrap();
        assert!(causal_softmax(&s, 1.0, &mask(5), None).is_err());
    }
}
