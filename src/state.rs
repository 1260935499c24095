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

use crate::checkpoint::writer::ShardWriter;
use crate::checkpoint::Shard;
use crate::data::Split;
use crate::model::{Linear, LlamaConfig};
use crate::plan::{Propagate, PrunePlan};
use crate::prune::allocate::Allocation;
use crate::prune::copal::{CopalConfig, CopalVariant, Perturbation};
use crate::prune::update::Update;
use crate::prune::{Group, Method, MethodConfig, Pattern};
use anyhow::{bail, ensure, Context as _, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const META_KEY: &str = "copal.state";
/// The metadata entry with the SHA-256 of the provenance and of every tensor (states written
/// since copal 0.1 of 2026-12; older ones have none and are read unchecked).
pub const DIGEST_KEY: &str = "copal.state.sha256";
pub const FORMAT: &str = "copal-state/1";

/// Settings that change the accumulated sums or the activations they were measured on; a
/// state can only be continued with the same ones.
///
/// The layout is format 1's: `perturbation` and `variant` are COPAL's settings, written for
/// every method (COPAL's defaults for the others) and compared only for COPAL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateSettings {
    pub method: Method,
    pub perturbation: Perturbation,
    #[serde(default)]
    pub variant: CopalVariant,
    pub pattern: Pattern,
    pub group: Group,
    pub propagate: Propagate,
    /// Written only when not uniform (format 1 had none).
    #[serde(default, skip_serializing_if = "Allocation::is_uniform")]
    pub allocate: Allocation,
    /// A mask-only method's update keeps its input statistic beside the method's (written
    /// only when there is an update).
    #[serde(default, skip_serializing_if = "Update::is_none")]
    pub update: Update,
}

impl StateSettings {
    /// The settings of a plan's state.
    pub fn of(plan: &PrunePlan) -> Self {
        let copal = match plan.method {
            MethodConfig::Copal(c) => c,
            _ => CopalConfig::default(),
        };
        Self {
            method: plan.method.method(),
            perturbation: copal.perturbation(),
            variant: copal.variant(),
            pattern: plan.pattern,
            group: plan.group,
            propagate: plan.propagate,
            allocate: plan.allocate,
            update: plan.method.update().map(|u| u.update).unwrap_or_default(),
        }
    }
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
        if self.model_fingerprint != fingerprint {
            // Where they differ, so that two fingerprints with a common start are told apart.
            let at = self
                .model_fingerprint
                .chars()
                .zip(fingerprint.chars())
                .position(|(a, b)| a != b)
                .unwrap_or(fingerprint.len().min(self.model_fingerprint.len()));
            bail!(
                "{} was made for another model (fingerprint {}, this model {}; they differ from \
                 character {}); use the same model or start a new state file",
                path.display(),
                self.model_fingerprint,
                fingerprint,
                at + 1
            );
        }
        let mut diffs = Vec::new();
        let a = &self.settings;
        if a.method != settings.method {
            diffs.push(format!(
                "--method {} (state: {})",
                settings.method.name(),
                a.method.name()
            ));
        }
        // COPAL's settings shape COPAL's sums only.
        let copal = settings.method == Method::Copal && a.method == Method::Copal;
        if copal && a.perturbation != settings.perturbation {
            diffs.push(format!(
                "--perturbation {} --eps-w {} --eps-x {} (state: {} --eps-w {} --eps-x {})",
                settings.perturbation.kind,
                settings.perturbation.eps_w,
                settings.perturbation.eps_x,
                a.perturbation.kind,
                a.perturbation.eps_w,
                a.perturbation.eps_x
            ));
        }
        if copal && a.variant != settings.variant {
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
            diffs.push(format!("--group {} (state: {})", settings.group, a.group));
        }
        if a.propagate != settings.propagate {
            diffs.push(format!(
                "--propagate {} (state: {})",
                settings.propagate, a.propagate
            ));
        }
        if a.method == settings.method && a.update != settings.update && !settings.update.is_none()
        {
            bail!(
                "{} holds no input statistic for --update {}: it was accumulated with --update \
                 {}. Continue it with --update {}, or start a new state file with --update {} \
                 (--state NEW.state) and calibrate on its datasets again ({})",
                path.display(),
                settings.update,
                a.update,
                a.update,
                settings.update,
                self.datasets().join(", ")
            );
        }
        if a.update != settings.update {
            diffs.push(format!(
                "--update {} (state: {})",
                settings.update, a.update
            ));
        }
        if a.allocate != settings.allocate {
            diffs.push(format!(
                "allocation {} (state: {})",
                settings.allocate, a.allocate
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

impl crate::calib::Priors for StateReader {
    fn prior(&self, name: &str, device: &Device) -> Result<Tensor> {
        self.tensor(name, device)
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
        verify_digests(&shard, path)?;
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

    /// Checks that the state holds every tensor of `cfg` with the shape `method` keeps.
    pub fn check_shapes(&self, cfg: &LlamaConfig, method: &MethodConfig) -> Result<()> {
        for l in 0..cfg.num_hidden_layers {
            for (name, want) in state_layout(method, cfg, l) {
                let info = self.shard.info(&name).with_context(|| {
                    format!("state {} has no tensor {name}", self.shard.path.display())
                })?;
                ensure!(
                    info.shape == want,
                    "state tensor {name} has shape {:?}, {} keeps {want:?} for this model",
                    info.shape,
                    method.method()
                );
            }
        }
        Ok(())
    }
}

/// The tensors a state stores for one layer, with their shapes: the method's statistic per
/// linear (see [`crate::prune::Statistic`]) and its update's input statistic once per distinct
/// input (under the update's state key of q, o, gate and down).
pub fn state_layout(
    method: &MethodConfig,
    cfg: &LlamaConfig,
    layer: usize,
) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Linear::ALL
        .into_iter()
        .filter_map(|lin| {
            method
                .method()
                .state_shape(lin, cfg)
                .map(|shape| (lin.tensor_name(layer), shape))
        })
        .collect();
    let update = method.update_stage();
    out.extend(
        Linear::ALL
            .into_iter()
            .filter_map(|lin| update.state_entry(lin, layer, cfg)),
    );
    out
}

/// Checks a state's digests (its provenance and every tensor, read once, page by page
/// released): one flipped bit anywhere is refused before any work.
fn verify_digests(shard: &Shard, path: &Path) -> Result<()> {
    let Some(md) = shard.user_metadata() else {
        return Ok(());
    };
    let Some(block) = md.get(DIGEST_KEY) else {
        return Ok(());
    };
    let corrupt = |what: String| {
        anyhow::anyhow!(
            "{} is corrupt: {what}. A state cannot be repaired; restore a copy, or start a new \
             state file and recalibrate on every dataset it held",
            path.display()
        )
    };
    let v: serde_json::Value = serde_json::from_str(block)
        .map_err(|_| corrupt(format!("its {DIGEST_KEY} entry is not JSON")))?;
    let want_meta = v["metadata"].as_str().unwrap_or("");
    let got_meta = crate::checkpoint::writer::metadata_sha256(md.iter(), DIGEST_KEY);
    if got_meta != want_meta {
        return Err(corrupt(format!(
            "its provenance (header metadata) has SHA-256 {got_meta}, recorded {want_meta}"
        )));
    }
    let tensors = v["tensors"]
        .as_object()
        .ok_or_else(|| corrupt(format!("its {DIGEST_KEY} entry lists no tensors")))?;
    let names = shard.names();
    if names.len() != tensors.len() || names.iter().any(|n| !tensors.contains_key(n)) {
        return Err(corrupt("its tensors are not the ones it recorded".into()));
    }
    for name in names {
        let bytes = shard
            .bytes(&name)
            .ok_or_else(|| corrupt(format!("tensor {name} lies outside the file")))?;
        let got = crate::fsutil::sha256_hex([bytes]);
        shard.release(&name);
        let want = tensors[&name].as_str().unwrap_or("");
        if got != want {
            return Err(corrupt(format!(
                "tensor {name} has SHA-256 {got}, recorded {want}"
            )));
        }
    }
    Ok(())
}

/// A state file being written: all linears of `cfg`, f32, provenance in the header.
pub fn create_writer(
    path: &Path,
    cfg: &LlamaConfig,
    method: &MethodConfig,
    meta: &StateMeta,
) -> Result<ShardWriter> {
    let mut layout = Vec::with_capacity(cfg.num_hidden_layers * 7);
    for l in 0..cfg.num_hidden_layers {
        for (name, shape) in state_layout(method, cfg, l) {
            layout.push((name, Dtype::F32, shape));
        }
    }
    let mut md = BTreeMap::new();
    md.insert(META_KEY.to_string(), serde_json::to_string(meta)?);
    ShardWriter::create_with_digests(path, &layout, &md, DIGEST_KEY)
}

fn variant_flags(v: &crate::prune::copal::CopalVariant) -> String {
    format!(
        "--copal-agg {}{} --decay {}",
        v.agg,
        if v.normalize {
            " --copal-normalize"
        } else {
            ""
        },
        v.decay
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(settings: StateSettings) -> StateMeta {
        StateMeta {
            format: FORMAT.into(),
            copal_version: "0".into(),
            model_fingerprint: "f".into(),
            settings,
            steps: vec![],
        }
    }

    fn settings(method: Method, copal: CopalConfig) -> StateSettings {
        StateSettings {
            method,
            perturbation: copal.perturbation(),
            variant: copal.variant(),
            pattern: Pattern::Unstructured { percent: 50.0 },
            group: Group::Matrix,
            propagate: Propagate::Pruned,
            allocate: Allocation::Uniform,
            update: Update::None,
        }
    }

    #[test]
    fn copal_settings_matter_only_to_copal_states() {
        let other = CopalConfig {
            eps_w: 0.05,
            agg: crate::prune::copal::Aggregation::L2,
            ..Default::default()
        };
        let p = Path::new("s.state");
        // A SparseGPT state written with other COPAL values (format 1 wrote them for every
        // method) continues: Σ x xᵀ does not depend on them.
        let m = meta(settings(Method::SparseGpt, other));
        m.check_continues("f", &settings(Method::SparseGpt, CopalConfig::default()), p)
            .unwrap();
        // A COPAL state does not.
        let m = meta(settings(Method::Copal, other));
        let e = m
            .check_continues("f", &settings(Method::Copal, CopalConfig::default()), p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--eps-w 0.01") && e.contains("--copal-agg l1"),
            "{e}"
        );
    }
}
