//! Where a model's weights come from: anything that hands out named tensors (a memory-mapped
//! checkpoint, or tensors built in memory by tests).

use anyhow::{Context as _, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

/// Anything that can hand out named weights in a requested dtype.
pub trait TensorSource {
    /// Loads tensor `name`, converted to `dtype`, on `device`.
    fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor>;
    /// Whether a tensor of that name exists.
    fn has(&self, name: &str) -> bool;
}

impl TensorSource for HashMap<String, Tensor> {
    fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let t = self
            .get(name)
            .with_context(|| format!("tensor {name} not found"))?;
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }
    fn has(&self, name: &str) -> bool {
        self.contains_key(name)
    }
}
