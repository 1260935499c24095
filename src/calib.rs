//! The layer walk of one calibration step (one dataset).
//!
//! For each decoder layer in order: run every calibration window through the layer with its
//! weights as loaded, letting the seven pruners observe the inputs and outputs of their
//! linears (all seven are scored from the same pass, as Wanda and SparseGPT do); finish the
//! pruners; then feed the next layer with this layer's outputs, **after** masking
//! (`--propagate pruned`, SparseGPT/Wanda) or from the dense pass (`--propagate dense`).
//! Only one layer's weights, its pruners' statistics and the windows' hidden states are
//! resident at any time.

use crate::checkpoint::writer::{CheckpointWriter, ShardWriter};
use crate::model::{Linear, Llama, TensorSource};
use crate::prune::copal::{noise_seed, CopalPruner, CopalVariant, Perturbation};
use crate::prune::magnitude::MagnitudePruner;
use crate::prune::sparsegpt::{SparseGptConfig, SparseGptPruner};
use crate::prune::wanda::WandaPruner;
use crate::prune::{Group, LayerPruner, Method, Pattern};
use crate::state::StateReader;
use anyhow::{bail, ensure, Context as _, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Which activations feed the next layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Propagate {
    /// Outputs of the layer after it was pruned in this step (SparseGPT, Wanda).
    Pruned,
    /// Outputs of the dense layer.
    Dense,
}

/// Everything a step needs besides the model and the data.
#[derive(Debug, Clone)]
pub struct StepSettings {
    pub method: Method,
    pub pattern: Pattern,
    pub group: Group,
    pub propagate: Propagate,
    pub perturbation: Perturbation,
    pub variant: CopalVariant,
    pub sparsegpt: SparseGptConfig,
    pub seed: u64,
    /// The dataset's name (seeds the COPAL noise).
    pub dataset: String,
    /// Windows per layer forward (None: `calib_batch`).
    pub batch: Option<usize>,
}

impl StepSettings {
    /// The settings a run's plan gives the step on `dataset`.
    pub fn of(plan: &crate::config::PrunePlan, dataset: String) -> Self {
        Self {
            method: plan.method,
            pattern: plan.pattern,
            group: plan.group,
            propagate: plan.propagate,
            perturbation: plan.perturbation,
            variant: plan.variant,
            sparsegpt: plan.sparsegpt,
            seed: plan.seed,
            dataset,
            batch: plan.calib_batch,
        }
    }
}

/// Where a step's results (and its progress) go.
pub struct Sinks<'a> {
    pub model: &'a mut CheckpointWriter,
    pub state: Option<&'a mut ShardWriter>,
    pub masks: Option<&'a mut ShardWriter>,
    /// The step's own progress bar is labelled with this.
    pub label: &'a str,
    /// A run-wide bar advanced once per layer.
    pub overall: Option<&'a indicatif::ProgressBar>,
}

/// What one linear ended up as.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinearReport {
    pub name: String,
    pub zeros: u64,
    pub numel: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recon_error: Option<f64>,
}

/// One step's measurements.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    pub linears: Vec<LinearReport>,
    /// Fraction of zeros per decoder layer over its seven linears.
    pub layer_sparsity: Vec<f64>,
    pub sparsity: f64,
    pub seconds: f64,
    pub calib_tokens: usize,
    /// Floating-point operations the step needs (see [`step_flops`]).
    #[serde(default)]
    pub flops: f64,
    /// Per decoder layer: seconds, and resident / peak memory when it was done.
    #[serde(default)]
    pub layers: Vec<LayerCost>,
}

/// Time and memory of one layer of a step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerCost {
    pub seconds: f64,
    pub rss_bytes: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
}

/// FLOPs of one decoder layer's forward over a window of `t` tokens: every linear
/// (2·t·out·in) plus the two attention products (q kᵀ and p v, 2·t²·h·d each, computed on
/// the full square as the implementation does).
pub fn layer_forward_flops(cfg: &crate::model::LlamaConfig, t: usize) -> f64 {
    let t = t as f64;
    let linears: f64 = Linear::ALL
        .iter()
        .map(|l| {
            let (o, i) = l.shape(cfg);
            2.0 * t * (o * i) as f64
        })
        .sum();
    let hd = (cfg.num_attention_heads * cfg.head_dim()) as f64;
    linears + 4.0 * t * t * hd
}

/// FLOPs a calibration step needs, by method: the observing forward, the statistics (COPAL:
/// one |dY|ᵀ|X| GEMM per linear, two more for the Gaussian dY; SparseGPT: XᵀX per distinct
/// input and, per linear, the factorisations ≈ (2/3)·in³ and the OBS update ≈ 2·out·in²; Wanda: Σx²), and
/// the forward of the pruned layer that feeds the next one.
pub fn step_flops(
    cfg: &crate::model::LlamaConfig,
    s: &StepSettings,
    windows: usize,
    t: usize,
) -> f64 {
    if !s.method.needs_data() {
        return 0.0;
    }
    let (w, tf) = (windows as f64, t as f64);
    let fwd = layer_forward_flops(cfg, t);
    let per_linear: f64 = Linear::ALL
        .iter()
        .map(|l| {
            let (o, i) = l.shape(cfg);
            let (o, i) = (o as f64, i as f64);
            match s.method {
                Method::Copal => match s.perturbation.kind {
                    crate::prune::copal::PerturbationKind::Scaled => w * 2.0 * tf * o * i,
                    crate::prune::copal::PerturbationKind::Gaussian => w * 6.0 * tf * o * i,
                },
                // Σ x xᵀ once per distinct input (shared by q/k/v and gate/up).
                Method::SparseGpt => {
                    let gram = if s.method.keeps_stats(*l) {
                        w * 2.0 * tf * i * i
                    } else {
                        0.0
                    };
                    gram + 2.0 / 3.0 * i * i * i + 2.0 * o * i * i
                }
                _ => w * 2.0 * tf * i,
            }
        })
        .sum();
    let passes = if s.propagate == Propagate::Pruned {
        2.0
    } else {
        1.0
    };
    cfg.num_hidden_layers as f64 * (passes * w * fwd + per_linear)
}

/// Most tokens in one calibration batch: enough rows for the GEMMs to run at full rate.
const CALIB_BATCH_TOKENS: usize = 4096;
/// Memory allowed for one batch's taps (every linear's input and output, f32).
const CALIB_TAP_BYTES: usize = 512 << 20;

/// Windows of `seqlen` tokens that go through a layer together in a calibration step (at least
/// one). The taps of a batch hold Σ (in + out) floats per token over the seven linears: 40 KB
/// on the test model (batches of 8 × 512), 312 KB at LLaMA-7B shapes (one window of 2048).
/// Every statistic is a sum over tokens, so batching changes no result beyond rounding; the one
/// exception is the `gaussian` perturbation, which draws ΔX per batch (its noise then depends on
/// the batch size, itself fixed by the model's shape and seqlen, so runs stay reproducible).
pub fn calib_batch(cfg: &crate::model::LlamaConfig, seqlen: usize) -> usize {
    let per_token: usize = Linear::ALL
        .iter()
        .map(|l| {
            let (o, i) = l.shape(cfg);
            (o + i) * 4
        })
        .sum();
    let seqlen = seqlen.max(1);
    (CALIB_BATCH_TOKENS / seqlen)
        .min(CALIB_TAP_BYTES / (per_token * seqlen).max(1))
        .max(1)
}

fn pruner_for(
    s: &StepSettings,
    name: &str,
    w: &Tensor,
    prior: Option<Tensor>,
) -> Result<Box<dyn LayerPruner>> {
    Ok(match s.method {
        Method::Copal => Box::new(
            CopalPruner::new(
                w,
                prior,
                s.perturbation,
                noise_seed(s.seed, &s.dataset, name),
            )?
            .with_variant(s.variant),
        ),
        Method::Wanda => Box::new(WandaPruner::new(w)?.with_prior(prior)?),
        Method::SparseGpt => Box::new(SparseGptPruner::new(w, s.sparsegpt)?.with_prior(prior)?),
        Method::Magnitude => Box::new(MagnitudePruner::new(w)?),
        Method::Dense => bail!("internal: the dense method prunes nothing"),
    })
}

/// Runs one calibration step over all layers. `base` holds the weights to prune (dense, or
/// the previous step's for sequential baselines); `prior` the carried importance.
pub fn run_step(
    model: &Llama,
    base: &dyn TensorSource,
    windows: &[Vec<u32>],
    s: &StepSettings,
    prior: Option<&StateReader>,
    sinks: &mut Sinks,
) -> Result<StepReport> {
    let started = Instant::now();
    let cfg = &model.cfg;
    let layers = cfg.num_hidden_layers;
    let uses_data = s.method.needs_data();
    let seqlen = windows.first().map(Vec::len).unwrap_or(1);
    ensure!(
        windows.iter().all(|w| w.len() == seqlen),
        "internal: calibration windows of different lengths"
    );
    // Hidden states of `batch` windows at a time, (batch, seqlen, hidden): each goes through
    // a layer and its statistics as one batch of batch · seqlen tokens.
    let batch = s.batch.unwrap_or_else(|| calib_batch(cfg, seqlen)).max(1);
    let mut hs: Vec<Tensor> = if uses_data {
        windows
            .chunks(batch)
            .map(|ws| {
                let e = ws
                    .iter()
                    .map(|w| model.embed(w))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&e, 0)?)
            })
            .collect::<Result<_>>()?
    } else {
        Vec::new()
    };
    let pos = model.positions(seqlen)?;
    let pb = crate::ui::bar(layers as u64, sinks.label.to_string());
    pb.set_message("layers");
    let mut linears = Vec::with_capacity(layers * 7);
    let mut layer_sparsity = Vec::with_capacity(layers);
    let mut costs = Vec::with_capacity(layers);
    for l in 0..layers {
        let layer_started = Instant::now();
        let mut layer = model.layer(base, l)?;
        // A linear whose statistic only depends on its input (SparseGPT's Σ x xᵀ) and that
        // shares the input with an earlier one gets no pruner of its own until `finish`: it
        // starts from the earlier one's accumulated statistic instead of recomputing it.
        let mut pruners: Vec<Option<Box<dyn LayerPruner>>> = Vec::with_capacity(7);
        for lin in Linear::ALL {
            if !s.method.keeps_stats(lin) {
                pruners.push(None);
                continue;
            }
            let name = lin.tensor_name(l);
            let prior_w = match prior {
                Some(p) => Some(p.tensor(&name, &model.device)?),
                None => None,
            };
            pruners.push(Some(pruner_for(s, &name, layer.weight(lin), prior_w)?));
        }
        if uses_data {
            for h in hs.iter_mut() {
                let (out, taps) = layer.forward_tapped(h, &pos)?;
                for (lin, p) in Linear::ALL.iter().zip(pruners.iter_mut()) {
                    if let Some(p) = p {
                        p.observe(taps.input(*lin), taps.output(*lin))
                            .with_context(|| format!("observing {}", lin.tensor_name(l)))?;
                    }
                }
                if s.propagate == Propagate::Dense {
                    *h = out;
                }
            }
        }
        let (mut zeros, mut numel) = (0u64, 0u64);
        let mut input_stats: Vec<(Linear, Tensor)> = Vec::new();
        for (lin, p) in Linear::ALL.iter().zip(pruners) {
            let name = lin.tensor_name(l);
            let own = s.method.keeps_stats(*lin);
            let p = match p {
                Some(p) => p,
                None => {
                    let shared = input_stats
                        .iter()
                        .find(|(src, _)| *src == lin.input_source())
                        .map(|(_, t)| t.clone())
                        .context("internal: shared statistic missing")?;
                    pruner_for(s, &name, layer.weight(*lin), Some(shared))?
                }
            };
            let done = p
                .finish(&s.pattern, s.group)
                .with_context(|| format!("pruning {name}"))?;
            if let (Some(st), true) = (done.state.as_ref(), own && s.method.shares_input_stats()) {
                input_stats.push((*lin, st.clone()));
            }
            let z = done.mask.count() as u64;
            let n = done.mask.pruned.len() as u64;
            sinks.model.put(&name, &done.weight)?;
            if let (Some(st), Some(state), true) = (done.state.as_ref(), sinks.state.as_mut(), own)
            {
                state.write_tensor(&name, st)?;
            }
            if let Some(m) = sinks.masks.as_mut() {
                m.write_bytes(&name, &done.mask.pack())?;
            }
            linears.push(LinearReport {
                name,
                zeros: z,
                numel: n,
                recon_error: done.recon_error,
            });
            zeros += z;
            numel += n;
            layer.set_weight(*lin, done.weight.to_dtype(model.dtype)?)?;
        }
        layer_sparsity.push(zeros as f64 / numel as f64);
        if uses_data && s.propagate == Propagate::Pruned {
            for h in hs.iter_mut() {
                *h = layer.forward(h, &pos)?;
            }
        }
        for (k, h) in hs.iter().enumerate() {
            guard_finite(h, l, k * batch)?;
        }
        costs.push(LayerCost {
            seconds: layer_started.elapsed().as_secs_f64(),
            rss_bytes: crate::report::rss_bytes(),
            peak_rss_bytes: crate::report::peak_rss_bytes(),
        });
        pb.inc(1);
        if let Some(o) = sinks.overall {
            o.inc(1);
        }
    }
    pb.finish_and_clear();
    let (z, n) = linears
        .iter()
        .fold((0, 0), |(z, n), r| (z + r.zeros, n + r.numel));
    Ok(StepReport {
        linears,
        layer_sparsity,
        sparsity: z as f64 / n.max(1) as f64,
        seconds: started.elapsed().as_secs_f64(),
        calib_tokens: if uses_data { windows.len() * seqlen } else { 0 },
        flops: step_flops(cfg, s, windows.len(), seqlen),
        layers: costs,
    })
}

/// Stops the run if a layer's output holds NaN or Inf (both survive a sum of |x|).
fn guard_finite(h: &Tensor, layer: usize, window: usize) -> Result<()> {
    let s = h
        .to_dtype(DType::F32)?
        .abs()?
        .sum_all()?
        .to_scalar::<f32>()?;
    if !s.is_finite() {
        bail!(
            "the calibration activations after decoder layer {layer} (the batch from window \
             {window}) hold NaN or Inf; the checkpoint or the pruned layer is numerically broken"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LlamaConfig;

    fn cfg(preset: &str) -> LlamaConfig {
        let j = crate::checkpoint::synth::preset(preset, 2).unwrap();
        LlamaConfig::from_json(&j.to_string()).unwrap()
    }

    #[test]
    fn calibration_batches_fit_their_budgets() {
        // Test model: 4096 tokens, taps of 40 KB per token well inside 512 MB.
        let small = cfg("smollm2-135m");
        assert_eq!(calib_batch(&small, 512), 8);
        assert_eq!(calib_batch(&small, 2048), 2);
        assert_eq!(calib_batch(&small, 8192), 1);
        // LLaMA-7B: 312 KB of taps per token, so one window of 2048 (no batching, as before).
        let big = cfg("llama-7b");
        assert_eq!(calib_batch(&big, 2048), 1);
        assert_eq!(calib_batch(&big, 512), 3);
    }
}
