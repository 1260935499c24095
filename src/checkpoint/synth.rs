//! Synthetic checkpoints: real shapes, random weights, no download.
//!
//! `copal synth --preset llama-7b --layers 2` writes a LLaMA-7B-shaped model with only a few
//! decoder layers, so that time and memory per layer can be measured (and a machine sized)
//! before fetching 13 GB. Weights are N(0, 1/in) (norms 1), the tokenizer is byte-level with
//! the vocabulary padded to the model's size and a LLaMA-style BOS. Perplexities of such a
//! model mean nothing; its costs are those of the real one.

use super::writer::{tensor_bytes, write_json, ShardWriter};
use crate::model::{block::norm_names, Linear, LlamaConfig, EMBED, FINAL_NORM, LM_HEAD};
use crate::rng::gaussian;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::Dtype;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// config.json of a named shape preset with `layers` decoder layers.
pub fn preset(name: &str, layers: usize) -> Result<serde_json::Value> {
    let (hidden, inter, heads, kv, vocab, maxpos, eps, theta) = match name {
        "llama-7b" => (4096, 11008, 32, 32, 32000, 2048, 1e-6, 10000.0),
        "llama-13b" => (5120, 13824, 40, 40, 32000, 2048, 1e-6, 10000.0),
        "llama-2-7b" => (4096, 11008, 32, 32, 32000, 4096, 1e-5, 10000.0),
        "llama-2-70b" => (8192, 28672, 64, 8, 32000, 4096, 1e-5, 10000.0),
        "llama-3-8b" => (4096, 14336, 32, 8, 128256, 8192, 1e-5, 500000.0),
        "smollm2-135m" => (576, 1536, 9, 3, 49152, 8192, 1e-5, 100000.0),
        other => bail!(
            "unknown preset {other:?} (llama-7b, llama-13b, llama-2-7b, llama-2-70b, llama-3-8b, \
             smollm2-135m)"
        ),
    };
    Ok(json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "rms_norm_eps": eps,
        "rope_theta": theta, "max_position_embeddings": maxpos, "vocab_size": vocab,
        "tie_word_embeddings": false, "hidden_act": "silu", "bos_token_id": 256, "eos_token_id": 257,
        "torch_dtype": "bfloat16",
    }))
}

/// GPT-2's byte → printable character table.
fn bytes_to_unicode() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut t = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        t[*b as usize] = char::from_u32(c).unwrap_or(' ');
    }
    t
}

/// A byte-level tokenizer.json (one token per byte, `<s>` = 256 prepended) padded to `vocab`.
pub fn byte_tokenizer(vocab: usize) -> serde_json::Value {
    let mut v = serde_json::Map::new();
    for (b, c) in bytes_to_unicode().iter().enumerate() {
        v.insert(c.to_string(), json!(b));
    }
    let specials = ["<s>", "</s>", "<unk>"];
    for (i, t) in specials.iter().enumerate() {
        v.insert(t.to_string(), json!(256 + i));
    }
    for i in 259..vocab {
        v.insert(format!("<extra_{i}>"), json!(i));
    }
    let added: Vec<_> = specials
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": 256 + i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [256], "tokens": ["<s>"]}}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": v, "merges": []}
    })
}

/// Writes a synthetic checkpoint for `config` into `out` (bf16 or f32 weights).
pub fn write(config: &serde_json::Value, out: &Path, dtype: DType, seed: u64) -> Result<usize> {
    let cfg = LlamaConfig::from_json(&config.to_string())?;
    let st = match dtype {
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        _ => Dtype::F32,
    };
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    // (name, shape, std) in file order; norms get std 0 (all ones).
    let mut plan: Vec<(String, Vec<usize>, f32)> = vec![(EMBED.into(), vec![v, h], 1.0)];
    for l in 0..cfg.num_hidden_layers {
        for lin in Linear::ALL {
            let (o, i) = lin.shape(&cfg);
            plan.push((lin.tensor_name(l), vec![o, i], 1.0 / (i as f32).sqrt()));
        }
        for n in norm_names(l) {
            plan.push((n, vec![h], 0.0));
        }
    }
    plan.push((FINAL_NORM.into(), vec![h], 0.0));
    plan.push((LM_HEAD.into(), vec![v, h], 1.0 / (h as f32).sqrt()));
    std::fs::create_dir_all(out)?;
    let layout: Vec<(String, Dtype, Vec<usize>)> = plan
        .iter()
        .map(|(n, s, _)| (n.clone(), st, s.clone()))
        .collect();
    let mut md = BTreeMap::new();
    md.insert("format".to_string(), "pt".to_string());
    md.insert(
        "copal.synthetic".to_string(),
        format!("random weights, seed {seed}"),
    );
    let mut w = ShardWriter::create(&out.join(super::SINGLE_FILE), &layout, &md)?;
    let mut params = 0;
    let pb = crate::ui::bar(plan.len() as u64, "synth");
    for (k, (name, shape, std)) in plan.iter().enumerate() {
        let n: usize = shape.iter().product();
        let values = if *std == 0.0 {
            vec![1f32; n]
        } else {
            let mut z = gaussian(seed.wrapping_add(k as u64), n);
            z.iter_mut().for_each(|x| *x *= std);
            z
        };
        let t = Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?;
        w.write_bytes(name, &tensor_bytes(&t, st)?)?;
        params += n;
        pb.inc(1);
        crate::ui::check_interrupt()?;
    }
    pb.finish_and_clear();
    w.finish()?;
    write_json(&out.join("config.json"), config)?;
    write_json(&out.join("tokenizer.json"), &byte_tokenizer(v))?;
    write_json(
        &out.join("tokenizer_config.json"),
        &json!({"add_bos_token": true, "bos_token": "<s>", "eos_token": "</s>", "tokenizer_class": "PreTrainedTokenizerFast"}),
    )?;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_a_valid_llama_config() {
        for name in [
            "llama-7b",
            "llama-13b",
            "llama-2-7b",
            "llama-2-70b",
            "llama-3-8b",
            "smollm2-135m",
        ] {
            let j = preset(name, 1).unwrap();
            let cfg = LlamaConfig::from_json(&j.to_string()).unwrap();
            cfg.validate().unwrap();
            assert_eq!(cfg.head_dim() * cfg.num_attention_heads, cfg.hidden_size);
            assert_eq!(cfg.num_attention_heads % cfg.num_kv_heads(), 0, "{name}");
        }
        // LLaMA-2-70B: grouped-query attention, 64 query heads over 8 key/value heads.
        let j = preset("llama-2-70b", 1).unwrap();
        assert_eq!(
            (
                &j["hidden_size"],
                &j["intermediate_size"],
                &j["num_key_value_heads"]
            ),
            (&json!(8192), &json!(28672), &json!(8))
        );
        assert!(preset("llama-9b", 1).is_err());
    }
}
