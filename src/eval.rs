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
    let z = logits.narrow(0, 0, t - 1)?;
    if z.device().is_cpu() && z.dtype() == candle_core::DType::F32 {
        use rayon::prelude::*;
        let z = z.contiguous()?;
        let (storage, layout) = z.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(all)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(all[a..b]
                .par_chunks(v)
                .zip(&ids[1..])
                .map(|(row, &id)| {
                    let m = crate::model::expsum::max(row);
                    m + crate::model::expsum::sum_exp(row, m).ln() - row[id as usize]
                })
                .collect());
        }
    }
    window_nll_generic(&z, &ids[1..])
}

/// [`window_nll`] by candle's log-softmax and gather, for logits (T − 1, V) and targets.
fn window_nll_generic(z: &Tensor, targets: &[u32]) -> Result<Vec<f32>> {
    let lsm = candle_nn::ops::log_softmax(z, D::Minus1)?;
    let targets = Tensor::new(targets, z.device())?.unsqueeze(1)?;
    let picked = lsm.gather(&targets, 1)?.squeeze(1)?;
    Ok(picked.neg()?.to_vec1::<f32>()?)
}

/// Memory allowed for hidden states of windows in flight (they go through the layers together).
const HIDDEN_BUDGET_BYTES: usize = 2 << 30;

/// A window to evaluate: the index of its set, and its tokens.
type Job<'a> = (usize, &'a [u32]);

/// Tokens per evaluation batch: enough rows for the linears' GEMMs to run at full rate.
const BATCH_TOKENS: usize = 4096;
/// Memory allowed for one batch's f32 attention scores (batch × heads × T × T).
const BATCH_SCORE_BYTES: usize = 256 << 20;

/// Windows of `t` tokens forwarded together through a layer during evaluation (at least one).
fn eval_batch(t: usize, heads: usize) -> usize {
    (BATCH_TOKENS / t.max(1))
        .min(BATCH_SCORE_BYTES / (heads * t * t * 4).max(1))
        .max(1)
}

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
    let mut jobs: Vec<Job> = Vec::new();
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
        // Windows of one length go through each layer together, `batch` at a time: a few
        // large GEMMs instead of many small ones (the attention scores of a batch are capped).
        let mut batches: Vec<(Tensor, &[Job])> = Vec::new();
        let mut i = 0;
        while i < chunk.len() {
            let t = chunk[i].1.len();
            let batch = eval_batch(t, model.cfg.num_attention_heads);
            let mut j = i + 1;
            while j < chunk.len() && j - i < batch && chunk[j].1.len() == t {
                j += 1;
            }
            let hs = chunk[i..j]
                .iter()
                .map(|(_, w)| model.embed(w))
                .collect::<Result<Vec<_>>>()?;
            batches.push((Tensor::cat(&hs, 0)?, &chunk[i..j]));
            i = j;
        }
        let mut positions = std::collections::HashMap::new();
        for l in 0..layers {
            let layer = model.layer(src, l)?;
            for (h, windows) in batches.iter_mut() {
                let t = windows[0].1.len();
                let pos = match positions.get(&t) {
                    Some(p) => p,
                    None => positions.entry(t).or_insert(model.positions(t)?),
                };
                *h = layer.forward(h, pos)?;
                pb.inc(windows.len() as u64);
            }
        }
        for (h, windows) in &batches {
            for (k, (set, w)) in windows.iter().enumerate() {
                let nll = model.next_token_nll(&h.narrow(0, k, 1)?, w)?;
                if let Some(bad) = nll.iter().position(|x| !x.is_finite()) {
                    anyhow::bail!(
                        "non-finite loss at position {bad} of a {} window: the model produces NaN/Inf",
                        sets[*set].dataset
                    );
                }
                acc[*set].add_window(&nll);
                pb.inc(1);
            }
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
