//! `copal synth`: a random checkpoint with a real model's shapes, for sizing runs.

use super::args::OutputArgs;
use anyhow::{ensure, Result};
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
    /// Shape preset: llama-7b, llama-13b, llama-2-7b, llama-3-8b, smollm2-135m.
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
    ensure!(a.layers > 0, "--layers must be at least 1");
    if a.out.exists() {
        ensure!(
            a.force,
            "{} already exists; pass --force to replace it",
            a.out.display()
        );
    }
    let cfg = copal::checkpoint::synth::preset(&a.preset, a.layers)?;
    let staging = copal::fsutil::staging_dir(&a.out)?;
    let dtype = a.dtype.dtype();
    match copal::checkpoint::synth::write(&cfg, &staging, dtype, a.seed) {
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
