//! The continual state: what `--mode accumulate` carries from one dataset to the next.
//!
//! A safetensors file holding, under each pruned weight's own name, the method's running sums
//! in f32 (COPAL's importance W*_i, shaped like the weight; Wanda's Σ x² per input column;
//! SparseGPT's Σ x xᵀ), with its provenance in `__metadata__`
//! (key `copal.state`, JSON): the model fingerprint, the settings that shaped the sums, and
//! every dataset seen with its calibration settings and token count (llama.cpp's imatrix
//! keeps sums plus the list of datasets for the same reason). Adding a dataset is addition,
//! so a state saved after wikitext2 and continued with ptb gives bit for bit what one run
//! over wikitext2,ptb gives.

use crate::calib::Propagate;
use crate::checkpoint::writer::ShardWriter;
use crate::checkpoint::Shard;
use crate::data::Split;
use crate::model::{Linear, LlamaConfig};
use crate::prune::copal::{CopalVariant, Perturbation};
use crate::prune::{Group, Method, Pattern};
use anyhow::{bail, ensure, Context as _, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const META_KEY: &str = "copal.state";
pub const FORMAT: &str = "copal-state/1";

/// Settings that change the accumulated sums or the activations they were measured on; a
/// state can only be continued with the same ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateSettings {
    pub method: Method,
    pub perturbation: Perturbation,
    #[serde(default)]
    pub variant: CopalVariant,
    pub pattern: Pattern,
    pub group: Group,
    pub propagate: Propagate,
}

/// One dataset folded into the state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub dataset: String,
    pub split: Split,
    pub file: String,
    pub file_sha256: String,
    pub nsamples: usize,
    pub seqlen: usize,
    pub seed: u64,
    /// Calibration tokens seen: nsamples × seqlen.
    pub tokens: usize,
    /// Tokens of the calibration text (or of the documents tokenised while sampling).
    pub source_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateMeta {
    pub format: String,
    pub copal_version: String,
    pub model_fingerprint: String,
    pub settings: StateSettings,
    pub steps: Vec<StepRecord>,
}

impl StateMeta {
    /// Refuses to continue a state made for another model or with other settings.
    pub fn check_continues(
        &self,
        fingerprint: &str,
        settings: &StateSettings,
        path: &Path,
    ) -> Result<()> {
        ensure!(
            self.format == FORMAT,
            "{} has format {:?}; this copal reads {FORMAT}",
            path.display(),
            self.format
        );
        ensure!(
            self.model_fingerprint == fingerprint,
            "{} was made for another model (fingerprint {}…, this model {}…); use the same \
             --model or start a new state file",
            path.display(),
            &self.model_fingerprint[..12.min(self.model_fingerprint.len())],
            &fingerprint[..12.min(fingerprint.len())]
        );
        let mut diffs = Vec::new();
        let a = &self.settings;
        if a.method != settings.method {
            diffs.push(format!(
                "--method {} (state: {})",
                settings.method.name(),
                a.method.name()
            ));
        }
        if a.perturbation != settings.perturbation {
            diffs.push(format!(
                "--perturbation {} --eps-w {} --eps-x {} (state: {} --eps-w {} --eps-x {})",
                crate::cli::value_name(settings.perturbation.kind),
                settings.perturbation.eps_w,
                settings.perturbation.eps_x,
                crate::cli::value_name(a.perturbation.kind),
                a.perturbation.eps_w,
                a.perturbation.eps_x
            ));
        }
        if a.variant != settings.variant {
            diffs.push(format!(
                "{} (state: {})",
                variant_flags(&settings.variant),
                variant_flags(&a.variant)
            ));
        }
        if a.pattern != settings.pattern {
            diffs.push(format!(
                "pattern {} (state: {})",
                settings.pattern, a.pattern
            ));
        }
        if a.group != settings.group {
            diffs.push(format!(
                "--group {} (state: {})",
                crate::cli::value_name(settings.group),
                crate::cli::value_name(a.group)
            ));
        }
        if a.propagate != settings.propagate {
            diffs.push(format!(
                "--propagate {} (state: {})",
                crate::cli::value_name(settings.propagate),
                crate::cli::value_name(a.propagate)
            ));
        }
        if !diffs.is_empty() {
            bail!(
                "{} was accumulated with other settings: {}; rerun with the state's settings or \
                 start a new state file",
                path.display(),
                diffs.join("; ")
            );
        }
        Ok(())
    }

    pub fn datasets(&self) -> Vec<String> {
        self.steps.iter().map(|s| s.dataset.clone()).collect()
    }
}

/// A state file opened for reading (memory-mapped).
pub struct StateReader {
    shard: Shard,
    pub meta: StateMeta,
}

impl StateReader {
    pub fn open(path: &Path) -> Result<Self> {
        let shard = Shard::open_or(
            path,
            "a state cannot be repaired; restore a copy, or start a new state file and \
                 recalibrate on every dataset it held",
        )
        .with_context(|| format!("opening state file {}", path.display()))?;
        let text = shard
            .user_metadata()
            .and_then(|m| m.get(META_KEY))
            .with_context(|| {
                format!(
                    "{} is a safetensors file but not a copal state (no {META_KEY} metadata)",
                    path.display()
                )
            })?;
        let meta: StateMeta = serde_json::from_str(text)
            .with_context(|| format!("{}: unreadable {META_KEY} metadata", path.display()))?;
        Ok(Self { shard, meta })
    }

    /// The importance of one weight, as f32.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        let info = self.shard.info(name).with_context(|| {
            format!(
                "state {} has no tensor {name}; it is incomplete",
                self.shard.path.display()
            )
        })?;
        ensure!(
            info.dtype == Dtype::F32,
            "state tensor {name} is {:?}, expected F32",
            info.dtype
        );
        let bytes = self
            .shard
            .bytes(name)
            .context("state tensor out of bounds")?;
        let t = Tensor::from_raw_buffer(bytes, DType::F32, &info.shape, &Device::Cpu)?;
        // Copied: keep the state's pages from accumulating in resident memory layer by layer.
        self.shard.release(name);
        Ok(t.to_device(device)?)
    }

    /// Checks that the state holds every linear of `cfg` with the shape `method` keeps.
    pub fn check_shapes(&self, cfg: &LlamaConfig, method: Method) -> Result<()> {
        for l in 0..cfg.num_hidden_layers {
            for lin in state_linears(method) {
                let name = lin.tensor_name(l);
                let info = self.shard.info(&name).with_context(|| {
                    format!("state {} has no tensor {name}", self.shard.path.display())
                })?;
                let want = state_shape(method, lin, cfg);
                ensure!(
                    info.shape == want,
                    "state tensor {name} has shape {:?}, {} keeps {want:?} for this model",
                    info.shape,
                    method.name()
                );
            }
        }
        Ok(())
    }
}

/// The linears whose statistics a state stores. SparseGPT's Σ x xᵀ depends only on the
/// input, so it is kept once per distinct input (under q, o, gate and down) and shared by the
/// linears that read the same input; the other methods keep one statistic per linear.
pub fn state_linears(method: Method) -> impl Iterator<Item = Linear> {
    Linear::ALL
        .into_iter()
        .filter(move |l| method.keeps_stats(*l))
}

/// The statistic each method carries per linear: COPAL's importance (out × in), Wanda's
/// Σ x² per input (in), SparseGPT's Σ x xᵀ (in × in).
pub fn state_shape(method: Method, lin: Linear, cfg: &LlamaConfig) -> Vec<usize> {
    let (o, i) = lin.shape(cfg);
    match method {
        Method::Wanda => vec![i],
        Method::SparseGpt => vec![i, i],
        _ => vec![o, i],
    }
}

/// A state file being written: all linears of `cfg`, f32, provenance in the header.
pub fn create_writer(
    path: &Path,
    cfg: &LlamaConfig,
    method: Method,
    meta: &StateMeta,
) -> Result<ShardWriter> {
    let mut layout = Vec::with_capacity(cfg.num_hidden_layers * 7);
    for l in 0..cfg.num_hidden_layers {
        for lin in state_linears(method) {
            layout.push((
                lin.tensor_name(l),
                Dtype::F32,
                state_shape(method, lin, cfg),
            ));
        }
    }
    let mut md = BTreeMap::new();
    md.insert(META_KEY.to_string(), serde_json::to_string(meta)?);
    ShardWriter::create(path, &layout, &md)
}

fn variant_flags(v: &crate::prune::copal::CopalVariant) -> String {
    format!(
        "--copal-agg {}{} --decay {}",
        crate::cli::value_name(v.agg),
        if v.normalize {
            " --copal-normalize"
        } else {
            ""
        },
        v.decay
    )
}
