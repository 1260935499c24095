//! A dataset sequence: one calibration step per dataset, the evaluation matrix R, average
//! perplexity and backward transfer (COPAL.md §1, §5; [`metrics`]).
//!
//! Modes (how a method is used across datasets, [`crate::prune::Mode`]):
//! - accumulate: statistics summed over every dataset so far, masks from the dense weights
//!   (COPAL; the statistics travel in the state file);
//! - global: the dense model pruned from the newest dataset only ("forgetting");
//! - sequential: the previous step's pruned model pruned with the newest dataset ("weight
//!   stasis": scores that multiply |W| are zero on pruned weights).
//!
//! Everything is written under a staging directory beside `--out` and moved into place only
//! when the run succeeds ([`resume`]); the state file is replaced atomically after every
//! dataset.

pub mod resume;
pub mod step;

use crate::calib::{self, StepSettings};
use crate::checkpoint::Checkpoint;
use crate::data::Dataset;
use crate::eval::choice::TaskResult;
use crate::eval::{self, EvalResult, EvalSet};
use crate::model::Llama;
use crate::plan::PrunePlan;
use crate::prune::Mode;
use crate::report::{self, DataFile, FileSum, RunRecord, StepRecordOut};
use crate::state::{StateReader, StateSettings, StepRecord};
use crate::tokenizer::Tokenizer;
use anyhow::{ensure, Context as _, Result};
use resume::{DoneStep, Manifest, Workdir};
use std::path::{Path, PathBuf};
use std::time::Instant;
use step::{evaluate_checkpoint, prune_step, score_tasks, RunCtx};
pub use step::{CalibData, TaskItems};

/// A plan completed against its model and checked against every file it needs, before any
/// work: what [`run`] takes.
pub struct Prepared {
    pub plan: PrunePlan,
    pub dense: Checkpoint,
    pub tok: Tokenizer,
    /// Per dataset of the plan, its calibration windows (None where none are needed).
    pub calib: Vec<Option<CalibData>>,
    /// The state the run continues, checked against the model and the plan.
    pub state: Option<StateReader>,
    /// The datasets the state held when the run started.
    pub history: Vec<StepRecord>,
    /// Every dataset seen so far (the state's, then the plan's), tokenised for evaluation.
    pub eval_sets: Vec<EvalSet>,
    /// The zero-shot tasks scored after every step: each task, the split read, its items.
    pub task_items: Vec<TaskItems>,
    /// SHA-256 of the model's files, and their fingerprint.
    pub model_files: Vec<FileSum>,
    pub fingerprint: String,
    /// Pinned dataset files a run would download (prepared without downloading).
    pub downloads: Vec<String>,
}

impl Prepared {
    /// How many FLOPs the plan's steps need (`calib::step_flops`), and the bytes it writes
    /// (one checkpoint of the input's size, and the state).
    pub fn estimate(&self) -> serde_json::Value {
        let plan = &self.plan;
        let cfg = &self.dense.config;
        let flops: f64 = plan
            .datasets
            .iter()
            .map(|d| {
                let s = StepSettings::of(plan, d.dataset.name());
                calib::step_flops(cfg, &s, plan.nsamples, plan.seqlen())
            })
            .sum();
        let model_bytes: u64 = self
            .dense
            .shards
            .iter()
            .filter_map(|s| std::fs::metadata(&s.path).ok())
            .map(|m| m.len())
            .sum();
        let state_bytes: u64 = if plan.mode == Mode::Accumulate {
            (0..cfg.num_hidden_layers)
                .flat_map(|l| crate::state::state_layout(&plan.method, cfg, l))
                .map(|(_, shape)| 4 * shape.iter().product::<usize>() as u64)
                .sum()
        } else {
            0
        };
        serde_json::json!({
            "flops": flops,
            // The development machine's f32 GEMM rate on 2 cores (docs/performance.md); a
            // GPU or more cores are faster.
            "hours_at_390_gflops": flops / 390e9 / 3600.0,
            "writes_bytes": {"model": model_bytes, "state": state_bytes},
            "reads": self.calib.iter().flatten().map(|d| &d.file.path).collect::<Vec<_>>(),
            "downloads": self.downloads,
        })
    }
}

/// Resolves the plan's model (directory, alias or hub id), opens it, completes the plan with
/// it ([`PrunePlan::with_model`]) and checks everything the run will need, so that a mistake
/// that can be known before the first step is reported before it: the output (and the rule
/// that `--force` replaces only what copal wrote), the state file, and every dataset (its
/// file, its fields, its length: the windows are drawn here).
pub fn prepare(plan: PrunePlan) -> Result<Prepared> {
    prepare_with(plan, true)
}

/// [`prepare`]; without `download`, a pinned dataset that is neither in the data directory nor
/// in the hub cache is listed in [`Prepared::downloads`] instead of fetched (its windows are
/// then drawn by the run). `--dry-run` prepares so.
pub fn prepare_with(plan: PrunePlan, download: bool) -> Result<Prepared> {
    let dir = crate::checkpoint::resolve::resolve(&plan.model, crate::ui::quiet())?;
    let dense = Checkpoint::open(&dir).with_context(|| format!("opening model {}", plan.model))?;
    let plan = plan.with_model(&dense.config)?;
    check_outputs(&plan, &dense)?;
    let tok = Tokenizer::open(&dense.dir)?;
    // The state: its file, its model, its settings.
    let (mut model_files, mut fingerprint) = (Vec::new(), String::new());
    let mut state = None;
    if let Some(path) = plan.state.as_ref().filter(|s| s.exists()) {
        model_files = report::checksum_model(&dense)?;
        fingerprint = report::fingerprint(&model_files);
        let r = StateReader::open(path)?;
        r.meta
            .check_continues(&fingerprint, &StateSettings::of(&plan), path)?;
        r.check_shapes(&dense.config, &plan.method)?;
        state = Some(r);
    }
    // The datasets the state held when this run started: its own, or, when an interrupted
    // run of the same output left a manifest whose history the state extends (the state
    // follows finished steps), that run's.
    let held: Vec<StepRecord> = state
        .as_ref()
        .map(|r: &StateReader| r.meta.steps.clone())
        .unwrap_or_default();
    let history = match resume::peek_manifest(&plan.out) {
        Some(m) if held.starts_with(&m.initial_history) && state.is_some() => m.initial_history,
        _ => held,
    };
    for d in plan.dataset_list() {
        ensure!(
            !history.iter().any(|h| h.dataset == d.name()),
            "{} already contains {d}; a dataset is folded in once (use a new state file to \
             start over)",
            plan.state
                .as_deref()
                .unwrap_or(Path::new("the state"))
                .display()
        );
    }
    let needs_windows = plan.reads_calibration();
    let mut downloads = Vec::new();
    let mut remote = |ds: &Dataset, split| -> Result<bool> {
        if download {
            return Ok(false);
        }
        Ok(
            match crate::data::corpus::locate(ds, split, &plan.data_dir)? {
                crate::data::corpus::Located::Remote(pin) => {
                    downloads.push(format!("{}@{}/{}", pin.repo, pin.revision, pin.path));
                    true
                }
                _ => false,
            },
        )
    };
    let mut calib = Vec::new();
    for src in &plan.datasets {
        calib.push(match needs_windows && !remote(&src.dataset, src.split)? {
            true => Some(CalibData::draw(&plan, &src.dataset, src.split, &tok)?),
            false => None,
        });
    }
    let eval_sets = if plan.eval {
        let mut ds: Vec<Dataset> = history
            .iter()
            .map(|h| Dataset::parse(&h.dataset))
            .collect::<Result<_>>()?;
        ds.extend(plan.dataset_list());
        let mut here = Vec::new();
        for d in ds {
            if !remote(&d, d.default_eval_split())? {
                here.push(d);
            }
        }
        eval::load_sets(&here, &plan.data_dir, &tok, plan.seqlen(), plan.max_windows)?
    } else {
        Vec::new()
    };
    let mut task_items = Vec::new();
    if let Some(e) = &plan.eval_tasks {
        for &task in &e.tasks {
            // A dry run lists a pinned task file not in the cache instead of fetching it.
            if let eval::tasks::Located::Pinned { pin, cached: None } =
                eval::tasks::locate(task, &e.dir)?
            {
                if !download {
                    downloads.push(format!("{}@{}/{}", pin.repo, pin.revision, pin.path));
                    continue;
                }
            }
            let (split, items) = eval::tasks::load(task, &e.dir, e.limit)?;
            task_items.push(TaskItems { task, split, items });
        }
    }
    Ok(Prepared {
        plan,
        dense,
        tok,
        calib,
        state,
        history,
        eval_sets,
        task_items,
        model_files,
        fingerprint,
        downloads,
    })
}

/// The output directory and the state file can be written, and nothing the user owns is
/// replaced: see [`crate::fsutil::check_replace`].
fn check_outputs(plan: &PrunePlan, dense: &Checkpoint) -> Result<()> {
    let cwd = std::env::current_dir().unwrap_or_default();
    let mut protected: Vec<(&str, &Path)> = vec![
        ("the current directory", cwd.as_path()),
        ("the input model", dense.dir.as_path()),
    ];
    if let Some(s) = &plan.state {
        protected.push(("the state file", s.as_path()));
    }
    protected.push(("the data directory", plan.data_dir.as_path()));
    crate::fsutil::check_replace(&plan.out, plan.force, "out", &protected)?;
    // The files copied into the output are the checkpoint's own.
    dense.side_files()?;
    crate::fsutil::check_writable_parent(&plan.out, "out", true)?;
    if let Some(s) = &plan.state {
        crate::usage_ensure!(
            !s.is_dir(),
            "state",
            "{} is a directory; it names the state file (e.g. run.state)",
            s.display()
        );
        crate::fsutil::check_writable_parent(s, "state", false)?;
    }
    Ok(())
}

/// What a run opened before its first step.
struct Opened<'a> {
    p: &'a Prepared,
    model: Llama,
    model_files: Vec<FileSum>,
    fingerprint: String,
    settings: StateSettings,
}

/// Runs a prepared plan and returns the run record (also written to `<out>/copal.json`).
///
/// A run that stops with an error after finishing some steps keeps its staging directory,
/// and the same command resumes it (see [`resume`]).
pub fn run(mut p: Prepared) -> Result<RunRecord> {
    let started = Instant::now();
    let plan = &p.plan;
    let device = crate::device::open(&plan.device)?;
    let dtype = plan
        .dtype
        .unwrap_or(crate::device::ComputeDtype::default_for(&plan.device))
        .dtype();
    let cfg = &p.dense.config;
    let model = Llama::load(&p.dense, cfg, dtype, &device)?;
    crate::ui::info(format!(
        "copal {}: {} ({} layers) · {} {} {} · datasets {} · {} × {} tokens each",
        env!("CARGO_PKG_VERSION"),
        plan.model,
        cfg.num_hidden_layers,
        plan.method.method(),
        plan.mode,
        plan.pattern,
        plan.datasets
            .iter()
            .map(|d| format!("{}[{}]", d.dataset, d.split))
            .collect::<Vec<_>>()
            .join(" → "),
        plan.nsamples,
        plan.seqlen()
    ));
    let (model_files, fingerprint) = if p.fingerprint.is_empty() {
        let files = report::checksum_model(&p.dense)?;
        let fp = report::fingerprint(&files);
        (files, fp)
    } else {
        (p.model_files.clone(), p.fingerprint.clone())
    };
    let user_state = p.state.take();
    let p = &p;
    let plan = &p.plan;
    let opened = Opened {
        p,
        model,
        model_files,
        settings: StateSettings::of(plan),
        fingerprint,
    };
    let base = resume::base_hash(plan, &opened.fingerprint)?;
    let identities = step_identities(p, &base);
    let (work, manifest) = Workdir::open(&plan.out, &base)?;
    let need_state = plan.mode == Mode::Accumulate;
    let done = match &manifest {
        Some(_) => work.finished(need_state, &identities),
        None => Vec::new(),
    };
    match run_in(
        &opened,
        user_state,
        &work,
        manifest,
        done.clone(),
        &base,
        &identities,
        started,
    ) {
        Ok(rec) => {
            work.remove();
            Ok(rec)
        }
        Err(e) if work.finished(need_state, &identities).is_empty() => {
            work.remove();
            Err(e)
        }
        Err(e) => {
            let dir = work.dir.clone();
            work.keep();
            Err(e.context(format!(
                "finished steps are kept in {}: rerun the same command to resume, or delete it",
                dir.display()
            )))
        }
    }
}

/// Each step's identity (see [`resume`]).
fn step_identities(p: &Prepared, base: &str) -> Vec<String> {
    let mut acc = Vec::new();
    p.plan
        .datasets
        .iter()
        .zip(&p.calib)
        .map(|(src, c)| {
            let sha = c
                .as_ref()
                .map(|c| c.file.sha256.clone())
                .unwrap_or_default();
            acc.push((src.dataset.name(), src.split.to_string(), sha));
            resume::step_identity(base, &acc)
        })
        .collect()
}

/// The run inside its staging directory: the steps not yet done, then the record and the
/// final move into place.
#[allow(clippy::too_many_arguments)]
fn run_in(
    o: &Opened,
    user_state: Option<StateReader>,
    work: &Workdir,
    manifest: Option<Manifest>,
    done: Vec<DoneStep>,
    base: &str,
    identities: &[String],
    started: Instant,
) -> Result<RunRecord> {
    let (plan, dense) = (&o.p.plan, &o.p.dense);
    let datasets = plan.dataset_list();
    let initial_history = match &manifest {
        Some(m) => m.initial_history.clone(),
        None => o.p.history.clone(),
    };
    if let (Some(m), Some(r), Some(path)) = (&manifest, &user_state, &plan.state) {
        // The state file may have moved on by the steps this run already finished.
        let expected: Vec<StepRecord> = m
            .initial_history
            .iter()
            .cloned()
            .chain(done.iter().map(|d| d.history.clone()))
            .collect();
        let n = r.meta.steps.len();
        ensure!(
            n >= m.initial_history.len()
                && n <= expected.len()
                && r.meta.steps[..] == expected[..n],
            "{} changed since the interrupted run in {} started; delete that directory to \
             start over",
            path.display(),
            work.dir.display()
        );
    }
    if manifest.is_none() {
        work.write_manifest(&Manifest {
            plan_hash: base.to_string(),
            copal_version: env!("CARGO_PKG_VERSION").into(),
            initial_history: initial_history.clone(),
        })?;
    }
    if !initial_history.is_empty() {
        crate::ui::info(format!(
            "continuing the state (datasets so far: {})",
            initial_history
                .iter()
                .map(|h| h.dataset.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !done.is_empty() {
        crate::ui::info(format!(
            "resuming {}: {} of {} steps already finished",
            work.dir.display(),
            done.len(),
            datasets.len()
        ));
    }
    let mut all_names: Vec<String> = initial_history.iter().map(|s| s.dataset.clone()).collect();
    all_names.extend(datasets.iter().map(Dataset::name));
    let ctx = RunCtx {
        plan,
        dense,
        model: &o.model,
        datasets: &datasets,
        calib: &o.p.calib,
        eval_sets: &o.p.eval_sets,
        task_items: &o.p.task_items,
        tok: &o.p.tok,
        fingerprint: &o.fingerprint,
        settings: &o.settings,
        work,
        identities,
    };
    let need_state = plan.mode == Mode::Accumulate;
    let prior = match (done.len(), need_state) {
        (0, _) => user_state,
        (k, true) => Some(StateReader::open(&work.state_file(k))?),
        (_, false) => None,
    };
    let (steps, (dense_eval, dense_tasks), data_files) =
        run_steps(&ctx, done.clone(), prior, &initial_history)?;
    let final_dir = work.step_dir(datasets.len());

    let dense_scores = report::evaluation_scores(dense_eval.as_deref(), dense_tasks.as_deref());
    let step_scores: Vec<Vec<_>> = steps.iter().map(StepRecordOut::scores).collect();
    let scores = report::score_matrices(&all_names, &dense_scores, &step_scores);
    let ppl = scores.iter().find(|m| m.metric == eval::score::PPL);
    let record = RunRecord {
        copal_version: env!("CARGO_PKG_VERSION").to_string(),
        command: std::env::args().collect(),
        plan: plan.clone(),
        model_dir: dense.dir.clone(),
        model_fingerprint: o.fingerprint.clone(),
        model_files: o.model_files.clone(),
        data_files,
        compute: format!("{:?} {:?}", o.model.device, o.model.dtype),
        threads: rayon::current_num_threads(),
        datasets: all_names.clone(),
        sparsity: steps.last().map(|s| s.report.sparsity).unwrap_or(0.0),
        steps,
        dense_eval,
        dense_tasks,
        ppl_matrix: ppl.map(|m| m.nan_rows()),
        avg_ppl: ppl.map(|m| m.average.unwrap_or(f64::NAN)),
        bwt: ppl.and_then(|m| m.bwt),
        scores,
        resumed_steps: done.len(),
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_bytes: crate::probe::peak_rss_bytes(),
    };
    crate::checkpoint::writer::write_json(
        &final_dir.join("copal.json"),
        &serde_json::to_value(&record)?,
    )?;
    crate::fsutil::replace_dir(&final_dir, &plan.out)?;
    Ok(record)
}

/// The dense model's perplexities and task scores.
type DenseEval = (Option<Vec<EvalResult>>, Option<Vec<TaskResult>>);
type StepsOut = (Vec<StepRecordOut>, DenseEval, Vec<DataFile>);

/// Runs the steps not yet done; returns every step's record (reused ones included).
fn run_steps(
    c: &RunCtx,
    done: Vec<DoneStep>,
    mut prior: Option<StateReader>,
    initial_history: &[StepRecord],
) -> Result<StepsOut> {
    let plan = c.plan;
    let mut cache = match &plan.eval_cache {
        Some(p) => Some(eval::EvalCache::open(p)?),
        None => None,
    };
    let dense_eval = match (plan.eval, c.work.dense_eval()) {
        (false, _) => None,
        (true, Some(r)) => Some(r),
        (true, None) => {
            // The dense model's fingerprint was computed when the run opened it.
            let cached = cache.as_mut().map(|k| (k, c.fingerprint));
            let r = evaluate_checkpoint(c.model, c.dense, c.eval_sets, "eval dense", cached)?;
            c.work.save_dense_eval(&r)?;
            Some(r)
        }
    };
    let dense_tasks = match (c.task_items.is_empty(), c.work.dense_tasks()) {
        (true, _) => None,
        (false, Some(r)) => Some(r),
        (false, None) => {
            let cached = cache.as_mut().map(|k| (k, c.fingerprint));
            let r = score_tasks(c, c.dense, "dense", cached)?;
            c.work.save_dense_tasks(&r)?;
            Some(r)
        }
    };
    let mut history: Vec<StepRecord> = initial_history.to_vec();
    let mut steps = Vec::new();
    let mut data_files = Vec::new();
    for d in &done {
        history.push(d.history.clone());
        steps.push(d.record.clone());
        data_files.extend(d.data_file.clone());
    }
    let k_total = c.datasets.len();
    let layers = c.dense.config.num_hidden_layers;
    // The whole run at a glance: dataset × layer, with an ETA.
    let overall = crate::ui::bar(((k_total - done.len()) * layers) as u64, "prune");
    overall.set_message("dataset × layer");
    for k in done.len()..k_total {
        let (record, data_file, next_prior) =
            prune_step(c, k, &mut history, prior.take(), cache.as_mut(), &overall)?;
        prior = next_prior;
        c.work.mark_done(
            k + 1,
            &DoneStep {
                identity: c.identities[k].clone(),
                record: record.clone(),
                history: history.last().cloned().context("internal: empty history")?,
                data_file: data_file.clone(),
            },
        )?;
        // The user's state file follows the finished steps.
        if let (Some(path), true) = (&plan.state, plan.mode == Mode::Accumulate) {
            crate::fsutil::install_file(&c.work.state_file(k + 1), path)?;
        }
        // Only the newest checkpoint and state are needed from here on.
        if k > 0 {
            if !plan.save_steps {
                let _ = std::fs::remove_dir_all(c.work.step_dir(k));
            }
            let _ = std::fs::remove_file(c.work.state_file(k));
        }
        data_files.extend(data_file);
        steps.push(record);
    }
    overall.finish_and_clear();
    // A resumed run whose steps were all finished still owes the user the newest state.
    if let (Some(path), true, true) = (&plan.state, plan.mode == Mode::Accumulate, !done.is_empty())
    {
        crate::fsutil::install_file(&c.work.state_file(k_total), path)?;
    }
    let final_dir = c.work.step_dir(k_total);
    if plan.save_steps && k_total > 1 {
        let keep = final_dir.join("steps");
        std::fs::create_dir_all(&keep)?;
        for (k, s) in steps.iter_mut().enumerate().take(k_total - 1) {
            let name = format!("{}-{}", k + 1, crate::fsutil::name_part(&s.dataset));
            std::fs::rename(c.work.step_dir(k + 1), keep.join(&name))?;
            s.dir = PathBuf::from("steps").join(name);
        }
    } else {
        for s in steps.iter_mut().take(k_total.saturating_sub(1)) {
            s.dir = PathBuf::new();
        }
    }
    if let Some(last) = steps.last_mut() {
        last.dir = PathBuf::from(".");
    }
    Ok((steps, (dense_eval, dense_tasks), data_files))
}
