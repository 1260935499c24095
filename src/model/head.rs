//! The LM head's loss: next-token negative log-likelihood of a window from its logits.
//!
//! nll_t = −log softmax(z_t)[ids_{t+1}] = logsumexp(z_t) − z_t[ids_{t+1}], in one fused pass per
//! row on the CPU (max, then Σ exp(z − max)), and by candle's log-softmax and gather elsewhere.

use anyhow::{ensure, Result};
use candle_core::{Tensor, D};

/// Next-token NLL at each position of one window: logits (T', V) for the first T' ≥ T − 1
/// positions, ids (T) → T−1 values, −log softmax(z_t)[ids_{t+1}] = logsumexp(z_t) − z_t[ids_{t+1}].
///
/// On the CPU, per row in one parallel pass: m = max z_t, nll = m + ln Σ exp(z_t − m) − z_t[id]
/// (the generic log-softmax makes five passes and three (T, V) temporaries).
pub fn window_nll(logits: &Tensor, ids: &[u32]) -> Result<Vec<f32>> {
    let t = ids.len();
    ensure!(
        t >= 2 && logits.dim(0)? + 1 >= t,
        "window_nll: {:?} logits for {t} ids",
        logits.dims()
    );
    let v = logits.dim(1)?;
    if let Some(&bad) = ids[1..].iter().find(|&&i| i as usize >= v) {
        anyhow::bail!("window_nll: token id {bad} outside {v} logits");
    }
    // The first t − 1 rows of row-major logits: a contiguous view, no copy.
    let z = logits.narrow(0, 0, t - 1)?.contiguous()?;
    let fused = crate::device::with_f32_slice(&z, |all| {
        use rayon::prelude::*;
        all.par_chunks(v)
            .zip(&ids[1..])
            .map(|(row, &id)| {
                let m = super::expsum::max(row);
                m + super::expsum::sum_exp(row, m).ln() - row[id as usize]
            })
            .collect()
    });
    match fused {
        Some(nll) => Ok(nll),
        None => window_nll_generic(&z, &ids[1..]),
    }
}

/// [`window_nll`] by candle's log-softmax and gather, for logits (T − 1, V) and targets.
fn window_nll_generic(z: &Tensor, targets: &[u32]) -> Result<Vec<f32>> {
    let lsm = candle_nn::ops::log_softmax(z, D::Minus1)?;
    let targets = Tensor::new(targets, z.device())?.unsqueeze(1)?;
    let picked = lsm.gather(&targets, 1)?.squeeze(1)?;
    Ok(picked.neg()?.to_vec1::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// exp(mean NLL) over a window.
    fn ppl(nll: &[f32]) -> f64 {
        (nll.iter().map(|&x| x as f64).sum::<f64>() / nll.len() as f64).exp()
    }

    #[test]
    fn uniform_logits_give_vocab_size() {
        // All-zero logits: every token has probability 1/V, so PPL = V exactly.
        let v = 37;
        let logits = Tensor::zeros((5, v), candle_core::DType::F32, &Device::Cpu).unwrap();
        let nll = window_nll(&logits, &[1, 2, 3, 4, 5]).unwrap();
        assert_eq!(nll.len(), 4);
        assert!((ppl(&nll) - v as f64).abs() < 1e-4, "{}", ppl(&nll));
    }

    #[test]
    fn nll_matches_hand_computation() {
        // Row 0 logits [0, ln 3]: p(1) = 3/4.
        let logits = Tensor::new(&[[0f32, 3f32.ln()], [0.0, 0.0]], &Device::Cpu).unwrap();
        let nll = window_nll(&logits, &[0, 1]).unwrap();
        assert!((nll[0] - (4.0f32 / 3.0).ln()).abs() < 1e-6, "{nll:?}");
    }

    #[test]
    fn fused_nll_matches_log_softmax() {
        let (t, v) = (9, 1000);
        let z = (Tensor::randn(0f32, 1.0, (t, v), &Device::Cpu).unwrap() * 8.0).unwrap();
        let ids: Vec<u32> = (0..t as u32).map(|i| (i * 331) % v as u32).collect();
        let fused = window_nll(&z, &ids).unwrap();
        let generic = window_nll_generic(&z.narrow(0, 0, t - 1).unwrap(), &ids[1..]).unwrap();
        assert_eq!(fused.len(), t - 1);
        for (a, b) in fused.iter().zip(&generic) {
            assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "{a} vs {b}");
        }
        assert!(
            window_nll(&z, &[0, v as u32]).is_err(),
            "target outside the vocabulary"
        );
    }
}
