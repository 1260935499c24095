//! Rotary position embeddings (Su et al. 2021) in Hugging Face's half-split layout.
//!
//! inv_freq_i = 1 / θ^(2i/D) for i < D/2, angle(t, i) = t · inv_freq_i, computed in f32 as
//! transformers does so that logits match it; `rope_scaling` types `linear` (inv_freq / factor)
//! and `llama3` (Meta's wavelength-dependent interpolation) are supported.

use super::config::LlamaConfig;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};

/// cos/sin tables for positions `0..seqlen`, shape (seqlen, head_dim / 2).
#[derive(Debug, Clone)]
pub struct Rope {
    pub cos: Tensor,
    pub sin: Tensor,
}

/// The per-pair inverse frequencies, after any `rope_scaling`.
pub fn inv_freq(cfg: &LlamaConfig) -> Vec<f32> {
    let d = cfg.head_dim();
    let theta = cfg.rope_theta as f32;
    let base: Vec<f32> = (0..d)
        .step_by(2)
        .map(|i| 1.0 / theta.powf(i as f32 / d as f32))
        .collect();
    let Some(s) = &cfg.rope_scaling else {
        return base;
    };
    match s.rope_type.as_str() {
        "linear" => {
            let f = s.factor.unwrap_or(1.0) as f32;
            base.into_iter().map(|x| x / f).collect()
        }
        "llama3" => {
            let factor = s.factor.unwrap_or(1.0) as f32;
            let lo = s.low_freq_factor.unwrap_or(1.0) as f32;
            let hi = s.high_freq_factor.unwrap_or(1.0) as f32;
            let old = s.original_max_position_embeddings.unwrap_or(8192) as f32;
            let (lo_wavelen, hi_wavelen) = (old / lo, old / hi);
            base.into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < hi_wavelen {
                        f
                    } else if wavelen > lo_wavelen {
                        f / factor
                    } else {
                        // Smooth interpolation between the two regimes.
                        let smooth = (old / wavelen - lo) / (hi - lo);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
        _ => base,
    }
}

impl Rope {
    pub fn new(cfg: &LlamaConfig, seqlen: usize, dtype: DType, device: &Device) -> Result<Self> {
        let inv = inv_freq(cfg);
        let half = inv.len();
        let mut angles = Vec::with_capacity(seqlen * half);
        for t in 0..seqlen {
            angles.extend(inv.iter().map(|f| t as f32 * f));
        }
        let angles = Tensor::from_vec(angles, (seqlen, half), device)?;
        Ok(Self {
            cos: angles.cos()?.to_dtype(dtype)?,
            sin: angles.sin()?.to_dtype(dtype)?,
        })
    }

    /// Applies the rotation to `x` of shape (batch, heads, seqlen, head_dim).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let t = x.dim(2)?;
        let (cos, sin) = (self.cos.narrow(0, 0, t)?, self.sin.narrow(0, 0, t)?);
        Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)?)
    }
}
