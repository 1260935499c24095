//! The LLaMA family beyond LLaMA: tiny checkpoints that transformers 5.24 built and saved
//! (tests/fixtures/families/make.py: Llama-3 rope and tied head, Llama-2 MHA, Llama with
//! attention_bias, Mistral with a window shorter than the input, Qwen2 with q/k/v biases,
//! Qwen3 with q/k norms), against transformers' own logits, and pruned by every method.

use crate::common::*;
use candle_core::{DType, Device, Tensor};
use copal::checkpoint::Checkpoint;
use copal::model::Llama;
use std::path::{Path, PathBuf};

const FAMILIES: [&str; 6] = [
    "llama3",
    "llama2",
    "llama-bias",
    "mistral",
    "qwen2",
    "qwen3",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/families")
        .join(name)
}

/// transformers' (input_ids, logits) for one checkpoint.
fn reference(name: &str) -> (Vec<u32>, Tensor) {
    let path = fixture(&format!("{name}.reference.safetensors"));
    let t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let ids: Vec<u32> = t["input_ids"]
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|i| i as u32)
        .collect();
    (ids, t["logits"].clone())
}

/// Every family's logits at every position equal transformers' to 1e-4 of their largest
/// magnitude; and each family's difference is live: without it the logits move far more.
#[test]
fn logits_match_transformers_for_every_family() {
    for name in FAMILIES {
        let ckpt = Checkpoint::open(&fixture(name)).unwrap();
        let (ids, want) = reference(name);
        let model = Llama::load(&ckpt, &ckpt.config, DType::F32, &Device::Cpu).unwrap();
        let got = model.forward(&ckpt, &ids).unwrap();
        let scale = max_abs(&want);
        let d = max_abs(&(&got - &want).unwrap());
        eprintln!("{name}: max |Δ| / max |z| = {:e}", d / scale);
        assert!(
            d <= 1e-4 * scale,
            "{name}: max |Δ| {d:e}, max |z| {scale:e}"
        );
        // The same weights read as a plain LLaMA (the difference switched off).
        let mut plain = ckpt.config.clone();
        match name {
            "mistral" => plain.sliding_window = Some(None),
            "qwen3" | "qwen2" | "llama-bias" => {
                plain.model_type = Some("llama".into());
                plain.attention_bias = None;
            }
            _ => continue,
        }
        let m = Llama::load(&ckpt, &plain, DType::F32, &Device::Cpu).unwrap();
        let z = m.forward(&ckpt, &ids).unwrap();
        let d = max_abs(&(&z - &want).unwrap());
        assert!(
            d > 1e-2 * scale,
            "{name}: its difference changed nothing ({d:e})"
        );
    }
}

fn max_abs(t: &Tensor) -> f32 {
    copal::model::block::max_abs(t).unwrap()
}

/// The non-prunable tensors (biases, norms, q/k norms, embedding) of `dir` byte for byte.
fn untouched(ckpt: &Checkpoint) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = ckpt
        .tensor_names()
        .filter(|n| !n.ends_with("_proj.weight"))
        .map(|n| (n.clone(), ckpt.raw(n).unwrap().1.to_vec()))
        .collect();
    v.sort();
    v
}

/// Every method and mode prunes every family: the output has the input's config (plus the
/// sparsity block) and tensor names, its biases and norms byte-identical, the asked sparsity
/// in its linears, and copal reads it back.
#[test]
fn every_method_and_mode_prunes_every_family() {
    let tmp = tempfile::tempdir().unwrap();
    let a = format!("text:{}", small_text(tmp.path(), "a.txt", 0, 120).display());
    let b = format!(
        "text:{}",
        small_text(tmp.path(), "b.txt", 500, 120).display()
    );
    let datasets = format!("{a},{b}");
    let runs: &[&[&str]] = &[
        &["--method", "copal"],
        &["--method", "wanda", "--mode", "sequential"],
        &["--method", "sparsegpt"],
        &["--method", "magnitude"],
        &["--method", "ria", "--mode", "global"],
        &["--method", "wanda", "--update", "obs"],
        &["--method", "copal", "--allocate", "owl"],
        &["--method", "wanda", "--pattern", "2:4"],
        &["--method", "ria", "--update", "dsnot"],
    ];
    for name in FAMILIES {
        let input = Checkpoint::open(&fixture(name)).unwrap();
        let before = untouched(&input);
        let mut names: Vec<String> = input.tensor_names().cloned().collect();
        names.sort();
        for (k, run) in runs.iter().enumerate() {
            let out = tmp.path().join(format!("{name}-{k}"));
            tiny_prune(&fixture(name), &datasets)
                .args(*run)
                .flag("--sparsity", 50)
                .flag("--out", out.display())
                .ok();
            let what = format!("{name} {}", run.join(" "));
            let pruned = Checkpoint::open(&out).unwrap_or_else(|e| panic!("{what}: {e:#}"));
            let mut got: Vec<String> = pruned.tensor_names().cloned().collect();
            got.sort();
            assert_eq!(got, names, "{what}: tensor names");
            assert!(
                untouched(&pruned) == before,
                "{what}: a bias or norm changed"
            );
            let mut cfg = pruned.config_json.clone();
            cfg.as_object_mut().unwrap().remove("sparsity_config");
            assert_eq!(cfg, input.config_json, "{what}: config.json");
            let (z, n) = copal::checkpoint::linear_sparsity(&pruned)
                .unwrap()
                .iter()
                .fold((0, 0), |(z, n), (_, a, b)| (z + a, n + b));
            let s = z as f64 / n as f64;
            assert!((s - 0.5).abs() < 0.01, "{what}: sparsity {s}");
        }
    }
}

/// Weights and config.json that disagree about the family stop before any work, naming the
/// tensor: biases in a checkpoint whose config says there are none, q/k norms in a model that
/// is not Qwen3 (computing without them would be another model).
#[test]
fn tensors_the_config_has_no_place_for_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, edit, needle) in [
        (
            "llama-bias",
            ("attention_bias", serde_json::json!(false)),
            "model.layers.0.self_attn.k_proj.bias",
        ),
        (
            "qwen3",
            ("model_type", serde_json::json!("llama")),
            "model.layers.0.self_attn.k_norm.weight",
        ),
    ] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in std::fs::read_dir(fixture(name)).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
        }
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        cfg[edit.0] = edit.1.clone();
        if name == "qwen3" {
            // Keys only Qwen's config has, so that the file is a plausible llama config.
            for k in ["layer_types", "max_window_layers", "use_sliding_window"] {
                cfg.as_object_mut().unwrap().remove(k);
            }
        }
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        let r = copal("eval")
            .flag("--model", dir.display())
            .args(["--datasets", "text:/dev/null", "--quiet"])
            .run();
        assert_user_error(&r, needle);
    }
}

/// The pruned outputs as transformers reads them: scripts/families-transformers-check.py
/// prunes each family with Wanda and COPAL (50%, two texts), loads the dense and pruned
/// directories with transformers' `from_pretrained` (config and tensor names as copal wrote
/// them) and computes the perplexity of a third text on copal's protocol; each must equal
/// `copal eval`'s within 0.1% (the script exits 1 otherwise).
#[test]
#[ignore = "full tier, ./scripts/test.sh: transformers and torch from tests/requirements.txt"]
fn pruned_models_load_in_transformers_with_copals_perplexity() {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/families-transformers-check.py");
    let out = python("transformers")
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_copal"))
        .env("HF_HUB_OFFLINE", "1")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("running the transformers check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!(
        "--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the transformers check failed\n{report}"
    );
    // Every family and method was compared: 6 families × (dense, wanda, copal).
    let rows: Vec<f64> = stdout
        .lines()
        .filter_map(|l| {
            l.rsplit_once(" rel ")
                .map(|(_, r)| r.trim().parse().unwrap())
        })
        .collect();
    assert_eq!(rows.len(), FAMILIES.len() * 3, "{report}");
    assert!(rows.iter().all(|r| *r <= 1e-3), "{report}");
}
