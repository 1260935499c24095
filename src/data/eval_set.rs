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
    /// Tokens of the split before any cap (None: only the start of the split was read, as
    /// `max_windows` needs no more).
    pub split_tokens: Option<usize>,
    pub windows: usize,
}

/// Tokens kept beyond those evaluated when only the start of a text is read: the tokens near
/// the cut may differ from the whole text's, the ones this far before it do not.
const PREFIX_MARGIN_TOKENS: usize = 2048;
/// First guess of bytes per token when reading only the start of a text (doubled until it
/// holds enough tokens).
const BYTES_PER_TOKEN_GUESS: u64 = 6;

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
        // With max_windows only the text's start is needed: read and tokenise that, so that
        // memory is set by the windows and not by the file (a 1 GB text, 8 windows).
        let needed = max_windows.map(|w| {
            let n = w * seqlen;
            ds.eval_token_cap(seqlen).map_or(n, |cap| n.min(cap))
        });
        let (ids, path, complete) = match needed {
            None => {
                let (corpus, path) =
                    corpus::load(ds, split, corpus::Purpose::Evaluation, data_dir)?;
                (tok.encode(&joined(corpus))?, path, true)
            }
            Some(needed) => {
                // Read a prefix, twice as long each time it holds too few tokens (a first
                // document longer than the guess included), up to the text size limit.
                let cap = super::text::max_text_bytes();
                let mut bytes =
                    ((needed + PREFIX_MARGIN_TOKENS) as u64 * BYTES_PER_TOKEN_GUESS).min(cap);
                loop {
                    let (corpus, path, complete) = corpus::load_prefix(ds, split, data_dir, bytes)?;
                    let mut ids = match corpus {
                        Some(c) => tok.encode(&joined(c))?,
                        None => Vec::new(),
                    };
                    if complete {
                        break (ids, path, true);
                    }
                    if ids.len() >= needed + PREFIX_MARGIN_TOKENS {
                        ids.truncate(needed);
                        break (ids, path, false);
                    }
                    ensure!(
                        bytes < cap,
                        "the first {cap} bytes of {} hold {} tokens of whole lines, fewer than \
                         the {} the windows need; copal reads at most that much of a file: set \
                         COPAL_MAX_TEXT_BYTES to raise it, or evaluate fewer windows",
                        path.display(),
                        ids.len(),
                        needed + PREFIX_MARGIN_TOKENS
                    );
                    bytes = bytes.saturating_mul(2).min(cap);
                }
            }
        };
        let n = eval_windows(&ids, seqlen, ds.eval_token_cap(seqlen), max_windows).len();
        ensure!(
            n > 0,
            "the {ds} {split} text ({}) has {} tokens, fewer than one window of seqlen = {seqlen}; \
             lower ⟨seqlen⟩",
            path.display(),
            ids.len()
        );
        Ok(Self {
            dataset: ds.clone(),
            split,
            seqlen,
            split_tokens: complete.then_some(ids.len()),
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

/// A split's text as one string (documents joined with " ").
fn joined(c: corpus::Corpus) -> String {
    match c {
        corpus::Corpus::Joined(t) => t,
        corpus::Corpus::Docs(d) => d.join(" "),
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
