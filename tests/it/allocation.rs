//! How the sparsity is spread over the layers (`--allocate`): the data-free `depth`
//! allocation here; OWL is tested beside the baselines.

use crate::common::*;

/// `depth` rises linearly over the layers, keeps the mean, reads no calibration data (even
/// for magnitude), and is refused with N:M.
#[test]
fn depth_spreads_the_sparsity_without_data() {
    let t = tiny_model(false, 1);
    let tmp = t.tmp.path();
    let a = format!("text:{}", small_text(tmp, "a.txt", 0, 150).display());
    let out = tmp.join("out");
    let run = |sparsity: u32| {
        tiny_prune(&t.dir, &a)
            .args(["--method", "magnitude", "--allocate", "depth", "--force"])
            .flag("--sparsity", sparsity)
            .flag("--out", out.display())
    };
    run(60).flag("--depth-spread", 0.1).ok();
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("copal.json")).unwrap()).unwrap();
    let report = &rec["steps"][0]["report"];
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let targets = floats(&report["layer_targets"]);
    assert_eq!(targets.len(), 2);
    assert!(
        (targets[0] - 0.5).abs() < 1e-12 && (targets[1] - 0.7).abs() < 1e-12,
        "{targets:?}"
    );
    for (m, t) in floats(&report["layer_sparsity"]).iter().zip(&targets) {
        assert!((m - t).abs() < 1.0 / 64.0, "layer at {m}, target {t}");
    }
    let total = rec["sparsity"].as_f64().unwrap();
    assert!(
        (total - 0.6).abs() <= 64.0 / 73728.0,
        "the model is at {total}"
    );
    assert_eq!(
        report["calib_tokens"].as_u64(),
        Some(0),
        "depth read calibration data"
    );
    assert_usage_error(
        &run(50).flag("--pattern", "2:4").run(),
        "--allocate depth spreads unstructured sparsity",
    );
    assert_usage_error(
        &run(60).flag("--depth-spread", 0.7).run(),
        "--depth-spread must be in [0, 0.5)",
    );
    assert_usage_error(
        &run(60).flag("--owl-m", 3).run(),
        "--owl-m is not a setting of allocate depth",
    );
}
