//! Pruning methods: one trait ([`pruner::LayerPruner`]), one file per method, and this table,
//! which is the only place that knows every method.
//!
//! Adding a method means a new file with its pruner and settings, and one line in each match
//! below ([`Method::facts`] and the three [`MethodConfig`] matches); the compiler finds every
//! one of them. Outside `prune/`, code names a method only for a fixed format: `dense` as "no
//! pruning" (no step report, the setting id `dense`), COPAL's fields of format-1 states
//! (`state.rs`), the run-id tags and table labels the first grids used (`experiment/`: COPAL's
//! `-gaussian`/`-norm`, SparseGPT's "column block"). None of those is needed for a new method.

pub mod allocate;
pub mod copal;
pub mod linalg;
pub mod magnitude;
pub mod mask;
pub mod obs;
pub mod pruner;
pub mod ria;
pub mod rows;
pub mod sparsegpt;
pub mod update;
pub mod wanda;

use crate::model::{Linear, LlamaConfig};
use anyhow::{Context as _, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use mask::{Group, Mask, Pattern};
pub use pruner::{LayerPruner, Pruned};

/// What `copal prune` runs without --method, in accumulate mode: COPAL, the method this tool
/// is named after (its masks from the accumulated importance, the dense weights masked).
/// Other methods, `--update obs` and the one-shot modes are options beside it, measured
/// against it (docs/results.md).
pub const DEFAULT_METHOD: Method = Method::Copal;

/// The pruning method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// COPAL: importance Σ|W ⊙ ∇_W ‖dy‖²| accumulated over every dataset, masks from the dense W.
    Copal,
    /// Wanda: |W_ij| · ‖X_j‖₂, per output row by default; no weight update.
    Wanda,
    /// SparseGPT: OBS pruning with weight reconstruction from H = 2XXᵀ/n.
    #[value(name = "sparsegpt")]
    #[serde(rename = "sparsegpt")]
    SparseGpt,
    /// Magnitude: |W| per matrix; needs no data.
    Magnitude,
    /// RIA: (|W_ij|/Σ_k|W_kj| + |W_ij|/Σ_k|W_ik|) · ‖X_j‖₂^a, per row by default; Wanda's Σx².
    Ria,
    /// No pruning: the dense reference.
    Dense,
}

/// How a method is used across datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Sum statistics over all datasets so far, prune the dense weights (COPAL).
    Accumulate,
    /// Prune the dense model from the newest dataset only.
    Global,
    /// Prune the previous step's pruned model with the newest dataset.
    Sequential,
}

crate::display_as_value!(Method, Mode);

/// The statistic a method keeps per linear: what it accumulates, and what a state file stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistic {
    /// The method reads no data.
    None,
    /// One value per weight, out × in (COPAL's importance).
    PerWeight,
    /// One value per input column, in (Wanda's Σ x²).
    PerInput,
    /// Σ x xᵀ, in × in. It depends only on the input, so linears that read the same input
    /// share one: it is kept under q, o, gate and down (SparseGPT).
    InputGram,
}

/// What the rest of copal knows about a method besides how it prunes.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    /// Comparison group of the unstructured threshold unless told otherwise.
    pub default_group: Group,
    pub statistic: Statistic,
    /// The settings that shape the statistic a state stores (a continuation must keep them).
    pub shapes_state: &'static [&'static str],
}

impl Method {
    pub const ALL: [Method; 6] = [
        Method::Copal,
        Method::Wanda,
        Method::SparseGpt,
        Method::Magnitude,
        Method::Ria,
        Method::Dense,
    ];

    /// The method table. COPAL's per-row default group, not the paper's per-matrix T_s: on the
    /// test model (wikitext2 → ptb → c4, 50%) rows gave average PPL 86.9 against 121.7 for the
    /// matrix (results/perturbation/, docs/method.md, "Choosing COPAL's defaults").
    pub fn facts(self) -> Facts {
        use Statistic::*;
        let (default_group, statistic, shapes_state) = match self {
            Method::Copal => (Group::Row, PerWeight, copal::SHAPES_STATE),
            Method::Wanda => (Group::Row, PerInput, &[][..]),
            // SparseGPT's damping and blocks act on Σ x xᵀ when it is solved, not on the sum.
            Method::SparseGpt => (Group::Matrix, InputGram, &[][..]),
            Method::Magnitude => (Group::Matrix, None, &[][..]),
            // RIA's exponent acts on ‖X_j‖₂ when the score is formed, not on Σx².
            Method::Ria => (Group::Row, PerInput, &[][..]),
            Method::Dense => (Group::Matrix, None, &[][..]),
        };
        Facts {
            default_group,
            statistic,
            shapes_state,
        }
    }

    pub fn name(self) -> String {
        self.to_string()
    }

    pub fn default_group(self) -> Group {
        self.facts().default_group
    }

    /// Whether the method reads calibration activations at all.
    pub fn needs_data(self) -> bool {
        self.facts().statistic != Statistic::None
    }

    /// How the method is used across datasets unless told otherwise: every method that reads
    /// data accumulates its statistics over the datasets seen (with one dataset that is the
    /// method's usual one-shot result); magnitude and dense have nothing to accumulate.
    pub fn default_mode(self) -> Mode {
        if self.needs_data() {
            Mode::Accumulate
        } else {
            Mode::Global
        }
    }

    /// Whether the method's statistic for a linear depends only on the linear's input, so that
    /// linears reading the same input share one.
    pub fn shares_input_stats(self) -> bool {
        self.facts().statistic == Statistic::InputGram
    }

    /// Whether `lin` observes and stores a statistic of its own, rather than starting from
    /// that of the earlier linear whose input it reads (`Linear::input_source`).
    pub fn keeps_stats(self, lin: Linear) -> bool {
        !self.shares_input_stats() || lin.input_source() == lin
    }

    /// The shape of the statistic `lin` keeps (None: it keeps none).
    pub fn state_shape(self, lin: Linear, cfg: &LlamaConfig) -> Option<Vec<usize>> {
        let (o, i) = lin.shape(cfg);
        if !self.keeps_stats(lin) {
            return None;
        }
        match self.facts().statistic {
            Statistic::None => None,
            Statistic::PerWeight => Some(vec![o, i]),
            Statistic::PerInput => Some(vec![i]),
            Statistic::InputGram => Some(vec![i, i]),
        }
    }
}

/// A method with its settings. Mask-only methods (COPAL, Wanda, magnitude, RIA) carry
/// `update` ([`update::UpdateConfig`]): their mask, then optionally an update stage (the OBS
/// reconstruction of the kept weights); SparseGPT always reconstructs; dense has nothing to set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MethodConfig {
    Copal(copal::CopalConfig),
    Wanda(update::UpdateConfig),
    SparseGpt(sparsegpt::SparseGptConfig),
    Magnitude(update::UpdateConfig),
    Ria(ria::RiaConfig),
    Dense,
}

/// Identifies the Gaussian noise of one linear in one step (COPAL's `gaussian` perturbation).
#[derive(Debug, Clone, Copy)]
pub struct NoiseKey<'a> {
    pub seed: u64,
    pub dataset: &'a str,
    pub tensor: &'a str,
}

impl MethodConfig {
    pub fn method(&self) -> Method {
        match self {
            MethodConfig::Copal(_) => Method::Copal,
            MethodConfig::Wanda(_) => Method::Wanda,
            MethodConfig::SparseGpt(_) => Method::SparseGpt,
            MethodConfig::Magnitude(_) => Method::Magnitude,
            MethodConfig::Ria(_) => Method::Ria,
            MethodConfig::Dense => Method::Dense,
        }
    }

    /// The method with its default settings.
    pub fn defaults(method: Method) -> Self {
        match method {
            Method::Copal => MethodConfig::Copal(Default::default()),
            Method::Wanda => MethodConfig::Wanda(Default::default()),
            Method::SparseGpt => MethodConfig::SparseGpt(Default::default()),
            Method::Magnitude => MethodConfig::Magnitude(Default::default()),
            Method::Ria => MethodConfig::Ria(Default::default()),
            Method::Dense => MethodConfig::Dense,
        }
    }

    /// The settings, by name (empty for methods that have none).
    pub fn params(&self) -> Map<String, Value> {
        let v = match self {
            MethodConfig::Copal(c) => serde_json::to_value(c),
            MethodConfig::SparseGpt(c) => serde_json::to_value(c),
            MethodConfig::Ria(c) => serde_json::to_value(c),
            MethodConfig::Wanda(c) | MethodConfig::Magnitude(c) => serde_json::to_value(c),
            MethodConfig::Dense => Ok(Value::Object(Map::new())),
        };
        match v {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        }
    }

    /// `method` with the settings in `params` (by name) over its defaults, validated. A
    /// setting of another method is refused naming the method it belongs to.
    pub fn from_params(method: Method, params: &Map<String, Value>) -> Result<Self> {
        let own = Self::defaults(method).params();
        for key in params.keys() {
            if own.contains_key(key) {
                continue;
            }
            let owners: Vec<String> = Method::ALL
                .iter()
                .filter(|m| Self::defaults(**m).params().contains_key(key))
                .map(|m| m.name())
                .collect();
            if owners.is_empty() {
                let all: Vec<String> = Method::ALL
                    .iter()
                    .flat_map(|m| Self::defaults(*m).params().into_iter().map(|(k, _)| k))
                    .collect();
                let hint = crate::usage::did_you_mean(key, all.iter().map(String::as_str))
                    .map(|k| format!(" (did you mean {k}?)"))
                    .unwrap_or_default();
                crate::usage_bail!(key, "is not a setting of any method{hint}");
            }
            crate::usage_bail!(
                key,
                "is a setting of {}, not of {method}; drop it or choose that method",
                owners.join(" and ")
            );
        }
        let value = Value::Object(params.clone());
        let cfg = match method {
            Method::Copal => MethodConfig::Copal(parse(method, value)?),
            Method::Wanda => MethodConfig::Wanda(parse(method, value)?),
            Method::SparseGpt => MethodConfig::SparseGpt(parse(method, value)?),
            Method::Magnitude => MethodConfig::Magnitude(parse(method, value)?),
            Method::Ria => MethodConfig::Ria(parse(method, value)?),
            Method::Dense => MethodConfig::Dense,
        };
        cfg.validate()?;
        // An update's settings mean something only with that update.
        if let Some(u) = cfg.update() {
            u.check_keys(method, params)?;
        }
        Ok(cfg)
    }

    /// Checks the settings' values.
    pub fn validate(&self) -> Result<()> {
        match self {
            MethodConfig::Copal(c) => c.validate(),
            MethodConfig::SparseGpt(c) => c.validate(),
            MethodConfig::Ria(c) => c.validate(),
            MethodConfig::Wanda(c) | MethodConfig::Magnitude(c) => c.validate(),
            MethodConfig::Dense => Ok(()),
        }
    }

    /// A mask-only method's reconstruction settings (None: SparseGPT and dense).
    pub fn update(&self) -> Option<&update::UpdateConfig> {
        match self {
            MethodConfig::Copal(c) => Some(&c.update),
            MethodConfig::Ria(c) => Some(&c.update),
            MethodConfig::Wanda(c) | MethodConfig::Magnitude(c) => Some(c),
            MethodConfig::SparseGpt(_) | MethodConfig::Dense => None,
        }
    }

    /// The update stage after the method's mask (`none` for SparseGPT and dense, whose own
    /// solve is the update).
    pub fn update_stage(&self) -> update::UpdateConfig {
        self.update().copied().unwrap_or_default()
    }

    /// Refuses a mode that makes no sense for the method (a usage error about `mode`).
    pub fn check_mode(&self, mode: Mode) -> Result<()> {
        crate::usage_ensure!(
            mode != Mode::Accumulate || self.needs_data(),
            "mode",
            "accumulate does not apply to {}: it has no statistics to accumulate; use global",
            self.method()
        );
        Ok(())
    }

    /// The settings that shape the statistics a state of this method stores, by name: the
    /// method's own ([`Facts::shapes_state`]) and its update stage's.
    pub fn state_settings(&self) -> Map<String, Value> {
        let own = self.method().facts().shapes_state;
        let mut out: Map<String, Value> = self
            .params()
            .into_iter()
            .filter(|(k, _)| own.contains(&k.as_str()))
            .collect();
        if let Some(u) = self.update() {
            out.extend(u.state_settings());
        }
        out
    }

    /// Whether a step reads calibration data: for the method's statistic, or for its update's
    /// (which magnitude, too, can ask for).
    pub fn needs_data(&self) -> bool {
        self.method().needs_data() || self.update_stage().reads_data()
    }

    /// The pruner of one linear: `w` its weight, `prior` the statistic carried from earlier
    /// datasets (accumulate mode) or from the earlier linear that reads the same input.
    pub fn pruner(
        &self,
        w: &Tensor,
        prior: Option<Tensor>,
        noise: NoiseKey,
    ) -> Result<Box<dyn LayerPruner>> {
        Ok(match self {
            MethodConfig::Copal(c) => Box::new(c.pruner(
                w,
                prior,
                copal::noise_seed(noise.seed, noise.dataset, noise.tensor),
            )?),
            MethodConfig::Wanda(_) => Box::new(wanda::WandaPruner::new(w)?.with_prior(prior)?),
            MethodConfig::SparseGpt(c) => {
                Box::new(sparsegpt::SparseGptPruner::new(w, *c)?.with_prior(prior)?)
            }
            MethodConfig::Magnitude(_) => Box::new(magnitude::MagnitudePruner::new(w)?),
            MethodConfig::Ria(c) => Box::new(c.pruner(w, prior)?),
            MethodConfig::Dense => anyhow::bail!("internal: the dense method prunes nothing"),
        })
    }

    /// FLOPs of `lin`'s statistics and solve for `windows` windows of `t` tokens (the layer's
    /// forwards are counted by the caller).
    pub fn flops(&self, lin: Linear, cfg: &LlamaConfig, windows: f64, t: f64) -> f64 {
        let (o, i) = lin.shape(cfg);
        let own = match self {
            MethodConfig::Copal(c) => c.flops(o, i, windows, t),
            MethodConfig::Wanda(_) => wanda::flops(i, windows, t),
            MethodConfig::SparseGpt(c) => c.flops(o, i, windows, t, self.method().keeps_stats(lin)),
            MethodConfig::Ria(_) => ria::flops(i, windows, t),
            MethodConfig::Magnitude(_) | MethodConfig::Dense => 0.0,
        };
        own + self.update_stage().flops(lin, cfg, windows, t)
    }
}

/// One method's settings from a JSON object of them.
fn parse<T: serde::de::DeserializeOwned>(method: Method, value: Value) -> Result<T> {
    serde_json::from_value(value).with_context(|| format!("reading the settings of {method}"))
}

/// In a plan (copal.json, `--dry-run`): `"method": NAME` and, for a method with settings,
/// `NAME: {settings}`.
impl Serialize for MethodConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let params = self.params();
        let mut m = s.serialize_map(Some(1 + usize::from(!params.is_empty())))?;
        m.serialize_entry("method", &self.method())?;
        if !params.is_empty() {
            m.serialize_entry(&self.method().name(), &params)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_setting_of_another_method_names_its_owner() {
        let e = MethodConfig::from_params(
            Method::SparseGpt,
            &params(serde_json::json!({"perturbation": "scaled"})),
        )
        .unwrap_err();
        let u = e.downcast_ref::<crate::usage::UsageError>().unwrap();
        assert_eq!(u.setting, "perturbation");
        assert!(u.message.contains("copal"), "{u}");
        let e = MethodConfig::from_params(Method::Copal, &params(serde_json::json!({"decy": 1})))
            .unwrap_err();
        assert!(e.to_string().contains("did you mean decay"), "{e}");
    }

    #[test]
    fn settings_are_validated_only_for_their_method() {
        // ε_W = ε_x = 0 makes COPAL's dy vanish, and means nothing to magnitude.
        let zero = params(serde_json::json!({"eps_w": 0.0, "eps_x": 0.0}));
        assert!(MethodConfig::from_params(Method::Copal, &zero).is_err());
        assert_eq!(
            MethodConfig::from_params(Method::Magnitude, &Map::new()).unwrap(),
            MethodConfig::Magnitude(Default::default())
        );
        // OBS settings need the update.
        let damp = params(serde_json::json!({"percdamp": 0.1}));
        assert!(MethodConfig::from_params(Method::Wanda, &damp).is_err());
        let obs = params(serde_json::json!({"percdamp": 0.1, "update": "obs"}));
        let w = MethodConfig::from_params(Method::Wanda, &obs).unwrap();
        assert_eq!(w.update_stage().obs.percdamp, 0.1);
        assert!(w.needs_data());
        let m = MethodConfig::from_params(Method::Magnitude, &obs).unwrap();
        assert!(m.needs_data() && !m.method().needs_data());
        assert!(MethodConfig::from_params(
            Method::SparseGpt,
            &params(serde_json::json!({"update": "obs"}))
        )
        .is_err());
        let c =
            MethodConfig::from_params(Method::Copal, &params(serde_json::json!({"decay": 0.5})))
                .unwrap();
        match c {
            MethodConfig::Copal(c) => assert_eq!((c.decay, c.eps_w), (0.5, 0.01)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_method_round_trips_through_its_settings() {
        for m in Method::ALL {
            let c = MethodConfig::defaults(m);
            assert_eq!(c.method(), m);
            let mut p = c.params();
            if let Some(u) = c.update() {
                // An update's settings are refused unless it is chosen.
                for other in update::Update::ALL.into_iter().filter(|x| *x != u.update) {
                    for key in update::UpdateConfig::keys(other) {
                        p.remove(&key);
                    }
                }
            }
            assert_eq!(MethodConfig::from_params(m, &p).unwrap(), c);
            assert_eq!(m.to_string().parse::<Method>().unwrap(), m);
        }
    }
}
