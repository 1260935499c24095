//! One calibration step of a run: prune every layer from the dataset's windows (drawn before
//! the run started, [`CalibData::draw`]), write the step's checkpoint (and state and masks),
//! evaluate.

use super::resume::Workdir;
use crate::calib::{self, Sinks, StepSettings};
use crate::checkpoint::writer::{CheckpointWriter, ShardWriter};
use crate::checkpoint::Checkpoint;
use crate::data::{self, corpus, Dataset, Split};
use crate::eval::choice::{Scorer, TaskResult};
use crate::eval::tasks::{Item, Task};
use crate::eval::{self, EvalResult, EvalSet};
use crate::model::{Linear, Llama, TensorSource};
use crate::plan::PrunePlan;
use crate::prune::{Method, MethodConfig, Mode};
use crate::report::{self, DataFile, StepRecordOut, StepReport};
use crate::state::{self, StateMeta, StateReader, StateSettings, StepRecord};
use crate::tokenizer::Tokenizer;
use anyhow::{Context as _, Result};
use safetensors::tensor::Dtype;
use std::collections::BTreeMap;
use std::path::Path;

/// The `sparsity_config` block added to the pruned model's config.json.
pub fn sparsity_config(plan: &PrunePlan, datasets: &[String], measured: f64) -> serde_json::Value {
    let copal = match plan.method {
        MethodConfig::Copal(c) => Some(c),
        _ => None,
    };
    let targets: Vec<&str> = Linear::ALL.iter().map(|l| l.module()).collect();
    serde_json::json!({
        "format": "dense",
        "sparsity_structure": match plan.pattern {
            crate::prune::Pattern::Unstructured { .. } => "unstructured".to_string(),
            crate::prune::Pattern::NM { n, m } => format!("{n}:{m}"),
        },
        "global_sparsity": measured,
        "targets": targets,
        "ignore": ["model.embed_tokens", "model.norm", "lm_head", "input_layernorm", "post_attention_layernorm"],
        "copal": {
            "version": env!("CARGO_PKG_VERSION"),
            "method": plan.method.method(),
            "mode": plan.mode,
            "pattern": plan.pattern,
            "group": plan.group,
            "datasets": datasets,
            "perturbation": copal.map(|c| c.perturbation()),
            "variant": copal.map(|c| c.variant()),
            "propagate": plan.propagate,
            "nsamples": plan.nsamples,
            "seqlen": plan.seqlen,
            "seed": plan.seed,
        },
    })
}

/// A dataset's calibration windows, and the file they come from.
#[derive(Debug, Clone)]
pub struct CalibData {
    pub windows: Vec<Vec<u32>>,
    pub file: DataFile,
    /// Tokens of the calibration text (or of the documents tokenised while sampling).
    pub source_tokens: usize,
}

impl CalibData {
    /// Loads `ds`'s calibration split, draws the plan's windows from it, and hashes the file.
    pub fn draw(plan: &PrunePlan, ds: &Dataset, split: Split, tok: &Tokenizer) -> Result<Self> {
        let (corpus, path) = corpus::load(ds, split, corpus::Purpose::Calibration, &plan.data_dir)
            .with_context(|| format!("loading the {} calibration split", ds.name()))?;
        let set = data::calibration_windows(
            &corpus,
            tok,
            &ds.name(),
            plan.nsamples,
            plan.seqlen(),
            plan.seed,
        )
        .with_context(|| format!("drawing calibration windows from {}", path.display()))?;
        let sha = crate::fsutil::sha256_file(&path)?;
        let provenance = set
            .positions
            .iter()
            .zip(&set.windows)
            .map(|(&(doc, start), ids)| crate::report::WindowRecord::of(doc, start, ids))
            .collect();
        Ok(Self {
            windows: set.windows,
            file: DataFile {
                dataset: ds.name(),
                split,
                path,
                sha256: sha,
                windows: provenance,
            },
            source_tokens: set.source_tokens,
        })
    }
}

/// What stays fixed over the steps of one run.
pub struct RunCtx<'a> {
    pub plan: &'a PrunePlan,
    pub dense: &'a Checkpoint,
    pub model: &'a Llama,
    pub datasets: &'a [Dataset],
    /// Per dataset, its windows (None where the method reads no data).
    pub calib: &'a [Option<CalibData>],
    pub eval_sets: &'a [EvalSet],
    pub task_items: &'a [TaskItems],
    pub tok: &'a Tokenizer,
    pub fingerprint: &'a str,
    pub settings: &'a StateSettings,
    pub work: &'a Workdir,
    /// Each step's identity, recorded when it finishes (see [`super::resume`]).
    pub identities: &'a [String],
}

/// One calibration step (dataset `k`, 0-based): prune, write the step's checkpoint (and
/// state and masks), evaluate. Returns the step's record, its data file and the new state.
pub fn prune_step(
    c: &RunCtx,
    k: usize,
    history: &mut Vec<StepRecord>,
    prior: Option<StateReader>,
    mut cache: Option<&mut eval::EvalCache>,
    overall: &indicatif::ProgressBar,
) -> Result<(StepRecordOut, Option<DataFile>, Option<StateReader>)> {
    let (plan, dense, ds) = (c.plan, c.dense, &c.datasets[k]);
    let seqlen = plan.seqlen();
    let src = &plan.datasets[k];
    let k_total = c.datasets.len();
    let label = format!("{}/{} {}", k + 1, k_total, ds.name());
    // Calibration windows (magnitude and dense need none).
    let mut data_file = None;
    let mut record = StepRecord {
        dataset: ds.name(),
        split: src.split,
        file: String::new(),
        file_sha256: String::new(),
        nsamples: 0,
        seqlen,
        seed: plan.seed,
        tokens: 0,
        source_tokens: 0,
    };
    let windows: &[Vec<u32>] = match &c.calib[k] {
        Some(d) => {
            record.file = d
                .file
                .path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            record.file_sha256 = d.file.sha256.clone();
            record.nsamples = plan.nsamples;
            record.tokens = plan.nsamples * seqlen;
            record.source_tokens = d.source_tokens;
            data_file = Some(d.file.clone());
            &d.windows
        }
        None => &[],
    };
    history.push(record);
    let names: Vec<String> = history.iter().map(|h| h.dataset.clone()).collect();

    let step_dir = c.work.step_dir(k + 1);
    if step_dir.exists() {
        // Left by a run that was cut off during this step.
        std::fs::remove_dir_all(&step_dir)?;
    }
    std::fs::create_dir_all(&step_dir)?;
    let mut writer = CheckpointWriter::create(dense, &step_dir, &BTreeMap::new())?;
    let mut masks = if plan.save_masks {
        Some(mask_writer(dense, &step_dir)?)
    } else {
        None
    };
    let state_path = c.work.state_file(k + 1);
    let mut state_w = if plan.mode == Mode::Accumulate {
        let meta = StateMeta {
            format: state::FORMAT.into(),
            copal_version: env!("CARGO_PKG_VERSION").into(),
            model_fingerprint: c.fingerprint.to_string(),
            settings: c.settings.clone(),
            steps: history.clone(),
        };
        Some(state::create_writer(
            &state_path,
            &dense.config,
            &plan.method,
            &meta,
        )?)
    } else {
        None
    };
    let prev_ckpt = match plan.mode {
        Mode::Sequential if k > 0 => Some(Checkpoint::open(&c.work.step_dir(k))?),
        _ => None,
    };
    let base: &dyn TensorSource = prev_ckpt
        .as_ref()
        .map(|c| c as &dyn TensorSource)
        .unwrap_or(dense);
    let step_settings = StepSettings::of(plan, ds.name());
    let report = if plan.method.method() == Method::Dense {
        StepReport {
            linears: vec![],
            layer_sparsity: vec![0.0; dense.config.num_hidden_layers],
            sparsity: 0.0,
            seconds: 0.0,
            calib_tokens: 0,
            flops: 0.0,
            layers: Vec::new(),
            layer_targets: None,
            phases: Default::default(),
        }
    } else {
        let prior_ref = if plan.mode == Mode::Accumulate {
            prior.as_ref().map(|p| p as &dyn calib::Priors)
        } else {
            None
        };
        let mut sinks = Sinks {
            model: &mut writer,
            state: state_w.as_mut(),
            masks: masks.as_mut(),
            label: &label,
            overall: Some(overall),
        };
        calib::run_step(
            c.model,
            base,
            windows,
            &step_settings,
            prior_ref,
            &mut sinks,
        )?
    };
    let mut cfg_json = dense.config_json.clone();
    cfg_json["sparsity_config"] = sparsity_config(plan, &names, report.sparsity);
    writer.finish(prev_ckpt.as_ref().unwrap_or(dense), &cfg_json)?;
    if let Some(m) = masks {
        m.finish()?;
    }
    drop(prior);
    let next_prior = match state_w {
        Some(sw) => {
            sw.finish()?;
            Some(StateReader::open(&state_path)?)
        }
        None => None,
    };
    crate::ui::info(format!(
        "step {}/{} {}: sparsity {:.4} in {:.1}s",
        k + 1,
        k_total,
        ds.name(),
        report.sparsity,
        report.seconds
    ));
    // The step's checkpoint, opened once for its evaluations, and its fingerprint (the
    // evaluation cache's key), hashed once for both.
    let pruned = match plan.eval || !c.task_items.is_empty() {
        true => Some(Checkpoint::open(&step_dir)?),
        false => None,
    };
    let fp = match (&pruned, &cache) {
        (Some(p), Some(_)) => report::fingerprint(&report::checksum_model(p)?),
        _ => String::new(),
    };
    let eval = if let Some(pruned) = pruned.as_ref().filter(|_| plan.eval) {
        let seen = c.eval_sets.len() - k_total + k + 1;
        let sets = if plan.eval_seen_only {
            &c.eval_sets[..seen]
        } else {
            c.eval_sets
        };
        let mut res = evaluate_checkpoint(
            c.model,
            pruned,
            sets,
            &format!("eval {}", k + 1),
            cache.as_deref_mut().map(|c| (c, fp.as_str())),
        )?;
        for r in res.iter_mut() {
            r.calibrated_on = plan.calibrates_on_eval(&r.dataset);
        }
        for r in &res {
            crate::ui::info(format!("  {}", r.line()));
        }
        Some(res)
    } else {
        None
    };
    let tasks = match pruned.as_ref().filter(|_| !c.task_items.is_empty()) {
        Some(pruned) => Some(score_tasks(
            c,
            pruned,
            &format!("step {}", k + 1),
            cache.map(|c| (c, fp.as_str())),
        )?),
        None => None,
    };
    let record = StepRecordOut {
        dataset: ds.name(),
        split: src.split,
        dir: step_dir,
        report,
        eval,
        tasks,
    };
    Ok((record, data_file, next_prior))
}

/// A zero-shot task's items, loaded before the run.
#[derive(Debug, Clone)]
pub struct TaskItems {
    pub task: Task,
    /// The split the items came from.
    pub split: String,
    pub items: Vec<Item>,
}

impl TaskItems {
    /// What identifies these items' scores for a given model and BOS rule (the evaluation
    /// cache's key): the task, the split, and a SHA-256 over every request and gold choice.
    pub fn cache_key(&self, bos: crate::tokenizer::Bos) -> String {
        let digest = crate::fsutil::sha256_hex(self.items.iter().flat_map(|it| {
            let reqs = it.requests.iter().flat_map(|(c, k)| [c.clone(), k.clone()]);
            reqs.chain(it.choices.iter().cloned())
                .chain([it.gold.to_string()])
                .map(|s| format!("{}:{s}", s.len()))
        }));
        format!(
            "{}|{}|{}|{bos}|{digest}",
            self.task.name(),
            self.split,
            self.items.len()
        )
    }
}

/// The plan's zero-shot tasks scored on a checkpoint (`copal eval --tasks`'s scoring), through
/// the cache when there is one (with the checkpoint's fingerprint, its key).
pub fn score_tasks(
    c: &RunCtx,
    ckpt: &Checkpoint,
    label: &str,
    mut cache: Option<(&mut eval::EvalCache, &str)>,
) -> Result<Vec<TaskResult>> {
    let Some(e) = &c.plan.eval_tasks else {
        return Ok(Vec::new());
    };
    let scorer = Scorer {
        model: c.model,
        src: ckpt,
        tok: c.tok,
        bos: e.bos,
        max_len: c.dense.config.max_position_embeddings,
    };
    let mut out = Vec::new();
    for t in c.task_items {
        let score = || {
            scorer
                .score(t.task, &t.split, &t.items)
                .with_context(|| format!("scoring {} on the {label} model", t.task.name()))
        };
        let r = match cache.as_mut() {
            Some((cache, fp)) => cache.task(fp, &t.cache_key(e.bos), score)?,
            None => score()?,
        };
        crate::ui::info(format!("  {}", r.line()));
        out.push(r);
    }
    Ok(out)
}

/// Perplexities of a checkpoint, through the cache when there is one (with the checkpoint's
/// fingerprint, its key).
pub fn evaluate_checkpoint(
    model: &Llama,
    ckpt: &Checkpoint,
    sets: &[EvalSet],
    label: &str,
    cache: Option<(&mut eval::EvalCache, &str)>,
) -> Result<Vec<EvalResult>> {
    match cache {
        Some((c, fp)) => c.evaluate(fp, model, ckpt, sets, label),
        None => eval::evaluate(model, ckpt, sets, label),
    }
}

/// masks.safetensors: per linear, U8 (out, ceil(in/8)) packed keep-bits.
pub fn mask_writer(dense: &Checkpoint, dir: &Path) -> Result<ShardWriter> {
    let cfg = &dense.config;
    let mut layout = Vec::new();
    for l in 0..cfg.num_hidden_layers {
        for lin in Linear::ALL {
            let (o, i) = lin.shape(cfg);
            layout.push((lin.tensor_name(l), Dtype::U8, vec![o, i.div_ceil(8)]));
        }
    }
    let mut md = BTreeMap::new();
    md.insert(
        "copal.masks".to_string(),
        "packed bits, row-major, LSB first along the input dimension, 1 = kept".to_string(),
    );
    ShardWriter::create(&dir.join("masks.safetensors"), &layout, &md)
}
