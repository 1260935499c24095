//! The run record (`copal.json`): what each step did and cost, the model's checksums and
//! fingerprint, and the human-readable tables. The process probes it records (resident
//! memory) are [`crate::probe`]'s.

use crate::checkpoint::Checkpoint;
use crate::data::Split;
use crate::eval::EvalResult;
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
    pub eval: Option<Vec<EvalResult>>,
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
    /// R[step][dataset].
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

/// The R matrix as a text table (rows: dense and each step; columns: datasets).
pub fn ppl_table(rec: &RunRecord) -> String {
    let mut out = String::new();
    let Some(r) = &rec.ppl_matrix else { return out };
    let w = rec
        .datasets
        .iter()
        .map(|d| d.len())
        .max()
        .unwrap_or(8)
        .max(10);
    out.push_str(&format!("{:<24}", "after step"));
    for d in &rec.datasets {
        out.push_str(&format!(" {d:>w$}"));
    }
    out.push('\n');
    if let Some(dense) = &rec.dense_eval {
        out.push_str(&format!("{:<24}", "dense"));
        for e in dense {
            out.push_str(&format!(" {:>w$.3}", e.ppl));
        }
        out.push('\n');
    }
    for (row, step) in r.iter().zip(&rec.steps) {
        out.push_str(&format!("{:<24}", step.dataset));
        for v in row {
            if v.is_nan() {
                out.push_str(&format!(" {:>w$}", "-"));
            } else {
                out.push_str(&format!(" {v:>w$.3}"));
            }
        }
        out.push('\n');
    }
    if let Some(a) = rec.avg_ppl {
        out.push_str(&format!("average PPL {a:.3}"));
    }
    match rec.bwt {
        Some(b) => out.push_str(&format!("   BWT {b:+.3}")),
        None => out.push_str("   BWT n/a (one step)"),
    }
    out.push_str(&format!("   sparsity {:.4}\n", rec.sparsity));
    out
}
