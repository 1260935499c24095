//! GGUF (llama.cpp) → Hugging Face checkpoint directory.
//!
//! Tensors are dequantised with candle (every GGML quantisation candle reads), renamed to the
//! Hugging Face names and written to `model.safetensors`. llama.cpp stores q_proj/k_proj
//! *rope-permuted* (its converter applies, per head, reshape(H, 2, D/2, in) → swap axes 1,2);
//! [`unpermute`] inverts that, without which perplexity lands in the hundreds instead of tens.
//! `config.json` and a `tokenizer.json` (byte-level BPE, pre-tokeniser per `tokenizer.ggml.pre`)
//! are rebuilt from the GGUF metadata.

use super::writer::{tensor_bytes, write_json, ShardWriter};
use anyhow::{bail, ensure, Context as _, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::Dtype;
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::path::Path;

/// What an import produced, for the caller to report.
#[derive(Debug, Clone)]
pub struct Imported {
    pub tensors: usize,
    pub params: usize,
    pub config: Json,
}

/// GGUF name → Hugging Face name (None for tensors the HF format has no place for).
pub fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let module = match tail {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{module}"))
}

/// Inverts llama.cpp's rope permutation of a q or k weight (out, in) with `n_head` heads:
/// reshape (H, D/2, 2, in) → swap the middle axes → (out, in).
pub fn unpermute(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    ensure!(
        n_head > 0 && out % n_head == 0 && (out / n_head) % 2 == 0,
        "cannot un-permute a ({out}, {inp}) weight over {n_head} heads"
    );
    let hd = out / n_head;
    Ok(w.reshape((n_head, hd / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

/// llama.cpp's own permutation (the converter's), used by tests to check [`unpermute`].
pub fn permute(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / n_head;
    Ok(w.reshape((n_head, 2, hd / 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

fn int(v: &Value) -> Option<u64> {
    Some(match v {
        Value::U8(x) => *x as u64,
        Value::I8(x) => u64::try_from(*x).ok()?,
        Value::U16(x) => *x as u64,
        Value::I16(x) => u64::try_from(*x).ok()?,
        Value::U32(x) => *x as u64,
        Value::I32(x) => u64::try_from(*x).ok()?,
        Value::U64(x) => *x,
        Value::I64(x) => u64::try_from(*x).ok()?,
        _ => return None,
    })
}

fn float(v: &Value) -> Option<f64> {
    match v {
        // Shortest round-trip text of the f32, so 1e-5 stays 1e-5 and not 9.99999974e-6.
        Value::F32(x) => format!("{x}").parse().ok(),
        Value::F64(x) => Some(*x),
        other => int(other).map(|i| i as f64),
    }
}

struct Meta<'a>(&'a std::collections::HashMap<String, Value>);

impl Meta<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }
    fn int(&self, key: &str) -> Result<u64> {
        self.get(key)
            .and_then(int)
            .with_context(|| format!("GGUF metadata has no integer {key}"))
    }
    fn string(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }
    fn strings(&self, key: &str) -> Result<Vec<&str>> {
        match self.get(key) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.as_str()),
                    _ => bail!("{key} holds a non-string"),
                })
                .collect(),
            _ => bail!("GGUF metadata has no string array {key}"),
        }
    }
    fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }
}

/// Every tensor's bytes lie inside the file's data section, and no two tensors share bytes: a
/// few KB of header could otherwise make the importer write gigabytes (every tensor at
/// offset 0) or read past the end.
fn check_tensor_extents(content: &Content, path: &Path) -> Result<()> {
    let len = std::fs::metadata(path)?.len();
    let data = len
        .checked_sub(content.tensor_data_offset)
        .with_context(|| {
            format!(
                "{}: the tensor data would start past the end of the file",
                path.display()
            )
        })?;
    let mut extents = Vec::with_capacity(content.tensor_infos.len());
    for (name, info) in &content.tensor_infos {
        let elems = info
            .shape
            .dims()
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .with_context(|| {
                format!("{}: tensor {name} has an impossible shape", path.display())
            })?;
        let (bs, ts) = (
            info.ggml_dtype.block_size() as u64,
            info.ggml_dtype.type_size() as u64,
        );
        ensure!(
            elems % bs == 0,
            "{}: tensor {name} has {elems} elements, not a whole number of {bs}-element blocks",
            path.display()
        );
        let bytes = (elems / bs)
            .checked_mul(ts)
            .with_context(|| format!("{}: tensor {name} is impossibly large", path.display()))?;
        let end = info.offset.saturating_add(bytes);
        ensure!(
            end <= data,
            "{}: tensor {name} lies past the end of the file (bytes {}..{end} of a {data}-byte \
             data section); the file is truncated or corrupt",
            path.display(),
            info.offset
        );
        extents.push((info.offset, end, name));
    }
    extents.sort();
    for w in extents.windows(2) {
        ensure!(
            w[1].0 >= w[0].1 || w[0].0 == w[0].1,
            "{}: tensors {} and {} share bytes; the file is corrupt",
            path.display(),
            w[0].2,
            w[1].2
        );
    }
    Ok(())
}

/// Converts the LLaMA GGUF `path` into a Hugging Face directory `out` (created if needed).
pub fn import(path: &Path, out: &Path, dtype: DType) -> Result<Imported> {
    crate::fsutil::check_regular_file(path, "GGUF file")?;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // The reader trusts the header (an alignment of 0 divides by zero): a panic there is a
    // broken file, not a crash.
    let content = crate::guard::no_panic("reading the header", "the GGUF reader", || {
        Content::read(&mut file).map_err(|e| anyhow::anyhow!("{e}"))
    })
    .with_context(|| format!("{} is not a readable GGUF file", path.display()))?;
    check_tensor_extents(&content, path)?;
    let meta = Meta(&content.metadata);
    let arch = meta.string("general.architecture").unwrap_or("(none)");
    ensure!(
        arch == "llama",
        "{} has general.architecture = {arch:?}; copal imports LLaMA GGUF files only",
        path.display()
    );
    ensure!(
        meta.get("llama.expert_count").and_then(int).unwrap_or(0) == 0,
        "{} is a mixture-of-experts model; copal supports dense LLaMA only",
        path.display()
    );
    ensure!(
        !content.tensor_infos.contains_key("rope_freqs.weight"),
        "{} carries llama3 rope_freqs factors, which config.json cannot express; import the \
         Hugging Face checkpoint of this model instead",
        path.display()
    );

    let config = config_from_gguf(&meta, &content, dtype)?;
    let cfg = crate::model::LlamaConfig::from_json(&config.to_string()).with_context(|| {
        format!(
            "{}: the metadata does not describe a usable LLaMA",
            path.display()
        )
    })?;
    let (n_head, n_kv) = (cfg.num_attention_heads, cfg.num_kv_heads());

    let st_dtype = match dtype {
        DType::F32 => Dtype::F32,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        other => bail!("⟨dtype⟩ {other:?} is not a storage dtype copal writes"),
    };
    let mut names: Vec<(String, String)> = content
        .tensor_infos
        .keys()
        .filter_map(|g| hf_name(g).map(|h| (g.clone(), h)))
        .collect();
    names.sort_by_key(|a| natural_key(&a.1));
    let unknown: Vec<&String> = content
        .tensor_infos
        .keys()
        .filter(|g| hf_name(g).is_none())
        .collect();
    ensure!(
        unknown.is_empty(),
        "{} has tensors copal does not know how to map: {unknown:?}",
        path.display()
    );
    // Every tensor must have exactly the shape the config implies (and every one must be
    // there), before anything is read or allocated.
    for (g, h) in &names {
        let want = super::expected_shape(h, &cfg)
            .with_context(|| format!("{}: unexpected tensor {g}", path.display()))?;
        let got = content.tensor_infos[g].shape.dims();
        ensure!(
            got == want.as_slice(),
            "{}: tensor {g} has shape {got:?}, the metadata implies {want:?}",
            path.display()
        );
    }
    for h in super::required_names(&cfg) {
        ensure!(
            names.iter().any(|(_, n)| *n == h),
            "{}: tensor {h} is missing",
            path.display()
        );
    }
    let layout: Vec<(String, Dtype, Vec<usize>)> = names
        .iter()
        .map(|(g, h)| {
            let dims = content.tensor_infos[g].shape.dims().to_vec();
            (h.clone(), st_dtype, dims)
        })
        .collect();

    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    metadata.insert(
        "copal.source".to_string(),
        path.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    let mut writer = ShardWriter::create(&out.join(super::SINGLE_FILE), &layout, &metadata)?;
    let mut params = 0;
    for (g, h) in &names {
        let q = content
            .tensor(&mut file, g, &Device::Cpu)
            .with_context(|| format!("reading {g} from {}", path.display()))?;
        let mut w = q.dequantize(&Device::Cpu)?;
        // A NaN or an infinity in a weight is a corrupt file, not a model to convert.
        let values = w.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if let Some(k) = values.iter().position(|v| !v.is_finite()) {
            bail!(
                "{}: tensor {g} holds {} (element {k}); the file is corrupt",
                path.display(),
                values[k]
            );
        }
        drop(values);
        if g.ends_with("attn_q.weight") {
            w = unpermute(&w, n_head)?;
        } else if g.ends_with("attn_k.weight") {
            w = unpermute(&w, n_kv)?;
        }
        params += w.elem_count();
        writer.write_bytes(h, &tensor_bytes(&w, st_dtype)?)?;
        crate::ui::check_interrupt()?;
    }
    writer.finish()?;

    write_json(&out.join("config.json"), &config)?;
    let (tokenizer, tokenizer_config) = tokenizer_from_gguf(&meta)?;
    write_json(&out.join("tokenizer.json"), &tokenizer)?;
    // The rebuilt tokenizer must load (merges must name tokens of the vocabulary, …).
    tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).map_err(|e| {
        anyhow::anyhow!(
            "{}: the tokenizer metadata does not form a valid tokenizer: {e}",
            path.display()
        )
    })?;
    write_json(&out.join("tokenizer_config.json"), &tokenizer_config)?;
    crate::fsutil::sync_dir(out)?;
    Ok(Imported {
        tensors: names.len(),
        params,
        config,
    })
}

/// Sort key that orders `model.layers.10` after `model.layers.9`.
fn natural_key(name: &str) -> (usize, String) {
    let layer = name
        .strip_prefix("model.layers.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse().ok())
        .map(|n: usize| n + 1)
        .unwrap_or(0);
    (layer, name.to_string())
}

fn config_from_gguf(meta: &Meta, content: &Content, dtype: DType) -> Result<Json> {
    let hidden = meta.int("llama.embedding_length")?;
    let heads = meta.int("llama.attention.head_count")?;
    let kv = meta
        .get("llama.attention.head_count_kv")
        .and_then(int)
        .unwrap_or(heads);
    ensure!(
        heads > 0 && hidden % heads == 0,
        "hidden size {hidden} not divisible by {heads} heads"
    );
    let head_dim = hidden / heads;
    if let Some(rd) = meta.get("llama.rope.dimension_count").and_then(int) {
        ensure!(
            rd == head_dim,
            "llama.rope.dimension_count = {rd} differs from the head size {head_dim}: partial \
             rotary embeddings are not LLaMA"
        );
    }
    let embd = content
        .tensor_infos
        .get("token_embd.weight")
        .context("GGUF file has no token_embd.weight")?;
    let vocab = match meta.get("llama.vocab_size").and_then(int) {
        Some(v) => v,
        None => *embd
            .shape
            .dims()
            .first()
            .context("token_embd.weight has no dimensions and llama.vocab_size is missing")?
            as u64,
    };
    let tied = !content.tensor_infos.contains_key("output.weight");
    let eps = meta
        .get("llama.attention.layer_norm_rms_epsilon")
        .and_then(float)
        .context("GGUF metadata has no llama.attention.layer_norm_rms_epsilon")?;
    let theta = meta
        .get("llama.rope.freq_base")
        .and_then(float)
        .unwrap_or(10_000.0);
    let mut cfg = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": meta.int("llama.feed_forward_length")?,
        "num_hidden_layers": meta.int("llama.block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "max_position_embeddings": meta.int("llama.context_length").unwrap_or(2048),
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "attention_bias": false,
        "mlp_bias": false,
        "torch_dtype": match dtype { DType::BF16 => "bfloat16", DType::F16 => "float16", _ => "float32" },
    });
    if let Some(t) = meta.string("llama.rope.scaling.type") {
        match t {
            "none" => {}
            "linear" => {
                let f = meta
                    .get("llama.rope.scaling.factor")
                    .and_then(float)
                    .context("linear rope scaling without llama.rope.scaling.factor")?;
                cfg["rope_scaling"] = json!({"rope_type": "linear", "factor": f});
            }
            other => bail!("GGUF rope scaling {other:?} is not supported (linear only)"),
        }
    }
    for (key, field) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ("tokenizer.ggml.padding_token_id", "pad_token_id"),
    ] {
        if let Some(v) = meta.get(key).and_then(int) {
            cfg[field] = json!(v);
        }
    }
    Ok(cfg)
}

/// The pre-tokeniser for a GGUF `tokenizer.ggml.pre` value.
fn pre_tokenizer(pre: &str) -> Result<Json> {
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    Ok(match pre {
        // llama.cpp: digits split one by one, then the GPT-2 regex.
        "smollm" | "starcoder" | "refact" => json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level],
        }),
        "gpt2" | "default" => byte_level,
        other => bail!(
            "tokenizer.ggml.pre = {other:?} is not supported (supported: smollm, starcoder, \
             refact, gpt2, default); use the model's Hugging Face tokenizer.json instead"
        ),
    })
}

/// tokenizer.json and tokenizer_config.json from the GGUF tokenizer metadata.
fn tokenizer_from_gguf(meta: &Meta) -> Result<(Json, Json)> {
    let model = meta.string("tokenizer.ggml.model").unwrap_or("(none)");
    ensure!(
        model == "gpt2",
        "tokenizer.ggml.model = {model:?}: copal rebuilds byte-level BPE (\"gpt2\") tokenizers \
         only; use the model's Hugging Face tokenizer.json instead"
    );
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let merges = meta.strings("tokenizer.ggml.merges")?;
    let types: Vec<i64> = match meta.get("tokenizer.ggml.token_type") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::I32(x) => *x as i64,
                other => int(other).map(|x| x as i64).unwrap_or(1),
            })
            .collect(),
        _ => vec![1; tokens.len()],
    };
    ensure!(
        types.len() == tokens.len(),
        "tokenizer.ggml.token_type has {} entries for {} tokens",
        types.len(),
        tokens.len()
    );
    let pre = meta.string("tokenizer.ggml.pre").unwrap_or("default");
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    // GGUF token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    let added: Vec<Json> = types
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == 2 || t == 3 || t == 4)
        .map(|(i, &t)| {
            json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": t == 4, "special": t != 4})
        })
        .collect();
    let token_at = |key: &str| -> Option<(u64, String)> {
        let id = meta.get(key).and_then(int)?;
        tokens.get(id as usize).map(|t| (id, t.to_string()))
    };
    let bos = token_at("tokenizer.ggml.bos_token_id");
    let eos = token_at("tokenizer.ggml.eos_token_id");
    let add_bos = meta.bool("tokenizer.ggml.add_bos_token").unwrap_or(false);
    let post = match (&bos, add_bos) {
        (Some((id, tok)), true) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": tok, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {tok.clone(): {"id": tok, "ids": [id], "tokens": [tok]}},
        }),
        _ => {
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
        }
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(pre)?,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges},
    });
    let mut tcfg = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
    });
    if let Some((_, t)) = &bos {
        tcfg["bos_token"] = json!(t);
    }
    if let Some((_, t)) = &eos {
        tcfg["eos_token"] = json!(t);
    }
    if let Some(t) = meta.string("tokenizer.chat_template") {
        tcfg["chat_template"] = json!(t);
    }
    Ok((tokenizer, tcfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let w = Tensor::arange(0f32, 8.0 * 3.0 * 4.0, &Device::Cpu)
            .unwrap()
            .reshape((24, 4))
            .unwrap();
        for heads in [1, 3, 6] {
            let back = unpermute(&permute(&w, heads).unwrap(), heads).unwrap();
            let diff = (back - &w).unwrap().abs().unwrap().sum_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "heads={heads}");
        }
        // A permutation that is not the identity: the test above can fail.
        let p = permute(&w, 3).unwrap();
        let d = (p - &w).unwrap().abs().unwrap().sum_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() > 0.0);
    }

    #[test]
    fn names_map_to_hf() {
        assert_eq!(
            hf_name("blk.12.attn_k.weight").as_deref(),
            Some("model.layers.12.self_attn.k_proj.weight")
        );
        assert_eq!(hf_name("output.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(hf_name("blk.1.unknown.weight"), None);
    }
}
