//! The report's tables: Markdown, CSV, and the cost per calibration step.

use super::aggregate::{stats, task_metrics, Paired, Row, Stats};
use super::config::ExperimentConfig;
use super::grid::{request, RunSpec};
use super::run::RunResult;
use crate::plan::PrunePlan;
use crate::prune::Method;
use std::path::PathBuf;

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
        let mut dense: Vec<(String, f64)> =
            r.spec.order.iter().cloned().zip(r.dense_ppl()).collect();
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

/// The zero-shot tables, one per metric (`acc`, `acc_norm`): each task's score after the last
/// step and their average, mean over the orders, and the BWT (a fall is forgetting); the dense
/// model's scores below. Empty when no run scored tasks.
pub fn task_markdown(rows: &[Row], results: &[RunResult]) -> String {
    let mut s = String::new();
    for metric in task_metrics(rows) {
        let Some(cols) = rows
            .iter()
            .flat_map(|r| &r.tasks)
            .find(|t| t.metric == metric)
            .map(|t| &t.columns)
        else {
            continue;
        };
        s.push_str(&format!(
            "\n## Zero-shot {metric} after the last step\n\nMean over the dataset orders of each task's {metric} (higher is better); BWT in {metric} (negative: forgetting).\n\n| pattern | setting | {} | average | BWT (mean ± sd) | runs |\n|---|---|{}---|---|---|\n",
            cols.join(" | "),
            "---|".repeat(cols.len())
        ));
        for r in rows {
            let Some(t) = r.tasks.iter().find(|t| t.metric == metric) else {
                continue;
            };
            let cells: Vec<String> = cols
                .iter()
                .map(|c| match t.columns.iter().position(|x| x == c) {
                    Some(j) if t.last[j].n > 0 => format!("{:.4}", t.last[j].mean),
                    _ => "–".into(),
                })
                .collect();
            s.push_str(&format!(
                "| {} | {} | {} | {:.4} ± {:.4} | {} | {} |\n",
                r.pattern,
                r.label(),
                cells.join(" | "),
                t.average.mean,
                t.average.sd,
                t.bwt
                    .as_ref()
                    .map(|b| format!("{:+.4} ± {:.4}", b.mean, b.sd))
                    .unwrap_or_else(|| "–".into()),
                t.average.n
            ));
        }
        let dense = results
            .iter()
            .flat_map(|r| r.task_scores())
            .find(|m| m.metric == metric)
            .and_then(|m| Some((&m.columns, m.dense.as_ref()?)));
        if let Some((cols, d)) = dense {
            let cells: Vec<String> = cols
                .iter()
                .zip(d)
                .map(|(c, v)| match v {
                    Some(v) => format!("{c} {v:.4}"),
                    None => format!("{c} –"),
                })
                .collect();
            s.push_str(&format!("\nDense model: {}.\n", cells.join(", ")));
        }
    }
    let without = results
        .iter()
        .filter(|r| r.task_scores().next().is_none())
        .count();
    if !s.is_empty() && without > 0 {
        s.push_str(&format!(
            "\n{without} finished run(s) have no task scores (run before `eval_tasks` was set): \
             delete their files in runs/ to run them again with the tasks.\n"
        ));
    }
    s
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
            r.spec.mode,
            format!("{:?}", r.spec.group).to_lowercase(),
            r.spec.pattern.to_string().replace(' ', ""),
            r.spec.order.join(">"),
            r.avg_ppl(),
            r.bwt().map(|b| b.to_string()).unwrap_or_default(),
            r.sparsity,
            r.seconds,
            r.peak_rss_bytes.map(|b| b.to_string()).unwrap_or_default()
        ));
        for row in r.ppl_matrix() {
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
    grid: &[RunSpec],
    rows: &[Row],
    results: &[RunResult],
) -> String {
    let seqlen = cfg.seqlen.unwrap_or(crate::plan::DEFAULT_SEQLEN);
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
            // The grid's spec carries the method's settings; a stored result does not.
            let spec = grid
                .iter()
                .find(|g| g.id == rs[0].spec.id)
                .unwrap_or(&rs[0].spec);
            let plan = PrunePlan::resolve(request(cfg, spec, PathBuf::new())).ok()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paired_row_shows_signed_differences_and_wins() {
        let p = Paired {
            pattern: crate::prune::mask::Pattern::Unstructured { percent: 50.0 },
            setting: "wanda-accumulate".into(),
            reference: "copal".into(),
            d_ppl: stats(&[-10.0, 4.0]),
            d_bwt: Some(stats(&[4.0, 4.0])),
            wins: 1,
        };
        let md = paired_markdown(&[p]);
        assert!(
            md.contains("| unstructured 50% | wanda accumulate | copal | 2 | -3.00 ± 9.90 | 1 of 2 | +4.00 ± 0.00 |"),
            "{md}"
        );
    }
}
