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
use crate::plan::{Propagate, PrunePlan};
use crate::prune::allocate::{self, Allocation};
use crate::prune::pruner::InputStatistic;
use crate::prune::wanda::WandaPruner;
use crate::prune::{Group, LayerPruner, MethodConfig, NoiseKey, Pattern};
use crate::report::{LayerCost, LinearReport, Phases, StepReport};
use anyhow::{bail, ensure, Context as _, Result};
use candle_core::{DType, Device, Tensor};
use std::time::Instant;

/// Everything a step needs besides the model and the data.
#[derive(Debug, Clone)]
pub struct StepSettings {
    pub method: MethodConfig,
    pub pattern: Pattern,
    pub group: Group,
    pub propagate: Propagate,
    /// How the sparsity is spread over the layers.
    pub allocate: Allocation,
    pub seed: u64,
    /// The dataset's name (seeds the COPAL noise).
    pub dataset: String,
    /// Windows per layer forward (None: `plan::calib_batch`).
    pub batch: Option<usize>,
}

impl StepSettings {
    /// Whether the step reads calibration windows (the plan's
    /// [`PrunePlan::reads_calibration`]).
    pub fn reads_calibration(&self) -> bool {
        allocate::reads_calibration(&self.method, &self.allocate)
    }

    /// The settings a run's plan gives the step on `dataset`.
    pub fn of(plan: &PrunePlan, dataset: String) -> Self {
        Self {
            method: plan.method,
            pattern: plan.pattern,
            group: plan.group,
            propagate: plan.propagate,
            allocate: plan.allocate,
            seed: plan.seed,
            dataset,
            batch: plan.calib_batch,
        }
    }
}

/// Where each linear's carried statistic comes from (the state of the previous step).
pub trait Priors {
    /// The statistic stored under the weight's name, as f32 on `device`.
    fn prior(&self, name: &str, device: &Device) -> Result<Tensor>;
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

/// FLOPs a calibration step needs: the observing forward, the method's statistics and solve
/// ([`MethodConfig::flops`]), and the forward of the pruned layer that feeds the next one.
pub fn step_flops(
    cfg: &crate::model::LlamaConfig,
    s: &StepSettings,
    windows: usize,
    t: usize,
) -> f64 {
    if !s.reads_calibration() {
        return 0.0;
    }
    let (w, tf) = (windows as f64, t as f64);
    let fwd = layer_forward_flops(cfg, t);
    let allocation = s.allocate.flops(cfg, w, tf, fwd);
    let per_linear: f64 = Linear::ALL
        .iter()
        .map(|l| s.method.flops(*l, cfg, w, tf))
        .sum();
    let passes = if s.propagate == Propagate::Pruned {
        2.0
    } else {
        1.0
    };
    if !s.method.needs_data() {
        return cfg.num_hidden_layers as f64 * allocation;
    }
    cfg.num_hidden_layers as f64 * (passes * w * fwd + per_linear + allocation)
}

/// The rows of window `w` of a batch in the taps of `lin`: its input X and output Y.
///
/// Statistics are sums over tokens, and every method observes one window at a time, in
/// window order: each sum is then added up in the same order (and each GEMM over tokens has
/// the same length) whatever the batch, so the result is the same to the bit for any
/// `calib_batch`.
fn window_rows(
    taps: &crate::model::Taps,
    lin: Linear,
    w: usize,
    seqlen: usize,
) -> Result<(Tensor, Tensor)> {
    Ok((
        taps.input(lin).narrow(0, w * seqlen, seqlen)?,
        taps.output(lin).narrow(0, w * seqlen, seqlen)?,
    ))
}

/// The windows' embeddings, `batch` windows to a tensor (batch, seqlen, hidden).
fn embed_batches(model: &Llama, windows: &[Vec<u32>], batch: usize) -> Result<Vec<Tensor>> {
    windows
        .chunks(batch)
        .map(|ws| {
            let e = ws
                .iter()
                .map(|w| model.embed(w))
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::cat(&e, 0)?)
        })
        .collect()
}

/// OWL's dense pass ([`allocate`]): each decoder layer's outlier ratio of Wanda scores, the
/// windows going through the layers of `base` as they are.
fn owl_ratios(
    model: &Llama,
    base: &dyn TensorSource,
    windows: &[Vec<u32>],
    batch: usize,
    m: f64,
    label: &str,
) -> Result<Vec<f64>> {
    let seqlen = windows.first().map(Vec::len).unwrap_or(1);
    let mut hs = embed_batches(model, windows, batch)?;
    let pos = model.positions(seqlen)?;
    let layers = model.cfg.num_hidden_layers;
    let pb = crate::ui::bar(layers as u64, label.to_string());
    pb.set_message("OWL layer sparsities");
    let mut ratios = Vec::with_capacity(layers);
    for l in 0..layers {
        crate::ui::check_interrupt()?;
        let layer = model.layer(base, l)?;
        let mut stats = Linear::ALL
            .iter()
            .map(|lin| WandaPruner::new(layer.weight(*lin)))
            .collect::<Result<Vec<_>>>()?;
        for h in hs.iter_mut() {
            let (out, taps) = layer.forward_tapped(h, &pos)?;
            for w in 0..h.dim(0)? {
                for (lin, st) in Linear::ALL.iter().zip(stats.iter_mut()) {
                    let (x, y) = window_rows(&taps, *lin, w, seqlen)?;
                    st.observe(&x, &y)?;
                }
            }
            *h = out;
        }
        let scores = Linear::ALL
            .iter()
            .zip(&stats)
            .map(|(lin, st)| {
                let sumsq = st.sumsq().context("OWL saw no calibration tokens")?;
                allocate::wanda_score(layer.weight(*lin), sumsq)
            })
            .collect::<Result<Vec<_>>>()?;
        ratios.push(allocate::outlier_ratio(&scores, m)?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(ratios)
}

fn pruner_for(
    s: &StepSettings,
    name: &str,
    w: &Tensor,
    prior: Option<Tensor>,
) -> Result<Box<dyn LayerPruner>> {
    let noise = NoiseKey {
        seed: s.seed,
        dataset: &s.dataset,
        tensor: name,
    };
    s.method.pruner(w, prior, noise)
}

/// The pattern of every linear of every layer (`[layer][k]`, `k` indexing [`Linear::ALL`]).
type LinearPatterns = Vec<Vec<Pattern>>;

/// Each layer's patterns, one per linear: the plan's, or the layer's share of the allocation
/// (OWL's dense pass) rounded to the asked mean ([`allocate::linear_patterns`]), with the
/// per-layer targets for the report.
fn layer_patterns(
    model: &Llama,
    base: &dyn TensorSource,
    windows: &[Vec<u32>],
    s: &StepSettings,
    batch: usize,
    label: &str,
) -> Result<(LinearPatterns, Option<Vec<f64>>)> {
    let targets =
        s.allocate
            .layer_targets(s.pattern.fraction(), model.cfg.num_hidden_layers, |m| {
                owl_ratios(model, base, windows, batch, m, label)
            })?;
    let patterns = allocate::linear_patterns(&s.pattern, targets.as_deref(), &model.cfg);
    Ok((patterns, targets))
}

/// One decoder layer's observers: the method's pruner per linear (None where the linear will
/// start from the statistic of the earlier linear that reads its input), and the update's
/// statistic per input source, both indexed like [`Linear::ALL`].
struct Observers {
    pruners: Vec<Option<Box<dyn LayerPruner>>>,
    inputs: Vec<Option<Box<dyn InputStatistic>>>,
}

impl Observers {
    fn new(
        model: &Llama,
        layer: &crate::model::DecoderLayer,
        l: usize,
        s: &StepSettings,
        prior: Option<&dyn Priors>,
    ) -> Result<Self> {
        let method = s.method.method();
        let update = s.method.update_stage();
        let (mut pruners, mut inputs) = (Vec::new(), Vec::new());
        for lin in Linear::ALL {
            let name = lin.tensor_name(l);
            let carried = |key: &str| prior.map(|p| p.prior(key, &model.device)).transpose();
            // The method's own carried statistic (magnitude has none, even with an update's).
            pruners.push(if method.keeps_stats(lin) {
                let own = match method.state_shape(lin, &model.cfg) {
                    Some(_) => carried(&name)?,
                    None => None,
                };
                Some(pruner_for(s, &name, layer.weight(lin), own)?)
            } else {
                None
            });
            inputs.push(match update.state_entry(lin, l, &model.cfg) {
                Some((key, _)) => update.statistic(carried(&key)?)?,
                None => None,
            });
        }
        Ok(Self { pruners, inputs })
    }

    /// Window `w` of a batch's taps, in window order (see [`window_rows`]).
    fn observe(
        &mut self,
        taps: &crate::model::Taps,
        w: usize,
        seqlen: usize,
        l: usize,
    ) -> Result<()> {
        for (lin, p) in Linear::ALL.iter().zip(self.pruners.iter_mut()) {
            if let Some(p) = p {
                let (x, y) = window_rows(taps, *lin, w, seqlen)?;
                p.observe(&x, &y)
                    .with_context(|| format!("observing {}", lin.tensor_name(l)))?;
            }
        }
        for (lin, st) in Linear::ALL.iter().zip(self.inputs.iter_mut()) {
            if let Some(st) = st {
                st.observe(&window_rows(taps, *lin, w, seqlen)?.0)?;
            }
        }
        Ok(())
    }
}

/// What the walk gathers for the step's report.
#[derive(Default)]
struct Record {
    linears: Vec<LinearReport>,
    layer_sparsity: Vec<f64>,
    costs: Vec<LayerCost>,
    phases: Phases,
}

fn lap(t: &mut Instant) -> f64 {
    let now = Instant::now();
    let s = now.duration_since(*t).as_secs_f64();
    *t = now;
    s
}

/// Runs one calibration step over all layers. `base` holds the weights to prune (dense, or
/// the previous step's for sequential baselines); `prior` the carried importance.
///
/// Per layer: observe (every window through the layer, the method's pruners and the update's
/// input statistics fed window by window), finish each linear (mask, update, write), then feed
/// the next layer.
pub fn run_step(
    model: &Llama,
    base: &dyn TensorSource,
    windows: &[Vec<u32>],
    s: &StepSettings,
    prior: Option<&dyn Priors>,
    sinks: &mut Sinks,
) -> Result<StepReport> {
    let started = Instant::now();
    let cfg = &model.cfg;
    let uses_data = s.method.needs_data();
    let seqlen = windows.first().map(Vec::len).unwrap_or(1);
    ensure!(
        windows.iter().all(|w| w.len() == seqlen),
        "internal: calibration windows of different lengths"
    );
    // Hidden states of `batch` windows at a time, (batch, seqlen, hidden): each goes through
    // a layer and its statistics as one batch of batch · seqlen tokens.
    let batch = s
        .batch
        .unwrap_or_else(|| crate::plan::calib_batch(cfg, seqlen))
        .max(1);
    let (patterns, layer_targets) = layer_patterns(model, base, windows, s, batch, sinks.label)?;
    let mut hs: Vec<Tensor> = if uses_data {
        embed_batches(model, windows, batch)?
    } else {
        Vec::new()
    };
    let pos = model.positions(seqlen)?;
    let pb = crate::ui::bar(cfg.num_hidden_layers as u64, sinks.label.to_string());
    pb.set_message("layers");
    let mut rec = Record::default();
    for (l, patterns) in patterns.iter().enumerate() {
        crate::ui::check_interrupt()?;
        let layer_started = Instant::now();
        let mut layer = model.layer(base, l)?;
        let mut obs = Observers::new(model, &layer, l, s, prior)?;
        for h in hs.iter_mut() {
            let mut t = Instant::now();
            let (out, taps) = layer.forward_tapped(h, &pos)?;
            rec.phases.forward += lap(&mut t);
            for w in 0..h.dim(0)? {
                obs.observe(&taps, w, seqlen, l)?;
            }
            if s.propagate == Propagate::Dense {
                *h = out;
            }
            rec.phases.observe += lap(&mut t);
        }
        let sparsity = finish_layer(model, &mut layer, l, s, obs, patterns, sinks, &mut rec)?;
        rec.layer_sparsity.push(sparsity);
        if uses_data && s.propagate == Propagate::Pruned {
            let mut t = Instant::now();
            for h in hs.iter_mut() {
                *h = layer.forward(h, &pos)?;
            }
            rec.phases.propagate += lap(&mut t);
        }
        for (k, h) in hs.iter().enumerate() {
            guard_finite(h, l, k * batch)?;
        }
        rec.costs.push(LayerCost {
            seconds: layer_started.elapsed().as_secs_f64(),
            rss_bytes: crate::probe::rss_bytes(),
            peak_rss_bytes: crate::probe::peak_rss_bytes(),
        });
        pb.inc(1);
        if let Some(o) = sinks.overall {
            o.inc(1);
        }
    }
    pb.finish_and_clear();
    let (z, n) = rec
        .linears
        .iter()
        .fold((0, 0), |(z, n), r| (z + r.zeros, n + r.numel));
    Ok(StepReport {
        linears: rec.linears,
        layer_sparsity: rec.layer_sparsity,
        sparsity: z as f64 / n.max(1) as f64,
        seconds: started.elapsed().as_secs_f64(),
        calib_tokens: if s.reads_calibration() {
            windows.len() * seqlen
        } else {
            0
        },
        flops: step_flops(cfg, s, windows.len(), seqlen),
        layer_targets,
        layers: rec.costs,
        phases: rec.phases,
    })
}

/// Finishes every linear of layer `l` in order: the method's mask (a linear without a pruner
/// of its own starts from the statistic of the earlier one that reads its input), the update,
/// then the writes (model, state, masks) and the new weight into `layer` for the propagation.
/// Returns the layer's sparsity.
#[allow(clippy::too_many_arguments)]
fn finish_layer(
    model: &Llama,
    layer: &mut crate::model::DecoderLayer,
    l: usize,
    s: &StepSettings,
    obs: Observers,
    patterns: &[Pattern],
    sinks: &mut Sinks,
    rec: &mut Record,
) -> Result<f64> {
    let method = s.method.method();
    let update = s.method.update_stage();
    let inputs = obs
        .inputs
        .into_iter()
        .map(|st| st.map(|st| st.finish()).transpose().map(Option::flatten))
        .collect::<Result<Vec<_>>>()?;
    let (mut zeros, mut numel) = (0u64, 0u64);
    let mut shared: Vec<(Linear, Tensor)> = Vec::new();
    for (k, (lin, p)) in Linear::ALL.iter().zip(obs.pruners).enumerate() {
        let mut t = Instant::now();
        let name = lin.tensor_name(l);
        let own = method.keeps_stats(*lin);
        let p = match p {
            Some(p) => p,
            None => {
                let from = shared
                    .iter()
                    .find(|(src, _)| *src == lin.input_source())
                    .map(|(_, t)| t.clone())
                    .context("internal: shared statistic missing")?;
                pruner_for(s, &name, layer.weight(*lin), Some(from))?
            }
        };
        let mut done = p
            .finish(&patterns[k], s.group)
            .with_context(|| format!("pruning {name}"))?;
        let src = Linear::ALL
            .iter()
            .position(|x| *x == lin.input_source())
            .context("internal: no input source")?;
        let mut mask_error = None;
        if update.reads_data() {
            let stat = inputs[src]
                .as_ref()
                .with_context(|| format!("update {} saw no calibration tokens", update.update))?;
            mask_error = update
                .apply(*lin, layer.weight(*lin), &mut done, stat)
                .with_context(|| format!("updating {name} ({})", update.update))?
                .mask_error;
        }
        if let (Some(st), true) = (done.state.as_ref(), own && method.shares_input_stats()) {
            shared.push((*lin, st.clone()));
        }
        let (z, n) = (done.mask.count() as u64, done.mask.pruned.len() as u64);
        rec.phases.solve += lap(&mut t);
        sinks.model.put(&name, &done.weight)?;
        if let Some(state) = sinks.state.as_mut() {
            if let (Some(st), true) = (done.state.as_ref(), own) {
                state.write_tensor(&name, st)?;
            }
            if let (Some(st), Some((key, _))) =
                (inputs[k].as_ref(), update.state_entry(*lin, l, &model.cfg))
            {
                state.write_tensor(&key, st)?;
            }
        }
        if let Some(m) = sinks.masks.as_mut() {
            m.write_bytes(&name, &done.mask.pack())?;
        }
        rec.linears.push(LinearReport {
            name,
            zeros: z,
            numel: n,
            recon_error: done.recon_error,
            mask_error,
        });
        zeros += z;
        numel += n;
        layer.set_weight(*lin, done.weight.to_dtype(model.dtype)?)?;
        rec.phases.write += lap(&mut t);
    }
    Ok(zeros as f64 / numel as f64)
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
