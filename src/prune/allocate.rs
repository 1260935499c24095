//! How the sparsity is spread over the decoder layers: the same in every layer (`uniform`), or
//! OWL's outlier-weighted allocation (Yin et al., ICML 2024).
//!
//! OWL: a dense pass over the calibration windows gives each decoder layer ℓ its Wanda scores
//! S = |W_ij| · ‖X_j‖₂ over all seven linears, and its outlier ratio
//!   D_ℓ = #{S > M · mean(S)} / #S.
//! The ratios are scaled to [0, 2λ] and shifted so that their mean is the target density:
//!   density_ℓ = 2λ · (D_ℓ − min D) / (max D − min D) − mean(…) + (1 − s),
//! so layers with more outliers keep more weights, and the mean sparsity over layers is s (the
//! layers of a LLaMA model have equal sizes, so the model's sparsity is s too). M = 5 and
//! λ = 0.08 are the paper's settings for unstructured sparsity. It applies to every method: the
//! method then prunes layer ℓ at sparsity 1 − density_ℓ.

use super::mask::Pattern;
use anyhow::Result;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// The allocation of sparsity over the decoder layers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Allocation {
    /// Every layer at the target sparsity.
    #[default]
    Uniform,
    /// OWL: layer sparsities from the outlier ratio of their Wanda scores.
    Owl {
        /// Outlier threshold M, as a multiple of the mean score.
        m: f64,
        /// Half-width λ of the range of layer densities.
        lambda: f64,
    },
}

/// The paper's M for unstructured sparsity.
pub const OWL_M: f64 = 5.0;
/// The paper's λ for unstructured sparsity.
pub const OWL_LAMBDA: f64 = 0.08;

/// The kind of allocation, as `--allocate` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AllocationKind {
    /// Every layer at the target sparsity.
    Uniform,
    /// OWL's outlier-weighted layer sparsities (Yin et al., ICML 2024).
    Owl,
}

crate::display_as_value!(AllocationKind);

/// As a user reads it: `uniform`, or `owl (m 5, lambda 0.08)`.
impl std::fmt::Display for Allocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Allocation::Uniform => write!(f, "uniform"),
            Allocation::Owl { m, lambda } => write!(f, "owl (m {m}, lambda {lambda})"),
        }
    }
}

impl Allocation {
    /// The allocation of a kind with its settings (defaults where not given), checked.
    pub fn new(kind: AllocationKind, m: Option<f64>, lambda: Option<f64>) -> Result<Self> {
        if kind == AllocationKind::Uniform {
            crate::usage_ensure!(
                m.is_none() && lambda.is_none(),
                if m.is_some() { "owl_m" } else { "owl_lambda" },
                "applies to allocate owl only"
            );
            return Ok(Allocation::Uniform);
        }
        let (m, lambda) = (m.unwrap_or(OWL_M), lambda.unwrap_or(OWL_LAMBDA));
        crate::usage_ensure!(
            m.is_finite() && m > 0.0,
            "owl_m",
            "must be a positive number, got {m}"
        );
        crate::usage_ensure!(
            lambda.is_finite() && (0.0..0.5).contains(&lambda),
            "owl_lambda",
            "must be in [0, 0.5), got {lambda}"
        );
        Ok(Allocation::Owl { m, lambda })
    }

    pub fn kind(&self) -> AllocationKind {
        match self {
            Allocation::Uniform => AllocationKind::Uniform,
            Allocation::Owl { .. } => AllocationKind::Owl,
        }
    }

    pub fn is_uniform(&self) -> bool {
        *self == Allocation::Uniform
    }

    /// Checks the allocation against a pattern: OWL spreads unstructured sparsity only.
    pub fn check(&self, pattern: &Pattern) -> Result<()> {
        if let (Allocation::Owl { .. }, Pattern::NM { .. }) = (self, pattern) {
            crate::usage_bail!(
                "allocate",
                "owl spreads unstructured sparsity over the layers; {pattern} fixes every \
                 layer's sparsity"
            );
        }
        Ok(())
    }
}

/// Wanda's score |W| · ‖X_j‖₂ of one linear (W out × in, Σx² per input).
pub fn wanda_score(w: &Tensor, sumsq: &Tensor) -> Result<Tensor> {
    Ok(w.to_dtype(DType::F32)?
        .abs()?
        .broadcast_mul(&sumsq.sqrt()?.unsqueeze(0)?)?)
}

/// The outlier ratio of a layer whose linears have the score matrices `scores`: the fraction
/// of all their scores above `m` times the mean of all of them.
pub fn outlier_ratio(scores: &[Tensor], m: f64) -> Result<f64> {
    let (mut sum, mut n) = (0f64, 0usize);
    for s in scores {
        sum += s.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        n += s.elem_count();
    }
    let threshold = m * sum / n.max(1) as f64;
    let mut above = 0usize;
    for s in scores {
        let v = s.flatten_all()?.to_vec1::<f32>()?;
        above += v.iter().filter(|&&x| x as f64 > threshold).count();
    }
    Ok(above as f64 / n.max(1) as f64)
}

/// Layer sparsities (fractions) from the layers' outlier ratios, for a target `sparsity`
/// (fraction): densities spread over 2λ by the ratios, with mean 1 − sparsity. Equal ratios
/// (nothing to tell the layers apart) give the target everywhere.
pub fn owl_sparsities(ratios: &[f64], sparsity: f64, lambda: f64) -> Result<Vec<f64>> {
    let lo = ratios.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if ratios.is_empty() || hi - lo <= 0.0 {
        return Ok(vec![sparsity; ratios.len()]);
    }
    let scaled: Vec<f64> = ratios
        .iter()
        .map(|r| (r - lo) / (hi - lo) * 2.0 * lambda)
        .collect();
    let mean = scaled.iter().sum::<f64>() / scaled.len() as f64;
    let out: Vec<f64> = scaled
        .iter()
        .map(|d| 1.0 - (d - mean + (1.0 - sparsity)))
        .collect();
    if let Some(bad) = out.iter().find(|s| !(**s > 0.0 && **s < 1.0)) {
        crate::usage_bail!(
            "owl_lambda",
            "{lambda} spreads the layer sparsities around {:.0}% to {:.1}%, outside (0, 100%); \
             lower it",
            sparsity * 100.0,
            bad * 100.0
        );
    }
    Ok(out)
}

/// The pattern of each layer: the target everywhere (uniform), or the OWL sparsities.
pub fn layer_patterns(
    pattern: &Pattern,
    sparsities: Option<&[f64]>,
    layers: usize,
) -> Vec<Pattern> {
    match (pattern, sparsities) {
        (Pattern::Unstructured { .. }, Some(s)) => s
            .iter()
            .map(|f| Pattern::Unstructured { percent: f * 100.0 })
            .collect(),
        _ => vec![*pattern; layers],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn owl_keeps_the_mean_and_orders_layers_by_outliers() {
        let ratios = [0.02, 0.05, 0.03, 0.10];
        let s = owl_sparsities(&ratios, 0.5, 0.08).unwrap();
        let mean = s.iter().sum::<f64>() / 4.0;
        assert!((mean - 0.5).abs() < 1e-12, "{s:?}");
        // Densities span exactly 2λ; more outliers, fewer pruned.
        let (lo, hi) = (
            s.iter().cloned().fold(1.0, f64::min),
            s.iter().cloned().fold(0.0, f64::max),
        );
        assert!((hi - lo - 0.16).abs() < 1e-12);
        assert_eq!(s[3], lo);
        assert_eq!(s[0], hi);
        // By the formula: density = 2λ (r − min)/(max − min) − mean + 0.5.
        let d: Vec<f64> = ratios.iter().map(|r| 0.16 * (r - 0.02) / 0.08).collect();
        let dm = d.iter().sum::<f64>() / 4.0;
        for (k, want) in d.iter().map(|x| 1.0 - (x - dm + 0.5)).enumerate() {
            assert!((s[k] - want).abs() < 1e-12);
        }
        assert_eq!(
            owl_sparsities(&[0.1, 0.1], 0.7, 0.08).unwrap(),
            vec![0.7, 0.7]
        );
        assert!(owl_sparsities(&ratios, 0.95, 0.08).is_err());
    }

    #[test]
    fn outlier_ratio_counts_scores_above_m_times_the_mean() {
        let a = Tensor::new(&[[1f32, 1.0], [1.0, 13.0]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[1f32, 1.0, 1.0, 1.0], &Device::Cpu).unwrap();
        // Mean 20/8 = 2.5; above 2 × 2.5 = 5: one of eight.
        assert_eq!(outlier_ratio(&[a.clone(), b.clone()], 2.0).unwrap(), 0.125);
        assert_eq!(outlier_ratio(&[a, b], 6.0).unwrap(), 0.0);
        let w = Tensor::new(&[[-2f32, 3.0]], &Device::Cpu).unwrap();
        let s = Tensor::new(&[4f32, 9.0], &Device::Cpu).unwrap();
        assert_eq!(
            wanda_score(&w, &s).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![4.0, 9.0]]
        );
    }

    #[test]
    fn owl_is_for_unstructured_sparsity_only() {
        let owl = Allocation::new(AllocationKind::Owl, None, None).unwrap();
        assert_eq!(
            owl,
            Allocation::Owl {
                m: 5.0,
                lambda: 0.08
            }
        );
        assert!(owl.check(&Pattern::NM { n: 2, m: 4 }).is_err());
        assert!(owl.check(&Pattern::Unstructured { percent: 70.0 }).is_ok());
        assert!(Allocation::new(AllocationKind::Uniform, Some(5.0), None).is_err());
        assert!(Allocation::new(AllocationKind::Owl, None, Some(0.6)).is_err());
    }
}
