//! Perplexity of a model on evaluation sets, streaming the decoder layers.
//!
//! Windows of all datasets go through the model together, layer by layer, so each decoder
//! layer is materialised once per chunk of windows rather than once per window.

use super::perplexity::{EvalResult, Perplexity};
use crate::data::EvalSet;
use crate::model::{Llama, TensorSource};
use anyhow::Result;
use candle_core::Tensor;
use std::time::Instant;

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
            crate::ui::check_interrupt()?;
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
            calibrated_on: false,
        })
        .collect())
}
