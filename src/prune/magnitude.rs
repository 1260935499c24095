//! Magnitude pruning: score |W_ij|, one threshold per matrix by default (as Wanda's
//! magnitude baseline and SparseGPT's `--gmp`). Needs no calibration data.

use super::mask::{Group, Pattern};
use super::pruner::{mask_by_score, LayerPruner, Pruned};
use anyhow::Result;
use candle_core::{DType, Tensor};

pub struct MagnitudePruner {
    w: Tensor,
}

impl MagnitudePruner {
    pub fn new(w: &Tensor) -> Result<Self> {
        Ok(Self {
            w: w.to_dtype(DType::F32)?,
        })
    }
}

impl LayerPruner for MagnitudePruner {
    fn observe(&mut self, _x: &Tensor, _y: &Tensor) -> Result<()> {
        Ok(())
    }

    fn finish(self: Box<Self>, pattern: &Pattern, group: Group) -> Result<Pruned> {
        let (weight, mask) = mask_by_score(&self.w, &self.w.abs()?, pattern, group)?;
        Ok(Pruned {
            weight,
            mask,
            state: None,
            recon_error: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn prunes_smallest_magnitudes() {
        let w = Tensor::new(&[[0.5f32, -3.0, 0.1, -0.2]], &Device::Cpu).unwrap();
        let p = Box::new(MagnitudePruner::new(&w).unwrap())
            .finish(&Pattern::Unstructured { percent: 50.0 }, Group::Matrix)
            .unwrap();
        assert_eq!(
            p.weight.to_vec2::<f32>().unwrap(),
            vec![vec![0.5, -3.0, 0.0, 0.0]]
        );
    }
}
