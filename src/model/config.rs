//! `config.json` of a LLaMA-family checkpoint, as Hugging Face transformers writes it (4.x and
//! 5.x spellings).
//!
//! The families ([`Family`]) are LLaMA's decoder block with small, named differences, each
//! decided here and applied in one place of `model::block`:
//!
//! | family  | `model_type` | difference on the LLaMA block                                  |
//! |---------|--------------|----------------------------------------------------------------|
//! | Llama   | `llama`      | none (`attention_bias` puts a bias on q, k, v and o)           |
//! | Mistral | `mistral`    | sliding-window attention ([`LlamaConfig::attention_window`])   |
//! | Qwen2   | `qwen2`      | a bias on q, k and v ([`LlamaConfig::qkv_bias`])               |
//! | Qwen3   | `qwen3`      | RMSNorm of each q and k head before RoPE ([`LlamaConfig::qk_norm`]) |
//!
//! Read strictly: every key is either one the forward pass reads ([`READ`]), one known not to
//! change it ([`HARMLESS`]), one accepted only at the value that leaves the model LLaMA's
//! ([`conditional`]), or a reason to stop: a key copal does not understand may change the
//! model, and computing another model without a word is worse than an error. The raw JSON is
//! kept by the checkpoint so that the pruned model's `config.json` is the input's, plus a
//! sparsity block.

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

/// The architectures copal's forward pass implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Family {
    pub const ALL: [Family; 4] = [Family::Llama, Family::Mistral, Family::Qwen2, Family::Qwen3];

    /// config.json's `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
        }
    }

    /// transformers' class for the causal LM, as config.json's `architectures` names it.
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    fn from_model_type(t: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.model_type() == t)
    }

    /// "llama (LlamaForCausalLM), mistral (…), …" for error messages.
    pub fn supported() -> String {
        Self::ALL
            .iter()
            .map(|f| format!("{} ({})", f.model_type(), f.architecture()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The hyper-parameters of a LLaMA-family decoder (LLaMA-1/2/3, SmolLM, TinyLlama, Mistral,
/// Qwen2/2.5, Qwen3).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LlamaConfig {
    /// One of [`Family`]'s model types.
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
    /// Mistral's attention window (transformers' default 4096 when the key is absent, see
    /// [`LlamaConfig::attention_window`]); Qwen's, used only with `use_sliding_window`.
    #[serde(default, deserialize_with = "present")]
    pub sliding_window: Option<Option<usize>>,
    /// Qwen2/Qwen3: sliding-window attention on the layers from `max_window_layers` on.
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    #[serde(default)]
    pub max_window_layers: Option<usize>,
}

/// Tells a key given as `null` (`Some(None)`) from an absent one (`None`, the serde default).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<usize>>, D::Error> {
    Option::<usize>::deserialize(d).map(Some)
}

/// Mistral's window when config.json has no `sliding_window` key (transformers'
/// `MistralConfig` default).
const MISTRAL_DEFAULT_WINDOW: usize = 4096;
/// Qwen3's head size when config.json has no `head_dim` key (`Qwen3Config`'s default).
const QWEN3_DEFAULT_HEAD_DIM: usize = 128;

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
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
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
        "use_mrope" => ok(v == &Value::Bool(false), "multimodal rotary embeddings"),
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
        match (self.head_dim, self.family()) {
            (Some(d), _) => d,
            (None, Some(Family::Qwen3)) => QWEN3_DEFAULT_HEAD_DIM,
            (None, _) => self.hidden_size / self.num_attention_heads.max(1),
        }
    }

    /// The family `model_type` names (`None` for any other; [`LlamaConfig::validate`] refuses
    /// those).
    pub fn family(&self) -> Option<Family> {
        self.model_type.as_deref().and_then(Family::from_model_type)
    }

    /// Whether q, k and v add a bias after their product: Qwen2's always (its attention is
    /// built with `bias=True`), Llama's and Qwen3's when `attention_bias` is set.
    pub fn qkv_bias(&self) -> bool {
        match self.family() {
            Some(Family::Qwen2) => true,
            Some(Family::Llama | Family::Qwen3) => self.attention_bias == Some(true),
            _ => false,
        }
    }

    /// Whether o_proj adds a bias: Llama's and Qwen3's with `attention_bias`, never Qwen2's.
    /// No MLP linear has one (`mlp_bias` is refused).
    pub fn o_bias(&self) -> bool {
        matches!(self.family(), Some(Family::Llama | Family::Qwen3))
            && self.attention_bias == Some(true)
    }

    /// Qwen3: q and k are RMS-normalised per head (over `head_dim`, with their own weights)
    /// before the rotary embedding.
    pub fn qk_norm(&self) -> bool {
        self.family() == Some(Family::Qwen3)
    }

    /// Mistral's sliding window W: query i attends to keys j with i − W < j ≤ i (transformers'
    /// `sliding_window_overlay`, `kv_idx > q_idx - sliding_window`). `None` is full causal
    /// attention; a window no shorter than the sequence changes nothing.
    pub fn attention_window(&self) -> Option<usize> {
        match self.family() {
            Some(Family::Mistral) => match self.sliding_window {
                None => Some(MISTRAL_DEFAULT_WINDOW),
                Some(w) => w,
            },
            _ => None,
        }
    }

    /// The keys whose meaning depends on the family: each is either what the family's
    /// transformers class reads (and copal implements) or refused.
    fn validate_family(&self, family: Family) -> Result<()> {
        let window = self.sliding_window.flatten();
        match family {
            Family::Llama => ensure!(
                window.is_none() && self.use_sliding_window != Some(true),
                "config.json of a llama model sets sliding_window; LlamaForCausalLM has no \
                 sliding-window attention, so the file is not what it says (model_type mistral \
                 has one)"
            ),
            Family::Mistral => {
                ensure!(
                    self.attention_bias != Some(true),
                    "attention_bias is set, but MistralForCausalLM's linears have no bias"
                );
                ensure!(
                    self.use_sliding_window.is_none() && self.max_window_layers.is_none(),
                    "use_sliding_window/max_window_layers are Qwen2 keys; MistralForCausalLM \
                     applies sliding_window to every layer"
                );
                if let Some(w) = window {
                    ensure!(w > 0, "sliding_window must be positive, got 0");
                }
            }
            Family::Qwen2 | Family::Qwen3 => ensure!(
                self.use_sliding_window != Some(true),
                "use_sliding_window is true: sliding-window attention on the layers from \
                 max_window_layers on, which copal does not implement for {} (Mistral's \
                 window on every layer it does)",
                family.model_type()
            ),
        }
        if family == Family::Qwen2 {
            ensure!(
                self.attention_bias != Some(false),
                "attention_bias is false, but Qwen2ForCausalLM always has a bias on q, k and v"
            );
        }
        Ok(())
    }

    /// Checks that the forward pass in `model::block` implements this architecture exactly.
    pub fn validate(&self) -> Result<()> {
        let family = match (self.model_type.as_deref(), self.family()) {
            (_, Some(f)) => f,
            (Some(other), None) => bail!(
                "model_type is \"{other}\", which copal does not implement; supported: {} \
                 (LLaMA-1/2/3.x, SmolLM, TinyLlama, Mistral, Qwen2/2.5, Qwen3)",
                Family::supported()
            ),
            (None, None) => bail!(
                "config.json has no model_type; copal implements {}",
                Family::supported()
            ),
        };
        self.validate_family(family)?;
        if let Some(act) = &self.hidden_act {
            ensure!(
                act == "silu",
                "hidden_act is \"{act}\"; LLaMA's MLP uses \"silu\" and copal implements only that"
            );
        }
        ensure!(
            self.mlp_bias != Some(true),
            "mlp_bias is set; copal supports MLP linears without bias only"
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
    fn refuses_other_architectures_naming_the_supported_ones() {
        for other in ["gemma", "phi3", "mixtral", "qwen2_moe"] {
            let text = SMOL.replace("\"llama\"", &format!("\"{other}\""));
            let err = LlamaConfig::from_json(&text).unwrap_err().to_string();
            for f in Family::ALL {
                assert!(
                    err.contains(other) && err.contains(f.architecture()),
                    "{other}: {err}"
                );
            }
        }
    }

    /// The hub's configs of the families' small checkpoints (keys and values as transformers
    /// 4.x wrote them there), each read as its family with its differences.
    #[test]
    fn families_read_their_hub_configs() {
        use serde_json::json;
        let parse = |v: &serde_json::Value| LlamaConfig::from_json(&v.to_string()).unwrap();
        let qwen25 = json!({"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0,
            "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu",
            "hidden_size": 896, "initializer_range": 0.02, "intermediate_size": 4864,
            "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2",
            "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
            "tie_word_embeddings": true, "torch_dtype": "bfloat16",
            "transformers_version": "4.43.1", "use_cache": true, "use_sliding_window": false,
            "vocab_size": 151936});
        let c = parse(&qwen25);
        assert_eq!(c.family(), Some(Family::Qwen2));
        assert!(c.qkv_bias() && !c.o_bias());
        assert_eq!((c.attention_window(), c.qk_norm()), (None, false));
        let qwen3 = json!({"architectures": ["Qwen3ForCausalLM"], "attention_bias": false,
            "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
            "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024,
            "initializer_range": 0.02, "intermediate_size": 3072,
            "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
            "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
            "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000,
            "sliding_window": null, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
            "transformers_version": "4.51.0", "use_cache": true, "use_sliding_window": false,
            "vocab_size": 151936});
        let c = parse(&qwen3);
        assert!(c.qk_norm() && !c.qkv_bias());
        assert_eq!(c.num_attention_heads * c.head_dim(), 16 * 128);
        // Qwen3Config's head_dim default is 128, not hidden / heads.
        let mut no_dim = qwen3.clone();
        no_dim.as_object_mut().unwrap().remove("head_dim");
        assert_eq!(parse(&no_dim).head_dim(), 128);
        let mistral = json!({"architectures": ["MistralForCausalLM"], "bos_token_id": 1,
            "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096,
            "initializer_range": 0.02, "intermediate_size": 14336,
            "max_position_embeddings": 32768, "model_type": "mistral",
            "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
            "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
            "tie_word_embeddings": false, "torch_dtype": "bfloat16",
            "transformers_version": "4.34.0.dev0", "use_cache": true, "vocab_size": 32000});
        assert_eq!(parse(&mistral).attention_window(), Some(4096));
        // Absent: MistralConfig's default window; null: none (Mistral-7B-v0.3).
        let mut absent = mistral.clone();
        absent.as_object_mut().unwrap().remove("sliding_window");
        assert_eq!(parse(&absent).attention_window(), Some(4096));
        let mut null = mistral.clone();
        null["sliding_window"] = json!(null);
        assert_eq!(parse(&null).attention_window(), None);
    }

    /// The keys whose meaning is the family's are refused where the family has no such thing.
    #[test]
    fn family_keys_are_refused_where_they_mean_something_else() {
        use serde_json::json;
        for (family, key, value, needle) in [
            ("llama", "sliding_window", json!(4096), "sliding_window"),
            ("llama", "use_sliding_window", json!(true), "sliding_window"),
            (
                "qwen2",
                "use_sliding_window",
                json!(true),
                "use_sliding_window",
            ),
            (
                "qwen3",
                "use_sliding_window",
                json!(true),
                "use_sliding_window",
            ),
            ("mistral", "attention_bias", json!(true), "attention_bias"),
            (
                "mistral",
                "max_window_layers",
                json!(28),
                "max_window_layers",
            ),
            ("qwen2", "attention_bias", json!(false), "attention_bias"),
            ("llama", "mlp_bias", json!(true), "mlp_bias"),
        ] {
            let e = with(|m| {
                m.insert("model_type".into(), json!(family));
                m.insert(key.into(), value.clone());
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains(needle), "{family} {key}={value}: {e}");
        }
        // The same keys at the values that mean nothing are accepted.
        for (family, key, value) in [
            ("llama", "sliding_window", json!(null)),
            ("qwen2", "sliding_window", json!(131072)),
            ("qwen2", "use_sliding_window", json!(false)),
            ("llama", "attention_bias", json!(true)),
        ] {
            with(|m| {
                m.insert("model_type".into(), json!(family));
                m.insert(key.into(), value.clone());
            })
            .unwrap_or_else(|e| panic!("{family} {key}={value}: {e}"));
        }
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
            ("use_mrope", json!(false), json!(true)),
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
