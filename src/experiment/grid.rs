//! The grid: every order of the datasets × method entries × patterns × sparsities, each run
//! with a stable id (`SETTING-PATTERN-ORDER`) under which its result is stored.

use super::config::{key_of, ExperimentConfig};
use crate::plan::{PrunePlan, Request};
use crate::prune::allocate::Allocation;
use crate::prune::copal::{CopalConfig, CopalVariant, PerturbationKind};
use crate::prune::{Group, Method, MethodConfig, Mode, Pattern};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::PathBuf;

/// Most datasets whose every order the grid runs (8! = 40,320 orders per setting).
pub const MAX_PERMUTED_DATASETS: usize = 8;

/// One run of the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub id: String,
    /// Method, mode and any overrides: the row of the table this run belongs to.
    pub setting: String,
    pub method: Method,
    pub mode: Mode,
    pub group: Group,
    pub pattern: Pattern,
    pub order: Vec<String>,
    /// COPAL's perturbation and variant for this run (for other methods, the experiment's
    /// COPAL settings: the stored format predates per-method settings).
    pub perturbation: PerturbationKind,
    pub variant: CopalVariant,
    /// The method's settings for this run (not stored: they are the experiment file's).
    #[serde(skip)]
    pub params: Map<String, Value>,
    /// The entry's allocation of sparsity over layers (not stored, likewise; it is in the id).
    #[serde(skip)]
    pub allocate: Option<Allocation>,
}

/// Every order of `items` (lexicographic in their positions).
pub fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, first.clone());
            out.push(p);
        }
    }
    out
}

/// The grid's orders: the n cyclic rotations first (a Latin square: every dataset once in
/// every position), then the other permutations. A grid stopped after n orders is therefore
/// still balanced over positions, which a lexicographic prefix is not.
pub fn grid_orders<T: Clone + Eq + std::hash::Hash>(items: &[T]) -> Vec<Vec<T>> {
    let n = items.len();
    let mut out: Vec<Vec<T>> = (0..n)
        .map(|r| (0..n).map(|i| items[(i + r) % n].clone()).collect())
        .collect();
    let rotations: std::collections::HashSet<Vec<T>> = out.iter().cloned().collect();
    out.extend(
        permutations(items)
            .into_iter()
            .filter(|p| !rotations.contains(p)),
    );
    out
}

pub fn pattern_tag(p: &Pattern) -> String {
    match p {
        Pattern::Unstructured { percent } => format!("u{percent}"),
        Pattern::NM { n, m } => format!("{n}of{m}"),
    }
}

/// The dataset orders of the grid.
pub fn orders(cfg: &ExperimentConfig) -> Result<Vec<Vec<String>>> {
    if !cfg.permutations {
        return Ok(vec![cfg.datasets.clone()]);
    }
    crate::usage_ensure!(
        cfg.datasets.len() <= MAX_PERMUTED_DATASETS,
        "datasets",
        "has {} entries: every order of them is {}! runs per setting; permute at most \
         {MAX_PERMUTED_DATASETS}, or set \"permutations\": false",
        cfg.datasets.len(),
        cfg.datasets.len()
    );
    Ok(grid_orders(&cfg.datasets))
}

/// The part of a setting's id that tells an entry's overrides apart. COPAL's settings keep
/// the tags of the first grids (`-gaussian`, `-l2`, `-norm`, `-decay0.5`); any other setting
/// is tagged `-NAMEVALUE`.
fn override_tag(e: &super::config::MethodEntry) -> String {
    let mut tag = String::new();
    if let Some(g) = e.group {
        tag.push_str(&format!("-{g}"));
    }
    if let Some(a) = e.allocate.filter(|a| !a.is_uniform()) {
        tag.push_str(&format!("-{}", a.kind()));
        for (k, v) in a.non_default_settings() {
            tag.push_str(&format!("-{k}{v}"));
        }
    }
    for (k, v) in &e.own {
        let value = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match (e.method, k.as_str()) {
            (Method::Copal, "perturbation" | "agg") | (_, "update") => {
                tag.push_str(&format!("-{value}"))
            }
            (Method::Copal, "normalize") if v == &Value::Bool(true) => tag.push_str("-norm"),
            (Method::Copal, "normalize") => {}
            (_, _) if v == &Value::Bool(true) => tag.push_str(&format!("-{k}")),
            (_, _) => tag.push_str(&format!("-{k}{value}")),
        }
    }
    tag
}

/// The grid, in a fixed order. Every run's plan is resolved here, so a value `copal prune`
/// would refuse fails the whole grid before anything runs.
pub fn expand(cfg: &ExperimentConfig) -> Result<Vec<RunSpec>> {
    let orders = orders(cfg)?;
    let mut patterns = Vec::new();
    for p in &cfg.patterns {
        if p == "unstructured" {
            for s in &cfg.sparsities {
                patterns.push(Pattern::parse(p, Some(*s)).map_err(in_grid)?);
            }
        } else {
            patterns.push(Pattern::parse(p, None).map_err(in_grid)?);
        }
    }
    // COPAL's settings as the stored format records them for every run.
    let copal_block = cfg.method_params.get("copal").cloned().unwrap_or_default();
    let experiment_copal = match MethodConfig::from_params(Method::Copal, &copal_block)? {
        MethodConfig::Copal(c) => c,
        _ => CopalConfig::default(),
    };
    let mut runs = Vec::new();
    // Order-major: after the first |methods| runs every method has one complete order, so a
    // partly finished grid already compares all of them.
    for pattern in &patterns {
        for order in &orders {
            for mm in &cfg.methods {
                let mode = mm.mode.unwrap_or(mm.method.default_mode());
                let group = mm.group.unwrap_or(mm.method.default_group());
                let copal = match MethodConfig::from_params(mm.method, &mm.params)? {
                    MethodConfig::Copal(c) => c,
                    _ => experiment_copal,
                };
                let setting = if mm.method == Method::Dense {
                    "dense".to_string()
                } else {
                    format!("{}-{mode}{}", mm.method, override_tag(mm))
                };
                let id = format!(
                    "{setting}-{}-{}",
                    pattern_tag(pattern),
                    order
                        .iter()
                        .map(|d| crate::fsutil::name_part(d))
                        .collect::<Vec<_>>()
                        .join("+")
                );
                runs.push(RunSpec {
                    id,
                    setting,
                    method: mm.method,
                    mode,
                    group,
                    pattern: *pattern,
                    order: order.clone(),
                    perturbation: copal.perturbation,
                    variant: copal.variant(),
                    params: mm.params.clone(),
                    allocate: mm.allocate,
                });
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for r in &runs {
        if !seen.insert(r.id.clone()) {
            bail!("the grid lists run {} twice", r.id);
        }
    }
    // Each distinct setting's plan once (the orders only permute the datasets).
    let mut checked = std::collections::HashSet::new();
    for r in &runs {
        if checked.insert((r.setting.clone(), pattern_tag(&r.pattern))) {
            PrunePlan::resolve(request(cfg, r, PathBuf::from("unused"))).map_err(in_grid)?;
        }
    }
    Ok(runs)
}

/// A usage error from resolving a run, named as the experiment file names the setting.
fn in_grid(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<crate::usage::UsageError>() {
        Ok(u) => crate::usage::usage(key_of(&u.setting), u.message),
        Err(e) => e,
    }
}

/// What one run asks `copal prune` for, writing to `out`.
pub fn request(cfg: &ExperimentConfig, spec: &RunSpec, out: PathBuf) -> Request {
    let (pattern, sparsity) = match spec.pattern {
        Pattern::Unstructured { percent } => ("unstructured".to_string(), Some(percent)),
        Pattern::NM { n, m } => (format!("{n}:{m}"), None),
    };
    let datasets = spec
        .order
        .iter()
        .filter_map(|d| crate::data::Dataset::parse(d).ok())
        .collect::<Vec<_>>();
    let calib_split = cfg
        .calib_split
        .iter()
        .filter_map(|(d, s)| Some((crate::data::Dataset::parse(d).ok()?, *s)))
        .collect();
    Request {
        model: cfg.model.clone(),
        datasets,
        calib_split,
        data_dir: cfg.data_dir(),
        method: Some(spec.method),
        params: spec.params.clone(),
        mode: Some(spec.mode),
        sparsity,
        pattern: Some(pattern),
        group: matches!(spec.pattern, Pattern::Unstructured { .. }).then_some(spec.group),
        propagate: cfg.propagate,
        allocate: spec.allocate,
        nsamples: cfg.nsamples,
        seqlen: cfg.seqlen,
        seed: cfg.seed,
        out,
        force: true,
        eval: true,
        max_windows: cfg.max_windows,
        eval_seen_only: cfg.eval_seen_only,
        eval_cache: Some(cfg.results_dir().join("eval-cache.json")),
        allow_calib_on_eval: cfg.allow_calib_on_eval,
        eval_tasks: cfg.eval_tasks.clone(),
        task_limit: cfg.task_limit,
        tasks_dir: cfg.tasks_dir(),
        device: cfg.device.clone(),
        dtype: cfg.dtype,
        ..Default::default()
    }
}

/// Selects runs by id or by index (job arrays).
pub fn select<'a>(
    runs: &'a [RunSpec],
    ids: &[String],
    index: Option<usize>,
) -> Result<Vec<&'a RunSpec>> {
    let mut out = Vec::new();
    if let Some(i) = index {
        match runs.get(i) {
            Some(r) => out.push(r),
            None => bail!(
                "⟨run_index⟩ {i} is out of range: the grid has {} runs (0..{})",
                runs.len(),
                runs.len()
            ),
        }
    }
    for id in ids {
        match runs.iter().find(|r| &r.id == id) {
            Some(r) => out.push(r),
            None => bail!("no run {id:?} in this grid; list them with ⟨list⟩"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_complete_and_distinct() {
        let p = permutations(&["a", "b", "c"]);
        assert_eq!(p.len(), 6);
        let set: std::collections::HashSet<_> = p.iter().collect();
        assert_eq!(set.len(), 6);
        assert_eq!(p[0], vec!["a", "b", "c"]);
    }

    #[test]
    fn grid_orders_start_with_a_latin_square() {
        let items = ["a", "b", "c", "d"];
        let o = grid_orders(&items);
        assert_eq!(o.len(), 24);
        let set: std::collections::HashSet<_> = o.iter().collect();
        assert_eq!(set.len(), 24);
        // In the first n orders every item stands once in every position.
        for pos in 0..items.len() {
            let col: std::collections::HashSet<_> =
                o[..items.len()].iter().map(|p| p[pos]).collect();
            assert_eq!(col.len(), items.len(), "position {pos}");
        }
        assert_eq!(o[0], items.to_vec());
    }

    #[test]
    fn settings_ids_keep_the_first_grids_tags() {
        let v = serde_json::json!({
            "name": "t", "model": "m", "datasets": ["ptb", "c4"],
            "copal": {"perturbation": "scaled"},
            "methods": [
                {"method": "dense"}, {"method": "copal"}, {"method": "copal", "group": "matrix"},
                {"method": "copal", "group": "row", "agg": "l2"},
                {"method": "copal", "group": "row", "normalize": true},
                {"method": "copal", "group": "row", "decay": 0.5},
                {"method": "copal", "perturbation": "gaussian"},
                {"method": "sparsegpt", "mode": "global", "percdamp": 0.1},
                {"method": "wanda", "allocate": {"kind": "owl", "lambda": 0.1}},
                {"method": "copal", "update": "obs"}
            ]
        });
        let cfg = ExperimentConfig::from_json(&v).unwrap();
        let runs = expand(&cfg).unwrap();
        let settings: Vec<&str> = runs[..10].iter().map(|r| r.setting.as_str()).collect();
        assert_eq!(
            settings,
            [
                "dense",
                "copal-accumulate",
                "copal-accumulate-matrix",
                "copal-accumulate-row-l2",
                "copal-accumulate-row-norm",
                "copal-accumulate-row-decay0.5",
                "copal-accumulate-gaussian",
                "sparsegpt-global-percdamp0.1",
                "wanda-accumulate-owl-lambda0.1",
                "copal-accumulate-obs"
            ]
        );
        assert_eq!(runs[0].id, "dense-u50-ptb+c4");
        assert_eq!(runs.len(), 20);
    }

    #[test]
    fn values_prune_would_refuse_fail_the_grid() {
        let v = serde_json::json!({
            "name": "t", "model": "m", "datasets": ["ptb"], "nsamples": 0,
            "methods": [{"method": "wanda"}]
        });
        let cfg = ExperimentConfig::from_json(&v).unwrap();
        let e = expand(&cfg).unwrap_err();
        let u = e.downcast_ref::<crate::usage::UsageError>().unwrap();
        assert_eq!(u.setting, "nsamples");
        let v = serde_json::json!({
            "name": "t", "model": "m", "datasets": ["ptb"], "sparsities": [0.5],
            "methods": [{"method": "wanda"}]
        });
        let e = expand(&ExperimentConfig::from_json(&v).unwrap()).unwrap_err();
        assert_eq!(
            e.downcast_ref::<crate::usage::UsageError>()
                .unwrap()
                .setting,
            "sparsities"
        );
    }
}
