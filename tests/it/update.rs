//! The update stage after a mask-only method's mask: DSnoT's mask refinement (`--update
//! dsnot`) through the CLI; OBS's reconstruction is tested beside the baselines.

use crate::common::*;
use std::path::Path;

/// `copal prune` of the tiny model with Wanda's mask, writing masks to `out`.
fn wanda(model: &Path, datasets: &str, out: &Path, state: &Path) -> CopalCmd {
    tiny_prune(model, datasets)
        .flag("--method", "wanda")
        .arg("--save-masks")
        .flag("--out", out.display())
        .flag("--state", state.display())
}

const DSNOT: [&str; 4] = ["--update", "dsnot", "--dsnot-skip", "none"];

/// DSnoT's moments (Σx, Σx², window variance, windows) travel in the state: a run over a then
/// b equals a state continued with b, byte for byte (state and model), and the refined mask
/// differs from Wanda's own while keeping its sparsity.
#[test]
fn dsnot_continues_through_the_state_and_moves_the_mask() {
    let t = tiny_model(false, 1);
    let tmp = t.tmp.path();
    let a = format!("text:{}", small_text(tmp, "a.txt", 0, 150).display());
    let b = format!("text:{}", small_text(tmp, "b.txt", 9000, 150).display());
    let both = format!("{a},{b}");
    let dir = |d: &str| tmp.join(d);
    let (s1, s2) = (dir("one.state"), dir("two.state"));
    wanda(&t.dir, &both, &dir("one"), &s1).args(DSNOT).ok();
    wanda(&t.dir, &a, &dir("two-a"), &s2).args(DSNOT).ok();
    wanda(&t.dir, &b, &dir("two"), &s2).args(DSNOT).ok();
    assert!(
        std::fs::read(&s1).unwrap() == std::fs::read(&s2).unwrap(),
        "states differ"
    );
    assert!(
        std::fs::read(dir("one/model.safetensors")).unwrap()
            == std::fs::read(dir("two/model.safetensors")).unwrap(),
        "continuing through the state differs from one pass"
    );
    let names = copal::checkpoint::Shard::open(&s1).unwrap().names();
    assert!(names.contains(&"model.layers.0.self_attn.q_proj.weight.moments".to_string()));
    assert!(!names.contains(&"model.layers.0.self_attn.k_proj.weight.moments".to_string()));
    // Against Wanda's own mask on the same data: moved, same sparsity.
    let plain = dir("plain.state");
    wanda(&t.dir, &both, &dir("plain"), &plain).ok();
    let masks = |d: &str| std::fs::read(dir(d).join("masks.safetensors")).unwrap();
    assert!(
        masks("one") != masks("plain"),
        "DSnoT left every mask as Wanda chose it"
    );
    let sparsity = |d: &str| {
        let rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir(d).join("copal.json")).unwrap())
                .unwrap();
        rec["sparsity"].as_f64().unwrap()
    };
    assert_eq!(sparsity("one"), sparsity("plain"));
    // A state without the moments cannot feed DSnoT, nor one with OBS's XᵀX instead.
    let r = wanda(&t.dir, &b, &dir("x"), &plain).args(DSNOT).run();
    assert_user_error(&r, "holds no input statistic for update dsnot");
    let obs = dir("obs.state");
    wanda(&t.dir, &a, &dir("obs"), &obs)
        .args(["--update", "obs"])
        .ok();
    let r = wanda(&t.dir, &b, &dir("y"), &obs).args(DSNOT).run();
    assert_user_error(&r, "it was accumulated with update obs");
}

/// DSnoT swaps weights within a row, which an N:M group does not allow; SparseGPT has its own
/// update; both are refused before any work.
#[test]
fn dsnot_refuses_what_it_cannot_refine() {
    let t = tiny_model(false, 1);
    let tmp = t.tmp.path();
    let a = format!("text:{}", small_text(tmp, "a.txt", 0, 150).display());
    let nm = tmp.join("nm");
    let r = tiny_prune(&t.dir, &a)
        .args(["--method", "wanda", "--update", "dsnot", "--pattern", "2:4"])
        .flag("--out", nm.display())
        .run();
    assert_usage_error(&r, "dsnot");
    assert!(!nm.exists());
    let r = tiny_prune(&t.dir, &a)
        .args(["--method", "sparsegpt", "--update", "dsnot"])
        .flag("--out", tmp.join("sg").display())
        .run();
    assert_usage_error(&r, "--update");
}
