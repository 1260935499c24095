//! A dataset sequence: one calibration step per dataset, the evaluation matrix R, average
//! perplexity and backward transfer (COPAL.md §1, §5).
//!
//! Modes (how a method is used across datasets):
//! - accumulate: statistics summed over every dataset so far, masks from the dense weights
//!   (COPAL; the importance travels in the state file);
//! - global: the dense model pruned from the newest dataset only ("forgetting");
//! - sequential: the previous step's pruned model pruned with the newest dataset ("weight
//!   stasis": scores that multiply |W| are zero on pruned weights).
//!
//! R[k][i] is the perplexity on dataset i after step k; with K steps,
//! average PPL = mean_i R[K][i] and BWT = mean_{i<K} (R[K][i] − R[i][i]) (positive = forgetting).
//!
//! Everything is written under a staging directory beside `--out` and moved into place only
//! when the run succeeds; the state file is replaced atomically after every dataset.

use crate::calib::{self, Sinks, StepReport, StepSettings};
use crate::checkpoint::writer::{CheckpointWriter, ShardWriter};
use crate::checkpoint::Checkpoint;
use crate::config::PrunePlan;
use crate::data::{self, corpus, Dataset};
use crate::eval::{self, EvalResult, EvalSet};
use crate::model::{Linear, Llama, TensorSource};
use crate::prune::{Method, Pattern};
use crate::report::{self, DataFile, RunRecord, StepRecordOut};
use crate::resume::{self, DoneStep, Manifest, Workdir};
use crate::state::{self, StateMeta, StateReader, StateSettings, StepRecord};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Context as _, Result};
use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Sum statistics over all datasets so far, prune the dense weights (COPAL).
    Accumulate,
    /// Prune the dense model from the newest dataset only.
    Global,
    /// Prune the previous step's pruned model with the newest dataset.
    Sequential,
}

/// Average perplexity and BWT of an R matrix whose rows are steps and whose columns are
/// datasets, the dataset of step k being column `offset + k`.
pub fn continual_metrics(r: &[Vec<f64>], offset: usize) -> (f64, Option<f64>) {
    let Some(last) = r.last() else {
        return (f64::NAN, None);
    };
    let avg = last.iter().sum::<f64>() / last.len().max(1) as f64;
    let k = r.len();
    if k < 2 {
        return (avg, None);
    }
    let bwt = (0..k - 1)
        .map(|i| last[offset + i] - r[i][offset + i])
        .sum::<f64>()
        / (k - 1) as f64;
    (avg, Some(bwt))
}

/// The `sparsity_config` block added to the pruned model's config.json.
fn sparsity_config(plan: &PrunePlan, datasets: &[String], measured: f64) -> serde_json::Value {
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
            "method": plan.method,
            "mode": plan.mode,
            "pattern": plan.pattern,
            "group": plan.group,
            "datasets": datasets,
            "perturbation": if plan.method == Method::Copal { Some(plan.perturbation) } else { None },
            "variant": if plan.method == Method::Copal { Some(plan.variant) } else { None },
            "propagate": plan.propagate,
            "nsamples": plan.nsamples,
            "seqlen": plan.seqlen,
            "seed": plan.seed,
        },
    })
}

/// What stays fixed over the steps of one run.
struct RunCtx<'a> {
    plan: &'a PrunePlan,
    dense: &'a Checkpoint,
    model: &'a Llama,
    tok: &'a Tokenizer,
    datasets: &'a [Dataset],
    eval_sets: &'a [EvalSet],
    fingerprint: &'a str,
    settings: &'a StateSettings,
    work: &'a Workdir,
}

/// Runs a whole plan and returns the run record (also written to `<out>/copal.json`).
///
/// A run that stops with an error after finishing some steps keeps its staging directory,
/// and the same command resumes it (see [`crate::resume`]).
pub fn run(plan: &mut PrunePlan) -> Result<RunRecord> {
    let started = Instant::now();
    let device = crate::commands::parse_device(&plan.device)?;
    let dtype = crate::commands::dtype_of(plan.dtype, &device);
    // Find every data file before touching (or downloading) the model.
    let datasets = plan.dataset_list()?;
    for (d, src) in datasets.iter().zip(&plan.datasets) {
        if plan.method.needs_data() {
            corpus::find(d, src.split, &plan.data_dir)?;
        }
        if plan.eval {
            corpus::find(d, d.default_eval_split(), &plan.data_dir)?;
        }
    }
    let model_dir = crate::checkpoint::resolve(&plan.model, crate::ui::quiet())?;
    let dense =
        Checkpoint::open(&model_dir).with_context(|| format!("opening model {}", plan.model))?;
    let cfg = dense.config.clone();
    let seqlen = crate::commands::resolve_seqlen(plan.seqlen, cfg.max_position_embeddings)?;
    plan.seqlen = Some(seqlen);
    // An N:M pattern needs every pruned linear's input width divisible by M; say so before
    // any calibration work rather than at the first layer.
    if let Pattern::NM { n, m } = plan.pattern {
        for lin in Linear::ALL {
            let (_, w) = lin.shape(&cfg);
            ensure!(
                w % m == 0,
                "--pattern {n}:{m} needs input widths divisible by {m}, but this model's {} \
                 has {w} inputs; choose M dividing it (2:4 and 4:8 fit LLaMA models)",
                lin.module()
            );
        }
    }

    // Never write into or over the input.
    let out = plan.out.clone();
    if let (Ok(a), Ok(b)) = (out.canonicalize(), model_dir.canonicalize()) {
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
            !s.starts_with(&out),
            "--state {} lies inside --out; keep the state outside the output directory",
            s.display()
        );
    }

    let tok = Tokenizer::open(&dense.dir)?;
    let model = Llama::load(&dense, &cfg, dtype, &device)?;
    crate::ui::info(format!(
        "copal {}: {} ({} layers) · {} {} {} · datasets {} · {} × {} tokens each",
        env!("CARGO_PKG_VERSION"),
        plan.model,
        cfg.num_hidden_layers,
        plan.method.name(),
        crate::cli::value_name(plan.mode),
        plan.pattern,
        plan.datasets
            .iter()
            .map(|d| format!("{}[{}]", d.dataset, d.split))
            .collect::<Vec<_>>()
            .join(" → "),
        plan.nsamples,
        seqlen
    ));
    let model_files = report::checksum_model(&dense)?;
    let fingerprint = report::fingerprint(&model_files);
    let settings = StateSettings {
        method: plan.method,
        perturbation: plan.perturbation,
        variant: plan.variant,
        pattern: plan.pattern,
        group: plan.group,
        propagate: plan.propagate,
    };

    // The state the run starts from, if continuing one.
    let mut user_state: Option<StateReader> = None;
    if let Some(path) = plan.state.as_ref().filter(|p| p.exists()) {
        let r = StateReader::open(path)?;
        r.meta.check_continues(&fingerprint, &settings, path)?;
        r.check_shapes(&cfg, plan.method)?;
        user_state = Some(r);
    }

    let hash = resume::plan_hash(plan)?;
    let (work, manifest) = Workdir::open(&out, &hash)?;
    let need_state = plan.mode == Mode::Accumulate;
    let (initial_history, done) = match &manifest {
        Some(m) => (m.initial_history.clone(), work.finished(need_state)),
        None => (
            user_state
                .as_ref()
                .map(|r| r.meta.steps.clone())
                .unwrap_or_default(),
            Vec::new(),
        ),
    };
    let result = (|| {
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
                plan_hash: hash.clone(),
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
        let mut all_names: Vec<String> =
            initial_history.iter().map(|s| s.dataset.clone()).collect();
        all_names.extend(datasets.iter().map(Dataset::name));
        let eval_sets: Vec<EvalSet> = if plan.eval {
            let ds: Vec<Dataset> = all_names
                .iter()
                .map(|n| Dataset::parse(n))
                .collect::<Result<_>>()?;
            eval::load_sets(&ds, &plan.data_dir, &tok, seqlen, plan.max_windows)?
        } else {
            Vec::new()
        };
        let ctx = RunCtx {
            plan,
            dense: &dense,
            model: &model,
            tok: &tok,
            datasets: &datasets,
            eval_sets: &eval_sets,
            fingerprint: &fingerprint,
            settings: &settings,
            work: &work,
        };
        let prior = match (done.len(), need_state) {
            (0, _) => user_state,
            (k, true) => Some(StateReader::open(&work.state_file(k))?),
            (_, false) => None,
        };
        let (steps, dense_eval, data_files) =
            run_steps(&ctx, done.clone(), prior, &initial_history)?;
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
            model_dir: model_dir.clone(),
            model_fingerprint: fingerprint.clone(),
            model_files: model_files.clone(),
            data_files,
            compute: format!("{:?} {:?}", device, dtype),
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
        crate::fsutil::replace_dir(&final_dir, &out)?;
        Ok(record)
    })();
    match result {
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
        let step = prune_step(c, k, &mut history, prior.take(), cache.as_mut(), &overall)?;
        let (record, data_file, next_prior) = step;
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

/// One calibration step (dataset `k`, 0-based): prune, write the step's checkpoint (and
/// state and masks), evaluate. Returns the step's record, its data file and the new state.
fn prune_step(
    c: &RunCtx,
    k: usize,
    history: &mut Vec<StepRecord>,
    prior: Option<StateReader>,
    cache: Option<&mut eval::EvalCache>,
    overall: &indicatif::ProgressBar,
) -> Result<(StepRecordOut, Option<DataFile>, Option<StateReader>)> {
    let (plan, dense, ds) = (c.plan, c.dense, &c.datasets[k]);
    let seqlen = plan.seqlen.unwrap_or(2048);
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
    let windows = if plan.method.needs_data() {
        let (corpus, path) =
            corpus::load(ds, src.split, corpus::Purpose::Calibration, &plan.data_dir)
                .with_context(|| format!("loading the {} calibration split", ds.name()))?;
        let set =
            data::calibration_windows(&corpus, c.tok, &ds.name(), plan.nsamples, seqlen, plan.seed)
                .with_context(|| format!("drawing calibration windows from {}", path.display()))?;
        let sha = crate::fsutil::sha256_file(&path)?;
        record.file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        record.file_sha256 = sha.clone();
        record.nsamples = plan.nsamples;
        record.tokens = plan.nsamples * seqlen;
        record.source_tokens = set.source_tokens;
        data_file = Some(DataFile {
            dataset: ds.name(),
            split: src.split,
            path,
            sha256: sha,
        });
        set.windows
    } else {
        Vec::new()
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
            plan.method,
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
    let report = if plan.method == Method::Dense {
        StepReport {
            linears: vec![],
            layer_sparsity: vec![0.0; dense.config.num_hidden_layers],
            sparsity: 0.0,
            seconds: 0.0,
            calib_tokens: 0,
            flops: 0.0,
            layers: Vec::new(),
        }
    } else {
        let prior_ref = if plan.mode == Mode::Accumulate {
            prior.as_ref()
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
            &windows,
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
    let eval = if plan.eval {
        let pruned = Checkpoint::open(&step_dir)?;
        let seen = c.eval_sets.len() - k_total + k + 1;
        let sets = if plan.eval_seen_only {
            &c.eval_sets[..seen]
        } else {
            c.eval_sets
        };
        let res = evaluate_checkpoint(c.model, &pruned, sets, &format!("eval {}", k + 1), cache)?;
        for r in &res {
            crate::ui::info(format!("  {}", r.line()));
        }
        Some(res)
    } else {
        None
    };
    let record = StepRecordOut {
        dataset: ds.name(),
        split: src.split,
        dir: step_dir,
        report,
        eval,
    };
    Ok((record, data_file, next_prior))
}

/// Perplexities of a checkpoint, through the cache when there is one.
fn evaluate_checkpoint(
    model: &Llama,
    ckpt: &Checkpoint,
    sets: &[EvalSet],
    label: &str,
    cache: Option<&mut eval::EvalCache>,
) -> Result<Vec<EvalResult>> {
    match cache {
        Some(c) => {
            let fp = report::fingerprint(&report::checksum_model(ckpt)?);
            c.evaluate(&fp, model, ckpt, sets, label)
        }
        None => eval::evaluate(model, ckpt, sets, label),
    }
}

/// The R matrix: one row per step, one column per dataset, NaN where not evaluated.
pub fn ppl_matrix(steps: &[StepRecordOut], columns: &[String]) -> Vec<Vec<f64>> {
    steps
        .iter()
        .filter_map(|s| s.eval.as_ref())
        .map(|ev| {
            columns
                .iter()
                .map(|c| {
                    ev.iter()
                        .find(|e| &e.dataset == c)
                        .map(|e| e.ppl)
                        .unwrap_or(f64::NAN)
                })
                .collect()
        })
        .collect()
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// masks.safetensors: per linear, U8 (out, ceil(in/8)) packed keep-bits.
fn mask_writer(dense: &Checkpoint, dir: &Path) -> Result<ShardWriter> {
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

/// Checks a method/mode pair makes sense (used by the experiment grid too).
pub fn check_method_mode(method: Method, mode: Mode) -> Result<()> {
    if mode == Mode::Accumulate && !method.needs_data() {
        bail!(
            "{} has no statistics to accumulate; use --mode global",
            method.name()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bwt_and_average() {
        // Two steps over two datasets; dataset 0 got worse by 2 after step 1.
        let r = vec![vec![10.0, 30.0], vec![12.0, 20.0]];
        let (avg, bwt) = continual_metrics(&r, 0);
        assert_eq!(avg, 16.0);
        assert_eq!(bwt, Some(2.0));
        assert_eq!(continual_metrics(&r[..1], 0).1, None);
    }
}
