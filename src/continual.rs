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
use crate::prune::Method;
use crate::report::{self, DataFile, RunRecord, StepRecordOut};
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
            "propagate": plan.propagate,
            "nsamples": plan.nsamples,
            "seqlen": plan.seqlen,
            "seed": plan.seed,
        },
    })
}

/// Replaces `dst` by `src` atomically (copy to a temporary sibling, flush, rename).
fn install_file(src: &Path, dst: &Path) -> Result<()> {
    let tmp = crate::fsutil::sibling(dst, &format!("copal-partial-{}", std::process::id()));
    std::fs::copy(src, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dst).with_context(|| format!("replacing {}", dst.display()))?;
    if let Some(p) = dst.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::checkpoint::writer::sync_dir(p)?;
    }
    Ok(())
}

/// Runs a whole plan and returns the run record (also written to `<out>/copal.json`).
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
        serde_json::to_string(&plan.mode)?.trim_matches('"'),
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

    // The prior state, if continuing.
    let mut prior: Option<StateReader> = None;
    let mut history: Vec<StepRecord> = Vec::new();
    if let Some(path) = plan.state.as_ref().filter(|p| p.exists()) {
        let r = StateReader::open(path)?;
        r.meta.check_continues(&fingerprint, &settings, path)?;
        r.check_shapes(&cfg, plan.method)?;
        for d in &datasets {
            ensure!(
                !r.meta.datasets().contains(&d.name()),
                "{} already contains {}; a dataset is folded in once (use a new state file to \
                 start over)",
                path.display(),
                d.name()
            );
        }
        crate::ui::info(format!(
            "continuing {} (datasets so far: {})",
            path.display(),
            r.meta.datasets().join(", ")
        ));
        history = r.meta.steps.clone();
        prior = Some(r);
    }

    // Evaluation sets: every dataset seen so far, tokenised once.
    let mut all_names: Vec<String> = history.iter().map(|s| s.dataset.clone()).collect();
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

    let work = crate::fsutil::staging_dir(&out)?;
    let result = run_steps(
        plan,
        &dense,
        &model,
        &tok,
        &datasets,
        &eval_sets,
        prior,
        history,
        &work,
        &fingerprint,
        &settings,
    );
    let (final_dir, steps, dense_eval, data_files) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
    };

    let r = ppl_matrix(&steps, &all_names);
    let offset = all_names.len() - datasets.len();
    let (avg_ppl, bwt) = if plan.eval {
        continual_metrics(&r, offset)
    } else {
        (f64::NAN, None)
    };
    let sparsity = steps.last().map(|s| s.report.sparsity).unwrap_or(0.0);
    let record = RunRecord {
        copal_version: env!("CARGO_PKG_VERSION").to_string(),
        command: std::env::args().collect(),
        plan: plan.clone(),
        model_dir: model_dir.clone(),
        model_fingerprint: fingerprint.clone(),
        model_files,
        data_files,
        compute: format!("{:?} {:?}", device, dtype),
        threads: rayon::current_num_threads(),
        datasets: all_names.clone(),
        steps,
        dense_eval,
        ppl_matrix: if plan.eval { Some(r) } else { None },
        avg_ppl: if plan.eval { Some(avg_ppl) } else { None },
        bwt,
        sparsity,
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_bytes: report::peak_rss_bytes(),
    };
    crate::checkpoint::writer::write_json(
        &final_dir.join("copal.json"),
        &serde_json::to_value(&record)?,
    )?;
    crate::fsutil::replace_dir(&final_dir, &out)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(record)
}

type StepsOut = (
    PathBuf,
    Vec<StepRecordOut>,
    Option<Vec<EvalResult>>,
    Vec<DataFile>,
);

#[allow(clippy::too_many_arguments)]
fn run_steps(
    plan: &PrunePlan,
    dense: &Checkpoint,
    model: &Llama,
    tok: &Tokenizer,
    datasets: &[Dataset],
    eval_sets: &[EvalSet],
    mut prior: Option<StateReader>,
    mut history: Vec<StepRecord>,
    work: &Path,
    fingerprint: &str,
    settings: &StateSettings,
) -> Result<StepsOut> {
    let seqlen = plan.seqlen.unwrap_or(2048);
    let mut cache = match &plan.eval_cache {
        Some(p) => Some(eval::EvalCache::open(p)?),
        None => None,
    };
    let dense_eval = if plan.eval {
        Some(evaluate_checkpoint(
            model,
            dense,
            eval_sets,
            "eval dense",
            cache.as_mut(),
        )?)
    } else {
        None
    };
    let seen_before = eval_sets.len().saturating_sub(datasets.len());
    let mut steps: Vec<StepRecordOut> = Vec::new();
    let mut data_files = Vec::new();
    let mut prev_dir: Option<PathBuf> = None;
    let k_total = datasets.len();
    for (k, ds) in datasets.iter().enumerate() {
        let src = &plan.datasets[k];
        let label = format!("{}/{} {}", k + 1, k_total, ds.name());
        // Calibration windows (magnitude and dense need none).
        let (windows, record) = if plan.method.needs_data() {
            let (corpus, path) =
                corpus::load(ds, src.split, corpus::Purpose::Calibration, &plan.data_dir)
                    .with_context(|| format!("loading the {} calibration split", ds.name()))?;
            let set = data::calibration_windows(
                &corpus,
                tok,
                &ds.name(),
                plan.nsamples,
                seqlen,
                plan.seed,
            )?;
            let sha = crate::fsutil::sha256_file(&path)?;
            data_files.push(DataFile {
                dataset: ds.name(),
                split: src.split,
                path: path.clone(),
                sha256: sha.clone(),
            });
            let rec = StepRecord {
                dataset: ds.name(),
                split: src.split,
                file: path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                file_sha256: sha,
                nsamples: plan.nsamples,
                seqlen,
                seed: plan.seed,
                tokens: plan.nsamples * seqlen,
                source_tokens: set.source_tokens,
            };
            (set.windows, rec)
        } else {
            let rec = StepRecord {
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
            (Vec::new(), rec)
        };
        history.push(record);
        let names: Vec<String> = history.iter().map(|h| h.dataset.clone()).collect();

        let step_dir = work.join(format!("step-{}", k + 1));
        std::fs::create_dir_all(&step_dir)?;
        let mut writer = CheckpointWriter::create(dense, &step_dir, &BTreeMap::new())?;
        let mut masks = if plan.save_masks {
            Some(mask_writer(dense, &step_dir)?)
        } else {
            None
        };
        let state_meta = StateMeta {
            format: state::FORMAT.into(),
            copal_version: env!("CARGO_PKG_VERSION").into(),
            model_fingerprint: fingerprint.to_string(),
            settings: settings.clone(),
            steps: history.clone(),
        };
        let state_tmp = work.join(format!("state-{}.safetensors", k + 1));
        let mut state_w = if plan.mode == Mode::Accumulate {
            Some(state::create_writer(
                &state_tmp,
                &dense.config,
                plan.method,
                &state_meta,
            )?)
        } else {
            None
        };

        let prev_ckpt = match (plan.mode, &prev_dir) {
            (Mode::Sequential, Some(d)) => Some(Checkpoint::open(d)?),
            _ => None,
        };
        let base: &dyn TensorSource = prev_ckpt
            .as_ref()
            .map(|c| c as &dyn TensorSource)
            .unwrap_or(dense);
        let step_settings = StepSettings {
            method: plan.method,
            pattern: plan.pattern,
            group: plan.group,
            propagate: plan.propagate,
            perturbation: plan.perturbation,
            variant: plan.variant,
            sparsegpt: plan.sparsegpt,
            seed: plan.seed,
            dataset: ds.name(),
        };
        let report = if plan.method == Method::Dense {
            StepReport {
                linears: vec![],
                layer_sparsity: vec![0.0; dense.config.num_hidden_layers],
                sparsity: 0.0,
                seconds: 0.0,
                calib_tokens: 0,
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
            };
            calib::run_step(
                model,
                base,
                &windows,
                &step_settings,
                prior_ref,
                &mut sinks,
                &label,
            )?
        };
        let cfg_json = {
            let mut c = dense.config_json.clone();
            c["sparsity_config"] = sparsity_config(plan, &names, report.sparsity);
            c
        };
        let base_ckpt: &Checkpoint = prev_ckpt.as_ref().unwrap_or(dense);
        writer.finish(base_ckpt, &cfg_json)?;
        if let Some(m) = masks {
            m.finish()?;
        }
        if let Some(sw) = state_w {
            sw.finish()?;
            if let Some(path) = &plan.state {
                install_file(&state_tmp, path)?;
            }
            drop(prior.take());
            prior = Some(StateReader::open(&state_tmp)?);
        }
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
            let sets = if plan.eval_seen_only {
                &eval_sets[..seen_before + k + 1]
            } else {
                eval_sets
            };
            let res = evaluate_checkpoint(
                model,
                &pruned,
                sets,
                &format!("eval {}", k + 1),
                cache.as_mut(),
            )?;
            for r in &res {
                crate::ui::info(format!("  {}", r.line()));
            }
            Some(res)
        } else {
            None
        };
        drop(prev_ckpt);
        if let Some(p) = prev_dir.take() {
            if !plan.save_steps {
                std::fs::remove_dir_all(&p)?;
            }
        }
        prev_dir = Some(step_dir.clone());
        steps.push(StepRecordOut {
            dataset: ds.name(),
            split: src.split,
            dir: step_dir,
            report,
            eval,
        });
    }
    let final_dir = prev_dir.context("no dataset given")?;
    if plan.save_steps && steps.len() > 1 {
        let keep = final_dir.join("steps");
        std::fs::create_dir_all(&keep)?;
        for s in steps.iter_mut().take(k_total - 1) {
            let name = format!(
                "{}-{}",
                s.dir
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .trim_start_matches("step-"),
                sanitize(&s.dataset)
            );
            let dst = keep.join(name);
            std::fs::rename(&s.dir, &dst)?;
            s.dir = PathBuf::from("steps").join(dst.file_name().unwrap_or_default());
        }
    }
    if let Some(last) = steps.last_mut() {
        last.dir = PathBuf::from(".");
    }
    if !plan.save_steps {
        for s in steps.iter_mut().take(k_total.saturating_sub(1)) {
            s.dir = PathBuf::new();
        }
    }
    Ok((final_dir, steps, dense_eval, data_files))
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
