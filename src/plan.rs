//! The plan of a prune run: every default in one place, the [`Request`] that `copal prune`'s
//! flags and each run of `copal experiment` fill in, and the resolved, validated
//! [`PrunePlan`] that runs (ripgrep's low-level/high-level args split).
//!
//! [`PrunePlan::resolve`] checks everything that needs no file; [`PrunePlan::with_model`]
//! completes it against the model's config (window length, calibration batch, dtype, N:M
//! widths). Both happen before any work starts; the plan is saved in `copal.json` so that the
//! run record says exactly how the artifact was made.

use crate::data::{Dataset, Split};
use crate::device::ComputeDtype;
use crate::eval::tasks::Task;
use crate::model::{Linear, LlamaConfig};
use crate::prune::allocate::Allocation;
use crate::prune::{Group, Method, MethodConfig, Mode, Pattern, DEFAULT_METHOD};
use crate::tokenizer::Bos;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The settings that shape a state's sums, by name: the run's pattern, group, propagation and
/// allocation, then what the method and its update stage declare.
pub fn shaping_settings(
    method: &MethodConfig,
    pattern: &Pattern,
    group: Group,
    propagate: Propagate,
    allocate: &Allocation,
) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut put = |k: &str, v: Result<Value, serde_json::Error>| {
        out.insert(k.to_string(), v.unwrap_or(Value::Null));
    };
    put("pattern", Ok(Value::String(pattern.to_string())));
    put("group", serde_json::to_value(group));
    put("propagate", serde_json::to_value(propagate));
    put("allocate", serde_json::to_value(allocate));
    out.extend(method.state_settings());
    out
}

/// Calibration windows per dataset (the anchors' 128 × 2048).
pub const DEFAULT_NSAMPLES: usize = 128;
/// Tokens per window, capped by the model's `max_position_embeddings`.
pub const DEFAULT_SEQLEN: usize = 2048;
pub const DEFAULT_SEED: u64 = 0;
pub const DEFAULT_PROPAGATE: Propagate = Propagate::Pruned;
pub const DEFAULT_DEVICE: &str = "cpu";
/// Most tokens in one calibration batch: enough rows for the GEMMs to run at full rate.
const CALIB_BATCH_TOKENS: usize = 4096;
/// Memory allowed for one batch's taps (every linear's input and output, f32).
const CALIB_TAP_BYTES: usize = 512 << 20;

/// Which activations feed the next layer during calibration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Propagate {
    /// Outputs of the layer after it was pruned in this step (SparseGPT, Wanda).
    Pruned,
    /// Outputs of the dense layer.
    Dense,
}

crate::display_as_value!(Propagate);

/// What a run asks for; `None` takes the default.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub model: String,
    /// Calibration datasets in the order they arrive.
    pub datasets: Vec<Dataset>,
    /// Calibration split per dataset, where not the default (train).
    pub calib_split: Vec<(Dataset, Split)>,
    pub data_dir: Option<PathBuf>,
    pub method: Option<Method>,
    /// The method's settings by name (`eps_w`, `percdamp`, …), over its defaults.
    pub params: Map<String, Value>,
    pub mode: Option<Mode>,
    pub sparsity: Option<f64>,
    pub pattern: Option<String>,
    pub group: Option<Group>,
    pub propagate: Option<Propagate>,
    /// How the sparsity is spread over the layers (the allocation stage's settings).
    pub allocate: Option<Allocation>,
    pub nsamples: Option<usize>,
    pub seqlen: Option<usize>,
    pub calib_batch: Option<usize>,
    pub seed: Option<u64>,
    pub state: Option<PathBuf>,
    pub out: PathBuf,
    pub force: bool,
    pub save_steps: bool,
    pub save_masks: bool,
    pub eval: bool,
    pub max_windows: Option<usize>,
    pub eval_seen_only: bool,
    pub eval_cache: Option<PathBuf>,
    /// Evaluate on the text a dataset calibrated on (refused otherwise).
    pub allow_calib_on_eval: bool,
    /// Zero-shot tasks scored after every step (and on the dense model).
    pub eval_tasks: Vec<Task>,
    /// Score only the first N items of each task.
    pub task_limit: Option<usize>,
    /// The tasks' local copies (default `$COPAL_HOME/tasks`).
    pub tasks_dir: Option<PathBuf>,
    pub bos: Option<Bos>,
    pub device: Option<String>,
    pub dtype: Option<ComputeDtype>,
}

/// A dataset with its calibration split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalibSource {
    pub dataset: Dataset,
    pub split: Split,
}

/// The zero-shot tasks a run scores after every step, as `copal eval --tasks` scores them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskEval {
    pub tasks: Vec<Task>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    pub dir: PathBuf,
    pub bos: Bos,
}

/// The resolved plan of a prune run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrunePlan {
    pub model: String,
    pub datasets: Vec<CalibSource>,
    pub data_dir: PathBuf,
    pub nsamples: usize,
    /// Calibration windows per layer forward (set by [`PrunePlan::with_model`] if not given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calib_batch: Option<usize>,
    /// Tokens per window (set by [`PrunePlan::with_model`] if not given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seqlen: Option<usize>,
    pub seed: u64,
    #[serde(flatten)]
    pub method: MethodConfig,
    pub mode: Mode,
    pub pattern: Pattern,
    pub group: Group,
    pub propagate: Propagate,
    pub allocate: Allocation,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<PathBuf>,
    pub out: PathBuf,
    pub force: bool,
    pub save_steps: bool,
    pub save_masks: bool,
    pub eval: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_windows: Option<usize>,
    /// Evaluate after step k only the datasets seen so far (the lower triangle of R, which
    /// is all that average PPL and BWT need).
    pub eval_seen_only: bool,
    /// Reuse perplexities of identical models (experiments).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_cache: Option<PathBuf>,
    /// The user allowed evaluating on a calibration text (those evaluations are marked).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_calib_on_eval: bool,
    /// Zero-shot tasks scored after every step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_tasks: Option<TaskEval>,
    pub device: String,
    /// Compute dtype (set by [`PrunePlan::with_model`] if not given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtype: Option<ComputeDtype>,
}

impl PrunePlan {
    /// Applies the defaults and checks every value that needs no file. Errors about a value
    /// are [`crate::usage::UsageError`]s naming its setting.
    pub fn resolve(r: Request) -> Result<Self> {
        crate::usage_ensure!(
            !r.datasets.is_empty(),
            "datasets",
            "is empty; name at least one of {}, text:PATH, jsonl:PATH[:FIELD]",
            crate::data::BUILTIN.join(", ")
        );
        for (i, d) in r.datasets.iter().enumerate() {
            crate::usage_ensure!(
                !r.datasets[..i].contains(d),
                "datasets",
                "lists {d} twice; a dataset is folded in once"
            );
        }
        // A script that continues a state one dataset at a time passes the same overrides
        // every time: one for a dataset not in this run is noted and ignored.
        for (d, _) in &r.calib_split {
            if !r.datasets.contains(d) {
                crate::ui::info(format!(
                    "note: the calibration split names {d}, which is not among the datasets; \
                     ignored"
                ));
            }
        }
        let datasets = r
            .datasets
            .iter()
            .map(|d| CalibSource {
                dataset: d.clone(),
                split: r
                    .calib_split
                    .iter()
                    .find(|(o, _)| o == d)
                    .map(|(_, s)| *s)
                    .unwrap_or_else(|| d.default_calib_split()),
            })
            .collect();
        let pattern = Pattern::parse(r.pattern.as_deref().unwrap_or("unstructured"), r.sparsity)?;
        let method = MethodConfig::from_params(r.method.unwrap_or(DEFAULT_METHOD), &r.params)?;
        let m = method.method();
        let mode = r.mode.unwrap_or(m.default_mode());
        method.check_mode(mode)?;
        if r.state.is_some() && mode != Mode::Accumulate {
            crate::usage_bail!(
                "state",
                "carries the statistics of accumulate mode; in {mode} mode there is none (to \
                 continue a sequential run, pass the previous output as the model)"
            );
        }
        if matches!(pattern, Pattern::NM { .. }) && r.group.is_some() {
            crate::usage_bail!(
                "group",
                "applies to unstructured sparsity; {pattern} groups are fixed by the pattern"
            );
        }
        let allocate = r.allocate.unwrap_or_default();
        allocate.check(&pattern)?;
        method.update_stage().check(&pattern)?;
        crate::usage_ensure!(
            allocate.is_uniform() || m != Method::Dense,
            "allocate",
            "{} does not apply to dense: it prunes nothing",
            allocate.kind()
        );
        for (setting, v) in [
            ("nsamples", r.nsamples),
            ("calib_batch", r.calib_batch),
            ("max_windows", r.max_windows),
        ] {
            crate::usage_ensure!(v != Some(0), setting, "must be at least 1");
            check_window_count(setting, v)?;
        }
        let (n, s) = (
            r.nsamples.unwrap_or(DEFAULT_NSAMPLES),
            r.seqlen.unwrap_or(DEFAULT_SEQLEN),
        );
        crate::usage_ensure!(
            n.saturating_mul(s) <= MAX_CALIB_TOKENS,
            "nsamples",
            "{n} windows of {s} tokens are {} calibration tokens per dataset ({:.1} GB of \
             token ids alone); copal takes at most {MAX_CALIB_TOKENS} (the protocol's 128 × \
             2048 is 262144)",
            n.saturating_mul(s),
            n.saturating_mul(s) as f64 * 4.0 / 1e9
        );
        if let Some(s) = r.seqlen {
            crate::usage_ensure!(s >= 2, "seqlen", "must be at least 2, got {s}");
        }
        let overlap: Vec<String> = datasets_calibrating_on_eval(&r);
        crate::usage_ensure!(
            overlap.is_empty() || r.allow_calib_on_eval,
            "eval",
            "would measure perplexity on the text {} calibrates on ({}); calibrate on another \
             split (⟨calib_split⟩), evaluate without ⟨eval⟩, or pass ⟨allow_calib_on_eval⟩ \
             to do it knowingly (the results are then marked)",
            if overlap.len() == 1 {
                "that dataset"
            } else {
                "those datasets"
            },
            overlap.join(", ")
        );
        crate::usage_ensure!(r.task_limit != Some(0), "task_limit", "must be at least 1");
        crate::usage_ensure!(
            !r.eval_tasks.is_empty()
                || (r.task_limit.is_none() && r.tasks_dir.is_none() && r.bos.is_none()),
            "eval_tasks",
            "is needed with ⟨task_limit⟩, ⟨tasks_dir⟩ or ⟨bos⟩ (they apply to zero-shot tasks)"
        );
        let eval_tasks = (!r.eval_tasks.is_empty()).then(|| TaskEval {
            tasks: r.eval_tasks.clone(),
            limit: r.task_limit,
            dir: r
                .tasks_dir
                .clone()
                .unwrap_or_else(crate::eval::tasks::default_dir),
            bos: r.bos.unwrap_or_default(),
        });
        let device = r.device.unwrap_or_else(|| DEFAULT_DEVICE.to_string());
        crate::device::check(&device)?;
        Ok(Self {
            model: r.model,
            datasets,
            data_dir: crate::data::data_dir(r.data_dir),
            nsamples: r.nsamples.unwrap_or(DEFAULT_NSAMPLES),
            calib_batch: r.calib_batch,
            seqlen: r.seqlen,
            seed: r.seed.unwrap_or(DEFAULT_SEED),
            group: r.group.unwrap_or(m.default_group()),
            method,
            mode,
            pattern,
            propagate: r.propagate.unwrap_or(DEFAULT_PROPAGATE),
            allocate,
            state: r.state,
            out: r.out,
            force: r.force,
            save_steps: r.save_steps,
            save_masks: r.save_masks,
            eval: r.eval,
            max_windows: r.max_windows,
            eval_seen_only: r.eval_seen_only,
            eval_cache: r.eval_cache,
            allow_calib_on_eval: r.allow_calib_on_eval,
            eval_tasks,
            device,
            dtype: r.dtype,
        })
    }

    /// Whether a step of this plan reads calibration windows
    /// ([`crate::prune::allocate::reads_calibration`]).
    pub fn reads_calibration(&self) -> bool {
        crate::prune::allocate::reads_calibration(&self.method, &self.allocate)
    }

    /// The settings that shape the sums a state of this plan stores, by name (the state keeps
    /// them; see `state::StateSettings`).
    pub fn state_settings(&self) -> BTreeMap<String, Value> {
        shaping_settings(
            &self.method,
            &self.pattern,
            self.group,
            self.propagate,
            &self.allocate,
        )
    }

    /// Completes the plan for a model: window length, calibration batch and compute dtype
    /// where not given, and the checks that need the model's shapes.
    pub fn with_model(mut self, cfg: &LlamaConfig) -> Result<Self> {
        let seqlen = resolve_seqlen(self.seqlen, cfg.max_position_embeddings)?;
        self.seqlen = Some(seqlen);
        self.calib_batch = Some(self.calib_batch.unwrap_or(calib_batch(cfg, seqlen)));
        self.dtype = Some(
            self.dtype
                .unwrap_or(ComputeDtype::default_for(&self.device)),
        );
        // An N:M pattern needs every pruned linear's input width divisible by M.
        if let Pattern::NM { n, m } = self.pattern {
            for lin in Linear::ALL {
                let (_, w) = lin.shape(cfg);
                crate::usage_ensure!(
                    w % m == 0,
                    "pattern",
                    "{n}:{m} needs input widths divisible by {m}, but this model's {} has {w} \
                     inputs; choose M dividing it (2:4 and 4:8 fit LLaMA models)",
                    lin.module()
                );
            }
        }
        Ok(self)
    }

    /// The window length of a plan completed by [`PrunePlan::with_model`].
    pub fn seqlen(&self) -> usize {
        self.seqlen.unwrap_or(DEFAULT_SEQLEN)
    }

    /// Whether `dataset` calibrates on the text it is evaluated on.
    pub fn calibrates_on_eval(&self, dataset: &str) -> bool {
        self.datasets
            .iter()
            .any(|c| c.dataset.name() == dataset && overlaps(&c.dataset, c.split))
    }

    /// The datasets, in order.
    pub fn dataset_list(&self) -> Vec<Dataset> {
        self.datasets.iter().map(|c| c.dataset.clone()).collect()
    }
}

/// Whether calibrating `d` on `split` uses its evaluation text: a built-in dataset's evaluation
/// split, or a `text:`/`jsonl:` file (one file serves both).
fn overlaps(d: &Dataset, split: Split) -> bool {
    match d {
        Dataset::Text(_) | Dataset::Jsonl { .. } => true,
        _ => split == d.default_eval_split(),
    }
}

/// The datasets of a request with --eval that would be evaluated on their calibration text.
fn datasets_calibrating_on_eval(r: &Request) -> Vec<String> {
    if !r.eval {
        return Vec::new();
    }
    r.datasets
        .iter()
        .filter(|d| {
            let split = r
                .calib_split
                .iter()
                .find(|(o, _)| o == *d)
                .map(|(_, s)| *s)
                .unwrap_or_else(|| d.default_calib_split());
            overlaps(d, split)
        })
        .map(|d| d.name())
        .collect()
}

/// The most windows a run draws or evaluates per dataset: 8192 times the protocol's 128, and
/// bounded so that the window list is allocated only for a count that fits in memory.
pub const MAX_WINDOWS: usize = 1 << 20;
/// The most calibration tokens per dataset (1 GiB of token ids).
pub const MAX_CALIB_TOKENS: usize = 1 << 28;

/// A window count (`nsamples`, `max_windows`, `calib_batch`) within [`MAX_WINDOWS`], checked
/// before anything is allocated for it.
pub fn check_window_count(setting: &str, v: Option<usize>) -> Result<()> {
    if let Some(v) = v {
        crate::usage_ensure!(
            v <= MAX_WINDOWS,
            setting,
            "{v} is more windows than copal takes (at most {MAX_WINDOWS}; the protocol uses \
             128)"
        );
    }
    Ok(())
}

/// The window length: the one asked for (checked against the model), else 2048 capped by it.
pub fn resolve_seqlen(asked: Option<usize>, max_pos: usize) -> Result<usize> {
    match asked {
        Some(s) => {
            crate::usage_ensure!(s >= 2, "seqlen", "must be at least 2, got {s}");
            crate::usage_ensure!(
                s <= max_pos,
                "seqlen",
                "{s} exceeds the model's max_position_embeddings ({max_pos}); use {max_pos} or less"
            );
            Ok(s)
        }
        None => Ok(DEFAULT_SEQLEN.min(max_pos)),
    }
}

/// Windows of `seqlen` tokens that go through a layer together in a calibration step (at least
/// one). The taps of a batch hold Σ (in + out) floats per token over the seven linears: 40 KB
/// on the test model (batches of 8 × 512), 312 KB at LLaMA-7B shapes (one window of 2048).
/// The batch changes no result: statistics are summed one window at a time, in order
/// (`calib::run_step`).
pub fn calib_batch(cfg: &LlamaConfig, seqlen: usize) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    fn request(method: Option<Method>, params: Value) -> Request {
        Request {
            model: "m".into(),
            datasets: vec![Dataset::Ptb],
            method,
            params: params.as_object().unwrap().clone(),
            out: "o".into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_come_from_one_place() {
        let p = PrunePlan::resolve(request(None, serde_json::json!({}))).unwrap();
        assert_eq!(p.method.method(), DEFAULT_METHOD);
        assert_eq!(p.mode, DEFAULT_METHOD.default_mode());
        assert_eq!((p.nsamples, p.seed), (DEFAULT_NSAMPLES, DEFAULT_SEED));
        assert_eq!(p.pattern, Pattern::Unstructured { percent: 50.0 });
        let p = p.with_model(&cfg("smollm2-135m")).unwrap();
        assert_eq!(p.seqlen, Some(2048));
        assert_eq!(p.calib_batch, Some(2));
        assert_eq!(p.dtype, Some(ComputeDtype::F32));
    }

    #[test]
    fn magnitude_takes_no_copal_settings_and_needs_no_epsilon() {
        // Before the method table, `--eps-w 0 --eps-x 0` was refused for every method.
        let r = request(Some(Method::Magnitude), serde_json::json!({}));
        assert!(PrunePlan::resolve(r).is_ok());
        let r = request(Some(Method::Wanda), serde_json::json!({"decay": 0.5}));
        let e = PrunePlan::resolve(r).unwrap_err();
        let u = e.downcast_ref::<crate::usage::UsageError>().unwrap();
        assert_eq!(u.setting, "decay");
        assert!(u.message.contains("copal"), "{u}");
    }
}
