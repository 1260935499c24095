//! Flag groups shared by several commands.

use anyhow::Result;
use clap::Args;
use copal::data::Dataset;
use copal::device::ComputeDtype;
use copal::eval::tasks::Task;
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

/// The zero-shot tasks a command scores or fetches, and where their local copies are.
#[derive(Debug, Clone, Args)]
pub struct TaskArgs {
    /// Zero-shot tasks: boolq, rte, hellaswag, winogrande, arc_easy, arc_challenge,
    /// openbookqa, or wanda7 for the seven.
    #[arg(long, value_name = "LIST")]
    pub tasks: Option<String>,

    /// The tasks' local copies, DIR/TASK/SPLIT.parquet with the upstream rows (default
    /// $COPAL_HOME/tasks, where scripts/fetch-task-data.sh puts them); a task without one is
    /// read from its pinned upstream file in the hub cache (`copal fetch --tasks`).
    #[arg(long, value_name = "DIR", env = "COPAL_TASKS_DIR")]
    pub tasks_dir: Option<PathBuf>,
}

impl TaskArgs {
    /// The tasks asked for, if any.
    pub fn list(&self) -> Result<Option<Vec<Task>>> {
        self.tasks.as_deref().map(Task::parse_list).transpose()
    }

    pub fn dir(&self) -> PathBuf {
        self.tasks_dir
            .clone()
            .unwrap_or_else(copal::eval::tasks::default_dir)
    }
}

/// The datasets a command works on: those listed, none when only tasks are asked for, else
/// the three built-in ones.
pub fn datasets_or_default(list: Option<&str>, tasks: bool) -> Result<Vec<Dataset>> {
    match (list, tasks) {
        (Some(d), _) => Dataset::parse_list(d),
        (None, true) => Ok(Vec::new()),
        (None, false) => Dataset::parse_list("wikitext2,ptb,c4"),
    }
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
