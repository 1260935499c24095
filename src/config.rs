//! The resolved, validated plan of a pruning run, built from the flags before any model is
//! loaded (ripgrep's low-level/high-level args split). It is saved in `copal.json` so that the
//! run record says exactly how the artifact was made.

use crate::calib::Propagate;
use crate::cli::{ComputeDtype, PruneArgs};
use crate::continual::Mode;
use crate::data::{self, Dataset, Split};
use crate::prune::copal::{CopalVariant, Perturbation};
use crate::prune::sparsegpt::SparseGptConfig;
use crate::prune::{Group, Method, Pattern};
use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A dataset with its calibration split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibSource {
    pub dataset: String,
    pub split: Split,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrunePlan {
    pub model: String,
    pub datasets: Vec<CalibSource>,
    pub data_dir: PathBuf,
    pub nsamples: usize,
    /// Calibration windows per layer forward; None = `calib::calib_batch`'s choice.
    #[serde(default)]
    pub calib_batch: Option<usize>,
    /// None until the model is opened (default 2048 capped by max_position_embeddings).
    pub seqlen: Option<usize>,
    pub seed: u64,
    pub method: Method,
    pub mode: Mode,
    pub pattern: Pattern,
    pub group: Group,
    pub perturbation: Perturbation,
    /// COPAL's aggregation over tokens, per-dataset normalisation and decay.
    #[serde(default)]
    pub variant: CopalVariant,
    pub propagate: Propagate,
    pub sparsegpt: SparseGptConfig,
    pub state: Option<PathBuf>,
    pub out: PathBuf,
    pub force: bool,
    pub save_steps: bool,
    pub save_masks: bool,
    pub eval: bool,
    pub max_windows: Option<usize>,
    /// Evaluate after step k only the datasets seen so far (the lower triangle of R, which
    /// is all that average PPL and BWT need).
    #[serde(default)]
    pub eval_seen_only: bool,
    /// Reuse perplexities of identical models (experiments).
    #[serde(default)]
    pub eval_cache: Option<PathBuf>,
    pub device: String,
    pub dtype: Option<ComputeDtype>,
}

impl PrunePlan {
    pub fn resolve(a: &PruneArgs) -> Result<Self> {
        let datasets = Dataset::parse_list(&a.datasets)?;
        let overrides = match &a.calib_split {
            Some(s) => data::parse_split_overrides(s)?,
            None => Vec::new(),
        };
        // A script that continues a state one dataset at a time passes the same flags every
        // time: an override for a dataset not in this run is noted and ignored, not an error
        // (a misspelt dataset name is still refused by the parser above).
        for (d, _) in &overrides {
            if !datasets.contains(d) {
                crate::ui::info(format!(
                    "note: --calib-split names {d}, which is not in --datasets {}; ignored",
                    a.datasets
                ));
            }
        }
        let datasets = datasets
            .iter()
            .map(|d| CalibSource {
                dataset: d.name(),
                split: overrides
                    .iter()
                    .find(|(o, _)| o == d)
                    .map(|(_, s)| *s)
                    .unwrap_or_else(|| d.default_calib_split()),
            })
            .collect();
        let pattern = Pattern::parse(&a.pattern, a.sparsity)?;
        let mode = a.mode.unwrap_or(a.method.default_mode());
        crate::continual::check_method_mode(a.method, mode)?;
        if a.state.is_some() && mode != Mode::Accumulate {
            bail!(
                "--state carries the statistics of --mode accumulate; in {} mode there is none \
                 (to continue a sequential run, pass the previous output as --model)",
                crate::cli::value_name(mode)
            );
        }
        ensure!(
            a.decay > 0.0 && a.decay <= 1.0,
            "--decay must be in (0, 1], got {}",
            a.decay
        );
        let group = a.group.unwrap_or(a.method.default_group());
        if matches!(pattern, Pattern::NM { .. }) && a.group.is_some() {
            bail!("--group applies to unstructured sparsity; {pattern} groups are fixed by the pattern");
        }
        ensure!(a.nsamples > 0, "--nsamples must be at least 1");
        for (flag, v) in [("--eps-w", a.eps_w), ("--eps-x", a.eps_x)] {
            ensure!(
                v.is_finite() && v >= 0.0,
                "{flag} must be a finite number ≥ 0, got {v}"
            );
        }
        ensure!(
            a.eps_w + a.eps_x > 0.0,
            "--eps-w and --eps-x cannot both be 0: dy would vanish"
        );
        ensure!(a.blocksize > 0, "--blocksize must be positive");
        ensure!(
            a.percdamp.is_finite() && a.percdamp >= 0.0,
            "--percdamp must be ≥ 0"
        );
        if let Some(0) = a.calib_batch {
            bail!("--calib-batch must be at least 1");
        }
        if let Some(0) = a.max_windows {
            bail!("--max-windows must be at least 1");
        }
        Ok(Self {
            model: a.model.model.clone(),
            datasets,
            data_dir: data::data_dir(a.data.data_dir.clone()),
            nsamples: a.nsamples,
            calib_batch: a.calib_batch,
            seqlen: a.data.seqlen,
            seed: a.seed,
            method: a.method,
            mode,
            pattern,
            group,
            perturbation: Perturbation {
                kind: a.perturbation,
                eps_w: a.eps_w,
                eps_x: a.eps_x,
            },
            variant: CopalVariant {
                agg: a.copal_agg,
                normalize: a.copal_normalize,
                decay: a.decay,
            },
            propagate: a.propagate,
            sparsegpt: SparseGptConfig {
                percdamp: a.percdamp,
                blocksize: a.blocksize,
            },
            state: a.state.clone(),
            out: a.out.clone(),
            force: a.force,
            save_steps: a.save_steps,
            save_masks: a.save_masks,
            eval: a.eval,
            max_windows: a.max_windows,
            eval_seen_only: a.eval_seen_only,
            eval_cache: None,
            device: a.model.device.clone(),
            dtype: a.model.dtype,
        })
    }

    pub fn dataset_list(&self) -> Result<Vec<Dataset>> {
        self.datasets
            .iter()
            .map(|c| Dataset::parse(&c.dataset))
            .collect()
    }
}
