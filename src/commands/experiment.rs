//! `copal experiment`: list, run (each run in its own process) and report the grid.

use crate::cli::ExperimentArgs;
use crate::data;
use crate::experiment::{self, ExperimentConfig};
use anyhow::{bail, Context as _, Result};

pub fn run(a: ExperimentArgs) -> Result<()> {
    crate::ui::set_quiet(a.output.quiet);
    let cfg = ExperimentConfig::load(&a.config)?;
    let runs = experiment::expand(&cfg)?;
    let data_dir = data::data_dir(a.data_dir.clone().or(cfg.data_dir.clone()));
    let results = cfg.results_dir();
    if a.list {
        for r in &runs {
            if !a.pending || !experiment::run_path(&results, &r.id).exists() {
                crate::ui::out(&r.id)?;
            }
        }
        return Ok(());
    }
    if a.report {
        return write_report(&cfg, &runs, a.output.json);
    }
    let selected = experiment::select(&runs, &a.run, a.run_index)?;
    if !selected.is_empty() {
        for spec in selected {
            crate::ui::info(format!("run {}", spec.id));
            let r = experiment::run_one(&cfg, spec, &data_dir)
                .with_context(|| format!("run {}", spec.id))?;
            let bwt = r
                .bwt
                .map_or("– (one dataset)".into(), |b| format!("{b:+.3}"));
            crate::ui::info(format!(
                "{}: avg PPL {:.3}, BWT {bwt}",
                r.spec.id, r.avg_ppl
            ));
        }
        return Ok(());
    }
    // Every pending run, each in its own process (a crash costs one run; peak RSS is per run).
    let exe = std::env::current_exe().context("locating the copal binary")?;
    let pending: Vec<_> = runs
        .iter()
        .filter(|r| !experiment::run_path(&results, &r.id).exists())
        .collect();
    crate::ui::info(format!(
        "{}: {} runs, {} finished, {} to go; results in {}",
        cfg.name,
        runs.len(),
        runs.len() - pending.len(),
        pending.len(),
        results.display()
    ));
    let mut failed = Vec::new();
    for (i, spec) in pending.iter().enumerate() {
        crate::ui::info(format!("[{}/{}] {}", i + 1, pending.len(), spec.id));
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("experiment")
            .arg("--config")
            .arg(&a.config)
            .arg("--run")
            .arg(&spec.id)
            .arg("--data-dir")
            .arg(&data_dir);
        if a.output.quiet {
            cmd.arg("--quiet");
        }
        let status = cmd
            .status()
            .with_context(|| format!("starting {}", exe.display()))?;
        if !status.success() {
            failed.push(spec.id.clone());
        }
    }
    write_report(&cfg, &runs, a.output.json)?;
    if !failed.is_empty() {
        bail!(
            "{} runs failed (rerun the same command to retry them): {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

fn write_report(cfg: &ExperimentConfig, runs: &[experiment::RunSpec], json: bool) -> Result<()> {
    let (rows, n) = experiment::report(cfg, runs)?;
    let dir = cfg.results_dir();
    if json {
        crate::ui::out(serde_json::to_string_pretty(
            &serde_json::json!({"results": dir, "finished": n, "runs": runs.len(), "rows": rows}),
        )?)?;
    } else {
        let results = experiment::finished(cfg, runs);
        crate::ui::out(experiment::markdown(&rows, &results).trim_end())?;
        crate::ui::out(format!(
            "{n} of {} runs finished; report in {}",
            runs.len(),
            dir.display()
        ))?;
    }
    Ok(())
}
