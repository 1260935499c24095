//! Perplexity from next-token NLLs: PPL = exp(Σ NLL / n) over all n predicted positions, f64
//! sums, and its standard error over windows by the delta method,
//! se(PPL) ≈ PPL · sd(window NLL) / √windows.

use crate::data::Split;
use serde::{Deserialize, Serialize};

/// NLL accumulator for one dataset.
#[derive(Debug, Clone, Default)]
pub struct Perplexity {
    pub nll_sum: f64,
    pub predicted: usize,
    pub window_nll: Vec<f64>,
}

impl Perplexity {
    /// Adds one window's per-position NLLs.
    pub fn add_window(&mut self, nll: &[f32]) {
        let s: f64 = nll.iter().map(|&x| x as f64).sum();
        self.nll_sum += s;
        self.predicted += nll.len();
        self.window_nll.push(s / nll.len().max(1) as f64);
    }

    pub fn ppl(&self) -> f64 {
        (self.nll_sum / self.predicted.max(1) as f64).exp()
    }

    /// Standard error of the perplexity (delta method over window means).
    pub fn stderr(&self) -> f64 {
        let n = self.window_nll.len();
        if n < 2 {
            return f64::NAN;
        }
        let mean = self.window_nll.iter().sum::<f64>() / n as f64;
        let var = self
            .window_nll
            .iter()
            .map(|x| (x - mean).powi(2))
            .sum::<f64>()
            / (n - 1) as f64;
        self.ppl() * (var / n as f64).sqrt()
    }
}

/// One reported perplexity (the `--json` row of `copal eval`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalResult {
    pub dataset: String,
    pub split: Split,
    pub seqlen: usize,
    pub windows: usize,
    /// Tokens evaluated: windows × seqlen.
    pub tokens: usize,
    pub ppl: f64,
    pub ppl_stderr: f64,
    /// The model was calibrated on this very text (allowed with --allow-calib-on-eval).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub calibrated_on: bool,
}

impl EvalResult {
    /// The perplexity as a named score (lower is better).
    pub fn score(&self) -> super::Score {
        super::Score::new(
            &self.dataset,
            super::score::PPL,
            super::Better::Lower,
            self.ppl,
            self.ppl_stderr,
        )
    }

    pub fn line(&self) -> String {
        format!(
            "{:<10} PPL {:>9.3} ± {:<7.3} ({} split, seqlen {}, {} windows, {} tokens){}",
            self.dataset,
            self.ppl,
            self.ppl_stderr,
            self.split,
            self.seqlen,
            self.windows,
            self.tokens,
            if self.calibrated_on {
                " — CALIBRATED ON THIS TEXT"
            } else {
                ""
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_zero_for_identical_windows() {
        let mut p = Perplexity::default();
        p.add_window(&[1.0, 1.0]);
        p.add_window(&[1.0, 1.0]);
        assert_eq!(p.stderr(), 0.0);
        p.add_window(&[3.0, 3.0]);
        assert!(p.stderr() > 0.0);
    }

    #[test]
    fn ppl_is_the_exponential_of_the_mean_nll() {
        let mut p = Perplexity::default();
        p.add_window(&[1.0, 2.0]);
        p.add_window(&[3.0, 2.0]);
        assert!((p.ppl() - 2f64.exp()).abs() < 1e-12);
        assert_eq!(p.predicted, 4);
    }
}
