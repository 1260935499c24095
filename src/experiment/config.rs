//! An experiment file (see `configs/experiments/`): the grid's model, datasets, methods and
//! their settings, patterns, sparsities and calibration/evaluation sizes.
//!
//! Read strictly: an unknown key is an error (with a "did you mean"), a setting that does not
//! belong to an entry's method is an error naming the method it belongs to, and every value
//! passes the same checks as `copal prune`'s flags. A top-level key named after a method
//! (`"copal": {"perturbation": "scaled"}`) holds that method's settings for every entry of it;
//! an entry's own keys override them.

use crate::data::{Dataset, Split};
use crate::device::ComputeDtype;
use crate::eval::tasks::Task;
use crate::plan::Propagate;
use crate::prune::allocate::Allocation;
use crate::prune::{Group, Method, MethodConfig, Mode};
use crate::usage::{did_you_mean, UsageError};
use anyhow::{Context as _, Result};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One entry of `methods`: a method, how it is used, and its settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodEntry {
    pub method: Method,
    pub mode: Option<Mode>,
    pub group: Option<Group>,
    /// How the sparsity is spread over the layers (`"allocate": "owl"` or `{"kind": "owl",
    /// "m": 7}`): the allocation stage's settings value, as `copal prune` takes it.
    pub allocate: Option<Allocation>,
    /// The entry's own settings of its method (they make its setting id distinct).
    pub own: Map<String, Value>,
    /// The method's settings for this entry: the experiment-wide block, then the entry's own.
    pub params: Map<String, Value>,
}

/// An experiment file.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentConfig {
    pub name: String,
    pub model: String,
    pub datasets: Vec<String>,
    /// Calibration split per dataset (default train).
    pub calib_split: BTreeMap<String, Split>,
    /// Every order of the datasets (true) or only the given one.
    pub permutations: bool,
    pub methods: Vec<MethodEntry>,
    pub patterns: Vec<String>,
    /// Percentages for unstructured patterns (N:M implies its own).
    pub sparsities: Vec<f64>,
    pub nsamples: Option<usize>,
    pub seqlen: Option<usize>,
    pub seed: Option<u64>,
    pub max_windows: Option<usize>,
    pub eval_seen_only: bool,
    /// Evaluate datasets on the text they calibrate on (`text:`/`jsonl:` files; marked).
    pub allow_calib_on_eval: bool,
    /// Zero-shot tasks scored after every step of every run (`"eval_tasks": ["wanda7"]`).
    pub eval_tasks: Vec<Task>,
    /// The first N items of each task only.
    pub task_limit: Option<usize>,
    /// The tasks' local copies, relative to the file (default `$COPAL_HOME/tasks`).
    pub tasks_dir: Option<PathBuf>,
    pub propagate: Option<Propagate>,
    pub device: Option<String>,
    pub dtype: Option<ComputeDtype>,
    pub data_dir: Option<PathBuf>,
    /// Results directory, relative to the file's directory (default `results/NAME` there).
    pub results: Option<PathBuf>,
    /// The directory of the experiment file: relative paths in it are relative to it, not to
    /// wherever copal is started (two launches from two directories share one grid).
    pub base_dir: PathBuf,
    /// Each method's settings for all its entries (the top-level key named after it).
    pub method_params: BTreeMap<String, Map<String, Value>>,
}

/// The top-level keys besides the methods' own blocks.
const KEYS: &[&str] = &[
    "name",
    "model",
    "datasets",
    "calib_split",
    "permutations",
    "methods",
    "patterns",
    "sparsities",
    "nsamples",
    "seqlen",
    "seed",
    "max_windows",
    "eval_seen_only",
    "allow_calib_on_eval",
    "eval_tasks",
    "task_limit",
    "tasks_dir",
    "propagate",
    "device",
    "dtype",
    "data_dir",
    "results",
];

/// An entry's keys besides its method's settings.
const ENTRY_KEYS: &[&str] = &["method", "mode", "group", "allocate"];

/// How a setting of the prune plan is named in an experiment file.
pub fn key_of(setting: &str) -> &str {
    match setting {
        "sparsity" => "sparsities",
        "pattern" => "patterns",
        other => other,
    }
}

impl ExperimentConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::fsutil::read_small(path, "experiment config", crate::fsutil::CAP_CONFIG)?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let mut cfg = Self::from_json(&v).map_err(|e| in_file(e, path))?;
        cfg.base_dir = crate::fsutil::canonical(path)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Ok(cfg)
    }

    /// Reads the configuration from its JSON.
    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| crate::usage::usage("experiment", "must be a JSON object"))?;
        let method_names: Vec<String> = Method::ALL.iter().map(|m| m.name()).collect();
        let mut method_params = BTreeMap::new();
        for (k, val) in obj {
            if KEYS.contains(&k.as_str()) || k.starts_with('_') {
                continue;
            }
            if method_names.contains(k) {
                let m: Method = k.parse().map_err(|e: UsageError| usage(k, e.message))?;
                let block = val
                    .as_object()
                    .ok_or_else(|| usage(k, "must be an object of the method's settings"))?;
                MethodConfig::from_params(m, block).map_err(|e| under(e, k))?;
                method_params.insert(k.clone(), block.clone());
                continue;
            }
            let all = KEYS
                .iter()
                .copied()
                .chain(method_names.iter().map(String::as_str));
            let hint = did_you_mean(k, all)
                .map(|s| format!(" (did you mean {s}?)"))
                .unwrap_or_default();
            return Err(usage(
                k,
                format!("is not a key of an experiment file{hint}"),
            ));
        }
        let name: String = required(obj, "name")?;
        crate::usage_ensure!(
            !name.is_empty()
                && !name.starts_with('.')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "name",
            "{name:?} must be a plain name (letters, digits, - _ .): it names the results \
             directory"
        );
        let datasets: Vec<String> = required(obj, "datasets")?;
        crate::usage_ensure!(!datasets.is_empty(), "datasets", "is empty");
        let parsed: Vec<Dataset> = datasets
            .iter()
            .map(|d| Dataset::parse(d))
            .collect::<Result<_>>()?;
        for (i, d) in parsed.iter().enumerate() {
            crate::usage_ensure!(
                !parsed[..i].contains(d),
                "datasets",
                "lists {d} twice; a dataset is folded in once"
            );
        }
        let calib_split: BTreeMap<String, Split> =
            optional(obj, "calib_split")?.unwrap_or_default();
        for d in calib_split.keys() {
            crate::usage_ensure!(
                datasets.contains(d),
                "calib_split",
                "names {d}, which is not among the datasets"
            );
        }
        let entries: Vec<Value> = required(obj, "methods")?;
        crate::usage_ensure!(!entries.is_empty(), "methods", "is empty");
        let methods = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                entry(e, &method_params).map_err(|err| under(err, &format!("methods[{i}]")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            name,
            model: required(obj, "model")?,
            datasets,
            calib_split,
            permutations: optional(obj, "permutations")?.unwrap_or(true),
            methods,
            patterns: optional(obj, "patterns")?.unwrap_or_else(|| vec!["unstructured".into()]),
            sparsities: optional(obj, "sparsities")?
                .unwrap_or_else(|| vec![crate::prune::mask::DEFAULT_PERCENT]),
            nsamples: optional(obj, "nsamples")?,
            seqlen: optional(obj, "seqlen")?,
            seed: optional(obj, "seed")?,
            max_windows: optional(obj, "max_windows")?,
            eval_seen_only: optional(obj, "eval_seen_only")?.unwrap_or(true),
            allow_calib_on_eval: optional(obj, "allow_calib_on_eval")?.unwrap_or(false),
            eval_tasks: match optional::<Vec<String>>(obj, "eval_tasks")? {
                Some(t) => Task::parse_list(&t.join(","))
                    .map_err(|e| usage("eval_tasks", format!("{e:#}")))?,
                None => Vec::new(),
            },
            task_limit: optional(obj, "task_limit")?,
            tasks_dir: optional(obj, "tasks_dir")?,
            propagate: optional(obj, "propagate")?,
            device: optional(obj, "device")?,
            dtype: optional(obj, "dtype")?,
            data_dir: optional(obj, "data_dir")?,
            results: optional(obj, "results")?,
            base_dir: std::env::current_dir().unwrap_or_default(),
            method_params,
        })
    }

    /// Where the grid's results live: `results` (relative to the experiment file), else
    /// `results/NAME` beside the file.
    pub fn results_dir(&self) -> PathBuf {
        let r = self
            .results
            .clone()
            .unwrap_or_else(|| PathBuf::from("results").join(&self.name));
        self.base_dir.join(r)
    }

    /// The tasks directory the file names, relative to it.
    pub fn tasks_dir(&self) -> Option<PathBuf> {
        self.tasks_dir.as_ref().map(|d| self.base_dir.join(d))
    }

    /// The data directory the file names, relative to it.
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.data_dir.as_ref().map(|d| self.base_dir.join(d))
    }
}

/// One `methods` entry.
fn entry(v: &Value, blocks: &BTreeMap<String, Map<String, Value>>) -> Result<MethodEntry> {
    let obj = v.as_object().ok_or_else(|| {
        usage(
            "method",
            "entries must be objects such as {\"method\": \"copal\"}",
        )
    })?;
    let name: String = required(obj, "method")?;
    let method: Method = name
        .parse()
        .map_err(|e: UsageError| usage("method", e.message))?;
    let own: Map<String, Value> = obj
        .iter()
        .filter(|(k, _)| !ENTRY_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut params = blocks.get(&method.name()).cloned().unwrap_or_default();
    params.extend(own.clone());
    // Checks every setting against the method (and names the owner of a stray one).
    let config = MethodConfig::from_params(method, &params)?;
    let mode: Option<Mode> = optional(obj, "mode")?;
    if let Some(m) = mode {
        config.check_mode(m)?;
    }
    let allocate = obj
        .get("allocate")
        .filter(|v| !v.is_null())
        .map(Allocation::from_value)
        .transpose()?;
    Ok(MethodEntry {
        method,
        mode,
        group: optional(obj, "group")?,
        allocate,
        own,
        params,
    })
}

fn usage(key: &str, message: impl Into<String>) -> anyhow::Error {
    crate::usage::usage(key, message)
}

/// A usage error inside `outer` (`methods[3]`, `copal`): the setting becomes `outer.setting`.
fn under(e: anyhow::Error, outer: &str) -> anyhow::Error {
    match e.downcast::<UsageError>() {
        Ok(u) => usage(&format!("{outer}.{}", key_of(&u.setting)), u.message),
        Err(e) => e,
    }
}

/// The file's name in front of a usage error, in the experiment file's words.
fn in_file(e: anyhow::Error, path: &Path) -> anyhow::Error {
    match e.downcast::<UsageError>() {
        Ok(u) => usage(
            &format!("{}: {}", path.display(), key_of(&u.setting)),
            u.message,
        ),
        Err(e) => e,
    }
}

fn required<T: DeserializeOwned>(obj: &Map<String, Value>, key: &str) -> Result<T> {
    match optional(obj, key)? {
        Some(v) => Ok(v),
        None => Err(usage(key, "is missing")),
    }
}

fn optional<T: DeserializeOwned>(obj: &Map<String, Value>, key: &str) -> Result<Option<T>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| usage(key, format!("has an unusable value {v}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "name": "t", "model": "m", "datasets": ["ptb", "c4"],
            "copal": {"perturbation": "scaled"},
            "methods": [{"method": "copal"}, {"method": "wanda", "mode": "global"}]
        })
    }

    fn err_of(v: Value) -> UsageError {
        let e = ExperimentConfig::from_json(&v).unwrap_err();
        e.downcast::<UsageError>().expect("a usage error")
    }

    #[test]
    fn a_valid_file_reads() {
        let c = ExperimentConfig::from_json(&base()).unwrap();
        assert_eq!(c.methods.len(), 2);
        assert_eq!(c.methods[0].params["perturbation"], "scaled");
        assert!(c.methods[1].params.is_empty());
    }

    #[test]
    fn unknown_keys_are_errors_with_a_hint() {
        let mut v = base();
        v["nsamples_typo"] = json!(16);
        let e = err_of(v);
        assert_eq!(e.setting, "nsamples_typo");
        assert!(e.message.contains("did you mean nsamples"), "{e}");
    }

    #[test]
    fn a_setting_of_another_method_is_refused() {
        let mut v = base();
        v["methods"][1]["perturbation"] = json!("gaussian");
        let e = err_of(v);
        assert_eq!(e.setting, "methods[1].perturbation");
        assert!(e.message.contains("copal"), "{e}");
    }

    #[test]
    fn results_are_found_from_the_files_directory() {
        let tmp = std::env::temp_dir().join(format!("copal-exp-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("configs")).unwrap();
        let mut v = base();
        let p = tmp.join("configs/grid.json");
        std::fs::write(&p, v.to_string()).unwrap();
        let c = ExperimentConfig::load(&p).unwrap();
        assert_eq!(
            c.results_dir(),
            crate::fsutil::canonical(&tmp).join("configs/results/t")
        );
        v["results"] = json!("../out");
        std::fs::write(&p, v.to_string()).unwrap();
        let c = ExperimentConfig::load(&p).unwrap();
        assert!(
            c.results_dir().ends_with("configs/../out"),
            "{}",
            c.results_dir().display()
        );
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn an_entrys_allocation_is_one_value_named_by_its_path() {
        let mut v = base();
        v["methods"][1]["allocate"] = json!({"kind": "owl", "m": 7});
        let c = ExperimentConfig::from_json(&v).unwrap();
        assert_eq!(
            c.methods[1].allocate,
            Some(Allocation::Owl {
                m: 7.0,
                lambda: crate::prune::allocate::OWL_LAMBDA
            })
        );
        v["methods"][1]["allocate"] = json!({"kind": "owl", "lambda": 0.7});
        assert_eq!(err_of(v.clone()).setting, "methods[1].allocate.lambda");
        // The flat keys of the command line are not an entry's.
        v["methods"][1]["allocate"] = json!("owl");
        v["methods"][1]["owl_m"] = json!(7);
        assert_eq!(err_of(v).setting, "methods[1].owl_m");
    }

    #[test]
    fn names_must_be_plain() {
        let mut v = base();
        v["name"] = json!("../../x");
        assert_eq!(err_of(v).setting, "name");
    }
}
