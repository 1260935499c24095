//! Checkpoint directories: sharded and bf16 loading, the writer, and bad inputs through the
//! CLI (one-line error naming the path or flag, exit code 1, no panic).

use crate::common::*;
use candle_core::{DType, Device};
use copal::checkpoint::writer::CheckpointWriter;
use copal::checkpoint::Checkpoint;
use copal::model::{Linear, Llama, TensorSource};
use std::collections::BTreeMap;

fn logits_of(dir: &std::path::Path, ids: &[u32]) -> candle_core::Tensor {
    let ck = Checkpoint::open(dir).unwrap();
    let m = Llama::load(&ck, &ck.config, DType::F32, &Device::Cpu).unwrap();
    m.forward(&ck, ids).unwrap()
}

#[test]
fn sharded_and_bf16_checkpoints_load() {
    let single = tiny_model(false, 1);
    let sharded = tiny_model(false, 3);
    let ids: Vec<u32> = (0..10).collect();
    let a = logits_of(&single.dir, &ids);
    assert_close(
        &a,
        &logits_of(&sharded.dir, &ids),
        0.0,
        "sharded vs single file",
    );
    let bf = single.tmp.path().join("bf16");
    write_model(&bf, &tiny_config(false), &single.tensors, DType::BF16, 1);
    assert_eq!(
        Checkpoint::open(&bf).unwrap().weight_dtype().unwrap(),
        DType::BF16
    );
    assert_close(
        &a,
        &logits_of(&bf, &ids),
        0.5,
        "bf16 weights computed in f32",
    );
}

#[test]
fn writer_copies_untouched_tensors_and_marks_format() {
    let t = tiny_model(true, 2);
    let ck = Checkpoint::open(&t.dir).unwrap();
    let out = t.tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut w = CheckpointWriter::create(&ck, &out, &BTreeMap::new()).unwrap();
    let name = Linear::Up.tensor_name(1);
    let zeros = ck
        .load(&name, DType::F32, &Device::Cpu)
        .unwrap()
        .zeros_like()
        .unwrap();
    w.put(&name, &zeros).unwrap();
    w.finish(&ck, &ck.config_json).unwrap();
    let back = Checkpoint::open(&out).unwrap();
    for n in ck.tensor_names() {
        let (_, a) = ck.raw(n).unwrap();
        let (_, b) = back.raw(n).unwrap();
        if *n == name {
            assert!(b.iter().all(|&x| x == 0), "{n} was replaced by zeros");
        } else {
            assert_eq!(a, b, "{n} must be byte-identical");
        }
        assert_eq!(
            ck.shard_of(n).map(|i| &ck.shards[i].file_name),
            back.shard_of(n).map(|i| &back.shards[i].file_name)
        );
    }
    for s in &back.shards {
        assert_eq!(
            s.user_metadata()
                .and_then(|m| m.get("format"))
                .map(String::as_str),
            Some("pt")
        );
    }
    assert!(
        out.join("model.safetensors.index.json").exists() && out.join("tokenizer.json").exists()
    );
}

/// `copal eval` of `dir` on ptb, two windows of `seqlen` tokens, quiet.
fn eval_cmd(dir: &str, seqlen: usize) -> CopalCmd {
    copal("eval")
        .flag("--model", dir)
        .flag("--datasets", "ptb")
        .flag("--seqlen", seqlen)
        .args(["--max-windows", "2", "--quiet"])
}

#[test]
fn bad_model_inputs_are_clear_errors() {
    let t = tiny_model(false, 2);
    let data = fixture_data(t.tmp.path());
    let data = data.to_str().unwrap();
    let d = t.dir.to_str().unwrap().to_string();
    let env = [("COPAL_DATA_DIR", data)];

    // The healthy model works, so the failures below are the inputs' fault.
    let ok = eval_cmd(&d, 32).envs(&env).run();
    assert_eq!(ok.0, 0, "{}", ok.2);

    // A shard the index names is missing.
    let shard = t.dir.join("model-00002-of-00002.safetensors");
    let saved = std::fs::read(&shard).unwrap();
    std::fs::remove_file(&shard).unwrap();
    assert_user_error(
        &eval_cmd(&d, 32).envs(&env).run(),
        "model-00002-of-00002.safetensors",
    );
    // Truncated shard.
    std::fs::write(&shard, &saved[..saved.len() / 2]).unwrap();
    assert_user_error(&eval_cmd(&d, 32).envs(&env).run(), "truncated or corrupt");
    // Header offsets past the end (file cut inside the data, header intact): same message.
    std::fs::write(&shard, &saved[..saved.len() - 4]).unwrap();
    assert_user_error(
        &eval_cmd(&d, 32).envs(&env).run(),
        "model-00002-of-00002.safetensors",
    );
    std::fs::write(&shard, &saved).unwrap();

    // Missing tokenizer.
    let tokp = t.dir.join("tokenizer.json");
    let tok = std::fs::read(&tokp).unwrap();
    std::fs::remove_file(&tokp).unwrap();
    assert_user_error(&eval_cmd(&d, 32).envs(&env).run(), "tokenizer.json");
    std::fs::write(&tokp, &tok).unwrap();

    // config.json: not of the LLaMA family, missing field, missing file.
    let cfgp = t.dir.join("config.json");
    let mut c = tiny_config(false);
    c["model_type"] = serde_json::json!("gemma");
    std::fs::write(&cfgp, c.to_string()).unwrap();
    assert_user_error(&eval_cmd(&d, 32).envs(&env).run(), "gemma");
    // A family whose tensors the checkpoint lacks (Qwen2's q/k/v biases) or has in excess (a
    // bias in a model whose config has none) names the tensor.
    let mut c = tiny_config(false);
    c["model_type"] = serde_json::json!("qwen2");
    std::fs::write(&cfgp, c.to_string()).unwrap();
    assert_user_error(
        &eval_cmd(&d, 32).envs(&env).run(),
        "model.layers.0.self_attn.q_proj.bias",
    );
    let mut c = tiny_config(false);
    c.as_object_mut().unwrap().remove("num_attention_heads");
    std::fs::write(&cfgp, c.to_string()).unwrap();
    assert_user_error(&eval_cmd(&d, 32).envs(&env).run(), "num_attention_heads");
    std::fs::remove_file(&cfgp).unwrap();
    assert_user_error(&eval_cmd(&d, 32).envs(&env).run(), "config.json");
    std::fs::write(&cfgp, tiny_config(false).to_string()).unwrap();

    // Not a directory / alias / hub id.
    assert_user_error(&eval_cmd("./no/such/dir", 32).envs(&env).run(), "not found");
}

#[test]
fn bad_data_and_window_inputs_are_clear_errors() {
    let t = tiny_model(true, 1);
    let data = fixture_data(t.tmp.path());
    let data = data.to_str().unwrap();
    let d = t.dir.to_str().unwrap().to_string();
    let env = [("COPAL_DATA_DIR", data)];
    // seqlen above max_position_embeddings (256).
    assert_usage_error(
        &eval_cmd(&d, 512).envs(&env).run(),
        "--seqlen 512 exceeds the model's max_position_embeddings (256)",
    );
    // Unknown dataset: the valid ones are listed.
    let r = run_cli(
        &[
            "eval",
            "--model",
            &d,
            "--datasets",
            "wikitext103",
            "--quiet",
        ],
        &env,
    );
    assert_usage_error(&r, "wikitext2, ptb, c4");
    // An evaluation text shorter than one window.
    let short = t.tmp.path().join("short.txt");
    std::fs::write(&short, "too short").unwrap();
    let spec = format!("text:{}", short.display());
    let r = run_cli(
        &[
            "eval",
            "--model",
            &d,
            "--datasets",
            &spec,
            "--seqlen",
            "64",
            "--quiet",
        ],
        &env,
    );
    assert_user_error(&r, "fewer than one window");
    // Missing data directory: the file and the env var are named.
    let r = run_cli(
        &[
            "eval",
            "--model",
            &d,
            "--datasets",
            "ptb",
            "--data-dir",
            "/nonexistent",
            "--quiet",
        ],
        &[],
    );
    assert_user_error(&r, "ptb.test.txt");
}

#[test]
fn eval_json_has_the_documented_fields() {
    let t = tiny_model(true, 1);
    let data = fixture_data(t.tmp.path());
    let d = t.dir.to_str().unwrap();
    let (code, out, err) = run_cli(
        &[
            "eval",
            "--model",
            d,
            "--datasets",
            "ptb,wikitext2",
            "--seqlen",
            "32",
            "--max-windows",
            "3",
            "--json",
        ],
        &[("COPAL_DATA_DIR", data.to_str().unwrap())],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("stdout is JSON");
    let rows = v["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, (ds, split)) in rows.iter().zip([("ptb", "test"), ("wikitext2", "test")]) {
        assert_eq!(row["dataset"], ds);
        assert_eq!(row["split"], split);
        assert_eq!(row["seqlen"], 32);
        assert_eq!(row["windows"], 3);
        assert_eq!(row["tokens"], 96);
        let ppl = row["ppl"].as_f64().unwrap();
        assert!(ppl.is_finite() && ppl > 1.0, "{ppl}");
    }
}

#[test]
fn help_states_the_conventions() {
    let (code, out, _) = run_cli(&["prune", "--help"], &[]);
    assert_eq!(code, 0);
    // Help is wrapped to the terminal width: compare with whitespace collapsed.
    let out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in [
        "2:4 zeroes 2 of every 4",
        "--calib-split",
        "--state",
        "percent",
        "--propagate",
    ] {
        assert!(out.contains(needle), "prune --help lacks {needle:?}");
    }
    // A usage error keeps clap's exit code 2.
    assert_eq!(run_cli(&["prune", "--bogus"], &[]).0, 2);
}

#[test]
fn hub_ids_resolve_from_the_cache_offline() {
    let t = tiny_model(true, 2);
    let home = t.tmp.path().join("hf");
    let snap = home.join(
        "hub/models--tiny-org--tiny-llama/snapshots/0123abcd0123abcd0123abcd0123abcd0123abcd",
    );
    std::fs::create_dir_all(&snap).unwrap();
    for e in std::fs::read_dir(&t.dir).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, snap.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::create_dir_all(home.join("hub/models--tiny-org--tiny-llama/refs")).unwrap();
    std::fs::write(
        home.join("hub/models--tiny-org--tiny-llama/refs/main"),
        "0123abcd0123abcd0123abcd0123abcd0123abcd",
    )
    .unwrap();
    let env = [("HF_HOME", home.to_str().unwrap()), ("HF_HUB_OFFLINE", "1")];
    let (code, out, err) = run_cli(
        &["inspect", "tiny-org/tiny-llama", "--json", "--quiet"],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["model"]
            .as_str()
            .unwrap()
            .ends_with("snapshots/0123abcd0123abcd0123abcd0123abcd0123abcd"),
        "{}",
        v["model"]
    );
    // Offline and not cached: the error says how to get it.
    let r = run_cli(&["inspect", "tiny-org/absent", "--quiet"], &env);
    assert_user_error(
        &r,
        "config.json of tiny-org/absent@main is not in the hub cache",
    );
    assert!(r.2.contains("HF_HUB_OFFLINE is set"), "{}", r.2);
}

/// The tiny model's perplexity on the fixture PTB with `config` as its config.json.
fn ppl_with_config(
    t: &Tiny,
    name: &str,
    config: &serde_json::Value,
    env: &[(&str, &str)],
) -> (i32, f64, String) {
    let dir = t.tmp.path().join(name);
    write_model(&dir, config, &t.tensors, candle_core::DType::F32, 1);
    let data = fixture_data(t.tmp.path());
    let mut e = vec![("COPAL_DATA_DIR", data.to_str().unwrap())];
    e.extend_from_slice(env);
    let d = dir.to_str().unwrap().to_string();
    let args = [
        "eval",
        "--model",
        &d,
        "--datasets",
        "ptb",
        "--seqlen",
        "128",
        "--max-windows",
        "2",
        "--quiet",
        "--json",
    ];
    let (code, out, err) = run_cli(&args, &e);
    let ppl = serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v["results"][0]["ppl"].as_f64())
        .unwrap_or(f64::NAN);
    (code, ppl, err)
}

/// config.json as transformers 5.24 writes it (`rope_parameters`, fixtures made by
/// tests/fixtures/transformers5/make.py) gives exactly the perplexity of its transformers-4
/// spelling (`rope_theta` + `rope_scaling`), for each rotary type; and not the one of the
/// default θ a reader that skipped the key would use.
#[test]
fn transformers_5_configs_give_their_transformers_4_perplexity() {
    let t = tiny_model(false, 1);
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/transformers5");
    let mut seen = Vec::new();
    for name in ["default", "linear", "llama3"] {
        let v5: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures.join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(v5["transformers_version"], "5.24.0");
        let mut v4 = v5.clone();
        let rope = v4
            .as_object_mut()
            .unwrap()
            .remove("rope_parameters")
            .unwrap();
        v4["rope_theta"] = rope["rope_theta"].clone();
        let mut scaling = rope.clone();
        scaling.as_object_mut().unwrap().remove("rope_theta");
        v4["rope_scaling"] = if name == "default" {
            serde_json::Value::Null
        } else {
            scaling
        };
        let (c5, p5, e5) = ppl_with_config(&t, &format!("t5-{name}"), &v5, &[]);
        let (c4, p4, e4) = ppl_with_config(&t, &format!("t4-{name}"), &v4, &[]);
        assert_eq!((c5, c4), (0, 0), "{e5}\n{e4}");
        assert_eq!(p5, p4, "{name}: transformers 5 vs 4 spelling");
        seen.push(p5);
    }
    // θ = 1e4 without scaling, as a reader that ignored rope_parameters would run.
    let mut skipped: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("default.json")).unwrap())
            .unwrap();
    skipped.as_object_mut().unwrap().remove("rope_parameters");
    let (c, p, e) = ppl_with_config(&t, "skipped", &skipped, &[]);
    assert_eq!(c, 0, "{e}");
    for s in &seen {
        assert_ne!(
            *s, p,
            "the rotary settings made no difference: {seen:?} vs {p}"
        );
    }
}

/// A config key copal does not know stops the run, naming the key; declared harmless with
/// COPAL_IGNORE_CONFIG_KEYS it is accepted; a key copal reads cannot be declared so.
#[test]
fn unknown_config_keys_stop_the_run() {
    let t = tiny_model(false, 1);
    let mut cfg = tiny_config(false);
    cfg["attn_logit_softcapping"] = 50.0.into();
    let (code, _, err) = ppl_with_config(&t, "unknown", &cfg, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("\"attn_logit_softcapping\""),
        "{err}"
    );
    let (code, ppl, err) = ppl_with_config(
        &t,
        "ignored",
        &cfg,
        &[("COPAL_IGNORE_CONFIG_KEYS", "attn_logit_softcapping")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(ppl.is_finite());
    let (code, _, err) = ppl_with_config(
        &t,
        "ignored2",
        &cfg,
        &[("COPAL_IGNORE_CONFIG_KEYS", "rope_theta")],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("which copal reads"), "{err}");
}

/// Evaluation with --max-windows reads as much of a text as its windows need, however long
/// the first line (text:) or document (jsonl:): a 300 KB line, 50 KB documents.
#[test]
fn long_first_documents_are_read_as_far_as_the_windows_need() {
    let t = tiny_model(false, 1);
    let tmp = t.tmp.path();
    let d = t.dir.to_str().unwrap();
    let words = fixture_text(3, 4000).join(" ");
    let line: String = words.chars().cycle().take(300_000).collect();
    std::fs::write(tmp.join("long.txt"), format!("{line}\nshort second line\n")).unwrap();
    let doc: String = words.chars().cycle().take(50_000).collect();
    let docs: String = (0..3)
        .map(|_| serde_json::json!({ "text": doc }).to_string() + "\n")
        .collect();
    std::fs::write(tmp.join("long.jsonl"), docs).unwrap();
    for (spec, seqlen, windows) in [
        (
            format!("text:{}", tmp.join("long.txt").display()),
            "256",
            "40",
        ),
        (
            format!("jsonl:{}", tmp.join("long.jsonl").display()),
            "32",
            "4",
        ),
        (
            format!("jsonl:{}", tmp.join("long.jsonl").display()),
            "128",
            "8",
        ),
    ] {
        let (code, out, err) = run_cli(
            &[
                "eval",
                "--model",
                d,
                "--datasets",
                &spec,
                "--seqlen",
                seqlen,
                "--max-windows",
                windows,
                "--quiet",
                "--json",
            ],
            &[],
        );
        assert_eq!(code, 0, "{spec} {seqlen}x{windows}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["results"][0]["windows"].as_u64().unwrap().to_string(),
            windows,
            "{out}"
        );
    }
    // More than the size limit allows: a clear error, not "holds no text".
    let (code, _, err) = run_cli(
        &[
            "eval",
            "--model",
            d,
            "--datasets",
            &format!("text:{}", tmp.join("long.txt").display()),
            "--seqlen",
            "256",
            "--max-windows",
            "8",
            "--quiet",
        ],
        &[("COPAL_MAX_TEXT_BYTES", "100000")],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("COPAL_MAX_TEXT_BYTES") && !err.contains("holds no text"),
        "{err}"
    );
}
