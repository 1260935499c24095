//! `copal import-gguf`: GGUF → Hugging Face directory, written atomically.

use crate::checkpoint::gguf;
use crate::cli::ImportArgs;
use anyhow::{ensure, Context as _, Result};

pub fn run(a: ImportArgs) -> Result<()> {
    crate::ui::set_quiet(a.output.quiet);
    ensure!(
        a.file.is_file(),
        "{} does not exist or is not a file",
        a.file.display()
    );
    if a.out.exists() {
        ensure!(
            a.force,
            "{} already exists; pass --force to replace it",
            a.out.display()
        );
    }
    let dtype = super::dtype_of(Some(a.dtype), &candle_core::Device::Cpu);
    let staging = crate::fsutil::staging_dir(&a.out)?;
    let started = std::time::Instant::now();
    let imported = gguf::import(&a.file, &staging, dtype)
        .with_context(|| format!("importing {}", a.file.display()));
    let imported = match imported {
        Ok(i) => i,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    crate::fsutil::replace_dir(&staging, &a.out)?;
    let secs = started.elapsed().as_secs_f64();
    if a.output.json {
        crate::ui::out(serde_json::to_string_pretty(&serde_json::json!({
            "out": a.out, "tensors": imported.tensors, "params": imported.params,
            "seconds": secs, "config": imported.config,
        }))?)?;
    } else {
        crate::ui::out(format!(
            "wrote {} ({} tensors, {} parameters) in {secs:.1}s",
            a.out.display(),
            imported.tensors,
            imported.params
        ))?;
    }
    Ok(())
}
