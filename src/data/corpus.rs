//! Finding a dataset split on disk and turning it into the protocol's text.
//!
//! Joins (COPAL.md §5, as SparseGPT and Wanda do them):
//! - WikiText-2: rows as Hugging Face `datasets` yields them (each line verbatim with its
//!   `\n`, whitespace-only lines as ""); calibration joins them with " ", evaluation with "\n\n".
//! - PTB: lines stripped and joined with " " (empty lines dropped: the upstream files have
//!   none, some copies end with an extra newline).
//! - C4: one document per JSON line; calibration samples documents, evaluation joins the first
//!   1100 with " ".

use super::dataset::{Dataset, Split};
use super::text::{
    jsonl_docs, max_text_bytes, ptb_lines, read_bytes, read_lines, read_text, wikitext_rows,
};
use anyhow::{bail, ensure, Result};
use std::path::{Path, PathBuf};

/// What the text is used for; it decides the join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Calibration,
    Evaluation,
}

/// A split ready for tokenisation.
#[derive(Debug, Clone)]
pub enum Corpus {
    /// One string, tokenised once.
    Joined(String),
    /// Documents, tokenised one by one (C4-style calibration).
    Docs(Vec<String>),
}

/// Candidate file names of a built-in dataset split, and the sub-directories searched.
pub struct Files {
    pub names: Vec<&'static str>,
    pub subdirs: &'static [&'static str],
}

impl Files {
    pub fn of(ds: &Dataset, split: Split) -> Option<Files> {
        let (names, subdirs): (Vec<&'static str>, &'static [&'static str]) = match (ds, split) {
            (Dataset::WikiText2, Split::Train) => (vec!["wiki.train.raw"], WIKI_DIRS),
            (Dataset::WikiText2, Split::Valid) => (vec!["wiki.valid.raw"], WIKI_DIRS),
            (Dataset::WikiText2, Split::Test) => (vec!["wiki.test.raw"], WIKI_DIRS),
            (Dataset::Ptb, Split::Train) => (vec!["ptb.train.txt"], PTB_DIRS),
            (Dataset::Ptb, Split::Valid) => (vec!["ptb.valid.txt"], PTB_DIRS),
            (Dataset::Ptb, Split::Test) => (vec!["ptb.test.txt"], PTB_DIRS),
            (Dataset::C4, Split::Train) => (
                vec![
                    "c4-train.00000-of-01024.json",
                    "c4-train.00000-of-01024.first1000.jsonl",
                ],
                C4_DIRS,
            ),
            (Dataset::C4, Split::Valid) => (
                vec![
                    "c4-validation.00000-of-00008.json",
                    "c4-validation.00000-of-00008.first1000.json",
                ],
                C4_DIRS,
            ),
            _ => return None,
        };
        Some(Files { names, subdirs })
    }
}

const WIKI_DIRS: &[&str] = &[
    "",
    "wikitext-2-raw",
    "wikitext2",
    "wikitext-2-raw-v1/wikitext-2-raw",
];
const PTB_DIRS: &[&str] = &["", "ptb", "penn"];
const C4_DIRS: &[&str] = &["", "c4", "c4/en", "en"];

/// Where a split's text is: a file here (the data directory's, a custom source's, or the
/// hub cache's), or a pinned upstream file still to fetch.
#[derive(Debug, Clone)]
pub enum Located {
    File(PathBuf),
    Remote(&'static super::pins::Pin),
}

/// Locates a split without touching the network: for built-ins the first existing candidate
/// (plain, then `.gz`) under the data directory, else the pinned upstream file in the hub
/// cache, else that pin; for custom sources the given path.
pub fn locate(ds: &Dataset, split: Split, data_dir: &Path) -> Result<Located> {
    match ds {
        Dataset::Text(p) | Dataset::Jsonl { path: p, .. } => {
            crate::fsutil::check_regular_file(p, "dataset file")
                .map_err(|e| anyhow::anyhow!("{e:#} (write text:PATH or jsonl:PATH[:FIELD])"))?;
            return Ok(Located::File(p.clone()));
        }
        _ => {}
    }
    let files = match Files::of(ds, split) {
        Some(f) => f,
        None => bail!(
            "{ds} has no {split} split (c4 has train and valid; the others train, valid, test)"
        ),
    };
    for sub in files.subdirs {
        for name in &files.names {
            for ext in ["", ".gz"] {
                let p = data_dir.join(sub).join(format!("{name}{ext}"));
                if p.is_file() {
                    return Ok(Located::File(p));
                }
            }
        }
    }
    match super::pins::pin(ds, split) {
        Some(pin) => Ok(match super::pins::cached(pin) {
            Some(p) => Located::File(p),
            None => Located::Remote(pin),
        }),
        None => Err(not_here(ds, split, data_dir)),
    }
}

/// The file of a split (see [`locate`]), fetching a pinned upstream file into the hub cache if
/// it is nowhere here; a file from the hub is verified against its pin.
pub fn find(ds: &Dataset, split: Split, data_dir: &Path) -> Result<PathBuf> {
    match locate(ds, split, data_dir)? {
        Located::File(p) => {
            if let Some(pin) = super::pins::pin_of_path(&p).filter(|_| !p.starts_with(data_dir)) {
                super::pins::verify(pin, &p)?;
            }
            Ok(p)
        }
        Located::Remote(pin) => super::pins::fetch(pin).map_err(|e| {
            let here = not_here(ds, split, data_dir);
            e.context(format!("{here}; fetching it from the hub failed"))
        }),
    }
}

/// The error of a split that is not in the data directory.
fn not_here(ds: &Dataset, split: Split, data_dir: &Path) -> anyhow::Error {
    let names = Files::of(ds, split)
        .map(|f| f.names.join(" or "))
        .unwrap_or_default();
    let hint = match (ds, split) {
        (Dataset::WikiText2, Split::Train) => {
            "; WikiText-2 train is in wikitext-2-raw-v1.zip (see docs/data.md), or calibrate on \
             another split with ⟨calib_split⟩ wikitext2=valid"
        }
        _ => "; see docs/data.md for where to download it and where it goes",
    };
    anyhow::anyhow!(
        "{ds} {split} split not found: looked for {names}[.gz] in {} (set ⟨data_dir⟩ or \
         COPAL_DATA_DIR){hint}",
        data_dir.display()
    )
}

/// Number of C4 validation documents the anchors join for evaluation.
pub const C4_EVAL_DOCS: usize = 1100;

/// Loads a split and applies the protocol's join for `purpose`.
pub fn load(
    ds: &Dataset,
    split: Split,
    purpose: Purpose,
    data_dir: &Path,
) -> Result<(Corpus, PathBuf)> {
    let path = find(ds, split, data_dir)?;
    // A pinned file from the hub may be parquet: its rows rebuild the upstream text.
    let text = match super::pins::pin_of_path(&path) {
        Some(pin) if matches!(pin.format, super::pins::Format::Parquet(_)) => {
            super::pins::upstream_text(pin, &path)?
        }
        // C4's evaluation needs its first documents only.
        _ if matches!((ds, purpose), (Dataset::C4, Purpose::Evaluation)) => {
            read_lines(&path, C4_EVAL_DOCS)?
        }
        _ => read_text(&path)?,
    };
    let corpus = join(ds, purpose, &text, &path)?;
    Ok((corpus, path))
}

/// The start of a split's evaluation text: at most `bytes` of its file (whole lines), with
/// the protocol's join; and whether that is the whole split. The join of a file's first lines
/// is the start of the join of all of them.
pub fn load_prefix(
    ds: &Dataset,
    split: Split,
    data_dir: &Path,
    bytes: u64,
) -> Result<(Option<Corpus>, PathBuf, bool)> {
    let path = find(ds, split, data_dir)?;
    let parquet = super::pins::pin_of_path(&path)
        .is_some_and(|p| matches!(p.format, super::pins::Format::Parquet(_)));
    if matches!(ds, Dataset::C4) || parquet {
        let (c, p) = load(ds, split, Purpose::Evaluation, data_dir)?;
        return Ok((Some(c), p, true));
    }
    let (text, complete) = read_bytes(&path, bytes.min(max_text_bytes()))?;
    if !complete && text.trim().is_empty() {
        // The first line (document) is longer than this prefix: not "no text", but not read
        // yet. The caller reads a longer prefix.
        return Ok((None, path, false));
    }
    let corpus = join(ds, Purpose::Evaluation, &text, &path)?;
    Ok((Some(corpus), path, complete))
}

/// The protocol's join of a split's text for `purpose`.
fn join(ds: &Dataset, purpose: Purpose, text: &str, path: &Path) -> Result<Corpus> {
    let text = text.to_string();
    let corpus = match (ds, purpose) {
        (Dataset::WikiText2, Purpose::Calibration) => {
            Corpus::Joined(wikitext_rows(&text).join(" "))
        }
        (Dataset::WikiText2, Purpose::Evaluation) => {
            Corpus::Joined(wikitext_rows(&text).join("\n\n"))
        }
        (Dataset::Ptb, _) => Corpus::Joined(ptb_lines(&text).join(" ")),
        (Dataset::C4, Purpose::Calibration) => Corpus::Docs(jsonl_docs(&text, "text", path)?),
        (Dataset::C4, Purpose::Evaluation) => {
            let docs = jsonl_docs(&text, "text", path)?;
            let n = docs.len().min(C4_EVAL_DOCS);
            Corpus::Joined(docs[..n].join(" "))
        }
        (Dataset::Text(_), _) => Corpus::Joined(text),
        (Dataset::Jsonl { field, .. }, Purpose::Calibration) => {
            Corpus::Docs(jsonl_docs(&text, field, path)?)
        }
        (Dataset::Jsonl { field, .. }, Purpose::Evaluation) => {
            Corpus::Joined(jsonl_docs(&text, field, path)?.join(" "))
        }
    };
    match &corpus {
        Corpus::Joined(s) => ensure!(!s.trim().is_empty(), "{} holds no text", path.display()),
        Corpus::Docs(d) => ensure!(!d.is_empty(), "{} holds no documents", path.display()),
    }
    Ok(corpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_wikitext_train_names_file_and_flag() {
        let e = find(&Dataset::WikiText2, Split::Train, Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("wiki.train.raw") && e.contains("⟨calib_split⟩ wikitext2=valid"),
            "{e}"
        );
    }
}
