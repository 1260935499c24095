//! Zero-shot multiple-choice scoring: each request's summed continuation log-likelihood,
//! computed as lm-evaluation-harness's `hf` backend computes it, then the task's metrics.
//!
//! Encoding (the harness's `_encode_pair`): trailing whitespace of the context moves to the
//! front of the continuation; whole = enc(context + continuation), ctx = enc(context), and the
//! continuation's tokens are whole[len(ctx):]. The model reads (ctx ++ cont)[-(L+1):][:-1]
//! for the model's context length L, and the score is ℓ = Σ_k log p(cont_k | everything
//! before it) over the continuation's tokens.
//!
//! The choices of an item share their context: its requests run as one packed sequence, the
//! longest common token prefix once and then each request's own tokens, each seeing only the
//! prefix and itself ([`crate::model::block::Packed`]), so the context is computed once and
//! every request's outputs are those of running it alone. Sequences of similar length go
//! through each decoder layer together, padded (no real token sees the padding). Layers stream
//! as in the perplexity evaluator: each chunk of sequences whose hidden states fit the budget
//! goes through one layer at a time.

use super::score::{Better, Score};
use super::tasks::{argmax, mean_stderr, Item, Metric, Task};
use crate::model::block::PackLayout;
use crate::model::{Llama, Positions, TensorSource};
use crate::tokenizer::{Bos, Tokenizer};
use anyhow::{ensure, Context as _, Result};
use candle_core::Tensor;
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

/// One sequence the model runs: an item's requests packed over their shared prefix (or one
/// request alone), and, per request, the rows that predict its continuation's tokens.
struct Seq {
    tokens: Vec<u32>,
    layout: PackLayout,
    /// (item, request, rows, target tokens).
    reads: Vec<(usize, usize, Vec<usize>, Vec<u32>)>,
}

/// A request's model input (ctx ++ cont)[-(L+1):][:-1], the index of the first row that
/// predicts a continuation token (the rest follow it to the end), those tokens, and whether
/// the input was cut.
struct Input {
    ids: Vec<u32>,
    first: usize,
    targets: Vec<u32>,
    cut: bool,
}

fn model_input(r: &Encoded, max_len: usize) -> Input {
    let mut ids: Vec<u32> = r.ctx.iter().chain(&r.cont).copied().collect();
    let cut = ids.len() > max_len + 1;
    if cut {
        ids.drain(..ids.len() - (max_len + 1));
    }
    ids.pop();
    let n = r.cont.len().min(ids.len());
    Input {
        first: ids.len() - n,
        targets: r.cont[r.cont.len() - n..].to_vec(),
        ids,
        cut,
    }
}

/// The sequences for item `d`: its requests packed over their longest common token prefix
/// (the context, computed once for all choices; WinoGrande's sentence before the option), or
/// one per request when an input was cut to the model's length.
fn pack(d: usize, reqs: &[Encoded], max_len: usize) -> Vec<Seq> {
    let inputs: Vec<Input> = reqs.iter().map(|r| model_input(r, max_len)).collect();
    if inputs.len() < 2 || inputs.iter().any(|i| i.cut) {
        return inputs
            .into_iter()
            .enumerate()
            .map(|(r, i)| Seq {
                layout: PackLayout {
                    position: (0..i.ids.len() as u32).collect(),
                    text: vec![0; i.ids.len()],
                },
                reads: vec![(d, r, (i.first..i.ids.len()).collect(), i.targets)],
                tokens: i.ids,
            })
            .collect();
    }
    let first = &inputs[0].ids;
    let p = (0..first.len())
        .take_while(|&q| inputs.iter().all(|i| i.ids.get(q) == Some(&first[q])))
        .count();
    let mut tokens = first[..p].to_vec();
    let mut layout = PackLayout {
        position: (0..p as u32).collect(),
        text: vec![0; p],
    };
    let mut reads = Vec::new();
    for (r, i) in inputs.iter().enumerate() {
        let offset = tokens.len();
        tokens.extend(&i.ids[p..]);
        layout.position.extend(p as u32..i.ids.len() as u32);
        layout
            .text
            .extend(std::iter::repeat_n(r as u32 + 1, i.ids.len() - p));
        let rows = (i.first..i.ids.len())
            .map(|q| if q < p { q } else { offset + q - p })
            .collect();
        reads.push((d, r, rows, i.targets.clone()));
    }
    vec![Seq {
        tokens,
        layout,
        reads,
    }]
}

/// Σ log p of each request's continuation, per item and request. `max_len` is the model's
/// context length (longer inputs are cut from the left, as the harness does).
pub fn loglikelihoods(
    model: &Llama,
    src: &dyn TensorSource,
    items: &[Vec<Encoded>],
    max_len: usize,
    label: &str,
) -> Result<Vec<Vec<f64>>> {
    let mut seqs: Vec<Seq> = items
        .iter()
        .enumerate()
        .flat_map(|(d, reqs)| pack(d, reqs, max_len))
        .collect();
    // Longest first (as the harness orders them), then batches of similar length.
    seqs.sort_by_key(|s| std::cmp::Reverse(s.tokens.len()));
    let heads = model.cfg.num_attention_heads;
    let mut batches: Vec<std::ops::Range<usize>> = Vec::new();
    for i in 0..seqs.len() {
        let fits = batches.last().is_some_and(|b| {
            let (n, t) = (b.len() + 1, seqs[b.start].tokens.len());
            n * t <= BATCH_TOKENS && n * heads * t * t * 4 <= BATCH_SCORE_BYTES
        });
        match (fits, batches.last_mut()) {
            (true, Some(b)) => b.end = i + 1,
            _ => batches.push(i..i + 1),
        }
    }
    let len = |b: &std::ops::Range<usize>| b.len() * seqs[b.start].tokens.len();
    let bytes =
        |b: &std::ops::Range<usize>| len(b) * model.cfg.hidden_size * model.dtype.size_in_bytes();
    let layers = model.cfg.num_hidden_layers;
    let work: usize = batches.iter().map(len).sum();
    let pb = crate::ui::bar((work * layers) as u64, label.to_string());
    let mut out: Vec<Vec<f64>> = items.iter().map(|r| vec![0.0; r.len()]).collect();
    let mut start = 0;
    while start < batches.len() {
        let mut end = start;
        let mut held = 0;
        while end < batches.len()
            && (end == start || held + bytes(&batches[end]) <= HIDDEN_BUDGET_BYTES)
        {
            held += bytes(&batches[end]);
            end += 1;
        }
        let chunk = &batches[start..end];
        let mut hs = Vec::with_capacity(chunk.len());
        for b in chunk {
            let t = seqs[b.start].tokens.len();
            let e = seqs[b.clone()]
                .iter()
                .map(|s| {
                    let mut ids = s.tokens.clone();
                    ids.resize(t, 0); // padding, which no real token sees
                    model.embed(&ids)
                })
                .collect::<Result<Vec<_>>>()?;
            let layouts: Vec<PackLayout> =
                seqs[b.clone()].iter().map(|s| s.layout.clone()).collect();
            let pos = Positions::packed(&model.cfg, &layouts, t, model.dtype, &model.device)?;
            hs.push((Tensor::cat(&e, 0)?, pos));
        }
        for l in 0..layers {
            crate::ui::check_interrupt()?;
            let layer = model.layer(src, l)?;
            for ((h, pos), b) in hs.iter_mut().zip(chunk) {
                *h = layer.forward(h, pos)?;
                pb.inc(len(b) as u64);
            }
        }
        // The LM head once per batch, on the rows that predict a continuation token.
        for ((h, _), b) in hs.iter().zip(chunk) {
            let t = seqs[b.start].tokens.len();
            let (mut rows, mut targets) = (Vec::new(), Vec::new());
            for (k, s) in seqs[b.clone()].iter().enumerate() {
                for (_, _, r, tg) in &s.reads {
                    rows.extend(r.iter().map(|&x| (k * t + x) as u32));
                    targets.extend(tg);
                }
            }
            let flat = h.reshape((b.len() * t, model.cfg.hidden_size))?;
            let idx = Tensor::from_vec(rows, (targets.len(),), h.device())?;
            let nll = model.target_nll(&flat.index_select(&idx, 0)?, &targets)?;
            ensure!(
                nll.iter().all(|x| x.is_finite()),
                "non-finite log-likelihood: the model produces NaN/Inf"
            );
            let mut at = 0;
            for s in &seqs[b.clone()] {
                for (d, r, _, tg) in &s.reads {
                    out[*d][*r] = -nll[at..at + tg.len()]
                        .iter()
                        .map(|&x| x as f64)
                        .sum::<f64>();
                    at += tg.len();
                }
            }
        }
        start = end;
    }
    pb.finish_and_clear();
    Ok(out)
}

/// One item's scores, for `--samples` and the harness comparison.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ItemScore {
    pub doc: usize,
    /// ℓ per choice.
    pub lls: Vec<f64>,
    pub gold: usize,
    pub acc: f64,
    pub acc_norm: f64,
}

/// A metric's value over a task's items.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricValue {
    pub metric: Metric,
    pub value: f64,
    pub stderr: f64,
}

/// One task's result.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskResult {
    pub task: String,
    /// The split the items came from, and the one lm-eval scores.
    pub split: String,
    pub harness_split: String,
    pub items: usize,
    /// Whether the requests start with the BOS token.
    pub bos: bool,
    pub metrics: Vec<MetricValue>,
    pub seconds: f64,
    #[serde(skip)]
    pub samples: Vec<ItemScore>,
}

impl TaskResult {
    /// Its metrics as named scores (higher is better).
    pub fn scores(&self) -> Vec<Score> {
        self.metrics
            .iter()
            .map(|m| {
                Score::new(
                    &self.task,
                    m.metric.name(),
                    Better::Higher,
                    m.value,
                    m.stderr,
                )
            })
            .collect()
    }
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

/// What scores a task: the model and its weights, its tokenizer, the BOS rule, and the
/// model's context length (longer inputs are cut from the left).
pub struct Scorer<'a> {
    pub model: &'a Llama,
    pub src: &'a dyn TensorSource,
    pub tok: &'a Tokenizer,
    pub bos: Bos,
    pub max_len: usize,
}

impl Scorer<'_> {
    /// Scores `items` of `task` (read from `split`): every request's ℓ, then acc (and
    /// acc_norm where the task has it).
    pub fn score(&self, task: Task, split: &str, items: &[Item]) -> Result<TaskResult> {
        let (model, src, tok, bos, max_len) =
            (self.model, self.src, self.tok, self.bos, self.max_len);
        let started = Instant::now();
        let reqs = items
            .iter()
            .enumerate()
            .map(|(d, it)| {
                it.requests
                    .iter()
                    .map(|(c, k)| encode_pair(tok, bos, c, k))
                    .collect::<Result<Vec<_>>>()
                    .with_context(|| format!("{} item {d}", task.name()))
            })
            .collect::<Result<Vec<_>>>()?;
        let first_bos = reqs
            .first()
            .and_then(|r| r.first())
            .is_some_and(|r| tok.bos().is_some() && tok.bos() == r.ctx.first().copied());
        let lls = loglikelihoods(model, src, &reqs, max_len, task.name())?;
        let mut samples = Vec::with_capacity(items.len());
        for (d, (it, l)) in items.iter().zip(&lls).enumerate() {
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
            task: task.name().to_string(),
            split: split.to_string(),
            harness_split: task.harness_split().to_string(),
            items: items.len(),
            bos: first_bos,
            metrics,
            seconds: started.elapsed().as_secs_f64(),
            samples,
        })
    }
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
