//! The update stage after a mask-only method's mask: DSnoT's mask refinement (`--update
//! dsnot`) through the CLI; OBS's reconstruction is tested beside the baselines.

use crate::common::*;
use std::path::Path;

/// One `copal prune` of the tiny model with `--update dsnot`, Wanda's mask, 4 × 32 tokens.
fn dsnot_run(
    model: &str,
    datasets: &str,
    out: &Path,
    state: Option<&Path>,
    extra: &[&str],
) -> (i32, String, String) {
    let mut v = vec![
        "prune",
        "--model",
        model,
        "--datasets",
        datasets,
        "--method",
        "wanda",
        "--nsamples",
        "4",
        "--seqlen",
        "32",
        "--quiet",
        "--save-masks",
        "--out",
        out.to_str().unwrap(),
    ];
    if let Some(s) = state {
        v.extend_from_slice(&["--state", s.to_str().unwrap()]);
    }
    v.extend_from_slice(extra);
    run_cli(&v, &[])
}

/// DSnoT's moments (Σx, Σx², window variance, windows) travel in the state: a run over a then
/// b equals a state continued with b, byte for byte (state and model), and the refined mask
/// differs from Wanda's own while keeping its sparsity.
#[test]
fn dsnot_continues_through_the_state_and_moves_the_mask() {
    let t = tiny_model(false, 1);
    let tmp = t.tmp.path();
    let a = format!("text:{}", small_text(tmp, "a.txt", 0, 150).display());
    let b = format!("text:{}", small_text(tmp, "b.txt", 9000, 150).display());
    let model = t.dir.to_str().unwrap();
    let dsnot = ["--update", "dsnot", "--dsnot-skip", "none"];
    let (s1, s2) = (tmp.join("one.state"), tmp.join("two.state"));
    let r = dsnot_run(
        model,
        &format!("{a},{b}"),
        &tmp.join("one"),
        Some(&s1),
        &dsnot,
    );
    assert_eq!(r.0, 0, "{}", r.2);
    let r = dsnot_run(model, &a, &tmp.join("two-a"), Some(&s2), &dsnot);
    assert_eq!(r.0, 0, "{}", r.2);
    let r = dsnot_run(model, &b, &tmp.join("two"), Some(&s2), &dsnot);
    assert_eq!(r.0, 0, "{}", r.2);
    assert!(
        std::fs::read(&s1).unwrap() == std::fs::read(&s2).unwrap(),
        "states differ"
    );
    assert!(
        std::fs::read(tmp.join("one/model.safetensors")).unwrap()
            == std::fs::read(tmp.join("two/model.safetensors")).unwrap(),
        "continuing through the state differs from one pass"
    );
    let names = copal::checkpoint::Shard::open(&s1).unwrap().names();
    assert!(names.contains(&"model.layers.0.self_attn.q_proj.weight.moments".to_string()));
    assert!(!names.contains(&"model.layers.0.self_attn.k_proj.weight.moments".to_string()));
    // Against Wanda's own mask on the same data: moved, same sparsity.
    let plain = tmp.join("plain.state");
    let r = dsnot_run(
        model,
        &format!("{a},{b}"),
        &tmp.join("plain"),
        Some(&plain),
        &[],
    );
    assert_eq!(r.0, 0, "{}", r.2);
    let masks = |d: &str| std::fs::read(tmp.join(d).join("masks.safetensors")).unwrap();
    assert!(
        masks("one") != masks("plain"),
        "DSnoT left every mask as Wanda chose it"
    );
    let sparsity = |d: &str| {
        let rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.join(d).join("copal.json")).unwrap())
                .unwrap();
        rec["sparsity"].as_f64().unwrap()
    };
    assert_eq!(sparsity("one"), sparsity("plain"));
    // A state without the moments cannot feed DSnoT, nor one with OBS's XᵀX instead.
    let r = dsnot_run(model, &b, &tmp.join("x"), Some(&plain), &dsnot);
    assert_user_error(&r, "holds no input statistic for update dsnot");
    let obs = tmp.join("obs.state");
    let r = dsnot_run(
        model,
        &a,
        &tmp.join("obs"),
        Some(&obs),
        &["--update", "obs"],
    );
    assert_eq!(r.0, 0, "{}", r.2);
    let r = dsnot_run(model, &b, &tmp.join("y"), Some(&obs), &dsnot);
    assert_user_error(&r, "it was accumulated with update obs");
}

/// DSnoT swaps weights within a row, which an N:M group does not allow; SparseGPT has its own
/// update; both are refused before any work.
#[test]
fn dsnot_refuses_what_it_cannot_refine() {
    let t = tiny_model(false, 1);
    let tmp = t.tmp.path();
    let a = format!("text:{}", small_text(tmp, "a.txt", 0, 150).display());
    let model = t.dir.to_str().unwrap();
    let r = dsnot_run(
        model,
        &a,
        &tmp.join("nm"),
        None,
        &["--update", "dsnot", "--pattern", "2:4"],
    );
    assert_usage_error(&r, "dsnot");
    assert!(!tmp.join("nm").exists());
    let r = run_cli(
        &[
            "prune",
            "--model",
            model,
            "--datasets",
            &a,
            "--method",
            "sparsegpt",
            "--update",
            "dsnot",
            "--out",
            tmp.join("sg").to_str().unwrap(),
            "--quiet",
        ],
        &[],
    );
    assert_usage_error(&r, "--update");
}
