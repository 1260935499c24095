//! Writes the report of the finished runs: table.md, runs.csv, runs.json and SVG plots.

use super::aggregate::{aggregate, is_plain, is_prune_default, paired, task_metrics, Row};
use super::config::ExperimentConfig;
use super::grid::{orders, pattern_tag, RunSpec};
use super::render::{cost_table, csv, markdown, paired_markdown, task_markdown};
use super::run::{finished, RunResult};
use crate::plot;
use crate::prune::{Method, Mode, Pattern};
use anyhow::Result;
use std::path::Path;

/// Writes table.md, runs.csv, runs.json and the plots from the finished runs.
pub fn report(cfg: &ExperimentConfig, runs: &[RunSpec]) -> Result<(Vec<Row>, usize)> {
    let results = finished(cfg, runs)?;
    let dir = cfg.results_dir();
    std::fs::create_dir_all(dir.join("plots"))?;
    let rows = aggregate(&results);
    let md = format!(
        "# {}\n\nModel {}, datasets {} ({} orders), nsamples {} × seqlen {}, {} eval windows per dataset; {} of {} runs finished.\nAverages are over the dataset orders; ranges are min–max.\n\n{}",
        cfg.name,
        cfg.model,
        cfg.datasets.join(", "),
        orders(cfg)?.len(),
        cfg.nsamples.unwrap_or(crate::plan::DEFAULT_NSAMPLES),
        cfg.seqlen.map(|s| s.to_string()).unwrap_or_else(|| "2048".into()),
        cfg.max_windows.map(|w| w.to_string()).unwrap_or_else(|| "all".into()),
        results.len(),
        runs.len(),
        markdown(&rows, &results)
    ) + &task_markdown(&rows, &results);
    // The model's shapes give each step's FLOP count; without the model the column is blank.
    let model = crate::checkpoint::resolve::resolve(&cfg.model, true)
        .and_then(|d| crate::checkpoint::Checkpoint::open(&d))
        .map(|c| c.config)
        .ok();
    // Paired with `copal prune`'s default (COPAL, accumulating) and with the best baseline
    // of the first grids, SparseGPT-accumulate.
    let d = crate::prune::DEFAULT_METHOD;
    let sgpt = |s: &RunSpec| is_plain(s, Method::SparseGpt, Mode::Accumulate);
    let mut md = md;
    for (title, is_ref) in [
        (
            format!("copal prune's default ({d} {})", d.default_mode()),
            &is_prune_default as &dyn Fn(&RunSpec) -> bool,
        ),
        ("SparseGPT-accumulate".to_string(), &sgpt),
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
        cost_table(cfg, model.as_ref(), runs, &rows, &results)
    );
    // Each file whole or not at all (a report is read while grids run).
    crate::fsutil::write_atomic(&dir.join("table.md"), md.as_bytes())?;
    crate::fsutil::write_atomic(&dir.join("runs.csv"), csv(&results).as_bytes())?;
    crate::fsutil::write_atomic(
        &dir.join("runs.json"),
        &serde_json::to_vec_pretty(&results)?,
    )?;
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
        // Each zero-shot metric's average after the last step.
        for metric in task_metrics(rs.iter().copied()) {
            let bars: Vec<plot::Bar> = rs
                .iter()
                .filter_map(|r| {
                    let t = r.tasks.iter().find(|t| t.metric == metric)?;
                    Some(plot::Bar {
                        label: r.label(),
                        mean: t.average.mean,
                        min: t.average.min,
                        max: t.average.max,
                    })
                })
                .collect();
            plot::bars(
                &dir.join(format!("avg-{metric}-{tag}.svg")),
                &format!("Average zero-shot {metric} after the last step ({pattern})"),
                &format!("{metric} (higher is better)"),
                &bars,
            )?;
        }
        // Trajectories in the first order of the grid: perplexity of each dataset after every
        // step from the one where it arrives.
        let order = orders(cfg)?[0].clone();
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
                            .ppl_matrix()
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
