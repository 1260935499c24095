//! Calibration and evaluation data: dataset names, splits, where their files live, and the
//! protocol's joins and samplers (COPAL.md §5, which follows SparseGPT/Wanda exactly).
//!
//! Built-in datasets read the upstream files from a data directory (`--data-dir`, env
//! `COPAL_DATA_DIR`), plain or gzipped. Custom sources are `text:PATH` (one text) and
//! `jsonl:PATH[:FIELD]` (one JSON document per line, field `text` by default).

pub mod corpus;
pub mod dataset;
pub mod eval_set;
pub mod pins;
pub mod sampler;
pub mod text;

pub use corpus::{Corpus, Files};
pub use dataset::{data_dir, parse_split_overrides, Dataset, Split, BUILTIN};
pub use eval_set::{load_sets, EvalSet};
pub use sampler::{calibration_windows, eval_windows, CalibSet};
