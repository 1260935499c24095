//! `copal eval`: perplexity per dataset, zero-shot accuracy per task.

use super::args::{datasets_or_default, DataArgs, ModelArgs, OutputArgs, TaskArgs};
use anyhow::{Context as _, Result};
use clap::Args;
use copal::checkpoint::Checkpoint;
use copal::data;
use copal::device::ComputeDtype;
use copal::eval::{evaluate, load_sets};
use copal::model::Llama;
use copal::tokenizer::{Bos, Tokenizer};
use std::path::PathBuf;

/// Perplexity on datasets, zero-shot accuracy on tasks.
///
/// Perplexity: each evaluation split is tokenised once as one string (WikiText-2 test rows
/// joined with "\n\n", PTB test lines stripped and joined with " ", the first 1100 C4
/// validation documents joined with " " and cut to 256 × seqlen tokens), cut into
/// non-overlapping windows of seqlen tokens with the remainder dropped, and PPL = exp(mean
/// next-token NLL).
///
/// Zero-shot (`--tasks`): every choice of an item scored by the summed log-likelihood of
/// " " + choice after the task's prompt, exactly as lm-eval 0.4.13 scores it; acc (and
/// acc_norm, per character of the choice, where the task reports it) ± standard error. Each
/// line says the split read and whether requests start with BOS.
#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Comma-separated datasets: wikitext2, ptb, c4, text:PATH, jsonl:PATH[:FIELD] (default
    /// wikitext2,ptb,c4 unless --tasks is given).
    #[arg(long, short = 'd', value_name = "LIST")]
    pub datasets: Option<String>,

    #[command(flatten)]
    pub task: TaskArgs,

    /// Score only the first N items of each task (lm-eval's --limit: a quick estimate).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,

    /// A BOS token before each request: auto (the tokenizer's own rule, lm-eval 0.4's default),
    /// yes, or no (Wanda's evaluation).
    #[arg(long, value_enum, default_value_t = Bos::Auto)]
    pub bos: Bos,

    /// Write each item's log-likelihoods, gold choice and scores as JSON lines to FILE.
    #[arg(long, value_name = "FILE")]
    pub samples: Option<PathBuf>,

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
    let tasks = a.task.list()?;
    let datasets = datasets_or_default(a.datasets.as_deref(), tasks.is_some())?;
    copal::usage_ensure!(a.limit != Some(0), "limit", "must be at least 1");
    copal::usage_ensure!(
        tasks.is_some() || (a.limit.is_none() && a.samples.is_none()),
        "tasks",
        "is needed with ⟨limit⟩ or ⟨samples⟩ (they apply to zero-shot tasks)"
    );
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
    let tasks_dir = a.task.dir();
    let mut task_items = Vec::new();
    for t in tasks.iter().flatten() {
        let (split, items) = copal::eval::tasks::load(*t, &tasks_dir, a.limit)?;
        task_items.push((*t, split, items));
    }
    let device = copal::device::open(&a.model.device)?;
    let dtype = a
        .model
        .dtype
        .unwrap_or(ComputeDtype::default_for(&a.model.device))
        .dtype();
    let model = Llama::load(&ckpt, &ckpt.config, dtype, &device)?;
    let results = if sets.is_empty() {
        Vec::new()
    } else {
        evaluate(&model, &ckpt, &sets, "eval")?
    };
    let scorer = copal::eval::choice::Scorer {
        model: &model,
        src: &ckpt,
        tok: &tok,
        bos: a.bos,
        max_len: ckpt.config.max_position_embeddings,
    };
    let mut scores = Vec::new();
    for (t, split, items) in &task_items {
        let r = scorer.score(*t, split, items)?;
        copal::ui::info(format!(
            "{}: {} items in {:.1}s",
            r.task, r.items, r.seconds
        ));
        scores.push(r);
    }
    if let Some(path) = &a.samples {
        let mut text = String::new();
        for r in &scores {
            for s in &r.samples {
                let mut v = serde_json::to_value(s)?;
                v["task"] = r.task.clone().into();
                text.push_str(&serde_json::to_string(&v)?);
                text.push('\n');
            }
        }
        copal::fsutil::write_atomic(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if a.output.json {
        copal::ui::out(serde_json::to_string_pretty(&serde_json::json!({
            "results": results,
            "tasks": scores,
            "scores": copal::report::evaluation_scores(Some(&results), Some(&scores)),
        }))?)?;
    } else {
        for r in &results {
            copal::ui::out(r.line())?;
        }
        for r in &scores {
            copal::ui::out(r.line())?;
        }
    }
    Ok(())
}
