//! The one trait every pruning method implements ([`LayerPruner`]), the one every update's
//! input statistic implements ([`InputStatistic`]), and the masking every mask-only method
//! shares.
//!
//! A [`LayerPruner`] is built with the weight it prunes (and, for methods that carry
//! statistics across datasets, their prior state); it `observe`s the input rows X (and the
//! output rows Y) of its linear for every calibration batch, then `finish`es into a pruned
//! weight, its mask and the state to carry on. Selection itself is in [`super::mask`].

use super::mask::{self, Group, Mask, Pattern};
use anyhow::{ensure, Result};
use candle_core::{DType, Tensor};

/// A finished linear.
#[derive(Debug)]
pub struct Pruned {
    /// The new weight (f32): the input weight masked, or reconstructed (SparseGPT).
    pub weight: Tensor,
    pub mask: Mask,
    /// Statistics to carry to the next dataset (COPAL's importance W*), if the method has any.
    pub state: Option<Tensor>,
    /// Relative reconstruction error ‖XWᵀ − XŴᵀ‖²/‖XWᵀ‖² where the method measures it.
    pub recon_error: Option<f64>,
}

/// One linear's pruner: observe calibration batches, then finish.
pub trait LayerPruner {
    /// Sees one batch: X (tokens × in) and Y = X Wᵀ (tokens × out) of the weight being pruned.
    fn observe(&mut self, x: &Tensor, y: &Tensor) -> Result<()>;
    /// Scores, selects and applies the mask.
    fn finish(self: Box<Self>, pattern: &Pattern, group: Group) -> Result<Pruned>;
}

/// One input statistic of an update, accumulated over the calibration windows in order.
pub trait InputStatistic {
    /// Adds one window's input rows X (tokens × in).
    fn observe(&mut self, x: &Tensor) -> Result<()>;
    /// The sum so far (None: no tokens and no prior).
    fn finish(self: Box<Self>) -> Result<Option<Tensor>>;
}

/// What an update did to one linear, for the run record.
#[derive(Debug, Default)]
pub struct Applied {
    /// ‖XWᵀ − XŴᵀ‖²/‖XWᵀ‖² of the method's mask alone, where the update measures it.
    pub mask_error: Option<f64>,
}

/// Selects the mask from `score` (same shape as `w`) and applies it to `w`.
pub fn mask_by_score(
    w: &Tensor,
    score: &Tensor,
    pattern: &Pattern,
    group: Group,
) -> Result<(Tensor, Mask)> {
    let (rows, cols) = w.dims2()?;
    ensure!(score.dims() == w.dims(), "score and weight shapes differ");
    let s = score
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mask = mask::select(&s, rows, cols, pattern, group)?;
    let mut v = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    mask.zero_pruned(&mut v);
    Ok((Tensor::from_vec(v, (rows, cols), w.device())?, mask))
}

/// Input rows as f32 on the statistics path (whatever the compute dtype).
pub(crate) fn f32_rows(x: &Tensor) -> Result<Tensor> {
    Ok(x.to_dtype(DType::F32)?.contiguous()?)
}
