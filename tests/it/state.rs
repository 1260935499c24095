//! What a state file carries between runs: states of earlier formats still continue.

use crate::common::*;
use std::path::{Path, PathBuf};

const FIXTURE: &str = "tests/fixtures/state-v1";

/// The tensors of a safetensors file by name, as raw bytes (the header's metadata aside).
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.data().to_vec()))
        .collect();
    out.sort();
    out
}

fn state_format(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let md = meta.metadata().clone().unwrap();
    let v: serde_json::Value = serde_json::from_str(&md["copal.state"]).unwrap();
    v["format"].as_str().unwrap().to_string()
}

/// A format-1 state (settings field by field), written by copal at 451221c from the tiny model
/// and `a.txt` (COPAL, eps_w 0.02), continues with `b.txt` to exactly what one run over both
/// gives today, and a continuation with another eps_w is refused naming it.
///
/// The fixture is regenerated with the old binary:
/// `COPAL_BIN_UNDER_TEST=<copal at 451221c> COPAL_WRITE_STATE_FIXTURE=1 cargo test --release
/// a_format_1_state`.
#[test]
fn a_format_1_state_still_continues() {
    let t = tiny_model(false, 1);
    let tmp = t.tmp.path();
    // Relative to the package root (the tests' cwd): a text dataset's name, which seeds its
    // windows, is its path as given.
    let (a, b) = (
        format!("text:{FIXTURE}/a.txt"),
        format!("text:{FIXTURE}/b.txt"),
    );
    let fixture = PathBuf::from(FIXTURE).join("copal.state");
    let run = |datasets: &str, state: &Path, out: &Path, extra: &[&str]| {
        tiny_prune(&t.dir, datasets)
            .args(["--method", "copal", "--force"])
            .flag("--state", state.display())
            .flag("--out", out.display())
            .args(extra.iter())
            .run()
    };
    let eps = ["--eps-w", "0.02"];
    if std::env::var_os("COPAL_WRITE_STATE_FIXTURE").is_some() {
        std::fs::create_dir_all(FIXTURE).unwrap();
        small_text(Path::new(FIXTURE), "a.txt", 0, 150);
        small_text(Path::new(FIXTURE), "b.txt", 9000, 150);
        let _ = std::fs::remove_file(&fixture);
        let r = run(&a, &fixture, &tmp.join("fixture-out"), &eps);
        assert_eq!(r.0, 0, "{}", r.2);
        return;
    }
    assert_eq!(
        state_format(&fixture),
        "copal-state/1",
        "the fixture is a format-1 state"
    );
    let continued = tmp.join("continued.state");
    std::fs::copy(&fixture, &continued).unwrap();
    let r = run(&b, &continued, &tmp.join("continued"), &eps);
    assert_eq!(r.0, 0, "{}", r.2);
    assert_eq!(state_format(&continued), "copal-state/2");
    let both = tmp.join("both.state");
    let r = run(&format!("{a},{b}"), &both, &tmp.join("both"), &eps);
    assert_eq!(r.0, 0, "{}", r.2);
    assert_eq!(tensors(&continued), tensors(&both), "the accumulated sums");
    assert_eq!(
        std::fs::read(tmp.join("continued/model.safetensors")).unwrap(),
        std::fs::read(tmp.join("both/model.safetensors")).unwrap(),
        "the pruned model"
    );
    // Another eps_w would add a differently shaped increment: refused, naming the setting.
    let refused = tmp.join("refused.state");
    std::fs::copy(&fixture, &refused).unwrap();
    let r = run(&b, &refused, &tmp.join("refused"), &["--eps-w", "0.01"]);
    assert_user_error(&r, "eps_w 0.01 (state: 0.02)");
}
