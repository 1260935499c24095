//! Baselines in their continual modes, and the experiment grid runner, on the tiny model.

use crate::common::*;
use std::path::Path;

fn three_texts(dir: &Path) -> String {
    let a = small_text(dir, "a.txt", 0, 150);
    let b = small_text(dir, "b.txt", 9000, 150);
    let c = small_text(dir, "c.txt", 30000, 150);
    format!(
        "text:{},text:{},text:{}",
        a.display(),
        b.display(),
        c.display()
    )
}

fn masks(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("masks.safetensors")).unwrap()
}

/// Mask files of steps 1..3 of a `--save-steps --save-masks` run.
fn step_masks(out: &Path) -> Vec<Vec<u8>> {
    let steps = out.join("steps");
    let mut dirs: Vec<_> = std::fs::read_dir(&steps)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    let mut v: Vec<Vec<u8>> = dirs.iter().map(|d| masks(d)).collect();
    v.push(masks(out));
    v
}

#[test]
fn sequential_mode_freezes_the_mask_and_copal_does_not() {
    let t = tiny_model(true, 1);
    let data = three_texts(t.tmp.path());
    let model = t.dir.to_str().unwrap();
    let run = |method: &str, mode: &str, name: &str| -> Vec<Vec<u8>> {
        let out = t.tmp.path().join(name);
        let r = run_cli(
            &[
                "prune",
                "--model",
                model,
                "--datasets",
                &data,
                "--method",
                method,
                "--mode",
                mode,
                "--nsamples",
                "4",
                "--seqlen",
                "32",
                "--save-steps",
                "--save-masks",
                "--out",
                out.to_str().unwrap(),
                "--quiet",
            ],
            &[],
        );
        assert_eq!(r.0, 0, "{method} {mode}: {}", r.2);
        step_masks(&out)
    };
    for method in ["magnitude", "wanda", "sparsegpt"] {
        let m = run(method, "sequential", &format!("{method}-seq"));
        assert_eq!(m.len(), 3);
        assert!(
            m[0] == m[1] && m[1] == m[2],
            "{method} sequential: the mask must stay frozen (weight stasis)"
        );
    }
    // Wanda-global follows the newest dataset, so its masks move; so do COPAL's.
    for (method, mode) in [("wanda", "global"), ("copal", "accumulate")] {
        let m = run(method, mode, &format!("{method}-{mode}"));
        assert!(
            m[0] != m[1] || m[1] != m[2],
            "{method} {mode}: masks never changed"
        );
    }
}

#[test]
fn every_method_handles_every_pattern() {
    let t = tiny_model(false, 2);
    let data = small_text(t.tmp.path(), "a.txt", 0, 150);
    let data = format!("text:{}", data.display());
    let model = t.dir.to_str().unwrap();
    for method in ["copal", "wanda", "sparsegpt", "magnitude", "ria"] {
        for pattern in ["unstructured", "2:4", "4:8"] {
            let out = t
                .tmp
                .path()
                .join(format!("{method}-{}", pattern.replace(':', "of")));
            let r = run_cli(
                &[
                    "prune",
                    "--model",
                    model,
                    "--datasets",
                    &data,
                    "--method",
                    method,
                    "--pattern",
                    pattern,
                    "--nsamples",
                    "4",
                    "--seqlen",
                    "32",
                    "--out",
                    out.to_str().unwrap(),
                    "--json",
                    "--quiet",
                ],
                &[],
            );
            assert_eq!(r.0, 0, "{method} {pattern}: {}", r.2);
            let v: serde_json::Value = serde_json::from_str(&r.1).unwrap();
            assert_eq!(v["sparsity"], 0.5, "{method} {pattern}");
        }
    }
}

#[test]
fn experiment_grid_is_complete_resumable_and_averaged() {
    let t = tiny_model(true, 1);
    let tmp = t.tmp.path();
    let a = small_text(tmp, "a.txt", 0, 150);
    let b = small_text(tmp, "b.txt", 9000, 150);
    let results = tmp.join("results");
    let cfg = serde_json::json!({
        "name": "tiny",
        "model": t.dir,
        "datasets": [format!("text:{}", a.display()), format!("text:{}", b.display())],
        "methods": [
            {"method": "copal"},
            {"method": "wanda", "mode": "global"},
            {"method": "wanda", "mode": "sequential"},
            {"method": "magnitude"},
            {"method": "dense"}
        ],
        "nsamples": 4, "seqlen": 32, "max_windows": 2, "allow_calib_on_eval": true,
        "results": results,
    });
    let cfg_path = tmp.join("grid.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let c = cfg_path.to_str().unwrap();

    let (code, list, err) = run_cli(&["experiment", "--config", c, "--list"], &[]);
    assert_eq!(code, 0, "{err}");
    let ids: Vec<&str> = list.lines().collect();
    assert_eq!(ids.len(), 10, "5 method-modes × 2 orders");

    let r = run_cli(&["experiment", "--config", c, "--quiet"], &[]);
    assert_eq!(r.0, 0, "{}", r.2);
    let runs: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(results.join("runs.json")).unwrap()).unwrap();
    assert_eq!(runs.len(), 10, "the grid is complete");
    for f in [
        "table.md",
        "runs.csv",
        "plots/bwt-u50.svg",
        "plots/avg-ppl-u50.svg",
        "plots/ppl-steps-u50.svg",
    ] {
        assert!(results.join(f).exists(), "{f} missing");
    }
    // The cost table: data-driven settings have a FLOP count, magnitude needs none.
    let md = std::fs::read_to_string(results.join("table.md")).unwrap();
    let cost = md
        .split("## Cost per calibration step")
        .nth(1)
        .expect("cost table");
    let cell = |setting: &str| -> String {
        let line = cost
            .lines()
            .find(|l| l.contains(&format!("| {setting} |")))
            .unwrap_or_else(|| panic!("no {setting} row in {cost}"));
        line.split('|').nth(4).unwrap().trim().to_string()
    };
    assert!(
        cell("copal accumulate").parse::<f64>().unwrap() > 0.0,
        "{cost}"
    );
    assert_eq!(cell("magnitude global"), "–", "{cost}");
    let svg = std::fs::read_to_string(results.join("plots/bwt-u50.svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("copal accumulate"),
        "plot has labels"
    );

    // A rerun skips every finished run: the run files are not rewritten.
    let stamp = |id: &str| {
        std::fs::metadata(results.join("runs").join(format!("{id}.json")))
            .unwrap()
            .modified()
            .unwrap()
    };
    let before: Vec<_> = ids.iter().map(|i| stamp(i)).collect();
    let (code, pending, _) = run_cli(&["experiment", "--config", c, "--list", "--pending"], &[]);
    assert_eq!((code, pending.trim()), (0, ""));
    let r = run_cli(&["experiment", "--config", c], &[]);
    assert_eq!(r.0, 0, "{}", r.2);
    assert!(r.2.contains("10 finished, 0 to go"), "{}", r.2);
    assert_eq!(before, ids.iter().map(|i| stamp(i)).collect::<Vec<_>>());

    // The table's averages are the means of the per-run figures.
    let (code, js, _) = run_cli(&["experiment", "--config", c, "--report", "--json"], &[]);
    assert_eq!(code, 0);
    let js: serde_json::Value = serde_json::from_str(&js).unwrap();
    for row in js["rows"].as_array().unwrap() {
        let same: Vec<&serde_json::Value> = runs
            .iter()
            .filter(|r| r["setting"] == row["setting"])
            .collect();
        assert_eq!(same.len(), 2);
        let mean = same
            .iter()
            .map(|r| r["avg_ppl"].as_f64().unwrap())
            .sum::<f64>()
            / 2.0;
        assert!((row["avg_ppl"]["mean"].as_f64().unwrap() - mean).abs() < 1e-9 * mean);
        if row["method"] != "dense" {
            let bwt = same.iter().map(|r| r["bwt"].as_f64().unwrap()).sum::<f64>() / 2.0;
            assert!((row["bwt"]["mean"].as_f64().unwrap() - bwt).abs() < 1e-9);
        }
    }
    // The dense reference's matrix equals its dense row at every step.
    let dense = runs.iter().find(|r| r["method"] == "dense").unwrap();
    let d0 = dense["dense_ppl"][0].as_f64().unwrap();
    assert_eq!(dense["ppl_matrix"][1][0].as_f64().unwrap(), d0);
}

#[test]
fn accumulate_modes_continue_bit_identically_through_the_state() {
    let t = tiny_model(false, 1);
    let tmp = t.tmp.path();
    let a = format!("text:{}", small_text(tmp, "a.txt", 0, 150).display());
    let b = format!("text:{}", small_text(tmp, "b.txt", 9000, 150).display());
    let model = t.dir.to_str().unwrap();
    let prune = |method: &str, mode: &str, datasets: &str, out: &str, state: Option<&str>| {
        let out = tmp.join(out);
        let mut args = vec![
            "prune",
            "--model",
            model,
            "--datasets",
            datasets,
            "--method",
            method,
            "--mode",
            mode,
            "--nsamples",
            "4",
            "--seqlen",
            "32",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ];
        if let Some(s) = state {
            args.extend(["--state", s]);
        }
        let r = run_cli(&args, &[]);
        assert_eq!(r.0, 0, "{method} {mode} {datasets}: {}", r.2);
        std::fs::read(out.join("model.safetensors")).unwrap()
    };
    let both = format!("{a},{b}");
    for method in ["wanda", "sparsegpt", "ria"] {
        let s2 = tmp.join(format!("{method}-two.state"));
        let s1 = tmp.join(format!("{method}-one.state"));
        prune(
            method,
            "accumulate",
            &a,
            &format!("{method}-1"),
            Some(s2.to_str().unwrap()),
        );
        let two = prune(
            method,
            "accumulate",
            &b,
            &format!("{method}-2"),
            Some(s2.to_str().unwrap()),
        );
        let one = prune(
            method,
            "accumulate",
            &both,
            &format!("{method}-12"),
            Some(s1.to_str().unwrap()),
        );
        assert!(
            two == one,
            "{method}: continuing through the state differs from one run"
        );
        assert!(
            std::fs::read(&s2).unwrap() == std::fs::read(&s1).unwrap(),
            "{method}: states differ"
        );
        // Wanda and RIA keep Σx² per linear; SparseGPT keeps Σ x xᵀ once per distinct input
        // (q, o, gate, down of each layer: k/v and up share q's and gate's).
        let mut st = copal::checkpoint::Shard::open(&s2).unwrap().names();
        st.sort();
        let modules: Vec<&str> = st
            .iter()
            .filter(|n| n.starts_with("model.layers.0."))
            .map(|n| {
                n.trim_start_matches("model.layers.0.")
                    .trim_end_matches(".weight")
            })
            .collect();
        let want: &[&str] = if method == "sparsegpt" {
            &[
                "mlp.down_proj",
                "mlp.gate_proj",
                "self_attn.o_proj",
                "self_attn.q_proj",
            ]
        } else {
            &[
                "mlp.down_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "self_attn.k_proj",
                "self_attn.o_proj",
                "self_attn.q_proj",
                "self_attn.v_proj",
            ]
        };
        assert_eq!(modules, want, "{method}: state tensors of layer 0");
        // With a single dataset, accumulate is the global method.
        let acc = prune(method, "accumulate", &a, &format!("{method}-acc-a"), None);
        let glob = prune(method, "global", &a, &format!("{method}-glob-a"), None);
        assert!(
            acc == glob,
            "{method}: accumulate over one dataset must equal global"
        );
        // And over two it is not the global method on the newest dataset.
        let glob_b = prune(method, "global", &b, &format!("{method}-glob-b"), None);
        assert!(
            one != glob_b,
            "{method}: accumulate ignored the first dataset"
        );
    }
    // A state of one method is refused by another, and another allocation is named in words,
    // not as a Rust value.
    let c = format!("text:{}", small_text(tmp, "c.txt", 20000, 100).display());
    let continue_wanda_state = |out: &str, settings: &[&str]| {
        let out = tmp.join(out);
        let state = tmp.join("wanda-two.state");
        let mut args = vec!["prune", "--model", model, "--datasets", &c];
        args.extend_from_slice(settings);
        args.extend_from_slice(&[
            "--nsamples",
            "4",
            "--seqlen",
            "32",
            "--out",
            out.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "--quiet",
        ]);
        run_cli(&args, &[])
    };
    let r = continue_wanda_state("x", &["--method", "sparsegpt", "--mode", "accumulate"]);
    assert_user_error(&r, "method sparsegpt (state: wanda)");
    let r = continue_wanda_state("y", &["--method", "wanda", "--allocate", "owl"]);
    assert_user_error(&r, "allocate owl (lambda 0.08, m 5.0) (state: uniform)");
}

/// `copal prune` without --method runs COPAL in accumulate mode (its sensitivity summed over
/// the datasets, per-row threshold, `scaled` perturbation, the dense weights masked): the
/// same model as `--method copal`. The baselines and the paper's per-matrix COPAL stay a flag
/// away.
#[test]
fn default_plan_is_copal_accumulate_and_sparsegpt_is_a_flag_away() {
    let t = tiny_model(false, 1);
    let data = fixture_data(t.tmp.path());
    let out = t.tmp.path().join("unused");
    let plan = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "prune",
            "--model",
            t.dir.to_str().unwrap(),
            "--datasets",
            "wikitext2,ptb",
            "--nsamples",
            "4",
            "--seqlen",
            "32",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--dry-run",
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = run_cli(&args, &[]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(!out.contains("null"), "a resolved plan has no nulls: {out}");
        v
    };
    let d = plan(&[]);
    assert_eq!(
        (&d["method"], &d["mode"], &d["group"]),
        (&"copal".into(), &"accumulate".into(), &"row".into())
    );
    assert_eq!(
        (&d["copal"]["perturbation"], &d["copal"]["update"]),
        (&"scaled".into(), &"none".into())
    );
    let s = plan(&["--method", "sparsegpt"]);
    assert_eq!(
        (&s["mode"], &s["group"]),
        (&"accumulate".into(), &"matrix".into())
    );
    assert_eq!(plan(&["--group", "matrix"])["group"], "matrix");
    assert_eq!(plan(&["--method", "wanda"])["mode"], "accumulate");
    assert_eq!(plan(&["--method", "magnitude"])["mode"], "global");
    // The one-shot modes of the paper's baselines stay available.
    assert_eq!(plan(&["--mode", "global"])["mode"], "global");

    assert!(d["estimate"]["flops"].as_f64().unwrap() > 0.0);
    assert_eq!(
        (&d["seqlen"], &d["calib_batch"], &d["dtype"]),
        (&32.into(), &128.into(), &"f32".into())
    );
    // The default run writes what --method copal writes, and says so.
    let tmp = t.tmp.path();
    let a = format!("text:{}", small_text(tmp, "a.txt", 0, 150).display());
    let b = format!("text:{}", small_text(tmp, "b.txt", 9000, 150).display());
    let ds = format!("{a},{b}");
    let run = |out: &str, extra: &[&str]| {
        let out = tmp.join(out);
        let mut args = vec![
            "prune",
            "--model",
            t.dir.to_str().unwrap(),
            "--datasets",
            &ds,
            "--sparsity",
            "50",
            "--nsamples",
            "4",
            "--seqlen",
            "32",
            "--save-masks",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ];
        args.extend_from_slice(extra);
        let r = run_cli(&args, &[]);
        assert_eq!(r.0, 0, "{}", r.2);
        out
    };
    let default = run("default", &[]);
    let copal = run("copal", &["--method", "copal"]);
    for f in ["masks.safetensors", "model.safetensors"] {
        assert!(
            std::fs::read(default.join(f)).unwrap() == std::fs::read(copal.join(f)).unwrap(),
            "{f} differs from --method copal's"
        );
    }
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(default.join("copal.json")).unwrap())
            .unwrap();
    assert_eq!(
        (&rec["plan"]["method"], &rec["plan"]["mode"]),
        (&"copal".into(), &"accumulate".into())
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(default.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["sparsity_config"]["copal"]["method"], "copal");
}

/// A method's flags belong to it: given with another method they are a usage error that names
/// the method, never silently ignored (a new user once ran SparseGPT believing
/// `--perturbation scaled --group row` made it COPAL), and each method validates only its own.
#[test]
fn method_flags_belong_to_their_method() {
    let t = tiny_model(false, 1);
    let data = format!(
        "text:{}",
        small_text(t.tmp.path(), "a.txt", 0, 150).display()
    );
    let out = t.tmp.path().join("unused");
    let plan = |extra: &[&str]| {
        let mut args = vec![
            "prune",
            "--model",
            t.dir.to_str().unwrap(),
            "--datasets",
            &data,
            "--nsamples",
            "4",
            "--seqlen",
            "32",
            "--out",
            out.to_str().unwrap(),
            "--dry-run",
        ];
        args.extend_from_slice(extra);
        run_cli(&args, &[])
    };
    let r = plan(&[
        "--method",
        "sparsegpt",
        "--perturbation",
        "scaled",
        "--group",
        "row",
    ]);
    assert_usage_error(&r, "--perturbation is a flag of --method copal");
    assert!(r.2.contains("--method sparsegpt"), "{}", r.2);
    assert_usage_error(
        &plan(&["--method", "wanda", "--decay", "0.5"]),
        "--decay is a flag of --method copal",
    );
    // ε only matters to COPAL: magnitude is not refused for "ε_W = ε_x = 0" but for the flags.
    let r = plan(&["--method", "magnitude", "--eps-w", "0", "--eps-x", "0"]);
    assert_usage_error(&r, "is a flag of --method copal");
    assert!(!r.2.contains("cannot both be 0"), "{}", r.2);
    assert_usage_error(
        &plan(&["--method", "sparsegpt", "--copal-agg", "l2"]),
        "--copal-agg is a flag of --method copal",
    );
    assert_usage_error(
        &plan(&["--method", "copal", "--percdamp", "0.1"]),
        "--percdamp applies to copal only with update obs",
    );
    assert_usage_error(
        &plan(&["--method", "copal", "--eps-w", "0", "--eps-x", "0"]),
        "cannot both be 0",
    );
    assert_usage_error(
        &plan(&["--method", "wanda", "--ria-a", "1"]),
        "--ria-a is a flag of --method ria",
    );
    assert_usage_error(
        &plan(&["--method", "ria", "--ria-a", "-1"]),
        "--ria-a must be",
    );
    let (code, out, err) = plan(&["--method", "ria", "--ria-a", "1"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((&v["ria"]["a"], &v["group"]), (&1.0.into(), &"row".into()));
    // Given to their own method, they are used.
    let (code, out, err) = plan(&["--method", "copal", "--decay", "0.5", "--copal-agg", "l2"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["copal"]["decay"], 0.5);
    assert_eq!(v["copal"]["agg"], "l2");
    assert_eq!(v["copal"]["eps_w"], 0.01);
}

/// OWL spreads the sparsity over the layers by their outlier ratios, keeps its mean, applies
/// to every method (magnitude then draws calibration data for the allocation), and is
/// refused where it cannot apply.
#[test]
fn owl_allocation_keeps_the_mean_sparsity() {
    let t = tiny_model(false, 1);
    let tmp = t.tmp.path();
    // A fixed relative path: a text dataset's name seeds its windows, and under a random temp
    // directory the two layers' outlier ratios tied for some draws (both layers then at the
    // target, which the spread check below refuses).
    let data = "text:tests/fixtures/state-v1/a.txt".to_string();
    let model = t.dir.to_str().unwrap();
    let run = |method: &str, extra: &[&str]| {
        let out = tmp.join(format!("owl-{method}-{}", extra.len()));
        let mut args = vec![
            "prune",
            "--model",
            model,
            "--datasets",
            &data,
            "--method",
            method,
            "--nsamples",
            "4",
            "--seqlen",
            "32",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ];
        args.extend_from_slice(extra);
        let r = run_cli(&args, &[]);
        (r, out)
    };
    for method in ["wanda", "magnitude", "copal"] {
        let (r, out) = run(
            method,
            &[
                "--allocate",
                "owl",
                "--sparsity",
                "60",
                "--owl-lambda",
                "0.1",
            ],
        );
        assert_eq!(r.0, 0, "{method}: {}", r.2);
        let rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("copal.json")).unwrap())
                .unwrap();
        let report = &rec["steps"][0]["report"];
        let targets: Vec<f64> = report["layer_targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{method}: no layer targets"))
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(targets.len(), 2);
        assert!(
            ((targets[0] + targets[1]) / 2.0 - 0.6).abs() < 1e-9,
            "{targets:?}"
        );
        // Two layers with different outlier ratios sit at the ends of the ±λ range.
        assert!((targets[0] - targets[1]).abs() > 0.199, "{targets:?}");
        let measured: Vec<f64> = report["layer_sparsity"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        // Within the flooring of ⌊s · 64⌋ per row of the tiny model's 64 inputs.
        for (m, t) in measured.iter().zip(&targets) {
            assert!(
                (m - t).abs() < 1.0 / 64.0,
                "{method}: layer at {m}, target {t}"
            );
        }
        // The rounding is distributed: the model is at 60% to within half the rows of one
        // linear (128 of the 73,728 pruned weights), where flooring each layer gives 59.4%.
        let total = rec["sparsity"].as_f64().unwrap();
        assert!(
            (total - 0.6).abs() <= 64.0 / 73728.0,
            "{method}: the model is at {total}"
        );
    }
    assert_usage_error(
        &run("wanda", &["--allocate", "owl", "--pattern", "2:4"]).0,
        "--allocate owl spreads unstructured sparsity",
    );
    assert_usage_error(
        &run("dense", &["--allocate", "owl"]).0,
        "does not apply to dense",
    );
    assert_usage_error(
        &run("wanda", &["--owl-m", "3"]).0,
        "--owl-m is not a setting of allocate uniform",
    );
}

/// `--update obs` keeps a mask-only method's mask bit for bit, reconstructs the kept weights
/// (lower relative output error than masking alone on every linear), and works in every mode
/// and pattern.
#[test]
fn update_obs_keeps_the_mask_and_lowers_the_error() {
    let t = tiny_model(false, 1);
    let tmp = t.tmp.path();
    let a = format!("text:{}", small_text(tmp, "a.txt", 0, 150).display());
    let b = format!("text:{}", small_text(tmp, "b.txt", 9000, 150).display());
    let model = t.dir.to_str().unwrap();
    let both = format!("{a},{b}");
    let run = |tag: &str, args: &[&str]| -> std::path::PathBuf {
        let out = tmp.join(tag);
        let mut v = vec![
            "prune",
            "--model",
            model,
            "--datasets",
            &both,
            "--nsamples",
            "4",
            "--seqlen",
            "32",
            "--save-masks",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ];
        v.extend_from_slice(args);
        let r = run_cli(&v, &[]);
        assert_eq!(r.0, 0, "{tag}: {}", r.2);
        out
    };
    let read = |p: std::path::PathBuf| std::fs::read(p).unwrap();
    let mask_of = |dir: &std::path::Path, name: &str| -> Vec<u8> {
        let m = copal::checkpoint::Shard::open(&dir.join("masks.safetensors")).unwrap();
        m.bytes(name).unwrap().to_vec()
    };
    for method in ["copal", "wanda", "magnitude", "ria"] {
        // With the dense activations propagated, every layer sees the same inputs with and
        // without the update: every mask is the same.
        let dense = ["--method", method, "--propagate", "dense"];
        let none = run(&format!("{method}-dense-none"), &dense);
        let obs = run(
            &format!("{method}-dense-obs"),
            &[&dense[..], &["--update", "obs"]].concat(),
        );
        assert!(
            read(none.join("masks.safetensors")) == read(obs.join("masks.safetensors")),
            "{method}: the masks differ"
        );
        // Propagating the pruned layers (the default), layer 0 still sees the same inputs; the
        // later layers see the reconstructed outputs and choose their masks from those.
        let none = run(&format!("{method}-none"), &["--method", method]);
        let obs = run(
            &format!("{method}-obs"),
            &["--method", method, "--update", "obs"],
        );
        for lin in copal::model::Linear::ALL {
            let name = lin.tensor_name(0);
            assert!(
                mask_of(&none, &name) == mask_of(&obs, &name),
                "{method}: {name} differs"
            );
        }
        assert!(
            read(none.join("model.safetensors")) != read(obs.join("model.safetensors")),
            "{method}: the weights were not reconstructed"
        );
        let rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(obs.join("copal.json")).unwrap())
                .unwrap();
        let linears = rec["steps"][1]["report"]["linears"].as_array().unwrap();
        assert_eq!(linears.len(), 14);
        for l in linears {
            let (r, m) = (
                l["recon_error"].as_f64().unwrap(),
                l["mask_error"].as_f64().unwrap(),
            );
            assert!(
                r < m,
                "{method} {}: reconstructed {r} vs masked {m}",
                l["name"]
            );
        }
    }
    for mode in ["global", "sequential", "accumulate"] {
        for pattern in ["unstructured", "2:4"] {
            let out = run(
                &format!("copal-{mode}-{}", pattern.replace(':', "of")),
                &[
                    "--method",
                    "copal",
                    "--update",
                    "obs",
                    "--mode",
                    mode,
                    "--pattern",
                    pattern,
                ],
            );
            let rec: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("copal.json")).unwrap())
                    .unwrap();
            assert_eq!(rec["sparsity"], 0.5, "{mode} {pattern}");
        }
    }
    // Magnitude accumulates XᵀX when it reconstructs.
    run(
        "magnitude-acc",
        &[
            "--method",
            "magnitude",
            "--update",
            "obs",
            "--mode",
            "accumulate",
        ],
    );
    assert_usage_error(
        &run_cli(
            &[
                "prune",
                "--model",
                model,
                "--datasets",
                &a,
                "--out",
                "x",
                "--method",
                "sparsegpt",
                "--update",
                "obs",
                "--dry-run",
            ],
            &[],
        ),
        "--update is a flag of --method copal, --method wanda, --method magnitude, --method ria",
    );
    assert_usage_error(
        &run_cli(
            &[
                "prune",
                "--model",
                model,
                "--datasets",
                &a,
                "--out",
                "x",
                "--method",
                "copal",
                "--percdamp",
                "0.1",
                "--dry-run",
            ],
            &[],
        ),
        "--percdamp applies to copal only with update obs",
    );
}

/// A state accumulated with `--update obs` carries XᵀX beside COPAL's importance and continues
/// bit-identically to one pass; a state without XᵀX is refused, saying how to start one.
#[test]
fn update_obs_continues_through_the_state() {
    let t = tiny_model(false, 1);
    let tmp = t.tmp.path();
    let a = format!("text:{}", small_text(tmp, "a.txt", 0, 150).display());
    let b = format!("text:{}", small_text(tmp, "b.txt", 9000, 150).display());
    let model = t.dir.to_str().unwrap();
    let run = |datasets: &str, out: &str, state: &std::path::Path, extra: &[&str]| {
        let out = tmp.join(out);
        let mut v = vec![
            "prune",
            "--model",
            model,
            "--datasets",
            datasets,
            "--method",
            "copal",
            "--nsamples",
            "4",
            "--seqlen",
            "32",
            "--state",
            state.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ];
        v.extend_from_slice(extra);
        (run_cli(&v, &[]), out)
    };
    let obs = ["--update", "obs"];
    let (s1, s2) = (tmp.join("one.state"), tmp.join("two.state"));
    let (r, one) = run(&format!("{a},{b}"), "one", &s1, &obs);
    assert_eq!(r.0, 0, "{}", r.2);
    assert_eq!(run(&a, "two-a", &s2, &obs).0 .0, 0);
    let (r, two) = run(&b, "two", &s2, &obs);
    assert_eq!(r.0, 0, "{}", r.2);
    assert!(
        std::fs::read(&s1).unwrap() == std::fs::read(&s2).unwrap(),
        "states differ"
    );
    assert!(
        std::fs::read(one.join("model.safetensors")).unwrap()
            == std::fs::read(two.join("model.safetensors")).unwrap(),
        "continuing through the state differs from one pass"
    );
    let names = copal::checkpoint::Shard::open(&s1).unwrap().names();
    assert!(names.contains(&"model.layers.0.self_attn.q_proj.weight".to_string()));
    assert!(names.contains(&"model.layers.0.self_attn.q_proj.weight.xtx".to_string()));
    assert!(!names.contains(&"model.layers.0.self_attn.k_proj.weight.xtx".to_string()));
    // A state made without the update holds no input statistic (XᵀX) for the update.
    let plain = tmp.join("plain.state");
    assert_eq!(run(&a, "plain-a", &plain, &[]).0 .0, 0);
    let (r, _) = run(&b, "plain-b", &plain, &obs);
    assert_user_error(&r, "holds no input statistic for update obs");
    assert!(
        r.2.contains("start a new state file with update obs"),
        "{}",
        r.2
    );
}
