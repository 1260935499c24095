//! `config.json` of a LLaMA-family checkpoint, as Hugging Face transformers writes it.
//!
//! Only the fields the forward pass needs are read; the raw JSON is kept by the checkpoint so
//! that the pruned model's `config.json` is the input's, plus a sparsity block.

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

/// The hyper-parameters of a LLaMA decoder (LLaMA-1/2/3, SmolLM, TinyLlama, …).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LlamaConfig {
    /// Must be `"llama"`: copal's forward pass is LLaMA's.
    #[serde(default)]
    pub model_type: Option<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Grouped-query attention; absent means as many key/value heads as query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Absent means `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub vocab_size: usize,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub torch_dtype: Option<String>,
}

fn default_rope_theta() -> f64 {
    10_000.0
}

/// `rope_scaling` as transformers spells it (`rope_type`, or the older `type`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

impl LlamaConfig {
    /// Parses and validates `config.json` text; errors say which field is wrong.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: LlamaConfig = serde_json::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Checks that the forward pass in `model::block` implements this architecture exactly.
    pub fn validate(&self) -> Result<()> {
        match self.model_type.as_deref() {
            Some("llama") => {}
            Some(other) => bail!(
                "model_type is \"{other}\", but copal implements the LLaMA architecture only \
                 (model_type \"llama\": LLaMA-1/2/3, SmolLM, TinyLlama, …)"
            ),
            None => bail!("config.json has no model_type; a LLaMA checkpoint says \"llama\""),
        }
        if let Some(act) = &self.hidden_act {
            ensure!(
                act == "silu",
                "hidden_act is \"{act}\"; LLaMA's MLP uses \"silu\" and copal implements only that"
            );
        }
        ensure!(
            self.attention_bias != Some(true) && self.mlp_bias != Some(true),
            "attention_bias/mlp_bias are set; copal supports LLaMA linears without bias only"
        );
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            ensure!(v > 0, "{name} must be positive, got {v}");
        }
        // Far beyond any LLaMA, and small enough that shapes and tables cannot overflow.
        for (name, v, max) in [
            ("hidden_size", self.hidden_size, 1 << 18),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 12),
            ("num_attention_heads", self.num_attention_heads, 1 << 12),
            ("num_key_value_heads", self.num_kv_heads(), 1 << 12),
            ("head_dim", self.head_dim(), 1 << 14),
            ("vocab_size", self.vocab_size, 1 << 24),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 26,
            ),
        ] {
            ensure!(
                v <= max,
                "{name} = {v} is implausibly large (limit {max}); config.json is corrupt"
            );
        }
        let (h, kv, d) = (
            self.num_attention_heads,
            self.num_kv_heads(),
            self.head_dim(),
        );
        ensure!(
            kv > 0 && h % kv == 0,
            "num_attention_heads ({h}) must be a multiple of num_key_value_heads ({kv})"
        );
        ensure!(
            d > 0 && d % 2 == 0,
            "head_dim must be even and positive, got {d}"
        );
        if self.head_dim.is_none() {
            ensure!(
                self.hidden_size % h == 0,
                "hidden_size ({}) is not divisible by num_attention_heads ({h}) and config.json \
                 gives no head_dim",
                self.hidden_size
            );
        }
        // Both enter f32 arithmetic: an ε that swamps the mean square, or a θ whose powers
        // overflow f32, computes nonsense without failing (perplexity = vocabulary size).
        ensure!(
            self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0 && self.rms_norm_eps <= 0.1,
            "rms_norm_eps must be in (0, 0.1] (LLaMA uses 1e-5 or 1e-6), got {:e}",
            self.rms_norm_eps
        );
        ensure!(
            self.rope_theta.is_finite() && self.rope_theta > 1.0 && self.rope_theta <= 1e9,
            "rope_theta must be in (1, 1e9] (LLaMA uses 1e4 to 5e5), got {:e}",
            self.rope_theta
        );
        if let Some(s) = &self.rope_scaling {
            match s.rope_type.as_str() {
                "default" => {}
                "linear" => ensure!(
                    s.factor.is_some_and(|f| f.is_finite() && f > 0.0 && f <= 1e4),
                    "rope_scaling of type linear needs a factor in (0, 1e4]"
                ),
                "llama3" => ensure!(
                    [s.factor, s.low_freq_factor, s.high_freq_factor]
                        .iter()
                        .all(|f| f.is_some_and(|f| f.is_finite() && f > 0.0 && f <= 1e4))
                        && s.original_max_position_embeddings.is_some_and(|n| n > 0),
                    "rope_scaling of type llama3 needs factor, low_freq_factor, \
                     high_freq_factor in (0, 1e4] and a positive original_max_position_embeddings"
                ),
                other => bail!(
                    "rope_scaling type \"{other}\" is not supported (supported: default, linear, llama3)"
                ),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOL: &str = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama",
        "hidden_size":576,"intermediate_size":1536,"num_hidden_layers":30,
        "num_attention_heads":9,"num_key_value_heads":3,"rms_norm_eps":1e-5,
        "rope_theta":100000.0,"max_position_embeddings":8192,"tie_word_embeddings":true,
        "vocab_size":49152,"hidden_act":"silu"}"#;

    #[test]
    fn parses_gqa_config() {
        let c = LlamaConfig::from_json(SMOL).unwrap();
        assert_eq!((c.num_kv_heads(), c.head_dim()), (3, 64));
        assert!(c.tie_word_embeddings);
    }

    #[test]
    fn refuses_other_architectures() {
        let text = SMOL.replace("\"llama\"", "\"mistral\"");
        let err = LlamaConfig::from_json(&text).unwrap_err().to_string();
        assert!(err.contains("mistral") && err.contains("LLaMA"), "{err}");
    }

    #[test]
    fn missing_field_is_named() {
        let text = SMOL.replace("\"hidden_size\":576,", "");
        let err = LlamaConfig::from_json(&text).unwrap_err().to_string();
        assert!(err.contains("hidden_size"), "{err}");
    }

    #[test]
    fn llama3_scaling_needs_all_fields() {
        let text = SMOL.replace(
            "\"vocab_size\"",
            "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0},\"vocab_size\"",
        );
        assert!(LlamaConfig::from_json(&text).is_err());
    }
}
