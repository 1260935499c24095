//! Perplexity with the SparseGPT/Wanda protocol (COPAL.md §5).
//!
//! Each evaluation text is tokenised once, cut into non-overlapping windows of `seqlen`
//! (remainder dropped), and PPL = exp(Σ NLL / n) over all n predicted positions (seqlen − 1
//! per window; equal to the anchors' exp(mean of window losses) since windows are equal-sized).
//! NLL sums are accumulated in f64. The ± figure is the standard error of the mean window NLL,
//! carried to perplexity by the delta method: se(PPL) ≈ PPL · sd(window NLL) / √windows.
//!
//! Windows of all datasets go through the model together, layer by layer, so each decoder
//! layer is materialised once per chunk of windows rather than once per window.

use crate::data::{corpus, eval_windows, Dataset, Split};
use crate::model::{Llama, TensorSource};
use crate::tokenizer::Tokenizer;
use anyhow::{ensure, Context as _, Result};
use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// One evaluation text, tokenised.
#[derive(Debug, Clone)]
pub struct EvalSet {
    pub dataset: Dataset,
    pub split: Split,
    pub seqlen: usize,
    pub ids: Vec<u32>,
    /// Tokens of the split before any cap.
    pub split_tokens: usize,
    pub windows: usize,
}

impl EvalSet {
    /// Loads and tokenises the evaluation split of `ds` (the protocol's join and token cap).
    pub fn load(
        ds: &Dataset,
        split: Split,
        data_dir: &Path,
        tok: &Tokenizer,
        seqlen: usize,
        max_windows: Option<usize>,
    ) -> Result<Self> {
        let (corpus, path) = corpus::load(ds, split, corpus::Purpose::Evaluation, data_dir)?;
        let text = match corpus {
            corpus::Corpus::Joined(t) => t,
            corpus::Corpus::Docs(d) => d.join(" "),
        };
        let ids = tok.encode(&text)?;
        let n = eval_windows(&ids, seqlen, ds.eval_token_cap(seqlen), max_windows).len();
        ensure!(
            n > 0,
            "the {ds} {split} text ({}) has {} tokens, fewer than one window of seqlen = {seqlen}; \
             lower --seqlen",
            path.display(),
            ids.len()
        );
        Ok(Self {
            dataset: ds.clone(),
            split,
            seqlen,
            split_tokens: ids.len(),
            ids,
            windows: n,
        })
    }

    pub fn windows(&self) -> Vec<&[u32]> {
        eval_windows(
            &self.ids,
            self.seqlen,
            self.dataset.eval_token_cap(self.seqlen),
            Some(self.windows),
        )
    }
}

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
}

impl EvalResult {
    pub fn line(&self) -> String {
        format!(
            "{:<10} PPL {:>9.3} ± {:<7.3} ({} split, seqlen {}, {} windows, {} tokens)",
            self.dataset,
            self.ppl,
            self.ppl_stderr,
            self.split,
            self.seqlen,
            self.windows,
            self.tokens
        )
    }
}

/// Next-token NLL at each position of one window: logits (T', V) for the first T' ≥ T − 1
/// positions, ids (T) → T−1 values, −log softmax(z_t)[ids_{t+1}].
pub fn window_nll(logits: &Tensor, ids: &[u32]) -> Result<Vec<f32>> {
    let t = ids.len();
    ensure!(
        t >= 2 && logits.dim(0)? + 1 >= t,
        "window_nll: {:?} logits for {t} ids",
        logits.dims()
    );
    let lsm = candle_nn::ops::log_softmax(&logits.narrow(0, 0, t - 1)?, D::Minus1)?;
    let targets = Tensor::new(&ids[1..], logits.device())?.unsqueeze(1)?;
    let picked = lsm.gather(&targets, 1)?.squeeze(1)?;
    Ok(picked.neg()?.to_vec1::<f32>()?)
}

/// Memory allowed for hidden states of windows in flight (they go through the layers together).
const HIDDEN_BUDGET_BYTES: usize = 2 << 30;

/// Perplexity of `model` on every set, streaming the decoder layers.
pub fn evaluate(
    model: &Llama,
    src: &dyn TensorSource,
    sets: &[EvalSet],
    label: &str,
) -> Result<Vec<EvalResult>> {
    evaluate_with_budget(model, src, sets, label, HIDDEN_BUDGET_BYTES)
}

/// [`evaluate`] with an explicit memory budget for the hidden states of windows in flight.
pub fn evaluate_with_budget(
    model: &Llama,
    src: &dyn TensorSource,
    sets: &[EvalSet],
    label: &str,
    budget_bytes: usize,
) -> Result<Vec<EvalResult>> {
    let started = Instant::now();
    let mut jobs: Vec<(usize, &[u32])> = Vec::new();
    for (i, s) in sets.iter().enumerate() {
        jobs.extend(s.windows().into_iter().map(|w| (i, w)));
    }
    let mut acc = vec![Perplexity::default(); sets.len()];
    let hidden = model.cfg.hidden_size;
    let layers = model.cfg.num_hidden_layers;
    let bytes_per = |w: &[u32]| w.len() * hidden * model.dtype.size_in_bytes();
    let total_tokens: usize = jobs.iter().map(|(_, w)| w.len()).sum();
    let pb = crate::ui::bar((jobs.len() * (layers + 1)) as u64, label.to_string());
    let mut start = 0;
    while start < jobs.len() {
        // A chunk of windows whose hidden states fit in the budget (at least one).
        let mut end = start;
        let mut bytes = 0;
        while end < jobs.len() && (end == start || bytes + bytes_per(jobs[end].1) <= budget_bytes) {
            bytes += bytes_per(jobs[end].1);
            end += 1;
        }
        let chunk = &jobs[start..end];
        let mut hs = chunk
            .iter()
            .map(|(_, w)| model.embed(w))
            .collect::<Result<Vec<_>>>()?;
        let mut positions = std::collections::HashMap::new();
        for l in 0..layers {
            let layer = model.layer(src, l)?;
            for (h, (_, w)) in hs.iter_mut().zip(chunk) {
                let pos = match positions.get(&w.len()) {
                    Some(p) => p,
                    None => positions
                        .entry(w.len())
                        .or_insert(model.positions(w.len())?),
                };
                *h = layer.forward(h, pos)?;
                pb.inc(1);
            }
        }
        for (h, (set, w)) in hs.iter().zip(chunk) {
            let nll = model.next_token_nll(h, w)?;
            if let Some(bad) = nll.iter().position(|x| !x.is_finite()) {
                anyhow::bail!(
                    "non-finite loss at position {bad} of a {} window: the model produces NaN/Inf",
                    sets[*set].dataset
                );
            }
            acc[*set].add_window(&nll);
            pb.inc(1);
        }
        start = end;
    }
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    crate::ui::info(format!(
        "{label}: {} windows, {total_tokens} tokens in {secs:.1}s ({:.0} tokens/s)",
        jobs.len(),
        total_tokens as f64 / secs.max(1e-9)
    ));
    Ok(sets
        .iter()
        .zip(acc)
        .map(|(s, p)| EvalResult {
            dataset: s.dataset.name(),
            split: s.split,
            seqlen: s.seqlen,
            windows: s.windows,
            tokens: s.windows * s.seqlen,
            ppl: p.ppl(),
            ppl_stderr: p.stderr(),
        })
        .collect())
}

/// Loads the evaluation sets for `datasets` at `seqlen`.
pub fn load_sets(
    datasets: &[Dataset],
    data_dir: &Path,
    tok: &Tokenizer,
    seqlen: usize,
    max_windows: Option<usize>,
) -> Result<Vec<EvalSet>> {
    datasets
        .iter()
        .map(|d| {
            EvalSet::load(
                d,
                d.default_eval_split(),
                data_dir,
                tok,
                seqlen,
                max_windows,
            )
            .with_context(|| format!("loading the {d} evaluation split"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn uniform_logits_give_vocab_size() {
        // All-zero logits: every token has probability 1/V, so PPL = V exactly.
        let v = 37;
        let logits = Tensor::zeros((5, v), candle_core::DType::F32, &Device::Cpu).unwrap();
        let nll = window_nll(&logits, &[1, 2, 3, 4, 5]).unwrap();
        let mut p = Perplexity::default();
        p.add_window(&nll);
        assert!((p.ppl() - v as f64).abs() < 1e-4, "{}", p.ppl());
        assert_eq!(p.predicted, 4);
    }

    #[test]
    fn nll_matches_hand_computation() {
        // Row 0 logits [0, ln 3]: p(1) = 3/4.
        let logits = Tensor::new(&[[0f32, 3f32.ln()], [0.0, 0.0]], &Device::Cpu).unwrap();
        let nll = window_nll(&logits, &[0, 1]).unwrap();
        assert!((nll[0] - (4.0f32 / 3.0).ln()).abs() < 1e-6, "{nll:?}");
    }

    #[test]
    fn stderr_is_zero_for_identical_windows() {
        let mut p = Perplexity::default();
        p.add_window(&[1.0, 1.0]);
        p.add_window(&[1.0, 1.0]);
        assert_eq!(p.stderr(), 0.0);
        p.add_window(&[3.0, 3.0]);
        assert!(p.stderr() > 0.0);
    }
}

/// Perplexities already measured, keyed by (model fingerprint, dataset, split, seqlen,
/// windows), so that identical models (the dense reference, magnitude at every step) are
/// evaluated once across the runs of an experiment. Stored as JSON, replaced atomically.
#[derive(Debug, Default)]
pub struct EvalCache {
    path: std::path::PathBuf,
    map: std::collections::BTreeMap<String, EvalResult>,
}

impl EvalCache {
    pub fn open(path: &Path) -> Result<Self> {
        let map = match std::fs::read_to_string(path) {
            Ok(t) => serde_json::from_str(&t).unwrap_or_default(),
            Err(_) => Default::default(),
        };
        Ok(Self {
            path: path.to_path_buf(),
            map,
        })
    }

    fn key(fingerprint: &str, s: &EvalSet) -> String {
        format!(
            "{fingerprint}|{}|{}|{}|{}",
            s.dataset.name(),
            s.split,
            s.seqlen,
            s.windows
        )
    }

    /// Evaluates the sets not in the cache, stores them, and returns all in order.
    pub fn evaluate(
        &mut self,
        fingerprint: &str,
        model: &Llama,
        src: &dyn TensorSource,
        sets: &[EvalSet],
        label: &str,
    ) -> Result<Vec<EvalResult>> {
        let missing: Vec<EvalSet> = sets
            .iter()
            .filter(|s| !self.map.contains_key(&Self::key(fingerprint, s)))
            .cloned()
            .collect();
        if !missing.is_empty() {
            let fresh = evaluate(model, src, &missing, label)?;
            for (s, r) in missing.iter().zip(fresh) {
                self.map.insert(Self::key(fingerprint, s), r);
            }
            self.save()?;
        } else {
            crate::ui::info(format!(
                "{label}: all {} results from the cache",
                sets.len()
            ));
        }
        Ok(sets
            .iter()
            .map(|s| self.map[&Self::key(fingerprint, s)].clone())
            .collect())
    }

    /// Merges with what other processes saved meanwhile, then replaces the file.
    fn save(&mut self) -> Result<()> {
        if let Ok(t) = std::fs::read_to_string(&self.path) {
            if let Ok(other) =
                serde_json::from_str::<std::collections::BTreeMap<String, EvalResult>>(&t)
            {
                for (k, v) in other {
                    self.map.entry(k).or_insert(v);
                }
            }
        }
        crate::fsutil::write_atomic(&self.path, &serde_json::to_vec_pretty(&self.map)?)?;
        Ok(())
    }
}
