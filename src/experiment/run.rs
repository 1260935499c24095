//! Running one run of the grid and storing its result (`RESULTS/runs/ID.json`, written
//! atomically, so a killed run leaves nothing and a rerun skips what is finished).

use super::config::ExperimentConfig;
use super::grid::{request, RunSpec};
use crate::continual;
use crate::plan::{PrunePlan, Request};
use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What one finished run leaves behind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    #[serde(flatten)]
    pub spec: RunSpec,
    /// R[step][dataset], columns in `order`; null where not evaluated.
    pub ppl_matrix: Vec<Vec<Option<f64>>>,
    pub dense_ppl: Vec<f64>,
    pub avg_ppl: f64,
    pub bwt: Option<f64>,
    pub sparsity: f64,
    pub seconds: f64,
    pub step_seconds: Vec<f64>,
    pub peak_rss_bytes: Option<u64>,
    pub copal_version: String,
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
    let r = rec.ppl_matrix.clone().unwrap_or_default();
    let result = RunResult {
        spec: spec.clone(),
        ppl_matrix: r
            .iter()
            .map(|row| {
                row.iter()
                    .map(|v| if v.is_nan() { None } else { Some(*v) })
                    .collect()
            })
            .collect(),
        dense_ppl: rec
            .dense_eval
            .as_ref()
            .map(|d| d.iter().map(|e| e.ppl).collect())
            .unwrap_or_default(),
        avg_ppl: rec.avg_ppl.unwrap_or(f64::NAN),
        bwt: rec.bwt,
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
