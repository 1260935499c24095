//! Stored results of earlier versions still read: a `copal.json` and the experiment results
//! from before evaluations became named scores (`eval::score`), and an experiment report
//! regenerated from committed results equals the committed one.

use crate::common::*;
use std::path::Path;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1.0)
}

#[test]
fn a_copal_json_of_the_first_format_reads_as_its_perplexity_matrix() {
    let path = repo().join("tests/fixtures/stored/copal-0.1.0.json");
    let old = json(&path);
    let stored = copal::report::read_scores(&path).unwrap();
    assert_eq!(stored.steps, ["wikitext2", "ptb"]);
    assert_eq!(stored.scores.len(), 1, "perplexity only");
    let m = &stored.scores[0];
    assert_eq!(
        (m.metric.as_str(), m.better),
        ("ppl", copal::eval::Better::Lower)
    );
    assert_eq!(m.columns, ["wikitext2", "ptb"]);
    for (k, row) in old["ppl_matrix"].as_array().unwrap().iter().enumerate() {
        for (j, v) in row.as_array().unwrap().iter().enumerate() {
            assert_eq!(m.rows[k][j], v.as_f64(), "R[{k}][{j}]");
        }
    }
    let dense: Vec<Option<f64>> = old["dense_eval"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ppl"].as_f64())
        .collect();
    assert_eq!(m.dense.as_ref(), Some(&dense));
    // Average and BWT recomputed from the matrix equal the stored ones.
    assert!(close(m.average.unwrap(), old["avg_ppl"].as_f64().unwrap()));
    assert!(close(m.bwt.unwrap(), old["bwt"].as_f64().unwrap()));
    assert!(m.bwt.unwrap() > 0.0 && m.forgetting() == m.bwt);
}

#[test]
fn experiment_results_of_the_first_format_read_with_their_perplexities() {
    let runs = repo().join("results/smollm2-2of4/runs");
    let mut n = 0;
    for e in std::fs::read_dir(&runs).unwrap() {
        let path = e.unwrap().path();
        let old = json(&path);
        let r = copal::experiment::run::read_result(&path).unwrap();
        let want: Vec<Vec<Option<f64>>> =
            serde_json::from_value(old["ppl_matrix"].clone()).unwrap();
        assert_eq!(r.ppl_matrix(), &want[..], "{path:?}");
        assert_eq!(r.avg_ppl(), old["avg_ppl"].as_f64().unwrap(), "{path:?}");
        assert_eq!(r.bwt(), old["bwt"].as_f64(), "{path:?}");
        let dense: Vec<f64> = serde_json::from_value(old["dense_ppl"].clone()).unwrap();
        assert_eq!(r.dense_ppl(), dense);
        assert_eq!(r.task_scores().count(), 0);
        // Written again, it is this version's format, and reads back the same.
        let again: copal::experiment::run::RunResult =
            serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(again, r);
        n += 1;
    }
    assert!(n >= 6, "{n} results");
}

/// The report of a committed grid, regenerated from its stored results: the tables before the
/// cost table (which needs the model's shapes) and runs.csv are byte for byte the committed.
#[test]
fn a_committed_report_regenerates_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let src = repo().join("results/smollm2-2of4");
    let dst = tmp.path().join("results");
    std::fs::create_dir_all(dst.join("runs")).unwrap();
    for e in std::fs::read_dir(src.join("runs")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join("runs").join(p.file_name().unwrap())).unwrap();
    }
    let mut cfg = json(&repo().join("configs/experiments/smollm2-2of4.json"));
    cfg["results"] = "results".into();
    // A model nothing resolves: the report is made from the stored results alone.
    cfg["model"] = tmp.path().join("no-model").display().to_string().into();
    let cfg_path = tmp.path().join("grid.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    copal("experiment")
        .flag("--config", cfg_path.display())
        .args(["--report", "--quiet"])
        .env("HF_HUB_OFFLINE", "1")
        .ok();
    let before_cost = |p: &Path| -> String {
        let t = std::fs::read_to_string(p).unwrap();
        t.split("## Cost per calibration step")
            .next()
            .unwrap()
            .to_string()
    };
    let (new, old) = (
        before_cost(&dst.join("table.md")),
        before_cost(&src.join("table.md")),
    );
    // The header names the model; the rest is the results'.
    let body = |t: &str| t.lines().skip(3).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&new), body(&old));
    assert_eq!(
        std::fs::read_to_string(dst.join("runs.csv")).unwrap(),
        std::fs::read_to_string(src.join("runs.csv")).unwrap()
    );
    for plot in ["avg-ppl-2of4.svg", "bwt-2of4.svg", "ppl-steps-2of4.svg"] {
        assert_eq!(
            std::fs::read(dst.join("plots").join(plot)).unwrap(),
            std::fs::read(src.join("plots").join(plot)).unwrap(),
            "{plot}"
        );
    }
}
