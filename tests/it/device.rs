//! Issue #18: the GPU check, rehearsed on the CPU. `scripts/gpu-check.sh` with
//! `CHECK_REHEARSAL=1` runs every step the GPU machine will run (synthetic checkpoints,
//! perplexity and masks against the reference, timed steps), with the device under test being
//! the CPU forced onto the generic kernels a GPU takes (`COPAL_GENERIC_KERNELS=1`), so the
//! script and the GPU's code path are both tested before the day.

use crate::common::*;

#[test]
#[ignore = "full tier, ./scripts/test.sh: runs scripts/gpu-check.sh's rehearsal (40 s)"]
fn the_gpu_check_rehearses_on_the_cpu_with_the_generic_kernels() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gpu");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = std::process::Command::new("bash")
        .arg(root.join("scripts/gpu-check.sh"))
        .arg(&out)
        .env("CHECK_REHEARSAL", "1")
        .env("COPAL_BIN", env!("CARGO_BIN_EXE_copal"))
        .env("COPAL_DATA_DIR", data_dir())
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "{log}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("cpu-rehearsal.json")).unwrap()).unwrap();
    assert_eq!(report["pass"], true, "{log}");
    let checks = report["checks"].as_array().unwrap();
    let ppl: Vec<_> = checks
        .iter()
        .filter(|c| c.get("relative_difference").is_some())
        .collect();
    assert_eq!(ppl.len(), 6, "{log}");
    assert!(ppl.iter().all(|c| c["pass"] == true), "{log}");
    // The generic path really ran: f32 perplexities agree closely but not to the last bit.
    assert!(
        ppl.iter()
            .any(|c| c["check"].as_str().unwrap().contains("f32")
                && c["relative_difference"].as_f64().unwrap() > 0.0),
        "COPAL_GENERIC_KERNELS changed nothing: {log}"
    );
    let masks: Vec<_> = checks
        .iter()
        .filter(|c| c.get("identical_fraction").is_some())
        .collect();
    assert_eq!(masks.len(), 4, "{log}");
    assert_eq!(
        masks.iter().filter(|c| c["pass"] == true).count(),
        3,
        "{log}"
    );
    let timings = report["timings"].as_array().unwrap();
    assert_eq!(timings.len(), 3, "{log}");
    for t in timings {
        assert_eq!(t["ok"], true, "{log}");
        assert_eq!(t["layer_seconds"].as_array().unwrap().len(), 1, "{log}");
    }
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("| sparsegpt |"), "{summary}");
}
