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
    Experiment(ExperimentArgs),
    Synth(SynthArgs),
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

/// Prune a model over a sequence of datasets (SparseGPT-accumulate by default).
///
/// Datasets are taken in the given order. For each, calibration windows are drawn (nsamples
/// × seqlen tokens, seeded by --seed and the dataset name), decoder layers are processed one
/// at a time, and the model is pruned. In accumulate mode (the default for every method that
/// reads data) a method's statistics are summed over every dataset so far and the dense
/// weights are pruned from them: SparseGPT's XᵀX (the default: lowest average perplexity on
/// the test model's grid), Wanda's Σx², or COPAL's importance Σ|W ⊙ ∇W ‖dy‖²| (--method
/// copal; add --group matrix for the paper's per-matrix threshold). --state carries the
/// statistics to a later run, so a new domain can be added without the old data.
///
/// Sparsity patterns: `unstructured` prunes --sparsity percent of each comparison group
/// (--group); `N:M` zeroes N of every M consecutive weights along the input dimension of each
/// row (2:4 zeroes 2 of every 4 = 50%, as Wanda and SparseGPT read it).
///
/// DIR receives the pruned model in the input's shard layout and dtype (loadable by
/// transformers unchanged), config.json with a sparsity_config block, the tokenizer files
/// and copal.json, the run record. DIR appears only when the run succeeds.
#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Calibration datasets in the order they arrive: wikitext2, ptb, c4, text:PATH, jsonl:PATH[:FIELD].
    #[arg(long, short = 'd', value_name = "LIST")]
    pub datasets: String,

    /// Output directory for the pruned model (refused if it exists, unless --force).
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: PathBuf,

    /// Pruning method.
    #[arg(long, value_enum, default_value_t = crate::prune::DEFAULT_METHOD)]
    pub method: crate::prune::Method,

    /// How a method is used across datasets [default: accumulate, global for magnitude and dense].
    ///
    /// accumulate: sum the method's statistics over every dataset so far, prune the dense
    /// weights (as COPAL does). global: prune the dense model from the newest dataset only
    /// (forgetting). sequential: prune the previous step's pruned model with the newest
    /// dataset (weight stasis).
    #[arg(long, value_enum)]
    pub mode: Option<crate::continual::Mode>,

    /// Percentage of weights to prune, 0 < s < 100 (for N:M patterns it is implied).
    #[arg(long, value_name = "PERCENT", allow_negative_numbers = true)]
    pub sparsity: Option<f64>,

    /// unstructured, or N:M (N of every M consecutive input weights zeroed: 2:4, 4:8).
    #[arg(long, default_value = "unstructured", value_name = "PATTERN")]
    pub pattern: String,

    /// Comparison group of the unstructured threshold [default: row for copal and wanda,
    /// matrix for magnitude and sparsegpt]; `--group matrix` is the COPAL paper's per-matrix
    /// threshold. SparseGPT applies the group within each --blocksize block of columns.
    #[arg(long, value_enum)]
    pub group: Option<crate::prune::Group>,

    /// COPAL perturbation of weights and inputs.
    #[arg(long, value_enum, default_value = "scaled")]
    pub perturbation: crate::prune::copal::PerturbationKind,

    /// COPAL weight perturbation scale ε_W.
    #[arg(long, default_value_t = 0.01, value_name = "EPS")]
    pub eps_w: f64,

    /// COPAL input perturbation scale ε_x.
    #[arg(long, default_value_t = 0.01, value_name = "EPS")]
    pub eps_x: f64,

    /// COPAL aggregation over tokens: l1 = Σ|W ⊙ ∇| (the paper), l2 = Σ(W ⊙ ∇)².
    #[arg(long, value_enum, default_value = "l1")]
    pub copal_agg: crate::prune::copal::Aggregation,

    /// COPAL: divide each dataset's importance increment by its mean over the matrix.
    #[arg(long)]
    pub copal_normalize: bool,

    /// Decay γ of the accumulated importance per new dataset: W* = γ·W*_prev + increment.
    #[arg(long, default_value_t = 1.0, value_name = "GAMMA")]
    pub decay: f64,

    /// Which activations feed the next layer: those of the pruned layer, or the dense one.
    #[arg(long, value_enum, default_value = "pruned")]
    pub propagate: crate::calib::Propagate,

    /// Calibration windows per dataset.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub nsamples: usize,

    /// Calibration windows forwarded through a layer together [default: as many as fit in 4096
    /// tokens and 512 MiB of taps: 8 × 512 on the test model, 1 × 2048 at LLaMA-7B shapes].
    ///
    /// Larger batches keep the GEMMs busy; 1 holds the least memory. The statistics are sums
    /// over tokens, so the result does not depend on it beyond float rounding (the gaussian
    /// perturbation draws its noise per batch).
    #[arg(long, value_name = "N")]
    pub calib_batch: Option<usize>,

    /// Seed of the calibration sampler (and of COPAL's Gaussian perturbation).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    #[command(flatten)]
    pub data: DataArgs,

    /// Calibration split per dataset, e.g. wikitext2=valid [default: train].
    #[arg(long, value_name = "DATASET=SPLIT,...")]
    pub calib_split: Option<String>,

    /// Accumulated statistics (accumulate mode: SparseGPT's XᵀX, Wanda's Σx², COPAL's
    /// importance): loaded if the file exists, saved after every dataset.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,

    /// Also write the pruned model after each step to DIR/steps/K-DATASET.
    #[arg(long)]
    pub save_steps: bool,

    /// Also write masks.safetensors: packed bits per linear, 1 = kept, LSB first along the input.
    #[arg(long)]
    pub save_masks: bool,

    /// Measure perplexity after every step on every dataset: the matrix R, average PPL, BWT.
    #[arg(long)]
    pub eval: bool,

    /// With --eval: evaluate only the first N windows of each dataset.
    #[arg(long, value_name = "N", requires = "eval")]
    pub max_windows: Option<usize>,

    /// With --eval: after step k, evaluate only the datasets seen so far (enough for average
    /// PPL and BWT; the matrix's upper triangle is left empty).
    #[arg(long, requires = "eval")]
    pub eval_seen_only: bool,

    /// SparseGPT damping, as a fraction of the mean Hessian diagonal.
    #[arg(long, default_value_t = 0.01, value_name = "FRACTION")]
    pub percdamp: f64,

    /// SparseGPT column block size.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub blocksize: usize,

    /// Replace DIR if it exists.
    #[arg(long)]
    pub force: bool,

    /// Print the resolved plan as JSON and exit.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub output: OutputArgs,
}

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

    /// Directory with the dataset files [env: COPAL_DATA_DIR] [default: ./data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    #[command(flatten)]
    pub output: OutputArgs,
}

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

/// A flag's value as the user types it on the command line (`accumulate`, `matrix`, …).
pub fn value_name<T: clap::ValueEnum>(v: T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}
