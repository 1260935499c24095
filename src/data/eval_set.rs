//! Evaluation texts: each split tokenised once as one string with the protocol's join and
//! token cap, then cut into non-overlapping windows of `seqlen` (remainder dropped).

use super::corpus;
use super::dataset::{Dataset, Split};
use super::sampler::eval_windows;
use crate::tokenizer::Tokenizer;
use anyhow::{ensure, Context as _, Result};
use std::path::Path;

/// One evaluation text, tokenised.
#[derive(Debug, Clone)]
pub struct EvalSet {
    pub dataset: Dataset,
    pub split: Split,
    pub seqlen: usize,
    pub ids: Vec<u32>,
    /// Tokens of the split before any cap.
    pub split_tokens: usize,
    pub windows: usize,
}

impl EvalSet {
    /// Loads and tokenises the evaluation split of `ds` (the protocol's join and token cap).
    pub fn load(
        ds: &Dataset,
        split: Split,
        data_dir: &Path,
        tok: &Tokenizer,
        seqlen: usize,
        max_windows: Option<usize>,
    ) -> Result<Self> {
        let (corpus, path) = corpus::load(ds, split, corpus::Purpose::Evaluation, data_dir)?;
        let text = match corpus {
            corpus::Corpus::Joined(t) => t,
            corpus::Corpus::Docs(d) => d.join(" "),
        };
        let ids = tok.encode(&text)?;
        let n = eval_windows(&ids, seqlen, ds.eval_token_cap(seqlen), max_windows).len();
        ensure!(
            n > 0,
            "the {ds} {split} text ({}) has {} tokens, fewer than one window of seqlen = {seqlen}; \
             lower --seqlen",
            path.display(),
            ids.len()
        );
        Ok(Self {
            dataset: ds.clone(),
            split,
            seqlen,
            split_tokens: ids.len(),
            ids,
            windows: n,
        })
    }

    pub fn windows(&self) -> Vec<&[u32]> {
        eval_windows(
            &self.ids,
            self.seqlen,
            self.dataset.eval_token_cap(self.seqlen),
            Some(self.windows),
        )
    }
}

/// Loads the evaluation sets for `datasets` at `seqlen`.
pub fn load_sets(
    datasets: &[Dataset],
    data_dir: &Path,
    tok: &Tokenizer,
    seqlen: usize,
    max_windows: Option<usize>,
) -> Result<Vec<EvalSet>> {
    datasets
        .iter()
        .map(|d| {
            EvalSet::load(
                d,
                d.default_eval_split(),
                data_dir,
                tok,
                seqlen,
                max_windows,
            )
            .with_context(|| format!("loading the {d} evaluation split"))
        })
        .collect()
}
