//! `copal eval`: perplexity per dataset.

use super::args::{DataArgs, ModelArgs, OutputArgs};
use anyhow::{Context as _, Result};
use clap::Args;
use copal::checkpoint::Checkpoint;
use copal::data::{self, Dataset};
use copal::device::ComputeDtype;
use copal::eval::{evaluate, load_sets};
use copal::model::Llama;
use copal::tokenizer::Tokenizer;

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

pub fn run(a: EvalArgs) -> Result<()> {
    copal::ui::set_quiet(a.output.quiet);
    let datasets = Dataset::parse_list(&a.datasets)?;
    copal::usage_ensure!(
        a.max_windows != Some(0),
        "max_windows",
        "must be at least 1"
    );
    copal::plan::check_window_count("max_windows", a.max_windows)?;
    copal::device::check(&a.model.device)?;
    let dir = copal::checkpoint::resolve::resolve(&a.model.model, a.output.quiet)?;
    let ckpt =
        Checkpoint::open(&dir).with_context(|| format!("opening model {}", a.model.model))?;
    let seqlen = copal::plan::resolve_seqlen(a.data.seqlen, ckpt.config.max_position_embeddings)?;
    let data_dir = data::data_dir(a.data.data_dir.clone());
    let tok = Tokenizer::open(&ckpt.dir)?;
    let sets = load_sets(&datasets, &data_dir, &tok, seqlen, a.max_windows)?;
    let device = copal::device::open(&a.model.device)?;
    let dtype = a
        .model
        .dtype
        .unwrap_or(ComputeDtype::default_for(&a.model.device))
        .dtype();
    let model = Llama::load(&ckpt, &ckpt.config, dtype, &device)?;
    let results = evaluate(&model, &ckpt, &sets, "eval")?;
    if a.output.json {
        copal::ui::out(serde_json::to_string_pretty(
            &serde_json::json!({ "results": results }),
        )?)?;
    } else {
        for r in &results {
            copal::ui::out(r.line())?;
        }
    }
    Ok(())
}
