//! `copal import-gguf`: GGUF → Hugging Face directory, written atomically.

use super::args::OutputArgs;
use anyhow::{ensure, Context as _, Result};
use clap::Args;
use copal::checkpoint::gguf;
use copal::device::ComputeDtype;
use std::path::PathBuf;

/// Convert a LLaMA GGUF file (llama.cpp) into a Hugging Face checkpoint directory.
///
/// Dequantises every tensor, un-permutes q_proj/k_proj (llama.cpp stores them rope-permuted),
/// and rebuilds config.json and tokenizer.json from the GGUF metadata (byte-level BPE with
/// pre-tokeniser smollm, starcoder, refact, gpt2 or default).
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The .gguf file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Output directory (must not exist, unless --force).
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: PathBuf,

    /// Storage dtype of the written weights.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: ComputeDtype,

    /// Replace DIR if it exists.
    #[arg(long)]
    pub force: bool,

    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn run(a: ImportArgs) -> Result<()> {
    copal::ui::set_quiet(a.output.quiet);
    ensure!(
        a.file.is_file(),
        "{} does not exist or is not a file",
        a.file.display()
    );
    let cwd = std::env::current_dir().unwrap_or_default();
    copal::fsutil::check_replace(
        &a.out,
        a.force,
        "out",
        &[("the GGUF file", &a.file), ("the current directory", &cwd)],
    )?;
    let dtype = a.dtype.dtype();
    let staging = copal::fsutil::staging_dir(&a.out)?;
    let started = std::time::Instant::now();
    let imported = gguf::import(&a.file, &staging, dtype)
        .with_context(|| format!("importing {}", a.file.display()));
    let imported = imported.and_then(|i| {
        copal::fsutil::write_marker(
            &staging,
            "import-gguf",
            serde_json::json!({"source": a.file, "tensors": i.tensors, "params": i.params}),
        )?;
        Ok(i)
    });
    let imported = match imported {
        Ok(i) => i,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    copal::fsutil::replace_dir(&staging, &a.out)?;
    let secs = started.elapsed().as_secs_f64();
    if a.output.json {
        copal::ui::out(serde_json::to_string_pretty(&serde_json::json!({
            "out": a.out, "tensors": imported.tensors, "params": imported.params,
            "seconds": secs, "config": imported.config,
        }))?)?;
    } else {
        copal::ui::out(format!(
            "wrote {} ({} tensors, {} parameters) in {secs:.1}s",
            a.out.display(),
            imported.tensors,
            imported.params
        ))?;
    }
    Ok(())
}
