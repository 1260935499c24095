//! The update stage: what happens to a mask-only method's result (COPAL, Wanda, magnitude,
//! RIA) between its mask and the written weight. `none` masks the dense weights (the method as
//! published); `obs` reconstructs the kept weights by SparseGPT's OBS update from XᵀX
//! ([`super::obs`]).
//!
//! This file is the update table, as [`super`] is the method table: an update is a file with
//! its settings, the input statistic it accumulates ([`InputStatistic`], kept once per distinct
//! input of a layer: q for q/k/v, o, gate for gate/up, down) and how it applies it, plus one
//! line in each match below. The layer walk (`calib.rs`), the state layout and the settings
//! checks read only this table.

pub mod dsnot;

use super::obs::{self, ObsConfig};
use super::pruner::{Applied, InputStatistic, Pruned};
use crate::model::{Linear, LlamaConfig};
use anyhow::Result;
use candle_core::Tensor;
use dsnot::DsnotConfig;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Which update follows a mask-only method's mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Update {
    /// Mask the dense weights (the method as published).
    #[default]
    None,
    /// Then reconstruct the kept weights by the OBS update from XᵀX, the mask given.
    Obs,
    /// Then refine the mask by DSnoT's grow-and-prune cycles (the weights stay dense).
    Dsnot,
}

crate::display_as_value!(Update);

impl Update {
    pub const ALL: [Update; 3] = [Update::None, Update::Obs, Update::Dsnot];

    pub fn is_none(&self) -> bool {
        *self == Update::None
    }
}

/// A mask-only method's update settings: which update, and each update's own settings (an
/// update's settings are refused unless that update is chosen; see [`UpdateConfig::keys`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct UpdateConfig {
    pub update: Update,
    #[serde(flatten)]
    pub obs: ObsConfig,
    #[serde(flatten)]
    pub dsnot: DsnotConfig,
}

fn keys_of(v: impl Serialize) -> Vec<String> {
    match serde_json::to_value(v) {
        Ok(Value::Object(m)) => m.into_iter().map(|(k, _)| k).collect(),
        _ => Vec::new(),
    }
}

impl UpdateConfig {
    /// The settings that belong to `update` (by name, as in an experiment entry).
    pub fn keys(update: Update) -> Vec<String> {
        match update {
            Update::None => Vec::new(),
            Update::Obs => keys_of(ObsConfig::default()),
            Update::Dsnot => keys_of(DsnotConfig::default()),
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.obs.validate()?;
        self.dsnot.validate()
    }

    /// Refuses a pattern the update cannot keep.
    pub fn check(&self, pattern: &super::Pattern) -> Result<()> {
        match self.update {
            Update::None | Update::Obs => Ok(()),
            Update::Dsnot => self.dsnot.check(pattern),
        }
    }

    /// Refuses a setting in `params` that belongs to an update other than the chosen one.
    pub fn check_keys(
        &self,
        method: impl std::fmt::Display,
        params: &Map<String, Value>,
    ) -> Result<()> {
        for other in Update::ALL.into_iter().filter(|u| *u != self.update) {
            for key in Self::keys(other) {
                crate::usage_ensure!(
                    !params.contains_key(&key),
                    &key,
                    "applies to {method} only with update {other} (the update it sets up)"
                );
            }
        }
        Ok(())
    }

    /// The settings that shape the statistic the state keeps for the update: which update it
    /// is (OBS's damping and blocks, DSnoT's cycles and thresholds act when it is applied).
    pub fn state_settings(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("update".into(), Value::String(self.update.to_string()));
        m
    }

    /// Whether the update reads calibration data.
    pub fn reads_data(&self) -> bool {
        !self.update.is_none()
    }

    /// The name and shape of the statistic the state keeps for `lin` of `layer` (None: none
    /// there; statistics are kept under input sources only, q for q/k/v, o, gate for gate/up,
    /// down).
    pub fn state_entry(
        &self,
        lin: Linear,
        layer: usize,
        cfg: &LlamaConfig,
    ) -> Option<(String, Vec<usize>)> {
        if lin.input_source() != lin {
            return None;
        }
        let (name, i) = (lin.tensor_name(layer), lin.shape(cfg).1);
        match self.update {
            Update::None => None,
            Update::Obs => Some((obs::gram_key(&name), vec![i, i])),
            Update::Dsnot => Some((dsnot::moments_key(&name), vec![4, i])),
        }
    }

    /// A fresh statistic for one input source, starting from the state's (`prior`).
    pub fn statistic(&self, prior: Option<Tensor>) -> Result<Option<Box<dyn InputStatistic>>> {
        Ok(match self.update {
            Update::None => None,
            Update::Obs => Some(Box::new(obs::Gram::new(prior)?)),
            Update::Dsnot => Some(dsnot::statistic(prior)?),
        })
    }

    /// Applies the update to `done` (the method's result for `lin`, whose dense weight is
    /// `dense`), from the statistic of its input.
    pub fn apply(
        &self,
        lin: Linear,
        dense: &Tensor,
        done: &mut Pruned,
        stat: &Tensor,
    ) -> Result<Applied> {
        match self.update {
            Update::None => Ok(Applied::default()),
            Update::Obs => obs::apply_given(dense, done, stat, self.obs),
            Update::Dsnot => dsnot::apply(&self.dsnot, lin, dense, done, stat),
        }
    }

    /// FLOPs of the update of `lin` over `windows` windows of `t` tokens.
    pub fn flops(&self, lin: Linear, cfg: &LlamaConfig, windows: f64, t: f64) -> f64 {
        let (o, i) = lin.shape(cfg);
        let source = lin.input_source() == lin;
        match self.update {
            Update::None => 0.0,
            Update::Obs => self.obs.flops(o, i, windows, t, source),
            Update::Dsnot => self.dsnot.flops(o, i, windows, t, source),
        }
    }
}
