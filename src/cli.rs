//! Command-line interface (clap derive). The first line of each doc comment is the `-h`
//! summary; the paragraphs after it are the `--help` text.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "copal",
    version,
    about = "Continual pruning of LLaMA models (COPAL) and the baselines it is compared with",
    long_about = "Continual pruning of LLaMA models (COPAL, Malla et al., ICML 2024) and the \
baselines it is compared with.\n\nDatasets arrive one after another; copal keeps only a per-weight \
importance state between them and prunes the dense weights so that the model stays good on every \
domain seen so far. Progress goes to stderr, results to stdout (--json for machine-readable output).",
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Prune(PruneArgs),
    Eval(EvalArgs),
    ImportGguf(ImportArgs),
    Inspect(InspectArgs),
}

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
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: String,

    /// Compute dtype [default: f32 on CPU, bf16 on CUDA]. Statistics are always kept in f32.
    #[arg(long, value_enum, value_name = "DTYPE")]
    pub dtype: Option<ComputeDtype>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    F32,
    Bf16,
    F16,
}

/// Where the datasets live and how they are cut.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Directory with the dataset files (README, Data, lists the file names) [env: COPAL_DATA_DIR] [default: ./data]
    #[arg(long, value_name = "DIR")]
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

/// Perplexity of a model on datasets, with the SparseGPT/Wanda protocol.
///
/// Each evaluation split is tokenised once as one string (WikiText-2 test rows joined with
/// "\n\n", PTB test lines stripped and joined with " ", the first 1100 C4 validation
/// documents joined with " " and cut to 256 × seqlen tokens), cut into non-overlapping windows
/// of seqlen tokens with the remainder dropped, and PPL = exp(mean next-token NLL).
#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Comma-separated datasets: wikitext2, ptb, c4, text:PATH, jsonl:PATH[:FIELD].
    #[arg(
        long,
        short = 'd',
        default_value = "wikitext2,ptb,c4",
        value_name = "LIST"
    )]
    pub datasets: String,

    #[command(flatten)]
    pub data: DataArgs,

    /// Evaluate only the first N windows of each dataset (a quick estimate, not the protocol).
    #[arg(long, value_name = "N")]
    pub max_windows: Option<usize>,

    #[command(flatten)]
    pub output: OutputArgs,
}

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

/// Prune a model over a sequence of datasets (placeholder until the prune command lands).
#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub model: ModelArgs,
}
