//! `copal eval`: perplexity per dataset.

use crate::cli::EvalArgs;
use crate::data::{self, Dataset};
use crate::eval::{evaluate, load_sets, EvalResult};
use crate::model::Llama;
use crate::tokenizer::Tokenizer;
use anyhow::Result;

pub fn run(a: EvalArgs) -> Result<()> {
    crate::ui::set_quiet(a.output.quiet);
    let datasets = Dataset::parse_list(&a.datasets)?;
    let m = super::open_model(&a.model, a.output.quiet)?;
    let seqlen = super::resolve_seqlen(a.data.seqlen, m.ckpt.config.max_position_embeddings)?;
    let data_dir = data::data_dir(a.data.data_dir.clone());
    let tok = Tokenizer::open(&m.ckpt.dir)?;
    let sets = load_sets(&datasets, &data_dir, &tok, seqlen, a.max_windows)?;
    let model = Llama::load(&m.ckpt, &m.ckpt.config, m.dtype, &m.device)?;
    let results = evaluate(&model, &m.ckpt, &sets, "eval")?;
    print_results(&results, a.output.json)
}

pub fn print_results(results: &[EvalResult], json: bool) -> Result<()> {
    if json {
        crate::ui::out(serde_json::to_string_pretty(
            &serde_json::json!({ "results": results }),
        )?)?;
    } else {
        for r in results {
            crate::ui::out(r.line())?;
        }
    }
    Ok(())
}
