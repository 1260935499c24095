//! Flag groups shared by several commands.

use clap::Args;
use copal::device::ComputeDtype;
use std::path::PathBuf;

/// Where the model comes from and how it is computed.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Checkpoint: a directory, an alias from configs/models.json (llama-7b, llama-2-7b,
    /// llama-3-8b, smollm2-135m, …) or a hub id owner/name.
    ///
    /// A directory holds config.json, tokenizer.json and model.safetensors (or shards with
    /// model.safetensors.index.json). Hub downloads go to the Hugging Face cache (HF_HOME);
    /// HF_HUB_OFFLINE=1 uses the cache only; HF_TOKEN authenticates gated models.
    #[arg(long, short = 'm', value_name = "DIR|ALIAS|OWNER/NAME")]
    pub model: String,

    /// Compute device: cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
    #[arg(long, default_value = copal::plan::DEFAULT_DEVICE, value_name = "DEVICE")]
    pub device: String,

    /// Compute dtype [default: f32 on CPU, bf16 on CUDA]. Statistics are always kept in f32.
    #[arg(long, value_enum, value_name = "DTYPE")]
    pub dtype: Option<ComputeDtype>,
}

/// Where the datasets live and how they are cut.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Directory with the dataset files (docs/data.md lists the file names) [default: ./data]
    #[arg(long, value_name = "DIR", env = "COPAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Tokens per window [default: 2048, or the model's max_position_embeddings if smaller].
    #[arg(long, value_name = "N")]
    pub seqlen: Option<usize>,
}

/// Output style shared by the commands.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Print results as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// No progress bars or log lines on stderr (errors are still printed).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// A number flag's value, finite: NaN and the infinities are usage errors naming the flag
/// (clap's "invalid value … for '--flag'"), never a null that fails later without one.
pub fn finite(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("must be a finite number, got {s}"))
    }
}
