//! Issue #19: every mistake that can be known before the first step is reported before it,
//! with exit code 2 for usage errors; nothing the user owns is replaced; a fixed input keeps
//! the finished steps before it.

use crate::common::*;
use std::path::Path;

/// A tiny-model prune, not quiet; `--nsamples 4 --seqlen 32` unless `extra` sets them.
fn loud_cmd(model: &str, datasets: &str, out: &str, extra: &[&str]) -> CopalCmd {
    let mut c = copal("prune")
        .flag("--model", model)
        .flag("--datasets", datasets)
        .flag("--out", out);
    for (flag, value) in [("--nsamples", "4"), ("--seqlen", "32")] {
        if !extra.contains(&flag) {
            c = c.flag(flag, value);
        }
    }
    c.args(extra)
}

/// [`loud_cmd`] with `--quiet`.
fn prune_cmd(model: &str, datasets: &str, out: &str, extra: &[&str]) -> CopalCmd {
    loud_cmd(model, datasets, out, extra).arg("--quiet")
}

/// The second dataset's mistakes (a JSON field that is not there, a text shorter than a
/// window, a missing file) stop the run before the first step: no step's work is done.
#[test]
fn a_later_datasets_mistake_is_found_before_the_first_step() {
    let t = tiny_model(true, 1);
    let tmp = t.tmp.path();
    let a = format!("text:{}", small_text(tmp, "a.txt", 0, 150).display());
    let docs = tmp.join("docs.jsonl");
    std::fs::write(&docs, "{\"body\": \"some text\"}\n").unwrap();
    let short = tmp.join("short.txt");
    std::fs::write(&short, "too short").unwrap();
    let out = tmp.join("o");
    let model = t.dir.to_str().unwrap();
    for (second, needle) in [
        (
            format!("jsonl:{}", docs.display()),
            "no string field \"text\"",
        ),
        (format!("text:{}", short.display()), "fewer than seqlen + 1"),
        ("text:/no/such.txt".to_string(), "/no/such.txt"),
    ] {
        let ds = format!("{a},{second}");
        // Not quiet: the step progress lines would show on stderr.
        let r = loud_cmd(model, &ds, out.to_str().unwrap(), &[]).run();
        assert_user_error(&r, needle);
        assert!(!r.2.contains("step 1/2"), "a step ran first:\n{}", r.2);
        assert!(!out.exists());
        assert!(!tmp.join(".o.copal-partial").exists());
    }
}

/// `--dry-run` runs the same checks: it refuses what the run would refuse.
#[test]
fn dry_run_refuses_plans_that_cannot_run() {
    let t = tiny_model(true, 1);
    let tmp = t.tmp.path();
    let a = format!("text:{}", small_text(tmp, "a.txt", 0, 150).display());
    let model = t.dir.to_str().unwrap();
    let exists = tmp.join("exists");
    std::fs::create_dir_all(&exists).unwrap();
    std::fs::write(exists.join("keep.txt"), "x").unwrap();
    let out = tmp.join("o");
    let o = out.to_str().unwrap();
    let dry = |model: &str, out: &str, extra: &[&str]| {
        let mut e = vec!["--dry-run"];
        e.extend_from_slice(extra);
        prune_cmd(model, &a, out, &e).run()
    };
    assert_user_error(&dry("/no/such/model", o, &[]), "not found");
    assert_usage_error(&dry(model, exists.to_str().unwrap(), &[]), "already exists");
    assert_usage_error(
        &dry(model, o, &["--seqlen", "100000"]),
        "max_position_embeddings",
    );
    assert_usage_error(
        &dry(model, o, &["--seqlen", "1"]),
        "--seqlen must be at least 2",
    );
    assert_usage_error(&dry(model, model, &["--force"]), "is the input model");
    assert_usage_error(
        &dry(model, o, &["--state", "/no/such/dir/x.state"]),
        "/no/such/dir does not exist",
    );
    assert_usage_error(
        &dry(model, o, &["--state", tmp.to_str().unwrap()]),
        "is a directory",
    );
    let (code, stdout, err) = dry(model, o, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!stdout.contains("null"), "{stdout}");
    assert!(!out.exists(), "a dry run writes nothing");
}

/// Usage errors exit 2 (scripts tell them from a failed run), with no backtrace whatever
/// RUST_BACKTRACE says.
#[test]
fn usage_errors_exit_2_without_backtraces() {
    let t = tiny_model(true, 1);
    let tmp = t.tmp.path();
    let a = format!("text:{}", small_text(tmp, "a.txt", 0, 150).display());
    let model = t.dir.to_str().unwrap();
    let o = tmp.join("o");
    let o = o.to_str().unwrap();
    let bt = ("RUST_BACKTRACE", "1");
    for (extra, needle) in [
        (&["--sparsity", "0.5"][..], "--sparsity 0.5 is a percentage"),
        (&["--pattern", "4:2"][..], "--pattern 4:2: need 0 < N < M"),
        (&["--nsamples", "0"][..], "--nsamples must be at least 1"),
        (
            &["--device", "gpu"][..],
            "--device gpu: expected cpu, cuda or cuda:N",
        ),
    ] {
        let r = prune_cmd(model, &a, o, extra).env(bt.0, bt.1).run();
        assert_usage_error(&r, needle);
        assert_eq!(r.2.lines().count(), 1, "one line, no backtrace:\n{}", r.2);
    }
    let r = prune_cmd(model, "wikitext3", o, &[]).env(bt.0, bt.1).run();
    assert_usage_error(&r, "unknown dataset \"wikitext3\"");
    let r = copal("eval")
        .flag("--model", model)
        .flag("--datasets", &a)
        .flag("--max-windows", 0)
        .env(bt.0, bt.1)
        .run();
    assert_usage_error(&r, "--max-windows must be at least 1");
}

/// Calibrating on the text that is evaluated is refused unless asked for, and then marked.
#[test]
fn calibrating_on_the_evaluation_text_is_refused_unless_asked() {
    let t = tiny_model(true, 1);
    let tmp = t.tmp.path();
    let data = fixture_data(tmp);
    let model = t.dir.to_str().unwrap();
    let o = tmp.join("o");
    let d = data.to_str().unwrap();
    let base = ["--data-dir", d, "--eval", "--max-windows", "2", "--json"];
    let run = |extra: &[&str]| {
        let mut e = base.to_vec();
        e.extend_from_slice(extra);
        prune_cmd(model, "wikitext2,ptb", o.to_str().unwrap(), &e).run()
    };
    let r = run(&["--calib-split", "wikitext2=test"]);
    assert_usage_error(
        &r,
        "--eval would measure perplexity on the text that dataset calibrates on (wikitext2)",
    );
    let (code, out, err) = run(&["--calib-split", "wikitext2=test", "--allow-calib-on-eval"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"avg_ppl\""), "{out}");
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(o.join("copal.json")).unwrap()).unwrap();
    assert_eq!(rec["plan"]["allow_calib_on_eval"], true);
    let last = rec["steps"][1]["eval"].as_array().unwrap();
    let marked: Vec<(&str, bool)> = last
        .iter()
        .map(|e| {
            (
                e["dataset"].as_str().unwrap(),
                e["calibrated_on"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(marked, [("wikitext2", true), ("ptb", false)]);
    // A text: file is its own evaluation text, and says so.
    let a = format!("text:{}", small_text(tmp, "a.txt", 0, 150).display());
    let r = prune_cmd(
        model,
        &a,
        tmp.join("p").to_str().unwrap(),
        &["--eval", "--max-windows", "2"],
    )
    .run();
    assert_usage_error(&r, "pass --allow-calib-on-eval");
}

/// A run whose later step fails keeps the earlier finished steps for a rerun that changes only
/// the later dataset: each step's identity covers its own inputs, not the whole command.
#[test]
fn changing_a_later_dataset_keeps_the_finished_steps() {
    let t = tiny_model(true, 1);
    let tmp = t.tmp.path();
    let a = format!("text:{}", small_text(tmp, "a.txt", 0, 150).display());
    let b = format!("text:{}", small_text(tmp, "b.txt", 9000, 150).display());
    let c = format!("text:{}", small_text(tmp, "c.txt", 20000, 150).display());
    let out = tmp.join("o");
    let model = t.dir.to_str().unwrap();
    let o = out.to_str().unwrap();
    // Crash in step 2: found by counting write boundaries of a clean run of step 1 alone.
    prune_cmd(model, &a, tmp.join("one").to_str().unwrap(), &[]).ok();
    let mut crashed = false;
    for at in 20..200 {
        let r = prune_cmd(model, &format!("{a},{b}"), o, &[])
            .env("COPAL_FAULT_AT", at)
            .run();
        if r.0 == 0 {
            std::fs::remove_dir_all(&out).unwrap();
            continue;
        }
        let partial = tmp.join(".o.copal-partial");
        if partial.join("step-1.done.json").exists() && !partial.join("step-2.done.json").exists() {
            crashed = true;
            break;
        }
    }
    assert!(crashed, "no crash point inside step 2");
    // The user changes the second dataset: step 1 is reused.
    prune_cmd(model, &format!("{a},{c}"), o, &[]).ok();
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("copal.json")).unwrap()).unwrap();
    assert_eq!(rec["resumed_steps"], 1, "step 1 kept");
    // And its result is what a clean run of the new command gives.
    let clean = tmp.join("clean");
    prune_cmd(model, &format!("{a},{c}"), clean.to_str().unwrap(), &[]).ok();
    assert!(same_file(
        &out.join("model.safetensors"),
        &clean.join("model.safetensors")
    ));
}

fn same_file(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

/// An experiment file with a typo, or a setting its method does not have, is a usage error
/// at --list time; --list --json says where the results are.
#[test]
fn experiment_files_are_read_strictly() {
    let t = tiny_model(true, 1);
    let tmp = t.tmp.path();
    let a = format!("text:{}", small_text(tmp, "a.txt", 0, 150).display());
    let write = |v: serde_json::Value| {
        let p = tmp.join("grid.json");
        std::fs::write(&p, v.to_string()).unwrap();
        p
    };
    let list = |p: &Path| {
        copal("experiment")
            .flag("--config", p.display())
            .arg("--list")
    };
    let base = serde_json::json!({
        "name": "g", "model": t.dir, "datasets": [a], "nsamples": 4, "seqlen": 32,
        "allow_calib_on_eval": true, "methods": [{"method": "wanda"}],
    });
    let mut typo = base.clone();
    typo["nsamples_typo"] = 16.into();
    let p = write(typo);
    let r = list(&p).run();
    assert_usage_error(
        &r,
        "nsamples_typo is not a key of an experiment file (did you mean nsamples?)",
    );
    let mut stray = base.clone();
    stray["methods"][0]["perturbation"] = "gaussian".into();
    let p = write(stray);
    let r = list(&p).run();
    assert_usage_error(
        &r,
        "methods[0].perturbation is a setting of copal, not of wanda",
    );
    let mut zero = base.clone();
    zero["nsamples"] = 0.into();
    let p = write(zero);
    let r = list(&p).run();
    assert_usage_error(&r, "nsamples must be at least 1");
    let p = write(base);
    let (out, _) = list(&p).arg("--json").ok();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        std::path::PathBuf::from(v["results"].as_str().unwrap()),
        tmp.canonicalize().unwrap().join("results/g")
    );
    assert_eq!(v["runs"][0]["finished"], false);
}
