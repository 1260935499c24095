//! The single integration-test binary (ripgrep's layout), one module per topic:
//! - `forward`: the model on a tiny random LLaMA built in memory (no files);
//! - `checkpoint`: reading and writing checkpoint directories, bad inputs through the CLI;
//! - `prune`: pruning runs of the tiny model through the CLI (state, masks, determinism);
//! - `real_model`: the converted SmolLM2-135M test model and the real datasets;
//! - `device`: the GPU check's CPU rehearsal (the generic kernels against the fused ones).

#![allow(clippy::needless_range_loop)]

mod allocation;
mod baselines;
mod checkpoint;
mod common;
mod device;
mod docs;
mod forward;
mod hub;
mod layering;
mod plan_checks;
mod prune;
mod real_model;
mod reliability;
mod state;
mod untrusted;
mod update;
