//! The seeded calibration sampler and the evaluation windows (COPAL.md §5).
//!
//! The generator is specified so that any implementation, in any language, draws the same
//! windows: SplitMix64 seeded with `seed XOR FNV-1a-64(dataset name)`.
//! - Joined text (WikiText-2, PTB, text:): `start = next() % (ntokens − seqlen)`, the range of
//!   SparseGPT's `randint(0, ntokens − seqlen − 1)`.
//! - Documents (C4, jsonl:): `doc = next() % ndocs`, redrawn until the document has more than
//!   `seqlen` tokens (each document tokenised alone), then `start = next() % (doc_tokens − seqlen)`.
//!
//! Evaluation cuts the tokenised text into non-overlapping windows and drops the remainder.

use super::corpus::Corpus;
use crate::rng::SplitMix64;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Result};
use std::collections::HashMap;

/// Calibration windows of one dataset, with what the run record needs to know about them.
#[derive(Debug, Clone)]
pub struct CalibSet {
    pub windows: Vec<Vec<u32>>,
    /// Tokens in the joined text, or in the documents that were tokenised while drawing.
    pub source_tokens: usize,
    /// Documents drawn (document sources only).
    pub docs_drawn: usize,
    /// Where each window comes from: (document, for document sources; first token).
    pub positions: Vec<(Option<usize>, usize)>,
}

/// Draws `nsamples` windows of `seqlen` tokens from `corpus` (see the module docs).
pub fn calibration_windows(
    corpus: &Corpus,
    tok: &Tokenizer,
    name: &str,
    nsamples: usize,
    seqlen: usize,
    seed: u64,
) -> Result<CalibSet> {
    let mut rng = SplitMix64::for_dataset(seed, name);
    match corpus {
        Corpus::Joined(text) => {
            let ids = tok.encode(text)?;
            ensure!(
                ids.len() > seqlen,
                "the {name} calibration text has {} tokens, fewer than seqlen + 1 = {}; lower \
                 ⟨seqlen⟩ or use a larger file",
                ids.len(),
                seqlen + 1
            );
            let range = (ids.len() - seqlen) as u64;
            let starts: Vec<usize> = (0..nsamples)
                .map(|_| (rng.next() % range) as usize)
                .collect();
            let windows = starts
                .iter()
                .map(|&s| ids[s..s + seqlen].to_vec())
                .collect();
            Ok(CalibSet {
                windows,
                source_tokens: ids.len(),
                docs_drawn: 0,
                positions: starts.into_iter().map(|s| (None, s)).collect(),
            })
        }
        Corpus::Docs(docs) => {
            let n = docs.len() as u64;
            let mut cache: HashMap<usize, Vec<u32>> = HashMap::new();
            let mut too_short = std::collections::HashSet::new();
            let (mut windows, mut drawn) = (Vec::with_capacity(nsamples), 0usize);
            let mut positions = Vec::with_capacity(nsamples);
            while windows.len() < nsamples {
                let d = (rng.next() % n) as usize;
                drawn += 1;
                if too_short.contains(&d) {
                    if too_short.len() == docs.len() {
                        bail!(
                            "no {name} calibration document has more than seqlen = {seqlen} \
                             tokens; lower ⟨seqlen⟩ or use a larger file"
                        );
                    }
                    continue;
                }
                let ids = match cache.get(&d) {
                    Some(ids) => ids,
                    None => {
                        let ids = tok.encode(&docs[d])?;
                        cache.entry(d).or_insert(ids)
                    }
                };
                if ids.len() <= seqlen {
                    too_short.insert(d);
                    cache.remove(&d);
                    if too_short.len() == docs.len() {
                        bail!(
                            "no {name} calibration document has more than seqlen = {seqlen} \
                             tokens; lower ⟨seqlen⟩ or use a larger file"
                        );
                    }
                    continue;
                }
                let s = (rng.next() % (ids.len() - seqlen) as u64) as usize;
                windows.push(ids[s..s + seqlen].to_vec());
                positions.push((Some(d), s));
            }
            Ok(CalibSet {
                windows,
                source_tokens: cache.values().map(Vec::len).sum(),
                docs_drawn: drawn,
                positions,
            })
        }
    }
}

/// Non-overlapping evaluation windows of `seqlen` tokens over `ids` (after the optional token
/// cap), the remainder dropped, at most `max_windows`.
pub fn eval_windows(
    ids: &[u32],
    seqlen: usize,
    cap: Option<usize>,
    max_windows: Option<usize>,
) -> Vec<&[u32]> {
    let ids = match cap {
        Some(c) if c < ids.len() => &ids[..c],
        _ => ids,
    };
    let mut w: Vec<&[u32]> = ids.chunks_exact(seqlen).collect();
    if let Some(m) = max_windows {
        w.truncate(m);
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_windows_drop_remainder_and_cap() {
        let ids: Vec<u32> = (0..10).collect();
        assert_eq!(eval_windows(&ids, 3, None, None).len(), 3);
        assert_eq!(eval_windows(&ids, 3, Some(7), None).len(), 2);
        assert_eq!(eval_windows(&ids, 3, None, Some(1)), vec![&ids[0..3]]);
    }
}
