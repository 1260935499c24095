//! The paper's experiment grid: every permutation of a dataset list × methods × modes ×
//! patterns × sparsities. Each run is independent and leaves one JSON file in
//! `RESULTS/runs/` ([`run`]); [`report`] aggregates whatever is finished into a CSV, a JSON, a
//! Markdown table (average PPL and BWT per method and mode, mean ± sd and range over the
//! permutations) and SVG plots. Runs can be spread over processes or machines: `--list`
//! prints the run ids for GNU parallel, `--run-index` picks one for a job array.

pub mod aggregate;
pub mod config;
pub mod grid;
pub mod render;
pub mod report;
pub mod run;

pub use aggregate::{aggregate, paired, Row, Stats};
pub use config::ExperimentConfig;
pub use grid::{expand, grid_orders, permutations, select, RunSpec};
pub use render::markdown;
pub use report::report;
pub use run::{finished, run_one, run_path, RunResult};
