//! copal: continual pruning (COPAL, Malla, Choi, Choi, ICML 2024) of LLaMA-family models,
//! with the magnitude, Wanda and SparseGPT baselines.
//!
//! The data flows one way: **plan** ([`plan`]) → **load** ([`checkpoint`], [`model`]) →
//! **calibrate** ([`data`], [`calib`]) → **score** and **mask** ([`prune`]) → **write**
//! ([`checkpoint::writer`]) → **evaluate** ([`eval`]). [`state`] carries the statistics
//! between datasets and runs; [`continual`] runs a dataset sequence and computes the continual
//! metrics; [`experiment`] runs grids of them. The command line is the binary's (`src/cli/`):
//! nothing here knows about flags.

// Index loops read closer to the equations they implement than iterator chains.
#![allow(clippy::needless_range_loop)]

// In pipeline order: what the user asked for, where it runs, the model and its checkpoint,
// the data, the methods, the layer walk, the state, a dataset sequence, evaluation, reports.
pub mod calib;
pub mod checkpoint;
pub mod continual;
pub mod data;
pub mod device;
pub mod env;
pub mod eval;
pub mod experiment;
pub mod fsutil;
pub mod guard;
pub mod hub;
pub mod model;
pub mod plan;
pub mod plot;
pub mod probe;
pub mod prune;
pub mod report;
pub mod rng;
pub mod state;
pub mod tokenizer;
pub mod ui;
pub mod usage;
