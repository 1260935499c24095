//! `config.json` of a LLaMA-family checkpoint, as Hugging Face transformers writes it (4.x and
//! 5.x spellings).
//!
//! Read strictly: every key is either one the forward pass reads ([`READ`]), one known not to
//! change it ([`HARMLESS`]), one accepted only at the value that leaves the model LLaMA's
//! ([`conditional`]), or a reason to stop: a key copal does not understand may change the
//! model, and computing another model without a word is worse than an error. The raw JSON is
//! kept by the checkpoint so that the pruned model's `config.json` is the input's, plus a
//! sparsity block.

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

/// The keys the forward pass reads (and validates).
pub const READ: &[&str] = &[
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "max_position_embeddings",
    "tie_word_embeddings",
    "vocab_size",
    "hidden_act",
    "attention_bias",
    "mlp_bias",
];

/// Keys that do not change a LLaMA decoder's logits: provenance and storage dtype (weights
/// are read in the dtype their file says), token ids (the tokenizer's business), training-only
/// settings (dropout is off at inference; `pretraining_tp` slices the linears during training
/// and gives the same product), and transformers' generic output and generation settings.
pub const HARMLESS: &[&str] = &[
    "architectures",
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "transformers.js_config",
    "is_llama_config",
    // copal's own block in the configs it writes.
    "sparsity_config",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "initializer_range",
    "attention_dropout",
    "pretraining_tp",
    "use_cache",
    "max_sequence_length",
    "return_dict",
    "output_hidden_states",
    "output_attentions",
    "torchscript",
    "use_bfloat16",
    "tf_legacy_loss",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "is_decoder",
    "add_cross_attention",
    "tie_encoder_decoder",
    "cross_attention_hidden_size",
    "finetuning_task",
    "id2label",
    "label2id",
    "num_labels",
    "task_specific_params",
    "problem_type",
    "prefix",
    "tokenizer_class",
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
];

/// Keys accepted only at the value that keeps the forward pass LLaMA's: `None` when `key` is
/// not one of them, else whether `v` is that value (with what it would mean otherwise).
fn conditional(key: &str, v: &serde_json::Value) -> Option<Result<()>> {
    use serde_json::Value;
    let ok = |cond: bool, what: &str| {
        if cond {
            Ok(())
        } else {
            Err(anyhow::anyhow!(
                "config.json sets {key} = {v}: {what}, which copal's LLaMA forward pass does \
                 not implement"
            ))
        }
    };
    Some(match key {
        "sliding_window" => ok(v.is_null(), "sliding-window attention"),
        "use_sliding_window" => ok(v == &Value::Bool(false), "sliding-window attention"),
        "rope_interleaved" => ok(v == &Value::Bool(false), "interleaved rotary embeddings"),
        "partial_rotary_factor" => ok(
            v.as_f64() == Some(1.0),
            "rotary embeddings on part of each head",
        ),
        "pruned_heads" => ok(
            v.as_object().is_some_and(|o| o.is_empty()),
            "attention heads removed from the checkpoint",
        ),
        "layer_types" => ok(
            v.as_array()
                .is_some_and(|a| a.iter().all(|t| t == "full_attention")),
            "layers with attention other than full causal attention",
        ),
        "quantization_config" => Err(anyhow::anyhow!(
            "config.json has a quantization_config: this is a quantised checkpoint, and copal \
             prunes dense F32/F16/BF16 weights (use the unquantised checkpoint, or `copal \
             import-gguf` for a llama.cpp file)"
        )),
        "auto_map" => Err(anyhow::anyhow!(
            "config.json has an auto_map: the checkpoint brings its own modelling code, so its \
             forward pass may not be LLaMA's; copal refuses it"
        )),
        _ => return None,
    })
}

/// `COPAL_IGNORE_CONFIG_KEYS`: config keys the user declares harmless (comma-separated names).
fn ignored_keys() -> Result<Vec<String>> {
    let Ok(v) = std::env::var("COPAL_IGNORE_CONFIG_KEYS") else {
        return Ok(Vec::new());
    };
    let keys: Vec<String> = v
        .split(',')
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    for k in &keys {
        ensure!(
            k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')),
            "COPAL_IGNORE_CONFIG_KEYS holds {k:?}, which is not a config key name (write \
             names separated by commas)"
        );
        ensure!(
            !READ.contains(&k.as_str()),
            "COPAL_IGNORE_CONFIG_KEYS names {k}, which copal reads: it cannot be ignored"
        );
    }
    Ok(keys)
}

/// One rotary block (`rope_scaling`, or transformers 5's `rope_parameters`) checked field by
/// field: its θ (only in `rope_parameters`) and its scaling (`None` for the default type).
fn rope_block(
    name: &str,
    v: &serde_json::Value,
    with_theta: bool,
) -> Result<(Option<f64>, Option<RopeScaling>)> {
    let o = v
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("{name} must be an object, got {v}"))?;
    let kind = o
        .get("rope_type")
        .or_else(|| o.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let fields: &[&str] = match kind {
        "default" => &[],
        "linear" => &["factor"],
        "llama3" => &[
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
        ],
        other => bail!(
            "{name} has rope_type \"{other}\", which copal does not implement (supported: \
             default, linear, llama3)"
        ),
    };
    for (k, val) in o {
        let known = k == "rope_type"
            || k == "type"
            || (with_theta && k == "rope_theta")
            || fields.contains(&k.as_str())
            || (k == "partial_rotary_factor" && val.as_f64() == Some(1.0));
        ensure!(
            known || val.is_null(),
            "{name} has the field {k} (= {val}), which copal does not implement for rope_type \
             {kind}"
        );
    }
    let theta = match o.get("rope_theta") {
        Some(t) if with_theta => Some(
            t.as_f64()
                .ok_or_else(|| anyhow::anyhow!("{name}.rope_theta must be a number, got {t}"))?,
        ),
        _ => None,
    };
    if kind == "default" {
        return Ok((theta, None));
    }
    let mut scaling = serde_json::Map::new();
    scaling.insert("rope_type".into(), kind.into());
    for f in fields {
        if let Some(x) = o.get(*f) {
            scaling.insert((*f).into(), x.clone());
        }
    }
    let s: RopeScaling = serde_json::from_value(serde_json::Value::Object(scaling))
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    Ok((theta, Some(s)))
}

/// Reads every key of `config.json` (see the module doc) and rewrites the rotary settings of
/// either transformers spelling into `rope_theta` and `rope_scaling`.
fn normalize(mut v: serde_json::Value) -> Result<serde_json::Value> {
    use serde_json::Value;
    let map = v
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("config.json must be a JSON object"))?;
    let ignored = ignored_keys()?;
    for (k, val) in map.iter() {
        if READ.contains(&k.as_str()) || HARMLESS.contains(&k.as_str()) || ignored.contains(k) {
            continue;
        }
        match conditional(k, val) {
            Some(r) => r?,
            None => bail!(
                "config.json has the key {k:?}, which copal does not know. It may change the \
                 forward pass, so copal stops rather than compute a different model. If it is \
                 only metadata, set COPAL_IGNORE_CONFIG_KEYS={k} (and tell the copal \
                 developers, so the key can be listed)"
            ),
        }
    }
    let top_theta = match map.get("rope_theta") {
        None | Some(Value::Null) => None,
        Some(t) => Some(
            t.as_f64()
                .ok_or_else(|| anyhow::anyhow!("rope_theta must be a number, got {t}"))?,
        ),
    };
    let legacy = match map.get("rope_scaling") {
        None | Some(Value::Null) => None,
        Some(b) => Some(rope_block("rope_scaling", b, false)?.1),
    };
    let params = match map.remove("rope_parameters") {
        None | Some(Value::Null) => None,
        Some(p) => {
            // transformers 5 keys it by layer type when a model mixes attention types.
            let block = match p.as_object() {
                Some(o) if o.contains_key("rope_type") || o.contains_key("rope_theta") => p.clone(),
                Some(o) if o.keys().all(|k| k == "full_attention") && !o.is_empty() => {
                    o["full_attention"].clone()
                }
                Some(o) => bail!(
                    "rope_parameters is given per layer type ({}); copal implements full \
                     attention layers only",
                    o.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
                None => bail!("rope_parameters must be an object, got {p}"),
            };
            Some(rope_block("rope_parameters", &block, true)?)
        }
    };
    let (theta, scaling) = match params {
        Some((theta, scaling)) => {
            if let (Some(a), Some(b)) = (theta, top_theta) {
                ensure!(
                    a == b,
                    "config.json gives rope_theta {b} and rope_parameters.rope_theta {a}; they \
                     disagree, so copal cannot tell which the model was trained with"
                );
            }
            if let Some(l) = &legacy {
                ensure!(
                    l == &scaling,
                    "config.json's rope_scaling and rope_parameters describe different rotary \
                     scalings; remove the stale one"
                );
            }
            (theta.or(top_theta), scaling)
        }
        None => (top_theta, legacy.flatten()),
    };
    map.insert(
        "rope_theta".into(),
        serde_json::json!(theta.unwrap_or_else(default_rope_theta)),
    );
    map.insert("rope_scaling".into(), serde_json::to_value(scaling)?);
    Ok(v)
}

impl LlamaConfig {
    /// Parses and validates `config.json` text, either transformers spelling; errors say which
    /// key is wrong or unknown.
    pub fn from_json(text: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text)?;
        let cfg: LlamaConfig = serde_json::from_value(normalize(v)?)?;
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

    /// SMOL with `edit` applied to its JSON object.
    fn with(
        edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
    ) -> Result<LlamaConfig> {
        let mut v: serde_json::Value = serde_json::from_str(SMOL).unwrap();
        edit(v.as_object_mut().unwrap());
        LlamaConfig::from_json(&v.to_string())
    }

    #[test]
    fn transformers_5_rope_parameters_read_as_their_4_spelling() {
        use serde_json::json;
        let llama3 = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let cases = [
            (
                json!({"rope_theta": 5e5, "rope_type": "default"}),
                5e5,
                json!(null),
            ),
            (
                json!({"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
                5e5,
                llama3.clone(),
            ),
            (
                json!({"rope_theta": 1e4, "rope_type": "linear", "factor": 2.0}),
                1e4,
                json!({"rope_type": "linear", "factor": 2.0}),
            ),
            // Per layer type, full attention only.
            (
                json!({"full_attention": {"rope_theta": 3e5, "rope_type": "default"}}),
                3e5,
                json!(null),
            ),
        ];
        for (params, theta, scaling) in cases {
            let new = with(|m| {
                m.remove("rope_theta");
                m.insert("rope_parameters".into(), params.clone());
            })
            .unwrap();
            let old = with(|m| {
                m.insert("rope_theta".into(), json!(theta));
                m.insert("rope_scaling".into(), scaling.clone());
            })
            .unwrap();
            assert_eq!(new, old, "{params}");
            assert_eq!(new.rope_theta, theta);
        }
    }

    #[test]
    fn rotary_settings_that_disagree_or_are_unknown_are_refused() {
        use serde_json::json;
        let e = with(|m| {
            m.insert(
                "rope_parameters".into(),
                json!({"rope_theta": 5e5, "rope_type": "default"}),
            );
        })
        .unwrap_err();
        assert!(e.to_string().contains("disagree"), "{e}");
        for (params, needle) in [
            (json!({"rope_type": "yarn", "factor": 4.0}), "yarn"),
            (
                json!({"rope_type": "linear", "factor": 2.0, "attention_factor": 1.0}),
                "attention_factor",
            ),
            (
                json!({"rope_type": "default", "partial_rotary_factor": 0.5}),
                "partial_rotary_factor",
            ),
            (
                json!({"sliding_attention": {"rope_type": "default"}}),
                "per layer type",
            ),
        ] {
            let e = with(|m| {
                m.remove("rope_theta");
                m.insert("rope_parameters".into(), params.clone());
            })
            .unwrap_err();
            assert!(e.to_string().contains(needle), "{params}: {e}");
        }
        let e = with(|m| {
            m.insert(
                "rope_scaling".into(),
                json!({"rope_type": "linear", "factor": 2.0}),
            );
            m.insert(
                "rope_parameters".into(),
                json!({"rope_theta": 1e5, "rope_type": "default"}),
            );
        })
        .unwrap_err();
        assert!(e.to_string().contains("different rotary"), "{e}");
    }

    #[test]
    fn every_key_is_read_harmless_conditional_or_refused() {
        use serde_json::json;
        // Unknown: named, with the way out.
        let e = with(|m| {
            m.insert("rope_sections".into(), json!([1, 2]));
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("\"rope_sections\"") && e.contains("COPAL_IGNORE_CONFIG_KEYS"),
            "{e}"
        );
        // Harmless keys of transformers 4 and 5 configs.
        for k in HARMLESS {
            let v = if *k == "torch_dtype" {
                json!("bfloat16")
            } else {
                json!(1)
            };
            with(|m| {
                m.insert((*k).into(), v);
            })
            .unwrap_or_else(|e| panic!("{k}: {e}"));
        }
        // Conditional keys: accepted at LLaMA's value, refused at another, naming the key.
        for (k, good, bad) in [
            ("sliding_window", json!(null), json!(4096)),
            ("use_sliding_window", json!(false), json!(true)),
            ("rope_interleaved", json!(false), json!(true)),
            ("partial_rotary_factor", json!(1.0), json!(0.5)),
            ("pruned_heads", json!({}), json!({"0": [1]})),
            (
                "layer_types",
                json!(["full_attention"]),
                json!(["sliding_attention"]),
            ),
        ] {
            with(|m| {
                m.insert(k.into(), good.clone());
            })
            .unwrap_or_else(|e| panic!("{k}: {e}"));
            let e = with(|m| {
                m.insert(k.into(), bad.clone());
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains(k), "{k}: {e}");
        }
        for k in ["quantization_config", "auto_map"] {
            let e = with(|m| {
                m.insert(k.into(), json!({"x": 1}));
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains(k), "{k}: {e}");
        }
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
