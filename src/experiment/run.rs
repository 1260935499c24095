//! Running one run of the grid and storing its result (`RESULTS/runs/ID.json`, written
//! atomically, so a killed run leaves nothing and a rerun skips what is finished).

use super::config::ExperimentConfig;
use super::grid::{request, RunSpec};
use crate::continual;
use crate::eval::{Better, ScoreMatrix, Transfer};
use crate::plan::{PrunePlan, Request};
use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What one finished run leaves behind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "Stored", into = "Stored")]
pub struct RunResult {
    #[serde(flatten)]
    pub spec: RunSpec,
    /// Every continual matrix of the run: perplexity over the datasets (columns in `order`),
    /// then each zero-shot task metric over the tasks.
    pub scores: Vec<ScoreMatrix>,
    pub sparsity: f64,
    pub seconds: f64,
    pub step_seconds: Vec<f64>,
    pub peak_rss_bytes: Option<u64>,
    pub copal_version: String,
}

impl RunResult {
    /// The perplexity matrix.
    pub fn ppl(&self) -> Option<&ScoreMatrix> {
        self.scores
            .iter()
            .find(|m| m.metric == crate::eval::score::PPL)
    }

    /// R[step][dataset] of the perplexity, null where not evaluated.
    pub fn ppl_matrix(&self) -> &[Vec<Option<f64>>] {
        self.ppl().map(|m| m.rows.as_slice()).unwrap_or(&[])
    }

    /// The dense model's perplexities, in `order`.
    pub fn dense_ppl(&self) -> Vec<f64> {
        self.ppl()
            .and_then(|m| m.dense.as_ref())
            .map(|d| d.iter().map(|v| v.unwrap_or(f64::NAN)).collect())
            .unwrap_or_default()
    }

    pub fn avg_ppl(&self) -> f64 {
        self.ppl().and_then(|m| m.average).unwrap_or(f64::NAN)
    }

    pub fn bwt(&self) -> Option<f64> {
        self.ppl().and_then(|m| m.bwt)
    }

    /// The zero-shot matrices (every metric but perplexity).
    pub fn task_scores(&self) -> impl Iterator<Item = &ScoreMatrix> {
        self.scores
            .iter()
            .filter(|m| m.metric != crate::eval::score::PPL)
    }
}

/// A result as stored: `scores`, and the perplexity fields of the first format (`ppl_matrix`,
/// `dense_ppl`, `avg_ppl`, `bwt`: the perplexity matrix again, for the readers of that format).
/// A result of the first format has only those, and reads into the same matrix.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    spec: RunSpec,
    #[serde(default)]
    scores: Option<Vec<ScoreMatrix>>,
    #[serde(default)]
    ppl_matrix: Vec<Vec<Option<f64>>>,
    #[serde(default)]
    dense_ppl: Vec<f64>,
    #[serde(default)]
    avg_ppl: Option<f64>,
    #[serde(default)]
    bwt: Option<f64>,
    sparsity: f64,
    seconds: f64,
    step_seconds: Vec<f64>,
    peak_rss_bytes: Option<u64>,
    copal_version: String,
}

impl From<RunResult> for Stored {
    fn from(r: RunResult) -> Self {
        Stored {
            ppl_matrix: r.ppl_matrix().to_vec(),
            dense_ppl: r.dense_ppl(),
            avg_ppl: r.ppl().and_then(|m| m.average),
            bwt: r.bwt(),
            spec: r.spec,
            scores: Some(r.scores),
            sparsity: r.sparsity,
            seconds: r.seconds,
            step_seconds: r.step_seconds,
            peak_rss_bytes: r.peak_rss_bytes,
            copal_version: r.copal_version,
        }
    }
}

impl From<Stored> for RunResult {
    fn from(s: Stored) -> Self {
        let scores = s.scores.unwrap_or_else(|| {
            vec![ScoreMatrix {
                metric: crate::eval::score::PPL.into(),
                better: Better::Lower,
                columns: s.spec.order.clone(),
                dense: (!s.dense_ppl.is_empty())
                    .then(|| s.dense_ppl.iter().map(|v| Some(*v)).collect()),
                rows: s.ppl_matrix,
                transfer: Transfer::Diagonal { offset: 0 },
                average: s.avg_ppl,
                bwt: s.bwt,
            }]
        });
        RunResult {
            spec: s.spec,
            scores,
            sparsity: s.sparsity,
            seconds: s.seconds,
            step_seconds: s.step_seconds,
            peak_rss_bytes: s.peak_rss_bytes,
            copal_version: s.copal_version,
        }
    }
}

pub fn run_path(results: &Path, id: &str) -> PathBuf {
    results.join("runs").join(format!("{id}.json"))
}

/// Runs one grid entry (skipped if its result exists) and stores its result.
pub fn run_one(cfg: &ExperimentConfig, spec: &RunSpec, data_dir: &Path) -> Result<RunResult> {
    let results = cfg.results_dir();
    let done = run_path(&results, &spec.id);
    if done.exists() {
        return read_result(&done);
    }
    std::fs::create_dir_all(results.join("runs"))?;
    std::fs::create_dir_all(results.join("work"))?;
    let out = results.join("work").join(&spec.id);
    let plan = PrunePlan::resolve(Request {
        data_dir: Some(data_dir.to_path_buf()),
        ..request(cfg, spec, out.clone())
    })?;
    let rec = continual::run(continual::prepare(plan)?)?;
    let _ = std::fs::remove_dir_all(&out);
    let result = RunResult {
        spec: spec.clone(),
        scores: rec.scores.clone(),
        sparsity: rec.sparsity,
        seconds: rec.seconds,
        step_seconds: rec.steps.iter().map(|s| s.report.seconds).collect(),
        peak_rss_bytes: rec.peak_rss_bytes,
        copal_version: rec.copal_version.clone(),
    };
    crate::fsutil::write_atomic(&done, &serde_json::to_vec_pretty(&result)?)?;
    Ok(result)
}

/// A stored result.
pub fn read_result(path: &Path) -> Result<RunResult> {
    let text = crate::fsutil::read_small(path, "run result", crate::fsutil::CAP_CONFIG)?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a readable run result; delete it to run that run again",
            path.display()
        )
    })
}

/// Finished results of the grid, in grid order. An unreadable result is an error, not a run
/// silently left out of the report.
pub fn finished(cfg: &ExperimentConfig, runs: &[RunSpec]) -> Result<Vec<RunResult>> {
    let dir = cfg.results_dir();
    runs.iter()
        .map(|s| run_path(&dir, &s.id))
        .filter(|p| p.exists())
        .map(|p| read_result(&p))
        .collect()
}
