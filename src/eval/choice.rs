//! Zero-shot multiple-choice scoring: each request's summed continuation log-likelihood,
//! computed as lm-evaluation-harness's `hf` backend computes it, then the task's metrics.
//!
//! Encoding (the harness's `_encode_pair`): trailing whitespace of the context moves to the
//! front of the continuation; whole = enc(context + continuation), ctx = enc(context), and the
//! continuation's tokens are whole[len(ctx):]. The model reads (ctx ++ cont)[-(L+1):][:-1]
//! for the model's context length L, and the score is ℓ = Σ_k log p(cont_k | everything
//! before it) over the continuation's tokens.
//!
//! Sequences of similar length go through each decoder layer together, padded on the right:
//! under the causal mask a position never sees the padding after it, so the real positions'
//! outputs are the unpadded ones. Layers stream as in the perplexity evaluator: each chunk of
//! sequences whose hidden states fit the budget goes through one layer at a time.

use super::tasks::{argmax, mean_stderr, Item, Metric, Task};
use crate::model::{Llama, TensorSource};
use crate::tokenizer::{Bos, Tokenizer};
use anyhow::{ensure, Context as _, Result};
use candle_core::Tensor;
use std::collections::HashMap;
use std::time::Instant;

/// Padded tokens per batch through a layer (rows of the linears' GEMMs).
const BATCH_TOKENS: usize = 4096;
/// Memory allowed for one batch's f32 attention scores (batch × heads × T × T).
const BATCH_SCORE_BYTES: usize = 256 << 20;
/// Memory allowed for the hidden states of the sequences in flight.
const HIDDEN_BUDGET_BYTES: usize = 2 << 30;

/// One request's tokens: the context's and the continuation's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ctx: Vec<u32>,
    pub cont: Vec<u32>,
}

/// The harness's `_encode_pair` under the BOS rule `bos`.
pub fn encode_pair(
    tok: &Tokenizer,
    bos: Bos,
    context: &str,
    continuation: &str,
) -> Result<Encoded> {
    ensure!(!context.is_empty(), "a request with an empty context");
    let kept = context.trim_end_matches(super::tasks::py_space);
    let (context, continuation) = if kept.len() < context.len() {
        (kept, format!("{}{continuation}", &context[kept.len()..]))
    } else {
        (context, continuation.to_string())
    };
    let whole = tok.encode_with(&format!("{context}{continuation}"), bos)?;
    let ctx = tok.encode_with(context, bos)?;
    let cont = whole.get(ctx.len()..).unwrap_or(&[]).to_vec();
    ensure!(
        !cont.is_empty(),
        "the continuation {continuation:?} has no tokens of its own after {context:?}"
    );
    Ok(Encoded { ctx, cont })
}

/// Σ log p of each request's continuation, in the requests' order. `max_len` is the model's
/// context length (longer inputs are cut from the left, as the harness does).
pub fn loglikelihoods(
    model: &Llama,
    src: &dyn TensorSource,
    reqs: &[Encoded],
    max_len: usize,
    label: &str,
) -> Result<Vec<f64>> {
    // Each request's model input and where its continuation's predictions start in it.
    let inputs: Vec<(Vec<u32>, usize, &[u32])> = reqs
        .iter()
        .map(|r| {
            let mut all: Vec<u32> = r.ctx.iter().chain(&r.cont).copied().collect();
            if all.len() > max_len + 1 {
                all.drain(..all.len() - (max_len + 1));
            }
            all.pop();
            let n = r.cont.len().min(all.len());
            let first = all.len() - n;
            (all, first, &r.cont[r.cont.len() - n..])
        })
        .collect();
    // Longest first (as the harness orders them), then batches of similar length.
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(inputs[i].0.len()));
    let heads = model.cfg.num_attention_heads;
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for &i in &order {
        let fits = batches.last().is_some_and(|b| {
            let t = inputs[b[0]].0.len();
            (b.len() + 1) * t <= BATCH_TOKENS
                && (b.len() + 1) * heads * t * t * 4 <= BATCH_SCORE_BYTES
        });
        match (fits, batches.last_mut()) {
            (true, Some(b)) => b.push(i),
            _ => batches.push(vec![i]),
        }
    }
    let hidden_bytes = |b: &[usize]| {
        b.len() * inputs[b[0]].0.len() * model.cfg.hidden_size * model.dtype.size_in_bytes()
    };
    let layers = model.cfg.num_hidden_layers;
    let work: usize = batches.iter().map(|b| b.len() * inputs[b[0]].0.len()).sum();
    let pb = crate::ui::bar((work * layers) as u64, label.to_string());
    let mut out = vec![0f64; reqs.len()];
    let mut positions = HashMap::new();
    let mut start = 0;
    while start < batches.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < batches.len()
            && (end == start || bytes + hidden_bytes(&batches[end]) <= HIDDEN_BUDGET_BYTES)
        {
            bytes += hidden_bytes(&batches[end]);
            end += 1;
        }
        let chunk = &batches[start..end];
        let mut hs = chunk
            .iter()
            .map(|b| {
                let t = inputs[b[0]].0.len();
                let e = b
                    .iter()
                    .map(|&i| {
                        let mut ids = inputs[i].0.clone();
                        ids.resize(t, 0); // right padding, never seen by a real position
                        model.embed(&ids)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&e, 0)?)
            })
            .collect::<Result<Vec<Tensor>>>()?;
        for l in 0..layers {
            crate::ui::check_interrupt()?;
            let layer = model.layer(src, l)?;
            for (h, b) in hs.iter_mut().zip(chunk) {
                let t = inputs[b[0]].0.len();
                let pos = match positions.get(&t) {
                    Some(p) => p,
                    None => positions.entry(t).or_insert(model.positions(t)?),
                };
                *h = layer.forward(h, pos)?;
                pb.inc((b.len() * t) as u64);
            }
        }
        for (h, b) in hs.iter().zip(chunk) {
            for (k, &i) in b.iter().enumerate() {
                let (_, first, targets) = &inputs[i];
                let rows = h
                    .narrow(0, k, 1)?
                    .squeeze(0)?
                    .narrow(0, *first, targets.len())?;
                let nll = model.target_nll(&rows, targets)?;
                ensure!(
                    nll.iter().all(|x| x.is_finite()),
                    "non-finite log-likelihood: the model produces NaN/Inf"
                );
                out[i] = -nll.iter().map(|&x| x as f64).sum::<f64>();
            }
        }
        start = end;
    }
    pb.finish_and_clear();
    Ok(out)
}

/// One item's scores, for `--samples` and the harness comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ItemScore {
    pub doc: usize,
    /// ℓ per choice.
    pub lls: Vec<f64>,
    pub gold: usize,
    pub acc: f64,
    pub acc_norm: f64,
}

/// A metric's value over a task's items.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MetricValue {
    pub metric: Metric,
    pub value: f64,
    pub stderr: f64,
}

/// One task's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskResult {
    pub task: &'static str,
    /// The split the items came from, and the one lm-eval scores.
    pub split: String,
    pub harness_split: &'static str,
    pub items: usize,
    /// Whether the requests start with the BOS token.
    pub bos: bool,
    pub metrics: Vec<MetricValue>,
    pub seconds: f64,
    #[serde(skip)]
    pub samples: Vec<ItemScore>,
}

impl TaskResult {
    /// `boolq  acc 0.6217 ± 0.0085  (3270 items, validation, BOS no)`.
    pub fn line(&self) -> String {
        let m: Vec<String> = self
            .metrics
            .iter()
            .map(|m| format!("{} {:.4} ± {:.4}", m.metric.name(), m.value, m.stderr))
            .collect();
        let split = if self.split == self.harness_split {
            self.split.clone()
        } else {
            format!("{}; lm-eval scores {}", self.split, self.harness_split)
        };
        format!(
            "{:<14} {}  ({} items, {split}, BOS {})",
            self.task,
            m.join("  "),
            self.items,
            if self.bos { "yes" } else { "no" }
        )
    }
}

/// Scores `items` of `task`: every request's ℓ, then acc (and acc_norm where the task has it).
#[allow(clippy::too_many_arguments)]
pub fn score_task(
    model: &Llama,
    src: &dyn TensorSource,
    tok: &Tokenizer,
    task: Task,
    split: &str,
    items: &[Item],
    bos: Bos,
    max_len: usize,
) -> Result<TaskResult> {
    let started = Instant::now();
    let mut reqs = Vec::new();
    for (d, it) in items.iter().enumerate() {
        for (c, k) in &it.requests {
            reqs.push(
                encode_pair(tok, bos, c, k).with_context(|| format!("{} item {d}", task.name()))?,
            );
        }
    }
    let first_bos = reqs
        .first()
        .map(|r| tok.bos() == r.ctx.first().copied())
        .unwrap_or(false);
    let lls = loglikelihoods(model, src, &reqs, max_len, task.name())?;
    let mut samples = Vec::with_capacity(items.len());
    let mut at = 0;
    for (d, it) in items.iter().enumerate() {
        let l = &lls[at..at + it.requests.len()];
        at += it.requests.len();
        let norm: Vec<f64> = l
            .iter()
            .zip(&it.choices)
            .map(|(x, c)| x / c.chars().count() as f64)
            .collect();
        samples.push(ItemScore {
            doc: d,
            lls: l.to_vec(),
            gold: it.gold,
            acc: (argmax(l) == it.gold) as u8 as f64,
            acc_norm: (argmax(&norm) == it.gold) as u8 as f64,
        });
    }
    let metrics = task
        .metrics()
        .iter()
        .map(|&m| {
            let xs: Vec<f64> = samples
                .iter()
                .map(|s| if m == Metric::Acc { s.acc } else { s.acc_norm })
                .collect();
            let (value, stderr) = mean_stderr(&xs);
            MetricValue {
                metric: m,
                value,
                stderr,
            }
        })
        .collect();
    Ok(TaskResult {
        task: task.name(),
        split: split.to_string(),
        harness_split: task.harness_split(),
        items: items.len(),
        bos: first_bos,
        metrics,
        seconds: started.elapsed().as_secs_f64(),
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_spaces_of_the_context_move_to_the_continuation() {
        let dir = tempfile::tempdir().unwrap();
        let tj = crate::checkpoint::synth::byte_tokenizer(260);
        std::fs::write(dir.path().join("tokenizer.json"), tj.to_string()).unwrap();
        let tok = Tokenizer::open(dir.path()).unwrap();
        let e = encode_pair(&tok, Bos::Auto, "ab  ", " x").unwrap();
        let bos = tok.bos().expect("the byte tokenizer prepends <s>");
        assert_eq!(e.ctx, vec![bos, b'a' as u32, b'b' as u32]);
        assert_eq!(
            e.cont,
            vec![b' ' as u32, b' ' as u32, b' ' as u32, b'x' as u32]
        );
        let e = encode_pair(&tok, Bos::No, "ab", " x").unwrap();
        assert_eq!(e.ctx, vec![b'a' as u32, b'b' as u32]);
        assert!(encode_pair(&tok, Bos::Auto, "", " x").is_err());
    }
}
