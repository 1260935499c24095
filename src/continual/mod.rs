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

pub mod metrics;
pub mod resume;
pub mod step;

use crate::checkpoint::Checkpoint;
use crate::data::{corpus, Dataset};
use crate::eval::{self, EvalResult, EvalSet};
use crate::model::Llama;
use crate::plan::PrunePlan;
use crate::prune::Mode;
use crate::report::{self, DataFile, FileSum, RunRecord, StepRecordOut};
use crate::state::{StateReader, StateSettings, StepRecord};
use crate::tokenizer::Tokenizer;
use anyhow::{ensure, Context as _, Result};
use metrics::{continual_metrics, ppl_matrix};
use resume::{DoneStep, Manifest, Workdir};
use std::path::{Path, PathBuf};
use std::time::Instant;
use step::{evaluate_checkpoint, prune_step, sanitize, RunCtx};

/// A plan completed against its model, with the model opened: what [`run`] takes.
pub struct Prepared {
    pub plan: PrunePlan,
    pub dense: Checkpoint,
}

/// Resolves the plan's model (directory, alias or hub id), opens it and completes the plan
/// with it ([`PrunePlan::with_model`]).
pub fn prepare(plan: PrunePlan) -> Result<Prepared> {
    let dir = crate::checkpoint::resolve::resolve(&plan.model, crate::ui::quiet())?;
    let dense = Checkpoint::open(&dir).with_context(|| format!("opening model {}", plan.model))?;
    let plan = plan.with_model(&dense.config)?;
    Ok(Prepared { plan, dense })
}

/// The checks that need the file system: every data file exists, and the output may be
/// written where it was asked for.
pub fn preflight(p: &Prepared) -> Result<()> {
    let plan = &p.plan;
    for src in &plan.datasets {
        if plan.method.needs_data() || !plan.allocate.is_uniform() {
            corpus::find(&src.dataset, src.split, &plan.data_dir)?;
        }
        if plan.eval {
            let d = &src.dataset;
            corpus::find(d, d.default_eval_split(), &plan.data_dir)?;
        }
    }
    // Never write into or over the input.
    let out = &plan.out;
    if let (Ok(a), Ok(b)) = (out.canonicalize(), p.dense.dir.canonicalize()) {
        ensure!(
            a != b,
            "--out {} is the input model; choose another directory",
            out.display()
        );
    }
    if out.exists() {
        ensure!(
            plan.force,
            "--out {} already exists; pass --force to replace it",
            out.display()
        );
    }
    if let Some(s) = &plan.state {
        ensure!(
            !s.starts_with(out),
            "--state {} lies inside --out; keep the state outside the output directory",
            s.display()
        );
    }
    Ok(())
}

/// What a run opened before its first step.
struct Opened<'a> {
    p: &'a Prepared,
    model: Llama,
    tok: Tokenizer,
    model_files: Vec<FileSum>,
    fingerprint: String,
    settings: StateSettings,
}

/// Runs a prepared plan and returns the run record (also written to `<out>/copal.json`).
///
/// A run that stops with an error after finishing some steps keeps its staging directory,
/// and the same command resumes it (see [`resume`]).
pub fn run(p: &Prepared) -> Result<RunRecord> {
    let started = Instant::now();
    preflight(p)?;
    let (plan, dense) = (&p.plan, &p.dense);
    let device = crate::device::open(&plan.device)?;
    let dtype = plan
        .dtype
        .unwrap_or(crate::device::ComputeDtype::default_for(&plan.device))
        .dtype();
    let cfg = &dense.config;
    let tok = Tokenizer::open(&dense.dir)?;
    let model = Llama::load(dense, cfg, dtype, &device)?;
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
    let model_files = report::checksum_model(dense)?;
    let fingerprint = report::fingerprint(&model_files);
    let settings = StateSettings::of(plan);
    let mut user_state = None;
    if let Some(path) = plan.state.as_ref().filter(|s| s.exists()) {
        let r = StateReader::open(path)?;
        r.meta.check_continues(&fingerprint, &settings, path)?;
        r.check_shapes(cfg, &plan.method)?;
        user_state = Some(r);
    }
    let opened = Opened {
        p,
        model,
        tok,
        model_files,
        fingerprint,
        settings,
    };

    let hash = resume::plan_hash(plan)?;
    let (work, manifest) = Workdir::open(&plan.out, &hash)?;
    let need_state = plan.mode == Mode::Accumulate;
    let done = match &manifest {
        Some(_) => work.finished(need_state),
        None => Vec::new(),
    };
    match run_in(
        &opened,
        user_state,
        &work,
        manifest,
        done.clone(),
        &hash,
        started,
    ) {
        Ok(rec) => {
            work.remove();
            Ok(rec)
        }
        Err(e) if work.finished(need_state).is_empty() => {
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

/// The run inside its staging directory: the steps not yet done, then the record and the
/// final move into place.
fn run_in(
    o: &Opened,
    user_state: Option<StateReader>,
    work: &Workdir,
    manifest: Option<Manifest>,
    done: Vec<DoneStep>,
    hash: &str,
    started: Instant,
) -> Result<RunRecord> {
    let (plan, dense) = (&o.p.plan, &o.p.dense);
    let datasets = plan.dataset_list();
    let initial_history = match &manifest {
        Some(m) => m.initial_history.clone(),
        None => user_state
            .as_ref()
            .map(|r| r.meta.steps.clone())
            .unwrap_or_default(),
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
    for d in datasets.iter().skip(done.len()) {
        ensure!(
            !initial_history.iter().any(|h| h.dataset == d.name()),
            "{} already contains {}; a dataset is folded in once (use a new state file to \
             start over)",
            plan.state
                .as_deref()
                .unwrap_or(Path::new("the state"))
                .display(),
            d.name()
        );
    }
    if manifest.is_none() {
        work.write_manifest(&Manifest {
            plan_hash: hash.to_string(),
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

    // Evaluation sets: every dataset seen so far, tokenised once.
    let mut all_names: Vec<String> = initial_history.iter().map(|s| s.dataset.clone()).collect();
    all_names.extend(datasets.iter().map(Dataset::name));
    let eval_sets: Vec<EvalSet> = if plan.eval {
        let ds: Vec<Dataset> = all_names
            .iter()
            .map(|n| Dataset::parse(n))
            .collect::<Result<_>>()?;
        eval::load_sets(&ds, &plan.data_dir, &o.tok, plan.seqlen(), plan.max_windows)?
    } else {
        Vec::new()
    };
    let ctx = RunCtx {
        plan,
        dense,
        model: &o.model,
        tok: &o.tok,
        datasets: &datasets,
        eval_sets: &eval_sets,
        fingerprint: &o.fingerprint,
        settings: &o.settings,
        work,
    };
    let need_state = plan.mode == Mode::Accumulate;
    let prior = match (done.len(), need_state) {
        (0, _) => user_state,
        (k, true) => Some(StateReader::open(&work.state_file(k))?),
        (_, false) => None,
    };
    let (steps, dense_eval, data_files) = run_steps(&ctx, done.clone(), prior, &initial_history)?;
    let final_dir = work.step_dir(datasets.len());

    let r = ppl_matrix(&steps, &all_names);
    let offset = all_names.len() - datasets.len();
    let (avg_ppl, bwt) = if plan.eval {
        continual_metrics(&r, offset)
    } else {
        (f64::NAN, None)
    };
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
        ppl_matrix: if plan.eval { Some(r) } else { None },
        avg_ppl: if plan.eval { Some(avg_ppl) } else { None },
        bwt,
        resumed_steps: done.len(),
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_bytes: report::peak_rss_bytes(),
    };
    crate::checkpoint::writer::write_json(
        &final_dir.join("copal.json"),
        &serde_json::to_value(&record)?,
    )?;
    crate::fsutil::replace_dir(&final_dir, &plan.out)?;
    Ok(record)
}

type StepsOut = (Vec<StepRecordOut>, Option<Vec<EvalResult>>, Vec<DataFile>);

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
            let r =
                evaluate_checkpoint(c.model, c.dense, c.eval_sets, "eval dense", cache.as_mut())?;
            c.work.save_dense_eval(&r)?;
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
            let name = format!("{}-{}", k + 1, sanitize(&s.dataset));
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
    Ok((steps, dense_eval, data_files))
}
