//! Averages over dataset orders, and settings paired with a reference on the orders both ran.

use super::grid::RunSpec;
use super::run::RunResult;
use crate::eval::{Better, ScoreMatrix};
use crate::prune::{Group, Method, Mode, Pattern};
use serde::{Deserialize, Serialize};

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
    /// Each zero-shot metric (`eval_tasks`), over the same orders.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskStats>,
}

/// One zero-shot metric of a setting over the dataset orders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStats {
    pub metric: String,
    pub better: Better,
    pub columns: Vec<String>,
    /// Per task, its score after the last step.
    pub last: Vec<Stats>,
    /// The mean over the tasks after the last step.
    pub average: Stats,
    /// See [`crate::eval::score`]: a fall is forgetting.
    pub bwt: Option<Stats>,
}

/// The zero-shot metrics of `rows`, in order of first appearance.
pub fn task_metrics<'a>(rows: impl IntoIterator<Item = &'a Row>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for t in rows.into_iter().flat_map(|r| &r.tasks) {
        if !out.contains(&t.metric.as_str()) {
            out.push(&t.metric);
        }
    }
    out
}

/// The zero-shot metrics of the runs of one setting: those of its first run, each over the
/// runs that have it.
fn task_stats(rs: &[&RunResult]) -> Vec<TaskStats> {
    let Some(first) = rs.first() else {
        return Vec::new();
    };
    first
        .task_scores()
        .map(|m0| {
            let ms: Vec<&ScoreMatrix> = rs
                .iter()
                .filter_map(|r| r.task_scores().find(|m| m.metric == m0.metric))
                .collect();
            let last = m0
                .columns
                .iter()
                .map(|c| {
                    let xs: Vec<f64> = ms
                        .iter()
                        .filter_map(|m| {
                            let j = m.columns.iter().position(|x| x == c)?;
                            (*m.rows.last()?.get(j)?).filter(|v| v.is_finite())
                        })
                        .collect();
                    stats(&xs)
                })
                .collect();
            let averages: Vec<f64> = ms.iter().filter_map(|m| m.average).collect();
            let bwts: Vec<f64> = ms.iter().filter_map(|m| m.bwt).collect();
            TaskStats {
                metric: m0.metric.clone(),
                better: m0.better,
                columns: m0.columns.clone(),
                last,
                average: stats(&averages),
                bwt: (!bwts.is_empty()).then(|| stats(&bwts)),
            }
        })
        .collect()
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
            (_, _, g) => g.to_string(),
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
            let bwts: Vec<f64> = rs.iter().filter_map(|r| r.bwt()).collect();
            Row {
                method: rs[0].spec.method,
                mode: rs[0].spec.mode,
                group: rs[0].spec.group,
                setting,
                pattern,
                avg_ppl: stats(&rs.iter().map(|r| r.avg_ppl()).collect::<Vec<_>>()),
                bwt: if bwts.is_empty() {
                    None
                } else {
                    Some(stats(&bwts))
                },
                seconds: stats(&rs.iter().map(|r| r.seconds).collect::<Vec<_>>()),
                tasks: task_stats(&rs),
            }
        })
        .collect()
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
        let d_ppl: Vec<f64> = pairs
            .iter()
            .map(|(r, c)| r.avg_ppl() - c.avg_ppl())
            .collect();
        let d_bwt: Vec<f64> = pairs
            .iter()
            .filter_map(|(r, c)| Some(r.bwt()? - c.bwt()?))
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

/// Whether a run is `method` in `mode` with nothing else set (its setting id is METHOD-MODE).
pub fn is_plain(s: &RunSpec, method: Method, mode: Mode) -> bool {
    s.method == method && s.mode == mode && s.setting == format!("{method}-{mode}")
}

/// Whether a run is what `copal prune` does without --method, --mode, --group or variants.
pub fn is_prune_default(s: &RunSpec) -> bool {
    let m = crate::prune::DEFAULT_METHOD;
    is_plain(s, m, m.default_mode())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::copal::{CopalVariant, PerturbationKind};

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
                params: Default::default(),
                allocate: Default::default(),
            },
            scores: vec![crate::eval::ScoreMatrix {
                metric: crate::eval::score::PPL.into(),
                better: crate::eval::Better::Lower,
                columns: order.iter().map(|s| s.to_string()).collect(),
                dense: None,
                rows: vec![],
                transfer: crate::eval::Transfer::Diagonal { offset: 0 },
                average: Some(ppl),
                bwt: Some(bwt),
            }],
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
    }

    #[test]
    fn the_prune_default_is_recognised_among_the_settings() {
        let o = &["a", "b"][..];
        let mut plain = result("copal-accumulate", Method::Copal, o, 1.0, 0.0);
        plain.spec.mode = Mode::Accumulate;
        assert!(is_prune_default(&plain.spec));
        let mut row = plain.clone();
        row.spec.setting = "copal-accumulate-matrix".into();
        let mut obs = plain.clone();
        obs.spec.setting = "copal-accumulate-obs".into();
        let mut global = plain.clone();
        global.spec.mode = Mode::Global;
        global.spec.setting = "copal-global".into();
        let mut sgpt = result("sparsegpt-accumulate", Method::SparseGpt, o, 1.0, 0.0);
        sgpt.spec.mode = Mode::Accumulate;
        assert!(is_plain(&sgpt.spec, Method::SparseGpt, Mode::Accumulate));
        for other in [row, obs, global, sgpt] {
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
