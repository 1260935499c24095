//! `copal experiment`: list, run (each run in its own process) and report the grid.

use super::args::OutputArgs;
use anyhow::{bail, Context as _, Result};
use clap::Args;
use copal::data;
use copal::experiment::{self, ExperimentConfig};
use std::path::PathBuf;

/// Run the paper's grid: every dataset order × methods × modes × patterns × sparsities.
///
/// The grid comes from a JSON file (see configs/experiments/). Each run leaves
/// RESULTS/runs/ID.json when it finishes; runs already finished are skipped, so an
/// interrupted experiment continues where it stopped. Without --run, every pending run is
/// executed (each in its own process) and the report is written: RESULTS/table.md,
/// runs.csv, runs.json and plots/*.svg.
///
/// In parallel: `copal experiment --config F --list --pending | parallel -j N copal experiment
/// --config F --run {}`, then `copal experiment --config F --report`. In a job array:
/// `copal experiment --config F --run-index $SLURM_ARRAY_TASK_ID`.
#[derive(Debug, Args)]
pub struct ExperimentArgs {
    /// The experiment file.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,

    /// Print the run ids of the grid and exit.
    #[arg(long)]
    pub list: bool,

    /// With --list: only runs that have not finished.
    #[arg(long, requires = "list")]
    pub pending: bool,

    /// Run only this run (repeatable).
    #[arg(long, value_name = "ID")]
    pub run: Vec<String>,

    /// Run only the run at this 0-based position of --list (for job arrays).
    #[arg(long, value_name = "N")]
    pub run_index: Option<usize>,

    /// Only aggregate the finished runs into the report.
    #[arg(long)]
    pub report: bool,

    /// Directory with the dataset files, over the file's data_dir [default: the file's, else ./data]
    #[arg(long, value_name = "DIR", env = "COPAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn run(a: ExperimentArgs) -> Result<()> {
    copal::ui::set_quiet(a.output.quiet);
    let cfg = ExperimentConfig::load(&a.config)?;
    let runs = experiment::expand(&cfg)?;
    let data_dir = data::data_dir(a.data_dir.clone().or(cfg.data_dir()));
    let results = cfg.results_dir();
    if a.list {
        let listed: Vec<(&str, bool)> = runs
            .iter()
            .map(|r| {
                (
                    r.id.as_str(),
                    experiment::run_path(&results, &r.id).exists(),
                )
            })
            .filter(|(_, done)| !a.pending || !done)
            .collect();
        if a.output.json {
            copal::ui::out(serde_json::to_string_pretty(&serde_json::json!({
                "results": results,
                "runs": listed
                    .iter()
                    .map(|(id, done)| serde_json::json!({"id": id, "finished": done}))
                    .collect::<Vec<_>>(),
            }))?)?;
        } else {
            // The ids alone on stdout (for parallel); where they are stored on stderr.
            copal::ui::info(format!(
                "{} of {} runs; results in {}",
                listed.len(),
                runs.len(),
                results.display()
            ));
            for (id, _) in listed {
                copal::ui::out(id)?;
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
            copal::ui::info(format!("run {}", spec.id));
            let r = experiment::run_one(&cfg, spec, &data_dir)
                .with_context(|| format!("run {}", spec.id))?;
            let bwt = r
                .bwt()
                .map_or("– (one dataset)".into(), |b| format!("{b:+.3}"));
            copal::ui::info(format!(
                "{}: avg PPL {:.3}, BWT {bwt}",
                r.spec.id,
                r.avg_ppl()
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
    copal::ui::info(format!(
        "{}: {} runs, {} finished, {} to go; results in {}",
        cfg.name,
        runs.len(),
        runs.len() - pending.len(),
        pending.len(),
        results.display()
    ));
    let mut failed = Vec::new();
    for (i, spec) in pending.iter().enumerate() {
        copal::ui::info(format!("[{}/{}] {}", i + 1, pending.len(), spec.id));
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
        copal::ui::out(serde_json::to_string_pretty(
            &serde_json::json!({"results": dir, "finished": n, "runs": runs.len(), "rows": rows}),
        )?)?;
    } else {
        let results = experiment::finished(cfg, runs)?;
        copal::ui::out(experiment::markdown(&rows, &results).trim_end())?;
        copal::ui::out(format!(
            "{n} of {} runs finished; report in {}",
            runs.len(),
            dir.display()
        ))?;
    }
    Ok(())
}
