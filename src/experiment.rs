//! The paper's experiment grid: every permutation of a dataset list × methods × modes ×
//! patterns × sparsities. Each run is independent and leaves one JSON file in
//! `RESULTS/runs/` (written atomically, so a killed run leaves nothing and a rerun skips what
//! is finished); `report` aggregates whatever is finished into a CSV, a JSON, a Markdown table
//! (average PPL and BWT per method and mode, mean ± sd and range over the permutations) and
//! SVG plots. Runs can be spread over processes or machines: `--list` prints the run ids for
//! GNU parallel, `--run-index` picks one for a job array.

use crate::calib::Propagate;
use crate::config::{CalibSource, PrunePlan};
use crate::continual::{self, Mode};
use crate::data::{Dataset, Split};
use crate::plot;
use crate::prune::copal::{Aggregation, CopalVariant, Perturbation, PerturbationKind};
use crate::prune::sparsegpt::SparseGptConfig;
use crate::prune::{Group, Method, Pattern};
use anyhow::{bail, ensure, Context as _, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A method and how it is used across datasets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodMode {
    pub method: Method,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub group: Option<Group>,
    /// COPAL only: overrides of the experiment-wide `copal` settings for this entry.
    #[serde(default)]
    pub perturbation: Option<PerturbationKind>,
    #[serde(default)]
    pub agg: Option<Aggregation>,
    #[serde(default)]
    pub normalize: Option<bool>,
    #[serde(default)]
    pub decay: Option<f64>,
}

fn yes() -> bool {
    true
}
fn default_patterns() -> Vec<String> {
    vec!["unstructured".into()]
}
fn default_sparsities() -> Vec<f64> {
    vec![50.0]
}
fn default_nsamples() -> usize {
    128
}
fn default_eps() -> f64 {
    0.01
}

/// COPAL settings for the grid's COPAL runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopalSettings {
    #[serde(default = "default_kind")]
    pub perturbation: PerturbationKind,
    #[serde(default)]
    pub variant: CopalVariant,
    #[serde(default = "default_eps")]
    pub eps_w: f64,
    #[serde(default = "default_eps")]
    pub eps_x: f64,
}

fn default_kind() -> PerturbationKind {
    PerturbationKind::Scaled
}

impl Default for CopalSettings {
    fn default() -> Self {
        Self {
            perturbation: default_kind(),
            variant: CopalVariant::default(),
            eps_w: 0.01,
            eps_x: 0.01,
        }
    }
}

/// An experiment file (see `configs/experiments/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentConfig {
    pub name: String,
    pub model: String,
    pub datasets: Vec<String>,
    /// Calibration split per dataset (default train).
    #[serde(default)]
    pub calib_split: BTreeMap<String, Split>,
    /// Every order of the datasets (true) or only the given one.
    #[serde(default = "yes")]
    pub permutations: bool,
    pub methods: Vec<MethodMode>,
    #[serde(default = "default_patterns")]
    pub patterns: Vec<String>,
    /// Percentages for unstructured patterns (N:M implies its own).
    #[serde(default = "default_sparsities")]
    pub sparsities: Vec<f64>,
    #[serde(default = "default_nsamples")]
    pub nsamples: usize,
    #[serde(default)]
    pub seqlen: Option<usize>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub max_windows: Option<usize>,
    #[serde(default = "yes")]
    pub eval_seen_only: bool,
    #[serde(default)]
    pub copal: CopalSettings,
    #[serde(default = "default_propagate")]
    pub propagate: Propagate,
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Results directory (default results/NAME).
    #[serde(default)]
    pub results: Option<PathBuf>,
}

fn default_propagate() -> Propagate {
    Propagate::Pruned
}

impl ExperimentConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: Self =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        ensure!(!cfg.datasets.is_empty(), "{}: no datasets", path.display());
        ensure!(!cfg.methods.is_empty(), "{}: no methods", path.display());
        for d in &cfg.datasets {
            Dataset::parse(d).with_context(|| path.display().to_string())?;
        }
        for m in &cfg.methods {
            continual::check_method_mode(m.method, m.mode.unwrap_or(m.method.default_mode()))?;
        }
        Ok(cfg)
    }

    pub fn results_dir(&self) -> PathBuf {
        self.results
            .clone()
            .unwrap_or_else(|| PathBuf::from("results").join(&self.name))
    }
}

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
    /// COPAL's perturbation and variant for this run.
    pub perturbation: PerturbationKind,
    pub variant: CopalVariant,
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
pub fn grid_orders<T: Clone + PartialEq>(items: &[T]) -> Vec<Vec<T>> {
    let n = items.len();
    let mut out: Vec<Vec<T>> = (0..n)
        .map(|r| (0..n).map(|i| items[(i + r) % n].clone()).collect())
        .collect();
    for p in permutations(items) {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

fn pattern_tag(p: &Pattern) -> String {
    match p {
        Pattern::Unstructured { percent } => format!("u{percent}"),
        Pattern::NM { n, m } => format!("{n}of{m}"),
    }
}

fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The grid, in a fixed order.
pub fn expand(cfg: &ExperimentConfig) -> Result<Vec<RunSpec>> {
    let orders = if cfg.permutations {
        grid_orders(&cfg.datasets)
    } else {
        vec![cfg.datasets.clone()]
    };
    let mut patterns = Vec::new();
    for p in &cfg.patterns {
        if p == "unstructured" {
            for s in &cfg.sparsities {
                patterns.push(Pattern::parse(p, Some(*s))?);
            }
        } else {
            patterns.push(Pattern::parse(p, None)?);
        }
    }
    let mut runs = Vec::new();
    // Order-major: after the first |methods| runs every method has one complete order, so a
    // partly finished grid already compares all of them.
    for pattern in &patterns {
        for order in &orders {
            for mm in &cfg.methods {
                let mode = mm.mode.unwrap_or(mm.method.default_mode());
                let group = mm.group.unwrap_or(mm.method.default_group());
                let mut gtag = if mm.group.is_some() {
                    format!("-{group:?}").to_lowercase()
                } else {
                    String::new()
                };
                let perturbation = mm.perturbation.unwrap_or(cfg.copal.perturbation);
                let mut variant = cfg.copal.variant;
                if let Some(a) = mm.agg {
                    variant.agg = a;
                }
                if let Some(n) = mm.normalize {
                    variant.normalize = n;
                }
                if let Some(d) = mm.decay {
                    variant.decay = d;
                }
                // Entries that override COPAL settings are told apart in their ids.
                if let Some(p) = mm.perturbation {
                    gtag.push_str(&format!("-{p:?}").to_lowercase());
                }
                if mm.agg.is_some() {
                    gtag.push_str(&format!("-{:?}", variant.agg).to_lowercase());
                }
                if mm.normalize == Some(true) {
                    gtag.push_str("-norm");
                }
                if let Some(d) = mm.decay {
                    gtag.push_str(&format!("-decay{d}"));
                }
                let setting = if mm.method == Method::Dense {
                    "dense".to_string()
                } else {
                    format!(
                        "{}-{}{}",
                        mm.method.name(),
                        crate::cli::value_name(mode),
                        gtag
                    )
                };
                let id = format!(
                    "{setting}-{}-{}",
                    pattern_tag(pattern),
                    order.iter().map(|d| safe(d)).collect::<Vec<_>>().join("+")
                );
                runs.push(RunSpec {
                    id,
                    setting,
                    method: mm.method,
                    mode,
                    group,
                    pattern: *pattern,
                    order: order.clone(),
                    perturbation,
                    variant,
                });
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for r in &runs {
        ensure!(
            seen.insert(r.id.clone()),
            "the grid lists run {} twice",
            r.id
        );
    }
    Ok(runs)
}

/// What one finished run leaves behind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    #[serde(flatten)]
    pub spec: RunSpec,
    /// R[step][dataset], columns in `order`; null where not evaluated.
    pub ppl_matrix: Vec<Vec<Option<f64>>>,
    pub dense_ppl: Vec<f64>,
    pub avg_ppl: f64,
    pub bwt: Option<f64>,
    pub sparsity: f64,
    pub seconds: f64,
    pub step_seconds: Vec<f64>,
    pub peak_rss_bytes: Option<u64>,
    pub copal_version: String,
}

pub fn run_path(results: &Path, id: &str) -> PathBuf {
    results.join("runs").join(format!("{id}.json"))
}

/// The `copal prune` plan of one grid entry, writing to `out`.
fn plan_for(
    cfg: &ExperimentConfig,
    spec: &RunSpec,
    data_dir: &Path,
    out: PathBuf,
) -> Result<PrunePlan> {
    let results = cfg.results_dir();
    Ok(PrunePlan {
        model: cfg.model.clone(),
        datasets: spec
            .order
            .iter()
            .map(|d| {
                let ds = Dataset::parse(d)?;
                Ok(CalibSource {
                    dataset: ds.name(),
                    split: cfg
                        .calib_split
                        .get(d)
                        .copied()
                        .unwrap_or(ds.default_calib_split()),
                })
            })
            .collect::<Result<_>>()?,
        data_dir: data_dir.to_path_buf(),
        nsamples: cfg.nsamples,
        calib_batch: None,
        seqlen: cfg.seqlen,
        seed: cfg.seed,
        method: spec.method,
        mode: spec.mode,
        pattern: spec.pattern,
        group: spec.group,
        variant: spec.variant,
        perturbation: Perturbation {
            kind: spec.perturbation,
            eps_w: cfg.copal.eps_w,
            eps_x: cfg.copal.eps_x,
        },
        propagate: cfg.propagate,
        sparsegpt: SparseGptConfig::default(),
        state: None,
        out,
        force: true,
        save_steps: false,
        save_masks: false,
        eval: true,
        max_windows: cfg.max_windows,
        eval_seen_only: cfg.eval_seen_only,
        eval_cache: Some(results.join("eval-cache.json")),
        device: "cpu".into(),
        dtype: None,
    })
}

/// Runs one grid entry (skipped if its result exists) and stores its result.
pub fn run_one(cfg: &ExperimentConfig, spec: &RunSpec, data_dir: &Path) -> Result<RunResult> {
    let results = cfg.results_dir();
    let done = run_path(&results, &spec.id);
    if let Ok(text) = std::fs::read_to_string(&done) {
        if let Ok(r) = serde_json::from_str::<RunResult>(&text) {
            return Ok(r);
        }
    }
    std::fs::create_dir_all(results.join("runs"))?;
    std::fs::create_dir_all(results.join("work"))?;
    let out = results.join("work").join(&spec.id);
    let mut plan = plan_for(cfg, spec, data_dir, out.clone())?;
    let rec = continual::run(&mut plan)?;
    let _ = std::fs::remove_dir_all(&out);
    let r = rec.ppl_matrix.clone().unwrap_or_default();
    let result = RunResult {
        spec: spec.clone(),
        ppl_matrix: r
            .iter()
            .map(|row| {
                row.iter()
                    .map(|v| if v.is_nan() { None } else { Some(*v) })
                    .collect()
            })
            .collect(),
        dense_ppl: rec
            .dense_eval
            .as_ref()
            .map(|d| d.iter().map(|e| e.ppl).collect())
            .unwrap_or_default(),
        avg_ppl: rec.avg_ppl.unwrap_or(f64::NAN),
        bwt: rec.bwt,
        sparsity: rec.sparsity,
        seconds: rec.seconds,
        step_seconds: rec.steps.iter().map(|s| s.report.seconds).collect(),
        peak_rss_bytes: rec.peak_rss_bytes,
        copal_version: rec.copal_version.clone(),
    };
    crate::fsutil::write_atomic(&done, &serde_json::to_vec_pretty(&result)?)?;
    Ok(result)
}

/// Finished results of the grid, in grid order.
pub fn finished(cfg: &ExperimentConfig, runs: &[RunSpec]) -> Vec<RunResult> {
    let dir = cfg.results_dir();
    runs.iter()
        .filter_map(|s| std::fs::read_to_string(run_path(&dir, &s.id)).ok())
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect()
}

/// Mean, sample standard deviation, min and max.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub mean: f64,
    pub sd: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn stats(xs: &[f64]) -> Stats {
    let n = xs.len();
    let mean = xs.iter().sum::<f64>() / n.max(1) as f64;
    let sd = if n > 1 {
        (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    Stats {
        mean,
        sd,
        min: xs.iter().cloned().fold(f64::INFINITY, f64::min),
        max: xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        n,
    }
}

/// One line of the paper-style table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub setting: String,
    pub method: Method,
    pub mode: Mode,
    pub group: Group,
    pub pattern: Pattern,
    pub avg_ppl: Stats,
    pub bwt: Option<Stats>,
    pub seconds: Stats,
}

impl Row {
    pub fn label(&self) -> String {
        self.setting.replace('-', " ")
    }

    /// The comparison group as the table shows it. SparseGPT chooses its mask as each block
    /// of columns is reached, so its group applies within the block.
    pub fn group_label(&self) -> String {
        match (self.method, self.pattern, self.group) {
            (Method::Dense, _, _) => "–".into(),
            (_, Pattern::NM { n, m }, _) => format!("{n} of every {m}"),
            (Method::SparseGpt, _, Group::Matrix) => "column block".into(),
            (Method::SparseGpt, _, Group::Row) => "row within column block".into(),
            (_, _, g) => crate::cli::value_name(g),
        }
    }
}

/// Averages over permutations, one row per (pattern, setting), in grid order.
pub fn aggregate(results: &[RunResult]) -> Vec<Row> {
    let mut keys: Vec<(Pattern, String)> = Vec::new();
    for r in results {
        let k = (r.spec.pattern, r.spec.setting.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(pattern, setting)| {
            let rs: Vec<&RunResult> = results
                .iter()
                .filter(|r| r.spec.pattern == pattern && r.spec.setting == setting)
                .collect();
            let bwts: Vec<f64> = rs.iter().filter_map(|r| r.bwt).collect();
            Row {
                method: rs[0].spec.method,
                mode: rs[0].spec.mode,
                group: rs[0].spec.group,
                setting,
                pattern,
                avg_ppl: stats(&rs.iter().map(|r| r.avg_ppl).collect::<Vec<_>>()),
                bwt: if bwts.is_empty() {
                    None
                } else {
                    Some(stats(&bwts))
                },
                seconds: stats(&rs.iter().map(|r| r.seconds).collect::<Vec<_>>()),
            }
        })
        .collect()
}

/// The Markdown table.
pub fn markdown(rows: &[Row], results: &[RunResult]) -> String {
    let mut s = String::new();
    s.push_str("| pattern | setting | group | avg PPL (mean ± sd) | avg PPL range | BWT (mean ± sd) | BWT range | runs | s/run |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let (bwt, bwt_range) = match &r.bwt {
            Some(b) => (
                format!("{:+.2} ± {:.2}", b.mean, b.sd),
                format!("[{:+.2}, {:+.2}]", b.min, b.max),
            ),
            None => ("–".into(), "–".into()),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {:.2} ± {:.2} | [{:.2}, {:.2}] | {} | {} | {} | {:.0} |\n",
            r.pattern,
            r.label(),
            r.group_label(),
            r.avg_ppl.mean,
            r.avg_ppl.sd,
            r.avg_ppl.min,
            r.avg_ppl.max,
            bwt,
            bwt_range,
            r.avg_ppl.n,
            r.seconds.mean
        ));
    }
    if let Some(r) = results.first() {
        let mut dense: Vec<(String, f64)> = r
            .spec
            .order
            .iter()
            .cloned()
            .zip(r.dense_ppl.iter().cloned())
            .collect();
        dense.sort_by(|a, b| a.0.cmp(&b.0));
        s.push_str(&format!(
            "\nDense model: {} (average {:.2}).\n",
            dense
                .iter()
                .map(|(d, p)| format!("{d} {p:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            dense.iter().map(|x| x.1).sum::<f64>() / dense.len().max(1) as f64
        ));
    }
    s
}

/// One setting compared with COPAL on the orders both finished.
#[derive(Debug, Clone)]
pub struct Paired {
    pub pattern: Pattern,
    pub setting: String,
    pub reference: String,
    /// setting − reference, average perplexity, one value per shared order.
    pub d_ppl: Stats,
    /// setting − reference, BWT, one value per shared order.
    pub d_bwt: Option<Stats>,
    /// Shared orders where the setting's average perplexity is the lower.
    pub wins: usize,
}

/// Each setting against the pattern's first setting that `is_reference` picks (COPAL, or
/// copal prune's default), paired by dataset order: a partly run grid compares settings on the
/// same orders, and pairing removes the order-to-order variation both share
/// (Δ = setting − reference; negative is better).
pub fn paired(
    rows: &[Row],
    results: &[RunResult],
    is_reference: &dyn Fn(&RunSpec) -> bool,
) -> Vec<Paired> {
    let mut out = Vec::new();
    for row in rows {
        let Some(reference) = results
            .iter()
            .find(|r| r.spec.pattern == row.pattern && is_reference(&r.spec))
            .map(|r| r.spec.setting.clone())
        else {
            continue;
        };
        if row.setting == reference || row.method == Method::Dense {
            continue;
        }
        let of = |setting: &str, order: &[String]| {
            results.iter().find(|r| {
                r.spec.pattern == row.pattern && r.spec.setting == setting && r.spec.order == order
            })
        };
        let pairs: Vec<(&RunResult, &RunResult)> = results
            .iter()
            .filter(|r| r.spec.pattern == row.pattern && r.spec.setting == row.setting)
            .filter_map(|r| of(&reference, &r.spec.order).map(|c| (r, c)))
            .collect();
        if pairs.is_empty() {
            continue;
        }
        let d_ppl: Vec<f64> = pairs.iter().map(|(r, c)| r.avg_ppl - c.avg_ppl).collect();
        let d_bwt: Vec<f64> = pairs
            .iter()
            .filter_map(|(r, c)| Some(r.bwt? - c.bwt?))
            .collect();
        out.push(Paired {
            pattern: row.pattern,
            setting: row.setting.clone(),
            reference: reference.clone(),
            wins: d_ppl.iter().filter(|d| **d < 0.0).count(),
            d_ppl: stats(&d_ppl),
            d_bwt: (!d_bwt.is_empty()).then(|| stats(&d_bwt)),
        });
    }
    out
}

/// Whether a run is what `copal prune` does without --method, --mode, --group or variants.
fn is_prune_default(s: &RunSpec) -> bool {
    let m = crate::prune::DEFAULT_METHOD;
    s.method == m
        && s.mode == m.default_mode()
        && s.setting == format!("{}-{}", m.name(), crate::cli::value_name(s.mode))
}

/// "+m ± sd", or "+m" alone for a single value (no spread to show).
fn signed(s: &Stats) -> String {
    if s.n < 2 {
        format!("{:+.2}", s.mean)
    } else {
        format!("{:+.2} ± {:.2}", s.mean, s.sd)
    }
}

/// The paired comparison as a Markdown table.
pub fn paired_markdown(p: &[Paired]) -> String {
    let mut s = String::from(
        "| pattern | setting | vs | orders | Δ avg PPL (mean ± sd) | lower avg PPL in | Δ BWT (mean ± sd) |\n|---|---|---|---|---|---|---|\n",
    );
    for x in p {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} of {} | {} |\n",
            x.pattern,
            x.setting.replace('-', " "),
            x.reference.replace('-', " "),
            x.d_ppl.n,
            signed(&x.d_ppl),
            x.wins,
            x.d_ppl.n,
            x.d_bwt.as_ref().map(signed).unwrap_or_else(|| "–".into())
        ));
    }
    s
}

/// CSV: one row per run, with R flattened as `R<step>_<dataset>` in the run's order.
pub fn csv(results: &[RunResult]) -> String {
    let k = results
        .iter()
        .map(|r| r.spec.order.len())
        .max()
        .unwrap_or(0);
    let mut s = String::from(
        "id,method,mode,group,pattern,order,avg_ppl,bwt,sparsity,seconds,peak_rss_bytes",
    );
    for step in 1..=k {
        for col in 1..=k {
            s.push_str(&format!(",R{step}_{col}"));
        }
    }
    s.push('\n');
    for r in results {
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{:.1},{}",
            r.spec.id,
            r.spec.method.name(),
            crate::cli::value_name(r.spec.mode),
            format!("{:?}", r.spec.group).to_lowercase(),
            r.spec.pattern.to_string().replace(' ', ""),
            r.spec.order.join(">"),
            r.avg_ppl,
            r.bwt.map(|b| b.to_string()).unwrap_or_default(),
            r.sparsity,
            r.seconds,
            r.peak_rss_bytes.map(|b| b.to_string()).unwrap_or_default()
        ));
        for row in &r.ppl_matrix {
            for v in row {
                s.push_str(&format!(
                    ",{}",
                    v.map(|x| x.to_string()).unwrap_or_default()
                ));
            }
        }
        s.push('\n');
    }
    s
}

/// What a calibration step costs per setting: mean seconds per step (over every step of every
/// finished run), the FLOPs it needs by `calib::step_flops` (forward, statistics, the pruned
/// re-forward), the throughput that implies, and the largest peak RSS of a run. Dividing a
/// machine's GEMM throughput by the achieved figure gives the step's multiple of its FLOP bound.
pub fn cost_table(
    cfg: &ExperimentConfig,
    model: Option<&crate::model::LlamaConfig>,
    rows: &[Row],
    results: &[RunResult],
) -> String {
    let seqlen = cfg.seqlen.unwrap_or(2048);
    let mut s = String::from(
        "| pattern | setting | s/step (mean ± sd) | GFLOP/step | achieved GFLOP/s | peak RSS (GiB) |\n|---|---|---|---|---|---|\n",
    );
    for r in rows.iter().filter(|r| r.method != Method::Dense) {
        let rs: Vec<&RunResult> = results
            .iter()
            .filter(|x| x.spec.pattern == r.pattern && x.spec.setting == r.setting)
            .collect();
        let steps = stats(
            &rs.iter()
                .flat_map(|x| x.step_seconds.iter().cloned())
                .collect::<Vec<_>>(),
        );
        // The FLOPs of the step the run's own plan describes.
        let flops = model.and_then(|m| {
            let plan = plan_for(cfg, &rs[0].spec, Path::new(""), PathBuf::new()).ok()?;
            let settings = crate::calib::StepSettings::of(&plan, String::new());
            Some(crate::calib::step_flops(
                m,
                &settings,
                plan.nsamples,
                seqlen,
            ))
        });
        let (tflop, rate) = match flops {
            Some(f) if f > 0.0 => (
                if f >= 1e11 {
                    format!("{:.0}", f / 1e9)
                } else {
                    format!("{:.4}", f / 1e9)
                },
                format!("{:.0}", f / steps.mean / 1e9),
            ),
            _ => ("–".into(), "–".into()),
        };
        let rss = rs
            .iter()
            .filter_map(|x| x.peak_rss_bytes)
            .max()
            .map(|b| format!("{:.2}", b as f64 / (1u64 << 30) as f64))
            .unwrap_or_else(|| "–".into());
        s.push_str(&format!(
            "| {} | {} | {:.1} ± {:.1} | {tflop} | {rate} | {rss} |\n",
            r.pattern,
            r.label(),
            steps.mean,
            steps.sd
        ));
    }
    s
}

/// Writes table.md, runs.csv, runs.json and the plots from the finished runs.
pub fn report(cfg: &ExperimentConfig, runs: &[RunSpec]) -> Result<(Vec<Row>, usize)> {
    let results = finished(cfg, runs);
    let dir = cfg.results_dir();
    std::fs::create_dir_all(dir.join("plots"))?;
    let rows = aggregate(&results);
    let md = format!(
        "# {}\n\nModel {}, datasets {} ({} orders), nsamples {} × seqlen {}, {} eval windows per dataset; {} of {} runs finished.\nAverages are over the dataset orders; ranges are min–max.\n\n{}",
        cfg.name,
        cfg.model,
        cfg.datasets.join(", "),
        if cfg.permutations { grid_orders(&cfg.datasets).len() } else { 1 },
        cfg.nsamples,
        cfg.seqlen.map(|s| s.to_string()).unwrap_or_else(|| "2048".into()),
        cfg.max_windows.map(|w| w.to_string()).unwrap_or_else(|| "all".into()),
        results.len(),
        runs.len(),
        markdown(&rows, &results)
    );
    // The model's shapes give each step's FLOP count; without the model the column is blank.
    let model = crate::checkpoint::resolve(&cfg.model, true)
        .and_then(|d| crate::checkpoint::Checkpoint::open(&d))
        .map(|c| c.config)
        .ok();
    // Paired with COPAL (the paper's method) and with `copal prune`'s default.
    let copal = |s: &RunSpec| s.method == Method::Copal;
    let mut md = md;
    for (title, is_ref) in [
        ("COPAL", &copal as &dyn Fn(&RunSpec) -> bool),
        ("copal prune's default", &is_prune_default),
    ] {
        let pairs = paired(&rows, &results, is_ref);
        if !pairs.is_empty() {
            md = format!(
                "{md}\n## Paired with {title}\n\nEach setting minus the reference (`vs`) on the dataset orders both finished (negative Δ PPL: lower perplexity than the reference; negative Δ BWT: less forgetting).\n\n{}",
                paired_markdown(&pairs)
            );
        }
    }
    let md = format!(
        "{md}\n## Cost per calibration step\n\n{}",
        cost_table(cfg, model.as_ref(), &rows, &results)
    );
    std::fs::write(dir.join("table.md"), md)?;
    std::fs::write(dir.join("runs.csv"), csv(&results))?;
    std::fs::write(dir.join("runs.json"), serde_json::to_vec_pretty(&results)?)?;
    if !results.is_empty() {
        plots(cfg, &dir.join("plots"), &rows, &results)?;
    }
    Ok((rows, results.len()))
}

fn plots(cfg: &ExperimentConfig, dir: &Path, rows: &[Row], results: &[RunResult]) -> Result<()> {
    let patterns: Vec<Pattern> = rows.iter().fold(Vec::new(), |mut v, r| {
        if !v.contains(&r.pattern) {
            v.push(r.pattern);
        }
        v
    });
    for pattern in patterns {
        let tag = pattern_tag(&pattern);
        let rs: Vec<&Row> = rows
            .iter()
            .filter(|r| r.pattern == pattern && r.method != Method::Dense)
            .collect();
        let bars: Vec<plot::Bar> = rs
            .iter()
            .filter_map(|r| {
                r.bwt.map(|b| plot::Bar {
                    label: r.label(),
                    mean: b.mean,
                    min: b.min,
                    max: b.max,
                })
            })
            .collect();
        plot::bars(
            &dir.join(format!("bwt-{tag}.svg")),
            &format!("BWT ({pattern}), mean and range over orders"),
            "BWT (PPL, lower is better)",
            &bars,
        )?;
        let bars: Vec<plot::Bar> = rs
            .iter()
            .map(|r| plot::Bar {
                label: r.label(),
                mean: r.avg_ppl.mean,
                min: r.avg_ppl.min,
                max: r.avg_ppl.max,
            })
            .collect();
        plot::bars(
            &dir.join(format!("avg-ppl-{tag}.svg")),
            &format!("Average PPL after the last step ({pattern})"),
            "perplexity",
            &bars,
        )?;
        // Trajectories in the first order of the grid: perplexity of each dataset after every
        // step from the one where it arrives.
        let order = if cfg.permutations {
            grid_orders(&cfg.datasets)[0].clone()
        } else {
            cfg.datasets.clone()
        };
        let panels: Vec<plot::Panel> = rs
            .iter()
            .filter_map(|row| {
                let r = results.iter().find(|x| {
                    x.spec.pattern == pattern
                        && x.spec.setting == row.setting
                        && x.spec.order == order
                })?;
                let lines = r
                    .spec
                    .order
                    .iter()
                    .enumerate()
                    .map(|(col, d)| {
                        let pts = r
                            .ppl_matrix
                            .iter()
                            .enumerate()
                            .filter_map(|(k, row)| row[col].map(|p| ((k + 1) as f64, p)))
                            .collect();
                        (d.clone(), pts)
                    })
                    .collect();
                Some(plot::Panel {
                    title: row.label(),
                    lines,
                })
            })
            .collect();
        if !panels.is_empty() {
            plot::line_panels(
                &dir.join(format!("ppl-steps-{tag}.svg")),
                &format!(
                    "Perplexity per dataset after each step ({pattern}; order {})",
                    order.join(" → ")
                ),
                "step",
                "perplexity (log)",
                &panels,
            )?;
        }
    }
    Ok(())
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
                "--run-index {i} is out of range: the grid has {} runs (0..{})",
                runs.len(),
                runs.len()
            ),
        }
    }
    for id in ids {
        match runs.iter().find(|r| &r.id == id) {
            Some(r) => out.push(r),
            None => bail!("no run {id:?} in this grid; list them with --list"),
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

    fn result(setting: &str, method: Method, order: &[&str], ppl: f64, bwt: f64) -> RunResult {
        RunResult {
            spec: RunSpec {
                id: format!("{setting}-{}", order.join("+")),
                setting: setting.into(),
                method,
                mode: Mode::Global,
                group: Group::Row,
                pattern: Pattern::Unstructured { percent: 50.0 },
                order: order.iter().map(|s| s.to_string()).collect(),
                perturbation: PerturbationKind::Scaled,
                variant: CopalVariant::default(),
            },
            ppl_matrix: vec![],
            dense_ppl: vec![],
            avg_ppl: ppl,
            bwt: Some(bwt),
            sparsity: 0.5,
            seconds: 1.0,
            step_seconds: vec![],
            peak_rss_bytes: None,
            copal_version: String::new(),
        }
    }

    #[test]
    fn paired_differences_use_shared_orders_only() {
        let (o1, o2, o3) = (&["a", "b"][..], &["b", "a"][..], &["c", "a"][..]);
        let rs = vec![
            result("copal", Method::Copal, o1, 100.0, 1.0),
            result("copal", Method::Copal, o2, 110.0, 2.0),
            result("wanda", Method::Wanda, o1, 90.0, 5.0),
            result("wanda", Method::Wanda, o2, 114.0, 6.0),
            // No COPAL run on this order: not paired.
            result("wanda", Method::Wanda, o3, 10.0, 0.0),
            result("dense", Method::Dense, o1, 50.0, 0.0),
        ];
        let p = paired(&aggregate(&rs), &rs, &|s| s.method == Method::Copal);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].setting, "wanda");
        assert_eq!(p[0].reference, "copal");
        assert_eq!(p[0].d_ppl.n, 2);
        assert!((p[0].d_ppl.mean - (-10.0 + 4.0) / 2.0).abs() < 1e-12);
        assert_eq!(p[0].wins, 1);
        assert!((p[0].d_bwt.as_ref().unwrap().mean - 4.0).abs() < 1e-12);
        assert!(paired_markdown(&p)
            .contains("| wanda | copal | 2 | -3.00 ± 9.90 | 1 of 2 | +4.00 ± 0.00 |"));
    }

    #[test]
    fn the_prune_default_is_recognised_among_the_settings() {
        let o = &["a", "b"][..];
        let mut plain = result("sparsegpt-accumulate", Method::SparseGpt, o, 1.0, 0.0);
        plain.spec.mode = Mode::Accumulate;
        assert!(is_prune_default(&plain.spec));
        let mut row = plain.clone();
        row.spec.setting = "sparsegpt-accumulate-row".into();
        let mut global = plain.clone();
        global.spec.mode = Mode::Global;
        global.spec.setting = "sparsegpt-global".into();
        let copal = result("copal-accumulate", Method::Copal, o, 1.0, 0.0);
        for other in [row, global, copal] {
            assert!(!is_prune_default(&other.spec), "{}", other.spec.setting);
        }
    }

    #[test]
    fn stats_of_known_values() {
        let s = stats(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!((s.mean, s.min, s.max, s.n), (2.5, 1.0, 4.0, 4));
        assert!((s.sd - 1.2909944487358056).abs() < 1e-12);
    }
}
