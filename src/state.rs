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
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

pub const META_KEY: &str = "copal.state";
/// The metadata entry with the SHA-256 of the provenance and of every tensor (states written
/// since copal 0.1 of 2026-12; older ones have none and are read unchecked).
pub const DIGEST_KEY: &str = "copal.state.sha256";
pub const FORMAT: &str = "copal-state/2";
/// The first format: the settings field by field (still read, see [`SettingsV1`]).
pub const FORMAT_1: &str = "copal-state/1";

/// Settings that change the accumulated sums or the activations they were measured on; a
/// state can only be continued with the same ones.
///
/// Format 2 keeps them generically: the method, and every setting that shapes the stored sums
/// by name, as each part of the run declares them ([`PrunePlan::state_settings`]: the plan's
/// pattern, group, propagation and allocation, the method's own such settings and the update
/// stage's). A continuation that differs names the setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSettings {
    pub method: Method,
    pub shaping: BTreeMap<String, Value>,
}

impl StateSettings {
    /// The settings of a plan's state.
    pub fn of(plan: &PrunePlan) -> Self {
        Self {
            method: plan.method.method(),
            shaping: plan.state_settings(),
        }
    }

    fn update(&self) -> Update {
        self.shaping
            .get("update")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }
}

/// Format 1's settings, field by field: `perturbation` and `variant` are COPAL's settings,
/// written for every method (COPAL's defaults for the others) and meaningful only for COPAL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingsV1 {
    pub method: Method,
    pub perturbation: Perturbation,
    #[serde(default)]
    pub variant: CopalVariant,
    pub pattern: Pattern,
    pub group: Group,
    pub propagate: Propagate,
    /// Written only when not uniform.
    #[serde(default)]
    pub allocate: Allocation,
    /// Written only when there was an update.
    #[serde(default)]
    pub update: Update,
}

impl SettingsV1 {
    /// The same settings as format 2 names them: what a plan with these values declares.
    pub fn upgrade(&self) -> Result<StateSettings> {
        // COPAL's fields as its settings; the settings that shape its state are then named by
        // the method table, as a plan's are.
        let copal = CopalConfig {
            perturbation: self.perturbation.kind,
            eps_w: self.perturbation.eps_w,
            eps_x: self.perturbation.eps_x,
            agg: self.variant.agg,
            normalize: self.variant.normalize,
            decay: self.variant.decay,
            ..Default::default()
        };
        let mut params = match self.method {
            Method::Copal => MethodConfig::Copal(copal).state_settings(),
            _ => serde_json::Map::new(),
        };
        params.remove("update");
        if !self.update.is_none() {
            params.insert("update".into(), serde_json::to_value(self.update)?);
        }
        let method = MethodConfig::from_params(self.method, &params)
            .context("a format-1 state's settings do not form a valid plan")?;
        Ok(StateSettings {
            method: self.method,
            shaping: crate::plan::shaping_settings(
                &method,
                &self.pattern,
                self.group,
                self.propagate,
                &self.allocate,
            ),
        })
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
    /// Reads the provenance of either format; a format-1 state's settings are upgraded to
    /// format 2's names (and it is written as format 2 once continued).
    pub fn from_json(text: &str) -> Result<Self> {
        let mut v: Value = serde_json::from_str(text)?;
        let format = v["format"].as_str().unwrap_or_default().to_string();
        if format == FORMAT_1 {
            let old: SettingsV1 =
                serde_json::from_value(v["settings"].take()).context("format-1 settings")?;
            v["settings"] = serde_json::to_value(old.upgrade()?)?;
            v["format"] = Value::String(FORMAT.into());
        } else {
            ensure!(
                format == FORMAT,
                "it has format {format:?}; this copal reads {FORMAT} and {FORMAT_1}"
            );
        }
        Ok(serde_json::from_value(v)?)
    }

    /// Refuses to continue a state made for another model or with other settings.
    pub fn check_continues(
        &self,
        fingerprint: &str,
        settings: &StateSettings,
        path: &Path,
    ) -> Result<()> {
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
        let a = &self.settings;
        let (had, wants) = (a.update(), settings.update());
        if a.method == settings.method && had != wants && !wants.is_none() {
            bail!(
                "{} holds no input statistic for update {wants}: it was accumulated with update \
                 {had}. Continue it with update {had}, or start a new state file with update \
                 {wants} and calibrate on its datasets again ({})",
                path.display(),
                self.datasets().join(", ")
            );
        }
        let mut diffs = Vec::new();
        if a.method != settings.method {
            diffs.push(format!(
                "method {} (state: {})",
                settings.method.name(),
                a.method.name()
            ));
        } else {
            // Every setting either side declares; one only the other has is a difference too.
            let keys: std::collections::BTreeSet<&String> =
                a.shaping.keys().chain(settings.shaping.keys()).collect();
            for k in keys {
                let (was, now) = (a.shaping.get(k), settings.shaping.get(k));
                if was != now {
                    diffs.push(format!("{k} {} (state: {})", shown(now), shown(was)));
                }
            }
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
        let meta = StateMeta::from_json(text)
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

/// A setting's value as a user reads it: a string bare, a stage's settings value as `kind
/// (key value, …)`, anything else as JSON.
fn shown(v: Option<&Value>) -> String {
    match v {
        None => "unset".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) if o.get("kind").is_some_and(Value::is_string) => {
            let rest: Vec<String> = o
                .iter()
                .filter(|(k, _)| *k != "kind")
                .map(|(k, v)| format!("{k} {}", shown(Some(v))))
                .collect();
            let kind = shown(o.get("kind"));
            match rest.is_empty() {
                true => kind,
                false => format!("{kind} ({})", rest.join(", ")),
            }
        }
        Some(other) => other.to_string(),
    }
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

    fn v1(method: Method, copal: CopalConfig) -> SettingsV1 {
        SettingsV1 {
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

    /// The settings a plan of `method` with COPAL's `copal` values gives the state.
    fn of_plan(method: Method, copal: CopalConfig) -> StateSettings {
        let m = match method {
            Method::Copal => MethodConfig::Copal(copal),
            _ => MethodConfig::defaults(method),
        };
        StateSettings {
            method,
            shaping: crate::plan::shaping_settings(
                &m,
                &Pattern::Unstructured { percent: 50.0 },
                Group::Matrix,
                Propagate::Pruned,
                &Allocation::Uniform,
            ),
        }
    }

    /// COPAL settings other than the defaults, in two of the six that shape its state.
    fn other_copal() -> CopalConfig {
        CopalConfig {
            eps_w: 0.05,
            agg: crate::prune::copal::Aggregation::L2,
            ..Default::default()
        }
    }

    #[test]
    fn a_format_1_state_reads_as_the_plan_that_made_it() {
        let other = other_copal();
        for method in [Method::Copal, Method::Wanda, Method::SparseGpt] {
            assert_eq!(
                v1(method, other).upgrade().unwrap(),
                of_plan(method, other),
                "{method}"
            );
        }
        // The whole provenance, as copal 0.1 wrote it.
        let text = serde_json::json!({
            "format": FORMAT_1, "copal_version": "0.1.0", "model_fingerprint": "f",
            "settings": v1(Method::Copal, other), "steps": [],
        })
        .to_string();
        let m = StateMeta::from_json(&text).unwrap();
        assert_eq!(m.format, FORMAT);
        assert_eq!(m.settings, of_plan(Method::Copal, other));
        let future = text.replace(FORMAT_1, "copal-state/9");
        assert!(StateMeta::from_json(&future).is_err());
    }

    #[test]
    fn copal_settings_matter_only_to_copal_states() {
        let other = other_copal();
        let p = Path::new("s.state");
        // A SparseGPT state written with other COPAL values (format 1 wrote them for every
        // method) continues: Σ x xᵀ does not depend on them.
        let m = meta(v1(Method::SparseGpt, other).upgrade().unwrap());
        m.check_continues("f", &of_plan(Method::SparseGpt, CopalConfig::default()), p)
            .unwrap();
        // A COPAL state does not, and the continuation names each setting that differs.
        let m = meta(v1(Method::Copal, other).upgrade().unwrap());
        let e = m
            .check_continues("f", &of_plan(Method::Copal, CopalConfig::default()), p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("agg l1 (state: l2)") && e.contains("eps_w 0.01 (state: 0.05)"),
            "{e}"
        );
        assert!(
            !e.contains("--"),
            "library messages name settings, not flags: {e}"
        );
        // Another method is named as such.
        let e = m
            .check_continues("f", &of_plan(Method::Wanda, CopalConfig::default()), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("method wanda (state: copal)"), "{e}");
    }
}
