//! `copal eval --tasks`: zero-shot items turned into requests and scored as
//! lm-evaluation-harness does. The fast tier checks the scores against the model's own
//! full-logit forward on tiny task files; the full tier against the harness itself.

use crate::common::*;
use copal::checkpoint::Checkpoint;
use copal::model::Llama;
use copal::tokenizer::Tokenizer;
use std::path::Path;
use std::sync::Arc;

/// A column of a task file.
enum Col {
    Str(Vec<&'static str>),
    Int(Vec<i64>),
}

/// A parquet file with these columns, as the hub serves a task's split.
fn write_parquet(path: &Path, cols: &[(&str, Col)]) {
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    let fields: Vec<String> = cols
        .iter()
        .map(|(n, c)| match c {
            Col::Str(_) => format!("REQUIRED BYTE_ARRAY {n} (UTF8);"),
            Col::Int(_) => format!("REQUIRED INT64 {n};"),
        })
        .collect();
    let schema =
        Arc::new(parse_message_type(&format!("message m {{ {} }}", fields.join(" "))).unwrap());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w =
        SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build()))
            .unwrap();
    let mut rg = w.next_row_group().unwrap();
    for (_, c) in cols {
        let mut col = rg.next_column().unwrap().unwrap();
        match c {
            Col::Str(v) => {
                let v: Vec<ByteArray> = v.iter().map(|s| ByteArray::from(*s)).collect();
                col.typed::<ByteArrayType>()
                    .write_batch(&v, None, None)
                    .unwrap();
            }
            Col::Int(v) => {
                col.typed::<Int64Type>().write_batch(v, None, None).unwrap();
            }
        }
        col.close().unwrap();
    }
    rg.close().unwrap();
    w.close().unwrap();
}

/// RTE (flat, one context per item) and WinoGrande (one context per option, a shared
/// continuation), a few items each, with trailing spaces and a blank to move.
fn tiny_tasks(dir: &Path) {
    write_parquet(
        &dir.join("rte/validation.parquet"),
        &[
            (
                "sentence1",
                Col::Str(vec!["The cat sat.", "It rained all day.", "Bob is tall. "]),
            ),
            (
                "sentence2",
                Col::Str(vec!["A cat sat.", "The sun shone.", "Bob is short."]),
            ),
            ("label", Col::Int(vec![0, 1, 1])),
            ("idx", Col::Int(vec![0, 1, 2])),
        ],
    );
    write_parquet(
        &dir.join("winogrande/validation.parquet"),
        &[
            (
                "sentence",
                Col::Str(vec![
                    "Ann gave Bob the cup because _ was thirsty.",
                    "The box held the ball since _ was big.",
                ]),
            ),
            ("option1", Col::Str(vec!["Ann", "the box"])),
            ("option2", Col::Str(vec!["Bob", "the ball"])),
            ("answer", Col::Str(vec!["2", "1"])),
        ],
    );
}

/// An item's requests, (context, continuation) per choice, and its gold choice.
type Expected = (Vec<(String, String)>, usize);

/// Σ log p(cont | ctx) from the model's whole-sequence logits, in f64.
fn reference_ll(model: &Llama, ckpt: &Checkpoint, ctx: &[u32], cont: &[u32]) -> f64 {
    let ids: Vec<u32> = ctx.iter().chain(cont).copied().collect();
    let logits = model.forward(ckpt, &ids[..ids.len() - 1]).unwrap();
    let rows: Vec<Vec<f32>> = logits.to_vec2().unwrap();
    (0..cont.len())
        .map(|k| {
            let row = &rows[ctx.len() - 1 + k];
            let m = row.iter().fold(f64::MIN, |a, &x| a.max(x as f64));
            let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
            row[cont[k] as usize] as f64 - lse
        })
        .sum()
}

/// The harness's `_encode_pair`, written out again: trailing spaces of the context move to
/// the continuation; the continuation's tokens are enc(whole)[len(enc(ctx)):].
fn pair(tok: &Tokenizer, ctx: &str, cont: &str) -> (Vec<u32>, Vec<u32>) {
    let kept = ctx.trim_end();
    let cont = format!("{}{cont}", &ctx[kept.len()..]);
    let whole = tok.encode(&format!("{kept}{cont}")).unwrap();
    let c = tok.encode(kept).unwrap();
    let rest = whole[c.len()..].to_vec();
    (c, rest)
}

#[test]
fn scores_are_the_models_own_log_likelihoods_of_the_harness_requests() {
    let tiny = tiny_model(false, 1);
    let tasks = tiny.tmp.path().join("tasks");
    tiny_tasks(&tasks);
    let samples = tiny.tmp.path().join("samples.jsonl");
    let (out, _) = copal("eval")
        .flag("--model", tiny.dir.display())
        .flag("--tasks", "rte,winogrande")
        .flag("--tasks-dir", tasks.display())
        .flag("--samples", samples.display())
        .args(["--json", "--quiet"])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["results"].as_array().unwrap().len(),
        0,
        "no perplexity asked"
    );

    let ckpt = Checkpoint::open(&tiny.dir).unwrap();
    let model = Llama::load(
        &ckpt,
        &ckpt.config,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let tok = Tokenizer::open(&tiny.dir).unwrap();
    // The requests as the harness builds them (api/task.py, the YAMLs), written out here.
    let rte = [
        ("The cat sat.", "A cat sat.", 0),
        ("It rained all day.", "The sun shone.", 1),
        ("Bob is tall. ", "Bob is short.", 1),
    ]
    .map(|(s1, s2, gold)| {
        let ctx = format!("{s1}\nQuestion: {s2} True or False?\nAnswer:");
        (
            vec![
                (ctx.clone(), " True".to_string()),
                (ctx, " False".to_string()),
            ],
            gold,
        )
    });
    let wino = [
        (
            "Ann gave Bob the cup because ",
            ["Ann", "Bob"],
            " was thirsty.",
            1,
        ),
        (
            "The box held the ball since ",
            ["the box", "the ball"],
            " was big.",
            0,
        ),
    ]
    .map(|(pre, opts, rest, gold)| {
        (
            opts.map(|o| (format!("{pre}{o}"), format!(" {}", rest.trim())))
                .to_vec(),
            gold,
        )
    });
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&samples)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    let expected: Vec<(&str, &Expected)> = rte
        .iter()
        .map(|r| ("rte", r))
        .chain(wino.iter().map(|w| ("winogrande", w)))
        .collect();
    for (s, (task, (reqs, gold))) in lines.iter().zip(&expected) {
        assert_eq!(s["task"], *task);
        assert_eq!(s["gold"], *gold);
        let lls: Vec<f64> = s["lls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(lls.len(), reqs.len());
        for ((ctx, cont), got) in reqs.iter().zip(&lls) {
            let (c, k) = pair(&tok, ctx, cont);
            let want = reference_ll(&model, &ckpt, &c, &k);
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                "{task} {ctx:?}{cont:?}: copal {got}, model's own logits {want}"
            );
        }
        let best = (0..lls.len()).fold(0, |b, i| if lls[i] > lls[b] { i } else { b });
        assert_eq!(s["acc"], (best == *gold) as u8 as f64, "{s}");
    }
    // The printed record: metric means of the samples, split, BOS (the tiny tokenizer
    // prepends one), items.
    for (t, n) in [("rte", 3usize), ("winogrande", 2)] {
        let r = v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["task"] == t)
            .unwrap();
        assert_eq!(r["items"], n);
        assert_eq!(r["split"], "validation");
        assert_eq!(r["bos"], true);
        let acc: f64 = lines
            .iter()
            .filter(|s| s["task"] == t)
            .map(|s| s["acc"].as_f64().unwrap())
            .sum::<f64>()
            / n as f64;
        assert_eq!(r["metrics"][0]["metric"], "acc");
        assert!((r["metrics"][0]["value"].as_f64().unwrap() - acc).abs() < 1e-12);
    }
}

#[test]
fn bos_and_limit_change_what_is_scored() {
    let tiny = tiny_model(false, 1);
    let tasks = tiny.tmp.path().join("tasks");
    tiny_tasks(&tasks);
    let run = |extra: &[&str]| -> serde_json::Value {
        let (out, _) = copal("eval")
            .flag("--model", tiny.dir.display())
            .flag("--tasks", "rte")
            .flag("--tasks-dir", tasks.display())
            .args(["--json", "--quiet"])
            .args(extra.iter().copied())
            .ok();
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["tasks"][0].clone()
    };
    let auto = run(&[]);
    let no = run(&["--bos", "no"]);
    assert_eq!(auto["bos"], true);
    assert_eq!(no["bos"], false);
    assert_eq!(run(&["--bos", "yes"])["bos"], true);
    assert_eq!(run(&["--limit", "2"])["items"], 2);
}

#[test]
fn task_mistakes_are_explained() {
    let tiny = tiny_model(false, 1);
    let empty = tiny.tmp.path().join("none");
    let m = tiny.dir.display().to_string();
    assert_user_error(
        &copal("eval")
            .flag("--model", &m)
            .flag("--tasks", "piqa")
            .run(),
        "arc_challenge",
    );
    assert_user_error(
        &copal("eval")
            .flag("--model", &m)
            .flag("--tasks", "boolq")
            .flag("--tasks-dir", empty.display())
            .run(),
        "fetch-task-data.sh",
    );
    assert_usage_error(
        &copal("eval").flag("--model", &m).flag("--limit", 5).run(),
        "--tasks",
    );
}

/// The harness itself on the test model: scripts/zeroshot-harness-check.py scores the first
/// items of every task with lm-eval 0.4.13's `hf` backend and compares each log-likelihood
/// (1e-4 relative) and each item's acc and acc_norm with copal's.
#[test]
#[ignore = "full tier, ./scripts/test.sh: the test model, the task copies and lm-eval"]
fn the_harness_gives_the_same_log_likelihoods_and_scores() {
    let tasks = test_tasks();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/zeroshot-harness-check.py");
    let out = python("lm_eval")
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_copal"))
        .arg(test_model())
        .arg(&tasks)
        .args(["--limit", "12"])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_DATASETS_OFFLINE", "1")
        .output()
        .expect("running the harness check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "copal and lm-eval disagree\n--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One comparison line per task: "boolq          items   12  max rel ll diff …".
    let compared = stdout
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("items"))
        .count();
    assert_eq!(compared, 7, "{stdout}");
}

/// Packing an item's requests over their shared prefix gives each request's own
/// log-likelihood on every family, Mistral's window (16 tokens, shorter than these inputs)
/// and Qwen's biases and q/k norms included; one input longer than the model's length is cut
/// from the left, as the harness cuts it.
#[test]
fn packed_requests_score_as_each_request_alone_on_every_family() {
    use copal::eval::choice::{loglikelihoods, Encoded};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families");
    for fam in ["llama3", "mistral", "qwen2", "qwen3"] {
        let dir = root.join(fam);
        let ckpt = Checkpoint::open(&dir).unwrap();
        let model = Llama::load(
            &ckpt,
            &ckpt.config,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let ids = |seed: u32, n: usize| -> Vec<u32> {
            (0..n as u32).map(|i| (i * 7 + seed * 31) % 250).collect()
        };
        let items = vec![
            // A context of 30 tokens, three continuations of 1, 4 and 9 tokens.
            [1, 4, 9]
                .map(|n| Encoded {
                    ctx: ids(1, 30),
                    cont: ids(n as u32 + 2, n),
                })
                .to_vec(),
            // Contexts that share only their first 20 tokens (WinoGrande's shape).
            (0..2)
                .map(|k| Encoded {
                    ctx: [ids(3, 20), ids(10 + k, 5)].concat(),
                    cont: ids(9, 6),
                })
                .collect(),
        ];
        let got = loglikelihoods(&model, &ckpt, &items, 1 << 20, "test").unwrap();
        for (reqs, lls) in items.iter().zip(&got) {
            for (r, ll) in reqs.iter().zip(lls) {
                let want = reference_ll(&model, &ckpt, &r.ctx, &r.cont);
                assert!(
                    (ll - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "{fam}: packed {ll}, alone {want}"
                );
            }
        }
        // Cut to 24 tokens of input: the context's first tokens are dropped.
        let long = vec![vec![Encoded {
            ctx: ids(5, 40),
            cont: ids(6, 3),
        }]];
        let got = loglikelihoods(&model, &ckpt, &long, 24, "test").unwrap();
        let all = [ids(5, 40), ids(6, 3)].concat();
        let kept = &all[all.len() - 25..];
        let want = reference_ll(
            &model,
            &ckpt,
            &kept[..kept.len() - 3],
            &kept[kept.len() - 3..],
        );
        assert!(
            (got[0][0] - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{fam}: cut {} vs {want}",
            got[0][0]
        );
    }
}

/// A task file is untrusted: one that is not parquet, or whose rows lack the task's fields or
/// name a gold choice that does not exist, stops the run naming the file (and the row).
#[test]
fn broken_task_files_are_refused_naming_the_file() {
    let tiny = tiny_model(false, 1);
    let tasks = tiny.tmp.path().join("tasks");
    let m = tiny.dir.display().to_string();
    let eval = |task: &str| {
        copal("eval")
            .flag("--model", &m)
            .flag("--tasks", task)
            .flag("--tasks-dir", tasks.display())
            .run()
    };
    std::fs::create_dir_all(tasks.join("rte")).unwrap();
    std::fs::write(tasks.join("rte/validation.parquet"), b"PAR1 not really").unwrap();
    assert_user_error(&eval("rte"), "rte/validation.parquet");
    // WinoGrande rows in RTE's place: no sentence1.
    write_parquet(
        &tasks.join("rte/validation.parquet"),
        &[
            ("sentence", Col::Str(vec!["a _ b"])),
            ("answer", Col::Str(vec!["1"])),
        ],
    );
    let res = eval("rte");
    assert_user_error(&res, "sentence1");
    assert!(res.2.contains("row 0"), "{}", res.2);
    // A label beyond the two choices.
    write_parquet(
        &tasks.join("rte/validation.parquet"),
        &[
            ("sentence1", Col::Str(vec!["a"])),
            ("sentence2", Col::Str(vec!["b"])),
            ("label", Col::Int(vec![5])),
        ],
    );
    assert_user_error(&eval("rte"), "gold choice 5 of 2");
}

/// `copal prune --eval-tasks` scores the dense model and the model after every step exactly as
/// `copal eval --tasks` scores those checkpoints, and its matrices' average and BWT are the
/// definitions of `eval::score` (BWT = mean over earlier steps i and tasks of R[K] − R[i]).
#[test]
fn prune_scores_the_tasks_after_every_step_as_eval_does() {
    let tiny = tiny_model(false, 1);
    let tmp = tiny.tmp.path();
    let tasks = tmp.join("tasks");
    tiny_tasks(&tasks);
    // Enough items that the two steps' masks change some answers.
    let lines: Vec<&'static str> = fixture_text(7, 120)
        .into_iter()
        .map(|l| &*Box::leak(l.into_boxed_str()))
        .collect();
    write_parquet(
        &tasks.join("rte/validation.parquet"),
        &[
            ("sentence1", Col::Str(lines[..60].to_vec())),
            ("sentence2", Col::Str(lines[60..].to_vec())),
            ("label", Col::Int((0..60).map(|i| i % 2).collect())),
            ("idx", Col::Int((0..60).collect())),
        ],
    );
    // And WinoGrande items, whose answers hang on how the model reads the rest of the sentence
    // after each option (a tiny model answers RTE with one label throughout).
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let word = |l: &str, k: usize| l.split_whitespace().nth(k).unwrap_or("it").to_string();
    write_parquet(
        &tasks.join("winogrande/validation.parquet"),
        &[
            (
                "sentence",
                Col::Str(
                    (0..60)
                        .map(|i| leak(format!("{} _ {}", lines[i], lines[60 + i])))
                        .collect(),
                ),
            ),
            (
                "option1",
                Col::Str((0..60).map(|i| leak(word(lines[i], 0))).collect()),
            ),
            (
                "option2",
                Col::Str((0..60).map(|i| leak(word(lines[60 + i], 1))).collect()),
            ),
            (
                "answer",
                Col::Str(
                    (0..60)
                        .map(|i| if i % 2 == 0 { "1" } else { "2" })
                        .collect(),
                ),
            ),
        ],
    );
    // The calibration windows are drawn by a generator seeded with the dataset's name, which
    // holds the file's path as given: relative paths from the temporary directory give the
    // same windows, masks and answers on every run and machine (absolute temporary paths
    // changed them from run to run, and with them whether the two steps' answers differ,
    // which this test needs).
    small_text(tmp, "a.txt", 1, 200);
    small_text(tmp, "b.txt", 2, 200);
    let out = tmp.join("out");
    let (json, _) = tiny_prune(&tiny.dir, "text:a.txt,text:b.txt")
        .current_dir(tmp)
        .args(["--method", "wanda", "--mode", "global", "--sparsity", "70"])
        .flag("--out", out.display())
        .flag("--eval-tasks", "rte,winogrande")
        .flag("--tasks-dir", tasks.display())
        .args(["--save-steps", "--json"])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let eval = |model: &Path| -> Vec<f64> {
        let (out, _) = copal("eval")
            .flag("--model", model.display())
            .flag("--tasks", "rte,winogrande")
            .flag("--tasks-dir", tasks.display())
            .args(["--json", "--quiet"])
            .ok();
        let e: serde_json::Value = serde_json::from_str(&out).unwrap();
        e["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["metrics"][0]["value"].as_f64().unwrap())
            .collect()
    };
    let acc = v["scores"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == "acc")
        .expect("an acc matrix")
        .clone();
    assert_eq!(acc["columns"], serde_json::json!(["rte", "winogrande"]));
    assert_eq!(acc["better"], "higher");
    let row = |r: &serde_json::Value| -> Vec<f64> {
        r.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let rows: Vec<Vec<f64>> = acc["rows"].as_array().unwrap().iter().map(row).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(row(&acc["dense"]), eval(&tiny.dir), "the dense row");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("copal.json")).unwrap()).unwrap();
    for (k, step) in record["steps"].as_array().unwrap().iter().enumerate() {
        let dir = out.join(step["dir"].as_str().unwrap());
        assert_eq!(
            rows[k],
            eval(&dir),
            "step {} against copal eval on {dir:?}",
            k + 1
        );
    }
    assert_ne!(rows[0], rows[1], "the steps' masks change some answers");
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let avg = acc["average"].as_f64().unwrap();
    assert!((avg - mean(&rows[1])).abs() < 1e-12, "{acc}");
    let d: Vec<f64> = rows[1].iter().zip(&rows[0]).map(|(x, y)| x - y).collect();
    assert!(
        (acc["bwt"].as_f64().unwrap() - mean(&d)).abs() < 1e-12,
        "{acc}"
    );
    assert_eq!(
        record["scores"], v["scores"],
        "copal.json holds the same matrices"
    );
    // The run's perplexity was not asked for: no perplexity matrix, no old ppl fields.
    assert!(v["ppl_matrix"].is_null());
    // `copal inspect` reads the record back and prints the table.
    let (text, _) = copal("inspect").arg(out.display()).ok();
    assert!(text.contains("acc after step"), "{text}");
}

/// Task settings without tasks are refused, naming the flag.
#[test]
fn task_flags_need_eval_tasks() {
    let tiny = tiny_model(false, 1);
    let a = small_text(tiny.tmp.path(), "a.txt", 1, 200);
    let r = tiny_prune(&tiny.dir, &format!("text:{}", a.display()))
        .flag("--out", tiny.tmp.path().join("out").display())
        .flag("--task-limit", 3)
        .run();
    assert_usage_error(&r, "--eval-tasks");
    let r = tiny_prune(&tiny.dir, &format!("text:{}", a.display()))
        .flag("--out", tiny.tmp.path().join("out").display())
        .flag("--tasks-dir", tiny.tmp.path().display())
        .run();
    assert_usage_error(&r, "--eval-tasks");
    // The environment's tasks directory (set for copal eval) does not ask for tasks.
    tiny_prune(&tiny.dir, &format!("text:{}", a.display()))
        .flag("--out", tiny.tmp.path().join("out-env").display())
        .env("COPAL_TASKS_DIR", tiny.tmp.path().display())
        .ok();
    let r = tiny_prune(&tiny.dir, &format!("text:{}", a.display()))
        .flag("--out", tiny.tmp.path().join("out").display())
        .flag("--eval-tasks", "rte")
        .flag("--tasks-dir", tiny.tmp.path().join("none").display())
        .run();
    assert_user_error(&r, "no local copy of rte");
}

/// `copal experiment` with `eval_tasks`: every run scores the tasks after every step, and the
/// report has a table per metric (each cell the mean over orders of the runs' last row) and a
/// plot of the average.
#[test]
fn an_experiment_grid_carries_tasks_into_its_report() {
    let t = tiny_model(true, 1);
    let tmp = t.tmp.path();
    let tasks = tmp.join("tasks");
    tiny_tasks(&tasks);
    let a = small_text(tmp, "a.txt", 0, 150);
    let b = small_text(tmp, "b.txt", 9000, 150);
    let results = tmp.join("results");
    let cfg = serde_json::json!({
        "name": "tiny",
        "model": t.dir,
        "datasets": [format!("text:{}", a.display()), format!("text:{}", b.display())],
        "methods": [{"method": "wanda", "mode": "global"}, {"method": "dense"}],
        "nsamples": 4, "seqlen": 32, "max_windows": 2, "allow_calib_on_eval": true,
        "eval_tasks": ["rte", "winogrande"], "tasks_dir": tasks, "results": results,
    });
    let cfg_path = tmp.join("grid.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    copal("experiment")
        .flag("--config", cfg_path.display())
        .arg("--quiet")
        .ok();
    let runs: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(results.join("runs.json")).unwrap()).unwrap();
    assert_eq!(runs.len(), 4);
    let last_acc = |r: &serde_json::Value| -> Vec<f64> {
        let m = r["scores"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["metric"] == "acc")
            .expect("an acc matrix per run");
        assert_eq!(m["columns"], serde_json::json!(["rte", "winogrande"]));
        let rows = m["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "one row per step");
        rows[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let wanda: Vec<Vec<f64>> = runs
        .iter()
        .filter(|r| r["method"] == "wanda")
        .map(last_acc)
        .collect();
    let md = std::fs::read_to_string(results.join("table.md")).unwrap();
    let table = md
        .split("## Zero-shot acc after the last step")
        .nth(1)
        .unwrap_or_else(|| panic!("no zero-shot table in\n{md}"));
    let line = table
        .lines()
        .find(|l| l.contains("| wanda global |"))
        .unwrap_or_else(|| panic!("no wanda row in {table}"));
    let cells: Vec<&str> = line.split('|').map(str::trim).collect();
    for j in 0..2 {
        let mean = (wanda[0][j] + wanda[1][j]) / 2.0;
        assert_eq!(cells[3 + j], format!("{mean:.4}"), "{line}");
    }
    assert!(table.contains("Dense model: rte "), "{table}");
    let svg = std::fs::read_to_string(results.join("plots/avg-acc-u50.svg")).unwrap();
    assert!(svg.contains("wanda global"), "the plot has its bars");
    // Identical models are scored once: 4 runs × (dense + 2 steps) × 2 tasks would be 24
    // scorings; the distinct models are the dense one, wanda-global's two (one per dataset,
    // shared by both orders) and at most the dense setting's own output.
    let cache: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("eval-cache.json")).unwrap())
            .unwrap();
    let scored = cache
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.contains("|task|"))
        .count();
    assert!((6..=8).contains(&scored), "{scored} task results cached");
}
