//! The single integration-test binary (ripgrep's layout). One module per capability, and a
//! new test goes where its rule says:
//! - `allocation`: how the sparsity is spread over the layers (`--allocate`); OWL beside the
//!   baselines;
//! - `baselines`: each method in its continual modes, OWL, `--update obs`, the experiment grid;
//! - `checkpoint`: reading and writing checkpoint directories, bad inputs through the CLI;
//! - `device`: the GPU check's CPU rehearsal (the generic kernels against the fused ones);
//! - `docs`: the documentation stays true (links, commands, flags, the bad-input table);
//! - `families`: Llama-3, Mistral, Qwen2, Qwen3 checkpoints transformers wrote, against its
//!   logits, pruned by every method;
//! - `forward`: the model on a tiny random LLaMA built in memory (no files);
//! - `hub`: models and datasets through a local hub that answers as huggingface.co does;
//! - `layering`: the import graph of `src/` (no CLI in the library, no cycle);
//! - `plan_checks`: every mistake knowable before the first step is reported before it;
//! - `prune`: pruning runs of the tiny model (sparsity, masks, state, determinism, outputs);
//! - `records`: run records and experiment results of earlier versions still read;
//! - `real_model`: the converted SmolLM2-135M test model on the real datasets;
//! - `reliability`: crashes, kills and resumes leave outputs absent or whole;
//! - `state`: what a state file carries between runs, across formats;
//! - `untrusted`: hostile checkpoints and data fail cleanly within bounded resources;
//! - `update`: the update stage after a mask-only method (`--update dsnot`);
//! - `zeroshot`: `copal eval --tasks` and `copal prune --eval-tasks`, items scored as
//!   lm-evaluation-harness scores them.

#![allow(clippy::needless_range_loop)]

mod allocation;
mod baselines;
mod checkpoint;
mod common;
mod device;
mod docs;
mod families;
mod forward;
mod hub;
mod layering;
mod plan_checks;
mod prune;
mod real_model;
mod records;
mod reliability;
mod state;
mod untrusted;
mod update;
mod zeroshot;
