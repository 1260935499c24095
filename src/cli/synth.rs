//! `copal synth`: a random checkpoint with a real model's shapes, for sizing runs.

use super::args::OutputArgs;
use anyhow::Result;
use clap::Args;
use copal::device::ComputeDtype;
use std::path::PathBuf;

/// Write a synthetic checkpoint: a real model's shapes, random weights, few layers.
///
/// For measuring time and memory per layer (and sizing a machine) without downloading the
/// model: e.g. `copal synth --preset llama-7b --layers 2 --out /tmp/l7b-2`. Its perplexities
/// mean nothing.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Shape preset: llama-7b, llama-13b, llama-2-7b, llama-2-70b, llama-3-8b, smollm2-135m.
    #[arg(long, default_value = "llama-7b")]
    pub preset: String,

    /// Number of decoder layers.
    #[arg(long, default_value_t = 2)]
    pub layers: usize,

    /// Storage dtype.
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: ComputeDtype,

    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Output directory (must not exist, unless --force).
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: PathBuf,

    /// Replace DIR if it exists.
    #[arg(long)]
    pub force: bool,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// `copal synth`: a random checkpoint with a preset's shapes, written atomically.
pub fn run(a: SynthArgs) -> Result<()> {
    copal::ui::set_quiet(a.output.quiet);
    copal::usage_ensure!(a.layers > 0, "layers", "must be at least 1");
    let cwd = std::env::current_dir().unwrap_or_default();
    copal::fsutil::check_replace(&a.out, a.force, "out", &[("the current directory", &cwd)])?;
    let cfg = copal::checkpoint::synth::preset(&a.preset, a.layers)?;
    let staging = copal::fsutil::staging_dir(&a.out)?;
    let dtype = a.dtype.dtype();
    let written = copal::checkpoint::synth::write(&cfg, &staging, dtype, a.seed).and_then(|p| {
        copal::fsutil::write_marker(
            &staging,
            "synth",
            serde_json::json!({"preset": a.preset, "layers": a.layers, "seed": a.seed}),
        )?;
        Ok(p)
    });
    match written {
        Ok(params) => {
            copal::fsutil::replace_dir(&staging, &a.out)?;
            copal::ui::out(format!(
                "wrote {} ({} layers of {}, {params} parameters, {:?})",
                a.out.display(),
                a.layers,
                a.preset,
                dtype
            ))?;
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}
