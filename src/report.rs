//! The run record (`copal.json`): what each step did and cost, the model's checksums and
//! fingerprint, and the human-readable tables. The process probes it records (resident
//! memory) are [`crate::probe`]'s.

use crate::checkpoint::Checkpoint;
use crate::data::Split;
use crate::eval::choice::TaskResult;
use crate::eval::{EvalResult, Score, ScoreMatrix, Transfer};
use crate::plan::PrunePlan;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What one linear ended up as.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinearReport {
    pub name: String,
    pub zeros: u64,
    pub numel: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recon_error: Option<f64>,
    /// With `update obs`: the relative error of the mask alone, before the reconstruction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_error: Option<f64>,
}

/// One step's measurements.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    pub linears: Vec<LinearReport>,
    /// Fraction of zeros per decoder layer over its seven linears.
    pub layer_sparsity: Vec<f64>,
    pub sparsity: f64,
    pub seconds: f64,
    pub calib_tokens: usize,
    /// Floating-point operations the step needs (see [`step_flops`]).
    #[serde(default)]
    pub flops: f64,
    /// Per decoder layer: seconds, and resident / peak memory when it was done.
    #[serde(default)]
    pub layers: Vec<LayerCost>,
    /// Per decoder layer, the sparsity (fraction) an allocation such as OWL gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_targets: Option<Vec<f64>>,
    /// Where the step's seconds went, summed over the layers (the step's own profile).
    #[serde(default)]
    pub phases: Phases,
}

/// Seconds of a step by phase, summed over its layers; `seconds` minus their sum is the rest
/// (loading layers, the allocation's dense pass, bookkeeping).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Phases {
    /// The observing forward of each layer over the windows (taps included).
    pub forward: f64,
    /// The methods' and the update's statistics, window by window.
    pub observe: f64,
    /// Masks and weights from the statistics (`finish`), and the OBS update.
    pub solve: f64,
    /// Writing the pruned weights, states and masks.
    pub write: f64,
    /// The pruned layer's forward that feeds the next layer (`--propagate pruned`).
    pub propagate: f64,
}

/// Time and memory of one layer of a step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerCost {
    pub seconds: f64,
    pub rss_bytes: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
}

/// One input file and its SHA-256.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileSum {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// A calibration file that was read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataFile {
    pub dataset: String,
    pub split: Split,
    pub path: PathBuf,
    pub sha256: String,
    /// The calibration windows drawn from it, in order: where each starts and the SHA-256 of
    /// its token ids, so that another tool's run on the same windows can be confirmed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<WindowRecord>,
}

/// One calibration window's provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowRecord {
    /// The document it was cut from (document sources: C4, jsonl:), 0-based.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<usize>,
    /// Its first token's index in the tokenised text (or document).
    pub start: usize,
    /// SHA-256 of its token ids, each as 4 little-endian bytes.
    pub sha256: String,
}

impl WindowRecord {
    pub fn of(doc: Option<usize>, start: usize, ids: &[u32]) -> Self {
        Self {
            doc,
            start,
            sha256: crate::fsutil::sha256_hex(ids.iter().map(|id| id.to_le_bytes())),
        }
    }
}

/// One step of the run as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecordOut {
    pub dataset: String,
    pub split: Split,
    /// Where this step's model was kept, relative to the output (empty if not kept).
    pub dir: PathBuf,
    pub report: StepReport,
    /// Perplexities after the step (`--eval`).
    pub eval: Option<Vec<EvalResult>>,
    /// Zero-shot task scores after the step (`--eval-tasks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<TaskResult>>,
}

impl StepRecordOut {
    /// Everything the step's evaluation measured, as named scores.
    pub fn scores(&self) -> Vec<Score> {
        evaluation_scores(self.eval.as_deref(), self.tasks.as_deref())
    }
}

/// Perplexities and task results as one list of named scores.
pub fn evaluation_scores(ppl: Option<&[EvalResult]>, tasks: Option<&[TaskResult]>) -> Vec<Score> {
    let mut out: Vec<Score> = ppl.into_iter().flatten().map(EvalResult::score).collect();
    out.extend(tasks.into_iter().flatten().flat_map(TaskResult::scores));
    out
}

/// The continual matrices of a run (COPAL.md §5, [`crate::eval::score`]): perplexity over
/// `datasets` (every dataset seen, the run's own last, so step i's is column
/// `datasets.len() − steps + i`), then each task metric over the tasks.
pub fn score_matrices(
    datasets: &[String],
    dense: &[Score],
    steps: &[Vec<Score>],
) -> Vec<ScoreMatrix> {
    let dense = (!dense.is_empty()).then_some(dense);
    let rows: Vec<&[Score]> = steps
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.as_slice())
        .collect();
    let all = rows.iter().copied().chain(dense).flatten();
    let mut out = Vec::new();
    for metric in crate::eval::score::metrics_of(all.clone()) {
        let (columns, transfer) = if metric == crate::eval::score::PPL {
            let offset = datasets.len().saturating_sub(steps.len());
            (datasets.to_vec(), Transfer::Diagonal { offset })
        } else {
            let mut cols: Vec<String> = Vec::new();
            for s in all.clone().filter(|s| s.metric == metric) {
                if !cols.contains(&s.name) {
                    cols.push(s.name.clone());
                }
            }
            (cols, Transfer::Columns)
        };
        out.extend(ScoreMatrix::build(metric, &columns, dense, &rows, transfer));
    }
    out
}

/// What a stored run record says of its evaluations.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredScores {
    /// Each step's dataset, in order.
    pub steps: Vec<String>,
    pub scores: Vec<ScoreMatrix>,
}

/// The score matrices of a stored `copal.json`, of this version or an earlier one (whose
/// record had only the perplexity fields: `datasets`, each step's `eval`, `dense_eval`).
pub fn read_scores(path: &std::path::Path) -> Result<StoredScores> {
    use anyhow::Context as _;
    #[derive(Deserialize)]
    struct Stored {
        #[serde(default)]
        datasets: Vec<String>,
        #[serde(default)]
        steps: Vec<StoredStep>,
        #[serde(default)]
        dense_eval: Option<Vec<EvalResult>>,
        #[serde(default)]
        dense_tasks: Option<Vec<TaskResult>>,
        #[serde(default)]
        scores: Option<Vec<ScoreMatrix>>,
    }
    #[derive(Deserialize)]
    struct StoredStep {
        dataset: String,
        #[serde(default)]
        eval: Option<Vec<EvalResult>>,
        #[serde(default)]
        tasks: Option<Vec<TaskResult>>,
    }
    let text = crate::fsutil::read_small(path, "run record", crate::fsutil::CAP_CONFIG)?;
    let r: Stored = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a copal run record (copal.json)", path.display()))?;
    let names = r.steps.iter().map(|s| s.dataset.clone()).collect();
    if let Some(scores) = r.scores {
        return Ok(StoredScores {
            steps: names,
            scores,
        });
    }
    let steps: Vec<Vec<Score>> = r
        .steps
        .iter()
        .map(|s| evaluation_scores(s.eval.as_deref(), s.tasks.as_deref()))
        .collect();
    let dense = evaluation_scores(r.dense_eval.as_deref(), r.dense_tasks.as_deref());
    Ok(StoredScores {
        steps: names,
        scores: score_matrices(&r.datasets, &dense, &steps),
    })
}

/// `copal.json`: how the artifact was made, and what was measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub copal_version: String,
    pub command: Vec<String>,
    pub plan: PrunePlan,
    pub model_dir: PathBuf,
    pub model_fingerprint: String,
    pub model_files: Vec<FileSum>,
    pub data_files: Vec<DataFile>,
    pub compute: String,
    pub threads: usize,
    /// Columns of the perplexity matrix: every dataset seen so far, in order.
    pub datasets: Vec<String>,
    pub steps: Vec<StepRecordOut>,
    pub dense_eval: Option<Vec<EvalResult>>,
    /// The dense model's zero-shot task scores (`--eval-tasks`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dense_tasks: Option<Vec<TaskResult>>,
    /// Every continual matrix: perplexity over the datasets, each task metric over the tasks,
    /// with their averages and BWTs ([`score_matrices`]).
    pub scores: Vec<ScoreMatrix>,
    /// The perplexity matrix's R[step][dataset], average and BWT, as the first format of
    /// this record had them (also in `scores`).
    pub ppl_matrix: Option<Vec<Vec<f64>>>,
    pub avg_ppl: Option<f64>,
    pub bwt: Option<f64>,
    /// Measured fraction of zeros over the pruned linears after the last step.
    pub sparsity: f64,
    /// Steps taken over from an interrupted run of the same command.
    pub resumed_steps: usize,
    pub seconds: f64,
    pub peak_rss_bytes: Option<u64>,
}

/// SHA-256 of every file that makes up the checkpoint's weights and config.
pub fn checksum_model(ckpt: &Checkpoint) -> Result<Vec<FileSum>> {
    let mut names: Vec<String> = ckpt.shards.iter().map(|s| s.file_name.clone()).collect();
    names.push("config.json".into());
    names
        .into_iter()
        .map(|name| {
            let p = ckpt.dir.join(&name);
            Ok(FileSum {
                bytes: std::fs::metadata(&p)?.len(),
                sha256: crate::fsutil::sha256_file(&p)?,
                name,
            })
        })
        .collect()
}

/// One hash for the model: SHA-256 over the weight shards' hashes (not config.json, whose
/// formatting may change without changing the model).
pub fn fingerprint(files: &[FileSum]) -> String {
    crate::fsutil::sha256_hex(
        files
            .iter()
            .filter(|f| f.name.ends_with(".safetensors"))
            .map(|f| f.sha256.as_bytes()),
    )
}

/// The run's matrices as text tables (rows: dense and each step; columns: datasets, then
/// tasks), each with its average and BWT; the sparsity last.
pub fn score_tables(rec: &RunRecord) -> String {
    let labels: Vec<&str> = rec.steps.iter().map(|s| s.dataset.as_str()).collect();
    let out = tables(&labels, &rec.scores);
    match out.is_empty() {
        true => out,
        false => format!("{out}sparsity {:.4}\n", rec.sparsity),
    }
}

/// Matrices as text tables, their rows labelled by `steps`.
pub fn tables(steps: &[&str], scores: &[ScoreMatrix]) -> String {
    scores.iter().map(|m| matrix_table(m, steps)).collect()
}

/// One matrix as a text table: perplexities with 3 decimals, accuracies with 4.
fn matrix_table(m: &ScoreMatrix, labels: &[&str]) -> String {
    let ppl = m.metric == crate::eval::score::PPL;
    let w = m.columns.iter().map(|d| d.len()).max().unwrap_or(8).max(10);
    let cell = |v: &Option<f64>| match v {
        Some(v) if ppl => format!(" {v:>w$.3}"),
        Some(v) => format!(" {v:>w$.4}"),
        None => format!(" {:>w$}", "-"),
    };
    let head = if ppl {
        "after step".to_string()
    } else {
        format!("{} after step", m.metric)
    };
    let mut out = format!("{head:<24}");
    for d in &m.columns {
        out.push_str(&format!(" {d:>w$}"));
    }
    out.push('\n');
    if let Some(dense) = &m.dense {
        out.push_str(&format!("{:<24}", "dense"));
        dense.iter().for_each(|v| out.push_str(&cell(v)));
        out.push('\n');
    }
    for (row, label) in m.rows.iter().zip(labels) {
        out.push_str(&format!("{label:<24}"));
        row.iter().for_each(|v| out.push_str(&cell(v)));
        out.push('\n');
    }
    let name = if ppl { "PPL" } else { m.metric.as_str() };
    match m.average {
        Some(a) if ppl => out.push_str(&format!("average {name} {a:.3}")),
        Some(a) => out.push_str(&format!("average {name} {a:.4}")),
        None => out.push_str(&format!("average {name} n/a")),
    }
    match m.bwt {
        Some(b) if ppl => out.push_str(&format!("   BWT {b:+.3}\n")),
        Some(b) => out.push_str(&format!(
            "   BWT {b:+.4} ({})\n",
            match m.forgetting() {
                Some(f) if f > 0.0 => "a fall: forgetting",
                _ => "no forgetting",
            }
        )),
        None => out.push_str("   BWT n/a (one step)\n"),
    }
    out
}
