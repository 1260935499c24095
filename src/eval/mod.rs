//! Perplexity with the SparseGPT/Wanda protocol (COPAL.md §5).
//!
//! Each evaluation text is tokenised once, cut into non-overlapping windows of `seqlen`
//! (remainder dropped), and PPL = exp(Σ NLL / n) over all n predicted positions (seqlen − 1
//! per window; equal to the anchors' exp(mean of window losses) since windows are equal-sized).
//! NLL sums are accumulated in f64. The ± figure is the standard error of the mean window NLL,
//! carried to perplexity by the delta method: se(PPL) ≈ PPL · sd(window NLL) / √windows.
//!
//! Windows of all datasets go through the model together, layer by layer, so each decoder
//! layer is materialised once per chunk of windows rather than once per window.

pub mod cache;
pub mod choice;
pub mod evaluator;
pub mod perplexity;
pub mod score;
pub mod tasks;

pub use crate::data::eval_set::{load_sets, EvalSet};
pub use cache::EvalCache;
pub use evaluator::{evaluate, evaluate_with_budget};
pub use perplexity::{EvalResult, Perplexity};
pub use score::{Better, Score, ScoreMatrix, Transfer};
