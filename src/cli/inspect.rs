//! `copal inspect`: the fraction of exact zeros in each prunable linear (Wanda's
//! `check_sparsity`), per layer and in total; and, for a directory `copal prune` wrote, the
//! evaluations its run record (copal.json) holds.

use super::args::OutputArgs;
use anyhow::Result;
use clap::Args;
use copal::checkpoint::{self, linear_sparsity, Checkpoint};

/// Per-tensor sparsity (fraction of exact zeros) of a checkpoint's prunable linears.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Checkpoint directory, alias or hub id.
    #[arg(value_name = "MODEL")]
    pub model: String,

    /// List every tensor, not only the per-layer and total figures.
    #[arg(long)]
    pub all: bool,

    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn run(a: InspectArgs) -> Result<()> {
    copal::ui::set_quiet(a.output.quiet);
    let dir = checkpoint::resolve::resolve(&a.model, a.output.quiet)?;
    let ckpt = Checkpoint::open(&dir)?;
    let rows = linear_sparsity(&ckpt)?;
    // The run record of a copal output, of this version or an earlier one.
    let record = ckpt.dir.join("copal.json");
    let stored = match record.exists() {
        // The sparsity is read from the weights; an unreadable record is only mentioned.
        true => copal::report::read_scores(&record)
            .map_err(|e| copal::ui::warn(format!("{e:#}; its evaluations are not shown")))
            .ok(),
        false => None,
    };
    let (z, n) = rows.iter().fold((0, 0), |(z, n), r| (z + r.1, n + r.2));
    let layers = ckpt.config.num_hidden_layers;
    let per_layer: Vec<f64> = (0..layers)
        .map(|l| {
            let (z, n) = rows[l * 7..l * 7 + 7]
                .iter()
                .fold((0, 0), |(z, n), r| (z + r.1, n + r.2));
            z as f64 / n as f64
        })
        .collect();
    if a.output.json {
        let tensors: Vec<_> = rows
            .iter()
            .map(|(name, z, n)| serde_json::json!({"name": name, "zeros": z, "numel": n, "sparsity": *z as f64 / *n as f64}))
            .collect();
        copal::ui::out(serde_json::to_string_pretty(&serde_json::json!({
            "model": dir, "sparsity": z as f64 / n as f64, "zeros": z, "numel": n,
            "layers": per_layer, "tensors": tensors,
            "sparsity_config": ckpt.config_json.get("sparsity_config"),
            "scores": stored.as_ref().map(|s| &s.scores),
        }))?)?;
        return Ok(());
    }
    if a.all {
        for (name, z, n) in &rows {
            copal::ui::out(format!("{name:<50} {:>8.4}", *z as f64 / *n as f64))?;
        }
    }
    for (l, s) in per_layer.iter().enumerate() {
        copal::ui::out(format!("layer {l:<3} sparsity {s:.6}"))?;
    }
    copal::ui::out(format!(
        "total sparsity {:.6} ({z} zeros of {n} weights in {} linears)",
        z as f64 / n as f64,
        rows.len()
    ))?;
    if let Some(s) = stored.filter(|s| !s.scores.is_empty()) {
        let steps: Vec<&str> = s.steps.iter().map(String::as_str).collect();
        copal::ui::out(format!(
            "evaluations in {}:\n{}",
            record.display(),
            copal::report::tables(&steps, &s.scores).trim_end()
        ))?;
    }
    Ok(())
}
