//! The forward pass on a tiny random LLaMA built in memory: agreement with
//! candle-transformers, GQA, causal masking, rope, and layer streaming.

use crate::common::*;
use candle_core::{DType, Device, IndexOp, Tensor};
use copal::model::{Linear, Llama, LlamaConfig};
use std::collections::HashMap;

fn ids(n: usize, seed: u64) -> Vec<u32> {
    let mut r = copal::rng::SplitMix64::new(seed);
    (0..n).map(|_| (r.next() % 256) as u32).collect()
}

fn load(cfg: &LlamaConfig, t: &HashMap<String, Tensor>) -> Llama {
    Llama::load(t, cfg, DType::F32, &Device::Cpu).unwrap()
}

/// Last-position logits of candle-transformers' own Llama on the same tensors.
fn candle_transformers_last(
    cfg_json: serde_json::Value,
    t: &HashMap<String, Tensor>,
    input: &[u32],
) -> Tensor {
    use candle_transformers::models::llama as ct;
    let ctc: ct::LlamaConfig = serde_json::from_value(cfg_json).unwrap();
    let ctc = ctc.into_config(false);
    let vb = candle_nn::VarBuilder::from_tensors(t.clone(), DType::F32, &Device::Cpu);
    let reference = ct::Llama::load(vb, &ctc).unwrap();
    let mut cache = ct::Cache::new(false, DType::F32, &ctc, &Device::Cpu).unwrap();
    let x = Tensor::new(input, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    reference
        .forward(&x, 0, &mut cache)
        .unwrap()
        .squeeze(0)
        .unwrap()
}

#[test]
fn last_position_matches_candle_transformers() {
    for tied in [true, false] {
        let cfg_json = tiny_config(tied);
        let cfg = LlamaConfig::from_json(&cfg_json.to_string()).unwrap();
        let t = tiny_tensors(&cfg, 3);
        let input = ids(40, 1);
        let ours = load(&cfg, &t).forward(&t, &input).unwrap();
        let ours_last = ours.i(input.len() - 1).unwrap();
        let theirs = candle_transformers_last(cfg_json, &t, &input);
        let what = format!("last-position logits vs candle-transformers (tied={tied})");
        assert_close(&ours_last, &theirs, 1e-4, &what);
    }
}

#[test]
fn llama3_rope_scaling_matches_candle_transformers() {
    let mut cfg_json = tiny_config(false);
    cfg_json["rope_scaling"] = serde_json::json!({
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 32
    });
    let cfg = LlamaConfig::from_json(&cfg_json.to_string()).unwrap();
    // The scaling must actually change some frequencies at these settings.
    let mut plain = cfg.clone();
    plain.rope_scaling = None;
    assert_ne!(
        copal::model::rope::inv_freq(&cfg),
        copal::model::rope::inv_freq(&plain)
    );
    let t = tiny_tensors(&cfg, 21);
    let input = ids(60, 8);
    let ours = load(&cfg, &t).forward(&t, &input).unwrap().i(59).unwrap();
    let theirs = candle_transformers_last(cfg_json, &t, &input);
    assert_close(
        &ours,
        &theirs,
        1e-4,
        "llama3 rope scaling vs candle-transformers",
    );
}

#[test]
fn bf16_and_f16_compute_stay_close_to_f32() {
    let cfg = LlamaConfig::from_json(&tiny_config(true).to_string()).unwrap();
    let t = tiny_tensors(&cfg, 17);
    let input = ids(32, 9);
    let f32_logits = load(&cfg, &t).forward(&t, &input).unwrap();
    for dt in [DType::BF16, DType::F16] {
        let m = Llama::load(&t, &cfg, dt, &Device::Cpu).unwrap();
        let l = m.forward(&t, &input).unwrap();
        assert_eq!(l.dtype(), DType::F32, "logits are returned in f32");
        assert_close(&l, &f32_logits, 0.5, &format!("{dt:?} compute vs f32"));
    }
}

#[test]
fn gqa_equals_explicitly_repeated_heads() {
    let cfg = LlamaConfig::from_json(&tiny_config(true).to_string()).unwrap();
    let t = tiny_tensors(&cfg, 5);
    // The same model written as multi-head attention: every kv head copied for its 2 query heads.
    let mut mha_json = tiny_config(true);
    mha_json["num_key_value_heads"] = serde_json::json!(4);
    let mha = LlamaConfig::from_json(&mha_json.to_string()).unwrap();
    let mut t2 = t.clone();
    let d = cfg.head_dim();
    for l in 0..cfg.num_hidden_layers {
        for lin in [Linear::K, Linear::V] {
            let w = &t[&lin.tensor_name(l)];
            let heads: Vec<Tensor> = (0..4)
                .map(|h| w.narrow(0, (h / 2) * d, d).unwrap())
                .collect();
            t2.insert(lin.tensor_name(l), Tensor::cat(&heads, 0).unwrap());
        }
    }
    let input = ids(24, 2);
    let a = load(&cfg, &t).forward(&t, &input).unwrap();
    let b = load(&mha, &t2).forward(&t2, &input).unwrap();
    assert_close(&a, &b, 1e-5, "GQA vs repeated-head MHA logits");
}

#[test]
fn causal_mask_hides_later_tokens() {
    let cfg = LlamaConfig::from_json(&tiny_config(true).to_string()).unwrap();
    let t = tiny_tensors(&cfg, 9);
    let m = load(&cfg, &t);
    let a = ids(20, 3);
    let mut b = a.clone();
    b[19] = (b[19] + 1) % 256;
    b[15] = (b[15] + 7) % 256;
    let la = m.forward(&t, &a).unwrap();
    let lb = m.forward(&t, &b).unwrap();
    assert_close(
        &la.narrow(0, 0, 15).unwrap(),
        &lb.narrow(0, 0, 15).unwrap(),
        1e-6,
        "positions before the change",
    );
    let diff = (la.i(19).unwrap() - lb.i(19).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        diff > 1e-3,
        "the changed positions must change (Δ = {diff})"
    );
}

#[test]
fn rope_matches_the_rotation_formula() {
    let cfg = LlamaConfig::from_json(&tiny_config(true).to_string()).unwrap();
    let (t, d) = (9, cfg.head_dim());
    let rope = copal::model::rope::Rope::new(&cfg, t, DType::F32, &Device::Cpu).unwrap();
    let x = randn(4, &[1, 2, t, d], 1.0);
    let got = rope.apply(&x).unwrap();
    // HF layout: out = x·cos + rotate_half(x)·sin, rotate_half([a, b]) = [−b, a].
    let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let inv = copal::model::rope::inv_freq(&cfg);
    let mut want = vec![0f32; xv.len()];
    for h in 0..2 {
        for p in 0..t {
            for i in 0..d / 2 {
                let base = (h * t + p) * d;
                let (a, b) = (xv[base + i], xv[base + i + d / 2]);
                let ang = p as f32 * inv[i];
                want[base + i] = a * ang.cos() - b * ang.sin();
                want[base + i + d / 2] = b * ang.cos() + a * ang.sin();
            }
        }
    }
    let want = Tensor::from_vec(want, (1, 2, t, d), &Device::Cpu).unwrap();
    assert_close(&got, &want, 1e-5, "rope vs formula");
    // Relative positions: <rope(q, m), rope(k, n)> depends on m − n only.
    let q = randn(5, &[1, 1, 1, d], 1.0).repeat((1, 1, t, 1)).unwrap();
    let k = randn(6, &[1, 1, 1, d], 1.0).repeat((1, 1, t, 1)).unwrap();
    let (rq, rk) = (rope.apply(&q).unwrap(), rope.apply(&k).unwrap());
    let dot = |m: usize, n: usize| -> f32 {
        (rq.i((0, 0, m)).unwrap() * rk.i((0, 0, n)).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    assert!(
        (dot(3, 1) - dot(8, 6)).abs() < 1e-4,
        "{} vs {}",
        dot(3, 1),
        dot(8, 6)
    );
}

#[test]
fn layer_streamed_evaluation_equals_whole_forward() {
    let cfg = LlamaConfig::from_json(&tiny_config(false).to_string()).unwrap();
    let t = tiny_tensors(&cfg, 11);
    let m = load(&cfg, &t);
    let stream = ids(5 * 16 + 3, 4);
    let set = copal::eval::EvalSet {
        dataset: copal::data::Dataset::Text("x".into()),
        split: copal::data::Split::Test,
        seqlen: 16,
        ids: stream.clone(),
        split_tokens: Some(stream.len()),
        windows: 5,
    };
    // One window per chunk (budget of a single window, so batches of one) and all windows in
    // one chunk, forwarded through each layer as one batch of five.
    let one =
        copal::eval::evaluate_with_budget(&m, &t, std::slice::from_ref(&set), "t", 1).unwrap();
    let all = copal::eval::evaluate_with_budget(&m, &t, std::slice::from_ref(&set), "t", 1 << 30)
        .unwrap();
    let mut p = copal::eval::Perplexity::default();
    for w in stream.chunks_exact(16) {
        let logits = m.forward(&t, w).unwrap();
        p.add_window(&copal::model::window_nll(&logits, w).unwrap());
    }
    assert_eq!(
        one[0].ppl, all[0].ppl,
        "chunking and batching must not change the result"
    );
    assert!(
        (one[0].ppl - p.ppl()).abs() < 1e-9 * p.ppl(),
        "{} vs {}",
        one[0].ppl,
        p.ppl()
    );
    assert_eq!((one[0].windows, one[0].tokens), (5, 80));
}

#[test]
fn blocked_lm_head_nll_equals_full_logits() {
    let cfg = LlamaConfig::from_json(&tiny_config(false).to_string()).unwrap();
    let t = tiny_tensors(&cfg, 13);
    let m = load(&cfg, &t);
    let w = ids(16, 6);
    let full = copal::model::window_nll(&m.forward(&t, &w).unwrap(), &w).unwrap();
    let mut h = m.embed(&w).unwrap();
    let pos = m.positions(w.len()).unwrap();
    for l in 0..cfg.num_hidden_layers {
        h = m.layer(&t, l).unwrap().forward(&h, &pos).unwrap();
    }
    // 15 predicted positions in blocks of 4 (a short last block), of 1, and in one block.
    for rows in [4, 1, 64] {
        let blocked = m.next_token_nll_in_blocks(&h, &w, rows).unwrap();
        assert_eq!(blocked.len(), w.len() - 1);
        for (a, b) in blocked.iter().zip(&full) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "rows {rows}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn taps_are_what_the_linears_see() {
    let cfg = LlamaConfig::from_json(&tiny_config(true).to_string()).unwrap();
    let t = tiny_tensors(&cfg, 13);
    let m = load(&cfg, &t);
    let layer = m.layer(&t, 1).unwrap();
    let pos = m.positions(12).unwrap();
    let h = m.embed(&ids(12, 5)).unwrap();
    let (out, taps) = layer.forward_tapped(&h, &pos).unwrap();
    for lin in Linear::ALL {
        let y = taps
            .input(lin)
            .matmul(&layer.weight(lin).t().unwrap())
            .unwrap();
        assert_close(&y, taps.output(lin), 1e-5, &format!("{lin:?}: Y = X Wᵀ"));
    }
    // Replacing a weight changes the output; putting it back restores it.
    let mut l2 = layer.clone();
    l2.set_weight(
        Linear::Down,
        layer.weight(Linear::Down).zeros_like().unwrap(),
    )
    .unwrap();
    let out2 = l2.forward(&h, &pos).unwrap();
    let d = (out2 - &out)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d > 0.0);
    assert!(l2
        .set_weight(
            Linear::Down,
            Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap()
        )
        .is_err());
}
