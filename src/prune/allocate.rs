//! How the sparsity is spread over the decoder layers: the same in every layer (`uniform`),
//! OWL's outlier-weighted allocation (Yin et al., ICML 2024), or a sparsity rising linearly
//! with depth (`depth`, which reads no data).
//!
//! OWL: a dense pass over the calibration windows gives each decoder layer ℓ its Wanda scores
//! S = |W_ij| · ‖X_j‖₂ over all seven linears, and its outlier ratio
//!   D_ℓ = #{S > M · mean(S)} / #S.
//! The ratios are scaled to [0, 2λ] and shifted so that their mean is the target density:
//!   density_ℓ = 2λ · (D_ℓ − min D) / (max D − min D) − mean(…) + (1 − s),
//! so layers with more outliers keep more weights, and the mean sparsity over layers is s (the
//! layers of a LLaMA model have equal sizes, so the model's sparsity is s too). M = 5 and
//! λ = 0.08 are the paper's settings for unstructured sparsity. It applies to every method: the
//! method then prunes layer ℓ at sparsity 1 − density_ℓ.
//!
//! Depth: layer ℓ of L at s_ℓ = s + δ · (2ℓ/(L − 1) − 1), from s − δ at the first layer to
//! s + δ at the last, mean s; the common observation that later layers tolerate more pruning
//! (and the baseline OWL's outlier ratios are measured against), without a dense pass.

use super::mask::Pattern;
use crate::model::{Linear, LlamaConfig};
use anyhow::Result;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The allocation of sparsity over the decoder layers: the allocation stage's one settings
/// value. It travels by name (`{"kind": "owl", "m": 5}` in an experiment entry, `--allocate
/// owl --owl-m 5` on the command line) into the plan and the state; its settings are named
/// `allocate.KEY` in usage errors, which each front end renders in its own words.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Allocation {
    /// Every layer at the target sparsity.
    #[default]
    Uniform,
    /// OWL: layer sparsities from the outlier ratio of their Wanda scores.
    Owl {
        /// Outlier threshold M, as a multiple of the mean score.
        #[serde(default = "owl_m")]
        m: f64,
        /// Half-width λ of the range of layer densities.
        #[serde(default = "owl_lambda")]
        lambda: f64,
    },
    /// Sparsity rising linearly with depth, mean unchanged.
    Depth {
        /// Half-width δ of the range of layer sparsities (s − δ first, s + δ last).
        #[serde(default = "depth_spread")]
        spread: f64,
    },
}

/// The paper's M for unstructured sparsity.
pub const OWL_M: f64 = 5.0;
/// The paper's λ for unstructured sparsity.
pub const OWL_LAMBDA: f64 = 0.08;

/// depth's δ unless told otherwise: OWL's λ, so the two spread the layers equally far.
pub const DEPTH_SPREAD: f64 = OWL_LAMBDA;

fn owl_m() -> f64 {
    OWL_M
}

fn owl_lambda() -> f64 {
    OWL_LAMBDA
}

fn depth_spread() -> f64 {
    DEPTH_SPREAD
}

/// The kind of allocation, as `--allocate` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AllocationKind {
    /// Every layer at the target sparsity.
    Uniform,
    /// OWL's outlier-weighted layer sparsities (Yin et al., ICML 2024).
    Owl,
    /// Sparsity rising linearly with depth, mean unchanged (no data read).
    Depth,
}

crate::display_as_value!(AllocationKind);

/// As a user reads it: `uniform`, or `owl (m 5, lambda 0.08)`.
impl std::fmt::Display for Allocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Allocation::Uniform => write!(f, "uniform"),
            Allocation::Owl { m, lambda } => write!(f, "owl (m {m}, lambda {lambda})"),
            Allocation::Depth { spread } => write!(f, "depth (spread {spread})"),
        }
    }
}

impl Allocation {
    /// The allocation of a kind with the given settings by name (`m`, `lambda`; the rest at
    /// their defaults), checked: the one constructor every front end goes through.
    pub fn from_settings(
        kind: AllocationKind,
        settings: &serde_json::Map<String, Value>,
    ) -> Result<Self> {
        let mut obj = settings.clone();
        obj.insert("kind".into(), Value::String(kind.to_string()));
        let a: Allocation = serde_json::from_value(Value::Object(obj)).map_err(|e| {
            let text = e.to_string();
            match settings.keys().find(|k| text.contains(&format!("`{k}`"))) {
                Some(k) => {
                    let known = text
                        .split_once("expected ")
                        .map(|(_, rest)| format!(" (its settings: {})", rest.replace('`', "")))
                        .unwrap_or_else(|| " (it has none)".into());
                    crate::usage::usage(
                        &format!("allocate.{k}"),
                        format!("is not a setting of allocate {kind}{known}"),
                    )
                }
                None => crate::usage::usage("allocate", format!("has an unusable setting: {text}")),
            }
        })?;
        // A unit variant (uniform) ignores the keys serde was given; a key it did not keep
        // was not its setting.
        if let Ok(Value::Object(kept)) = serde_json::to_value(a) {
            if let Some(k) = settings.keys().find(|k| !kept.contains_key(*k)) {
                crate::usage_bail!(
                    &format!("allocate.{k}"),
                    "is not a setting of allocate {kind} (it has none)"
                );
            }
        }
        a.validate()?;
        Ok(a)
    }

    /// The allocation an experiment entry's `allocate` names: a kind (`"owl"`, its settings
    /// at their defaults) or an object with `kind` and settings (`{"kind": "owl", "m": 7}`).
    pub fn from_value(v: &Value) -> Result<Self> {
        let (kind, settings) = match v {
            Value::String(s) => (s.as_str(), serde_json::Map::new()),
            Value::Object(o) => match o.get("kind") {
                Some(Value::String(k)) => {
                    let mut rest = o.clone();
                    rest.remove("kind");
                    (k.as_str(), rest)
                }
                _ => crate::usage_bail!(
                    "allocate.kind",
                    "is missing: name the allocation ({{\"kind\": \"owl\"}})"
                ),
            },
            other => crate::usage_bail!(
                "allocate",
                "must be a kind (\"owl\") or an object ({{\"kind\": \"owl\", \"m\": 5}}), \
                 got {other}"
            ),
        };
        let kind: AllocationKind = kind
            .parse()
            .map_err(|e: crate::usage::UsageError| crate::usage::usage("allocate", e.message))?;
        Self::from_settings(kind, &settings)
    }

    /// The settings that differ from the kind's defaults, by name (for run ids).
    pub fn non_default_settings(&self) -> Vec<(String, Value)> {
        let defaults = Self::from_settings(self.kind(), &Default::default())
            .ok()
            .and_then(|d| serde_json::to_value(d).ok());
        let mine = serde_json::to_value(self).ok();
        match (mine, defaults) {
            (Some(Value::Object(mine)), Some(Value::Object(d))) => mine
                .into_iter()
                .filter(|(k, v)| k != "kind" && d.get(k) != Some(v))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Checks the settings' values.
    fn validate(&self) -> Result<()> {
        // A half-width of the layer range: within [0, 0.5).
        let half_width = |setting: &str, v: f64| -> Result<()> {
            crate::usage_ensure!(
                v.is_finite() && (0.0..0.5).contains(&v),
                setting,
                "must be in [0, 0.5), got {v}"
            );
            Ok(())
        };
        match *self {
            Allocation::Uniform => Ok(()),
            Allocation::Owl { m, lambda } => {
                crate::usage_ensure!(
                    m.is_finite() && m > 0.0,
                    "allocate.m",
                    "must be a positive number, got {m}"
                );
                half_width("allocate.lambda", lambda)
            }
            Allocation::Depth { spread } => half_width("allocate.spread", spread),
        }
    }

    pub fn kind(&self) -> AllocationKind {
        match self {
            Allocation::Uniform => AllocationKind::Uniform,
            Allocation::Owl { .. } => AllocationKind::Owl,
            Allocation::Depth { .. } => AllocationKind::Depth,
        }
    }

    pub fn is_uniform(&self) -> bool {
        *self == Allocation::Uniform
    }

    /// Whether the allocation reads calibration data (OWL's dense pass).
    pub fn reads_data(&self) -> bool {
        matches!(self, Allocation::Owl { .. })
    }

    /// Each layer's target sparsity (fractions, mean `sparsity`) for `layers` layers, or None
    /// for the same everywhere. `outlier_ratios(m)` runs OWL's dense pass: each layer's
    /// fraction of Wanda scores above m times their mean (only an allocation that reads data
    /// calls it).
    pub fn layer_targets(
        &self,
        sparsity: f64,
        layers: usize,
        outlier_ratios: impl FnOnce(f64) -> Result<Vec<f64>>,
    ) -> Result<Option<Vec<f64>>> {
        Ok(match *self {
            Allocation::Uniform => None,
            Allocation::Owl { m, lambda } => {
                Some(owl_sparsities(&outlier_ratios(m)?, sparsity, lambda)?)
            }
            Allocation::Depth { spread } => Some(depth_sparsities(layers, sparsity, spread)?),
        })
    }

    /// FLOPs of the allocation's own pass per decoder layer, over `windows` windows of `t`
    /// tokens whose layer forward costs `forward` each: OWL's dense pass is one more forward
    /// and Wanda's Σx² per linear.
    pub fn flops(&self, cfg: &LlamaConfig, windows: f64, t: f64, forward: f64) -> f64 {
        match self {
            Allocation::Uniform | Allocation::Depth { .. } => 0.0,
            Allocation::Owl { .. } => {
                windows * forward
                    + Linear::ALL
                        .iter()
                        .map(|l| super::wanda::flops(l.shape(cfg).1, windows, t))
                        .sum::<f64>()
            }
        }
    }

    /// Checks the allocation against a pattern: a non-uniform allocation spreads unstructured
    /// sparsity only.
    pub fn check(&self, pattern: &Pattern) -> Result<()> {
        if let (false, Pattern::NM { .. }) = (self.is_uniform(), pattern) {
            crate::usage_bail!(
                "allocate",
                "{} spreads unstructured sparsity over the layers; {pattern} fixes every \
                 layer's sparsity",
                self.kind()
            );
        }
        Ok(())
    }
}

/// Whether a step of `method` with `allocate` reads calibration windows: for the method's
/// statistic, its update's, or the allocation's dense pass (the plan and the step ask this).
pub fn reads_calibration(method: &super::MethodConfig, allocate: &Allocation) -> bool {
    method.needs_data() || allocate.reads_data()
}

/// Wanda's score |W| · ‖X_j‖₂ of one linear (W out × in, Σx² per input).
pub fn wanda_score(w: &Tensor, sumsq: &Tensor) -> Result<Tensor> {
    Ok(w.to_dtype(DType::F32)?
        .abs()?
        .broadcast_mul(&sumsq.sqrt()?.unsqueeze(0)?)?)
}

/// The outlier ratio of a layer whose linears have the score matrices `scores`: the fraction
/// of all their scores above `m` times the mean of all of them.
pub fn outlier_ratio(scores: &[Tensor], m: f64) -> Result<f64> {
    let (mut sum, mut n) = (0f64, 0usize);
    for s in scores {
        sum += s.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        n += s.elem_count();
    }
    let threshold = m * sum / n.max(1) as f64;
    let mut above = 0usize;
    for s in scores {
        let v = s.flatten_all()?.to_vec1::<f32>()?;
        above += v.iter().filter(|&&x| x as f64 > threshold).count();
    }
    Ok(above as f64 / n.max(1) as f64)
}

/// Layer sparsities (fractions) from the layers' outlier ratios, for a target `sparsity`
/// (fraction): densities spread over 2λ by the ratios, with mean 1 − sparsity. Equal ratios
/// (nothing to tell the layers apart) give the target everywhere.
pub fn owl_sparsities(ratios: &[f64], sparsity: f64, lambda: f64) -> Result<Vec<f64>> {
    let lo = ratios.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if ratios.is_empty() || hi - lo <= 0.0 {
        return Ok(vec![sparsity; ratios.len()]);
    }
    let scaled: Vec<f64> = ratios
        .iter()
        .map(|r| (r - lo) / (hi - lo) * 2.0 * lambda)
        .collect();
    let mean = scaled.iter().sum::<f64>() / scaled.len() as f64;
    let out: Vec<f64> = scaled
        .iter()
        .map(|d| 1.0 - (d - mean + (1.0 - sparsity)))
        .collect();
    within_bounds(out, sparsity, "allocate.lambda", lambda)
}

/// `layers` if every sparsity lies in (0, 1); else a usage error about `setting` (the
/// half-width `width` that spread them too far around `sparsity`).
fn within_bounds(layers: Vec<f64>, sparsity: f64, setting: &str, width: f64) -> Result<Vec<f64>> {
    if let Some(bad) = layers.iter().find(|s| !(**s > 0.0 && **s < 1.0)) {
        crate::usage_bail!(
            setting,
            "{width} spreads the layer sparsities around {:.0}% to {:.1}%, outside (0, 100%); \
             lower it",
            sparsity * 100.0,
            bad * 100.0
        );
    }
    Ok(layers)
}

/// Layer sparsities rising linearly with depth: s − δ at the first of `layers`, s + δ at the
/// last, mean s (one layer: s).
pub fn depth_sparsities(layers: usize, sparsity: f64, spread: f64) -> Result<Vec<f64>> {
    if layers <= 1 {
        return Ok(vec![sparsity; layers]);
    }
    let out: Vec<f64> = (0..layers)
        .map(|l| sparsity + spread * (2.0 * l as f64 / (layers - 1) as f64 - 1.0))
        .collect();
    within_bounds(out, sparsity, "allocate.spread", spread)
}

/// The pattern of every linear of every layer (`[layer][k]`, `k` indexing
/// [`Linear::ALL`]): the plan's everywhere (uniform), or the allocation's layer sparsities
/// with their rounding distributed so that the model reaches the asked mean.
///
/// A linear prunes a whole number k of weights in each of its `out` rows of `in` inputs, so a
/// layer target s_ℓ rounds to k = ⌊in · s_ℓ⌋ per row, and flooring every layer leaves the
/// model below the target (OWL's 50% gives 49.93% on SmolLM2, in the authors' code too).
/// Here the per-row counts start at the floors, and the linears whose floors dropped the
/// largest fractions each prune one more weight per row while that brings the model's total
/// Σ out · k nearer to round(s · N), N the weights of all pruned linears: the total then
/// misses round(s · N) by at most half the rows of one linear (a fraction ≤ max out / 2N of
/// the model, 1.1e-5 for SmolLM2-135M). Each linear's count is given as the percentage
/// 100 · k / in, which [`super::mask::prune_count`] turns back into k exactly.
pub fn linear_patterns(
    pattern: &Pattern,
    sparsities: Option<&[f64]>,
    cfg: &LlamaConfig,
) -> Vec<Vec<Pattern>> {
    let layers = cfg.num_hidden_layers;
    let (Pattern::Unstructured { .. }, Some(targets)) = (pattern, sparsities) else {
        return vec![vec![*pattern; Linear::ALL.len()]; layers];
    };
    let shapes: Vec<(usize, usize)> = Linear::ALL.iter().map(|l| l.shape(cfg)).collect();
    // (layer, linear, per-row count, dropped fraction)
    let mut items = Vec::new();
    let (mut total, mut have) = (0f64, 0i128);
    for (l, s) in targets.iter().enumerate() {
        for (k, &(out, inp)) in shapes.iter().enumerate() {
            let exact = inp as f64 * s;
            let floor = super::mask::prune_count(inp, s * 100.0);
            items.push((l, k, floor, exact - floor as f64));
            total += (out * inp) as f64 * pattern.fraction();
            have += (out * floor) as i128;
        }
    }
    let mut deficit = total.round() as i128 - have;
    let mut order: Vec<usize> = (0..items.len()).collect();
    // Largest dropped fraction first; ties in layer, then linear, order.
    order.sort_by(|&a, &b| items[b].3.total_cmp(&items[a].3).then(a.cmp(&b)));
    for i in order {
        let (_, k, count, _) = items[i];
        let (out, inp) = shapes[k];
        // One more per row only if it brings the total nearer (|deficit − out| < |deficit|).
        if 2 * deficit > out as i128 && count < inp {
            items[i].2 += 1;
            deficit -= out as i128;
        }
    }
    let mut patterns = vec![Vec::with_capacity(shapes.len()); layers];
    for (l, k, count, _) in items {
        patterns[l].push(Pattern::Unstructured {
            percent: 100.0 * count as f64 / shapes[k].1 as f64,
        });
    }
    patterns
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn owl_keeps_the_mean_and_orders_layers_by_outliers() {
        let ratios = [0.02, 0.05, 0.03, 0.10];
        let s = owl_sparsities(&ratios, 0.5, 0.08).unwrap();
        let mean = s.iter().sum::<f64>() / 4.0;
        assert!((mean - 0.5).abs() < 1e-12, "{s:?}");
        // Densities span exactly 2λ; more outliers, fewer pruned.
        let (lo, hi) = (
            s.iter().cloned().fold(1.0, f64::min),
            s.iter().cloned().fold(0.0, f64::max),
        );
        assert!((hi - lo - 0.16).abs() < 1e-12);
        assert_eq!(s[3], lo);
        assert_eq!(s[0], hi);
        // By the formula: density = 2λ (r − min)/(max − min) − mean + 0.5.
        let d: Vec<f64> = ratios.iter().map(|r| 0.16 * (r - 0.02) / 0.08).collect();
        let dm = d.iter().sum::<f64>() / 4.0;
        for (k, want) in d.iter().map(|x| 1.0 - (x - dm + 0.5)).enumerate() {
            assert!((s[k] - want).abs() < 1e-12);
        }
        assert_eq!(
            owl_sparsities(&[0.1, 0.1], 0.7, 0.08).unwrap(),
            vec![0.7, 0.7]
        );
        assert!(owl_sparsities(&ratios, 0.95, 0.08).is_err());
    }

    #[test]
    fn outlier_ratio_counts_scores_above_m_times_the_mean() {
        let a = Tensor::new(&[[1f32, 1.0], [1.0, 13.0]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[1f32, 1.0, 1.0, 1.0], &Device::Cpu).unwrap();
        // Mean 20/8 = 2.5; above 2 × 2.5 = 5: one of eight.
        assert_eq!(outlier_ratio(&[a.clone(), b.clone()], 2.0).unwrap(), 0.125);
        assert_eq!(outlier_ratio(&[a, b], 6.0).unwrap(), 0.0);
        let w = Tensor::new(&[[-2f32, 3.0]], &Device::Cpu).unwrap();
        let s = Tensor::new(&[4f32, 9.0], &Device::Cpu).unwrap();
        assert_eq!(
            wanda_score(&w, &s).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![4.0, 9.0]]
        );
    }

    #[test]
    fn owl_is_for_unstructured_sparsity_only() {
        let owl = Allocation::from_value(&serde_json::json!("owl")).unwrap();
        assert_eq!(
            owl,
            Allocation::Owl {
                m: 5.0,
                lambda: 0.08
            }
        );
        assert!(owl.check(&Pattern::NM { n: 2, m: 4 }).is_err());
        assert!(owl.check(&Pattern::Unstructured { percent: 70.0 }).is_ok());
    }

    #[test]
    fn a_non_uniform_allocation_reaches_the_asked_mean() {
        let j = crate::checkpoint::synth::preset("smollm2-135m", 30).unwrap();
        let cfg = LlamaConfig::from_json(&j.to_string()).unwrap();
        let shapes: Vec<(usize, usize)> = Linear::ALL.iter().map(|l| l.shape(&cfg)).collect();
        let n: usize = shapes.iter().map(|(o, i)| o * i).sum::<usize>() * 30;
        let max_out = shapes.iter().map(|s| s.0).max().unwrap();
        let ratios: Vec<f64> = (0..30).map(|l| ((l * 7919) % 31) as f64 / 100.0).collect();
        for target in [0.5, 0.6, 0.7] {
            let layers = owl_sparsities(&ratios, target, 0.08).unwrap();
            let pattern = Pattern::Unstructured {
                percent: target * 100.0,
            };
            let per = linear_patterns(&pattern, Some(&layers), &cfg);
            let (mut pruned, mut floored) = (0usize, 0usize);
            for (l, row) in per.iter().enumerate() {
                for (k, p) in row.iter().enumerate() {
                    let (out, inp) = shapes[k];
                    let Pattern::Unstructured { percent } = *p else {
                        panic!("{p}")
                    };
                    let count = crate::prune::mask::prune_count(inp, percent);
                    let floor = crate::prune::mask::prune_count(inp, layers[l] * 100.0);
                    // Each linear rounds its layer's target down or up, never further.
                    assert!(count == floor || count == floor + 1, "{l} {k}");
                    pruned += out * count;
                    floored += out * floor;
                }
            }
            let want = (n as f64 * target).round();
            assert!(
                (pruned as f64 - want).abs() <= max_out as f64 / 2.0,
                "{target}: {pruned} against {want}"
            );
            // Flooring every layer, as OWL's authors do, misses by far more.
            assert!(want - floored as f64 > 10.0 * max_out as f64, "{target}");
        }
        // Uniform, and N:M, keep the plan's pattern everywhere.
        let u = Pattern::Unstructured { percent: 70.0 };
        assert!(linear_patterns(&u, None, &cfg)
            .iter()
            .flatten()
            .all(|p| *p == u));
        let nm = Pattern::NM { n: 2, m: 4 };
        assert!(linear_patterns(&nm, Some(&[0.5; 30]), &cfg)
            .iter()
            .flatten()
            .all(|p| *p == nm));
    }

    #[test]
    fn depth_rises_linearly_and_keeps_the_mean() {
        let s = depth_sparsities(5, 0.6, 0.1).unwrap();
        let want = [0.5, 0.55, 0.6, 0.65, 0.7];
        for (a, b) in s.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{s:?}");
        }
        assert!((s.iter().sum::<f64>() / 5.0 - 0.6).abs() < 1e-12);
        assert_eq!(depth_sparsities(1, 0.6, 0.1).unwrap(), vec![0.6]);
        assert!(depth_sparsities(4, 0.95, 0.1).is_err());
        let d =
            Allocation::from_value(&serde_json::json!({"kind": "depth", "spread": 0.1})).unwrap();
        assert!(!d.reads_data());
        let t = d
            .layer_targets(0.6, 5, |_| panic!("depth reads no data"))
            .unwrap();
        assert_eq!(t.unwrap().len(), 5);
        assert!(d.check(&Pattern::NM { n: 2, m: 4 }).is_err());
    }

    #[test]
    fn an_allocation_is_one_settings_value() {
        use serde_json::json;
        let err = |v: Value| {
            Allocation::from_value(&v)
                .unwrap_err()
                .downcast::<crate::usage::UsageError>()
                .expect("a usage error")
        };
        assert_eq!(
            Allocation::from_value(&json!({"kind": "owl", "m": 7})).unwrap(),
            Allocation::Owl {
                m: 7.0,
                lambda: OWL_LAMBDA
            }
        );
        assert_eq!(
            err(json!({"kind": "uniform", "m": 5})).setting,
            "allocate.m"
        );
        assert_eq!(err(json!({"kind": "owl", "mm": 5})).setting, "allocate.mm");
        assert_eq!(
            err(json!({"kind": "owl", "lambda": 0.6})).setting,
            "allocate.lambda"
        );
        assert_eq!(err(json!({"kind": "owl", "m": "x"})).setting, "allocate");
        assert_eq!(err(json!({"m": 5})).setting, "allocate.kind");
        assert_eq!(err(json!("owls")).setting, "allocate");
        assert_eq!(err(json!(5)).setting, "allocate");
        // The stored form reads back, and a run id sees only what differs from the defaults.
        let a = Allocation::from_value(&json!({"kind": "owl", "lambda": 0.1})).unwrap();
        let stored = serde_json::to_value(a).unwrap();
        assert_eq!(stored, json!({"kind": "owl", "m": 5.0, "lambda": 0.1}));
        assert_eq!(Allocation::from_value(&stored).unwrap(), a);
        assert_eq!(
            a.non_default_settings(),
            vec![("lambda".to_string(), json!(0.1))]
        );
        assert!(Allocation::Uniform.non_default_settings().is_empty());
    }
}
