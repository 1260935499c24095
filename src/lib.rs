//! copal: continual pruning (COPAL, Malla, Choi, Choi, ICML 2024) of LLaMA-family models,
//! with the magnitude, Wanda and SparseGPT baselines.
//!
//! The data flows one way: **load** ([`checkpoint`], [`model`]) → **calibrate** ([`data`],
//! [`calib`]) → **score** and **mask** ([`prune`]) → **write** ([`checkpoint::writer`]) →
//! **evaluate** ([`eval`]). [`state`] carries the importance between datasets and runs;
//! [`continual`] runs a dataset sequence and computes the continual metrics.

// Index loops read closer to the equations they implement than iterator chains.
#![allow(clippy::needless_range_loop)]

pub mod calib;
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod config;
pub mod continual;
pub mod data;
pub mod eval;
pub mod experiment;
pub mod fsutil;
pub mod model;
pub mod plot;
pub mod prune;
pub mod report;
pub mod resume;
pub mod state;
pub mod tokenizer;
pub mod ui;
