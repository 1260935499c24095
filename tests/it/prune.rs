//! Pruning runs of the tiny model through the CLI: exact sparsity, masks and untouched
//! tensors in the output, the continual state, determinism across thread counts, and the
//! output-directory rules.

use crate::common::*;
use copal::checkpoint::Checkpoint;
use copal::model::Linear;
use std::path::{Path, PathBuf};

struct Setup {
    t: Tiny,
    a: PathBuf,
    b: PathBuf,
}

fn setup(tied: bool) -> Setup {
    let t = tiny_model(tied, 2);
    let a = small_text(t.tmp.path(), "a.txt", 0, 200);
    let b = small_text(t.tmp.path(), "b.txt", 5000, 200);
    Setup { t, a, b }
}

fn prune(
    s: &Setup,
    datasets: &str,
    out: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let model = s.t.dir.to_str().unwrap().to_string();
    let out = out.to_str().unwrap().to_string();
    let mut args: Vec<&str> = vec![
        "prune",
        "--model",
        &model,
        "--datasets",
        datasets,
        "--out",
        &out,
        "--nsamples",
        "4",
        "--seqlen",
        "32",
        "--quiet",
    ];
    // COPAL unless the test names another method.
    if !extra.contains(&"--method") {
        args.extend(["--method", "copal"]);
    }
    args.extend_from_slice(extra);
    run_cli(&args, env)
}

fn ds(s: &Setup) -> (String, String) {
    (
        format!("text:{}", s.a.display()),
        format!("text:{}", s.b.display()),
    )
}

fn files_of(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn output_has_exact_sparsity_masks_and_untouched_tensors() {
    let s = setup(false);
    let (a, _) = ds(&s);
    let out = s.t.tmp.path().join("out");
    let r = prune(
        &s,
        &a,
        &out,
        &[
            "--sparsity",
            "50",
            "--group",
            "matrix",
            "--save-masks",
            "--json",
        ],
        &[],
    );
    assert_eq!(r.0, 0, "{}", r.2);
    let v: serde_json::Value = serde_json::from_str(&r.1).unwrap();
    assert_eq!(v["sparsity"], 0.5);

    let input = Checkpoint::open(&s.t.dir).unwrap();
    let pruned = Checkpoint::open(&out).unwrap();
    let masks = copal::checkpoint::Shard::open(&out.join("masks.safetensors")).unwrap();
    for l in 0..input.config.num_hidden_layers {
        for lin in Linear::ALL {
            let name = lin.tensor_name(l);
            let (info, bytes) = pruned.raw(&name).unwrap();
            let w: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let zeros = w.iter().filter(|&&x| x == 0.0).count();
            assert_eq!(
                zeros * 2,
                w.len(),
                "{name}: exactly half zeroed (matrix group)"
            );
            // The packed mask says kept exactly where the weight is non-zero.
            let cols = info.shape[1];
            let bits = masks.bytes(&name).unwrap();
            let per_row = cols.div_ceil(8);
            for (k, x) in w.iter().enumerate() {
                let (r, c) = (k / cols, k % cols);
                let kept = bits[r * per_row + c / 8] >> (c % 8) & 1 == 1;
                assert_eq!(kept, *x != 0.0, "{name} ({r}, {c})");
            }
            // Kept weights are the dense ones, unchanged.
            let (_, dense) = input.raw(&name).unwrap();
            for (k, x) in w.iter().enumerate() {
                if *x != 0.0 {
                    assert_eq!(x.to_le_bytes(), dense[4 * k..4 * k + 4], "{name}[{k}]");
                }
            }
        }
    }
    for name in input.tensor_names().filter(|n| !n.contains("_proj")) {
        assert_eq!(
            input.raw(name).unwrap().1,
            pruned.raw(name).unwrap().1,
            "{name} must be untouched"
        );
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["sparsity_config"]["copal"]["method"], "copal");
    assert_eq!(cfg["sparsity_config"]["global_sparsity"], 0.5);
    assert_eq!(cfg["sparsity_config"]["copal"]["datasets"][0], a.as_str());
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("copal.json")).unwrap()).unwrap();
    assert_eq!(
        rec["steps"][0]["report"]["layer_sparsity"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(rec["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        rec["model_files"].as_array().unwrap().len(),
        3,
        "two shards + config"
    );

    let (code, js, _) = run_cli(&["inspect", out.to_str().unwrap(), "--json"], &[]);
    assert_eq!(code, 0);
    let js: serde_json::Value = serde_json::from_str(&js).unwrap();
    assert_eq!(js["sparsity"], 0.5);
}

#[test]
fn state_continues_bit_identically_and_refuses_mismatches() {
    let s = setup(true);
    let (a, b) = ds(&s);
    let tmp = s.t.tmp.path();
    let state = tmp.join("s.safetensors");
    let st = state.to_str().unwrap();
    assert_eq!(prune(&s, &a, &tmp.join("o1"), &["--state", st], &[]).0, 0);
    let r2 = prune(&s, &b, &tmp.join("o2"), &["--state", st], &[]);
    assert_eq!(r2.0, 0, "{}", r2.2);
    let state_one = tmp.join("one.safetensors");
    let both = format!("{a},{b}");
    let r3 = prune(
        &s,
        &both,
        &tmp.join("o3"),
        &["--state", state_one.to_str().unwrap()],
        &[],
    );
    assert_eq!(r3.0, 0, "{}", r3.2);
    let (o2, o3) = (tmp.join("o2"), tmp.join("o3"));
    assert_eq!(files_of(&o2), files_of(&o3));
    for f in files_of(&o2).into_iter().filter(|f| f != "copal.json") {
        assert!(
            std::fs::read(o2.join(&f)).unwrap() == std::fs::read(o3.join(&f)).unwrap(),
            "{f} differs between two runs and one"
        );
    }
    assert!(
        std::fs::read(&state).unwrap() == std::fs::read(&state_one).unwrap(),
        "state files differ"
    );
    // The continued run really changed the model (ptb slice b was folded in).
    let o1 = std::fs::read(tmp.join("o1/model-00001-of-00002.safetensors")).unwrap();
    assert!(o1 != std::fs::read(o2.join("model-00001-of-00002.safetensors")).unwrap());

    // Mismatches are refused with the reason.
    let c = tmp.join("c.txt");
    std::fs::copy(&s.b, &c).unwrap();
    let cs = format!("text:{}", c.display());
    let r = prune(
        &s,
        &cs,
        &tmp.join("x1"),
        &["--state", st, "--perturbation", "gaussian"],
        &[],
    );
    assert_user_error(&r, "perturbation");
    let r = prune(
        &s,
        &cs,
        &tmp.join("x2"),
        &["--state", st, "--sparsity", "60"],
        &[],
    );
    assert_user_error(&r, "pattern");
    let r = prune(&s, &b, &tmp.join("x3"), &["--state", st], &[]);
    assert_user_error(&r, "already contains");
    let other = tiny_model(true, 1);
    let om = other.dir.to_str().unwrap();
    let r = run_cli(
        &[
            "prune",
            "--model",
            om,
            "--datasets",
            &cs,
            "--out",
            tmp.join("x4").to_str().unwrap(),
            "--method",
            "copal",
            "--nsamples",
            "4",
            "--seqlen",
            "32",
            "--state",
            st,
            "--quiet",
        ],
        &[],
    );
    assert_user_error(&r, "another model");
    assert!(r.2.contains("they differ from character"), "{}", r.2);
    std::fs::write(tmp.join("bad.safetensors"), b"not a state").unwrap();
    let r = prune(
        &s,
        &cs,
        &tmp.join("x5"),
        &["--state", tmp.join("bad.safetensors").to_str().unwrap()],
        &[],
    );
    assert_user_error(&r, "bad.safetensors");
    for x in ["x1", "x2", "x3", "x4", "x5"] {
        assert!(!tmp.join(x).exists(), "a failed run left {x} behind");
    }
}

#[test]
fn thread_count_does_not_change_the_result() {
    let s = setup(false);
    let (a, b) = ds(&s);
    let both = format!("{a},{b}");
    let tmp = s.t.tmp.path();
    for kind in ["scaled", "gaussian"] {
        let o1 = tmp.join(format!("t1-{kind}"));
        let o2 = tmp.join(format!("t2-{kind}"));
        let extra = ["--perturbation", kind, "--group", "row"];
        assert_eq!(
            prune(&s, &both, &o1, &extra, &[("RAYON_NUM_THREADS", "1")]).0,
            0
        );
        assert_eq!(
            prune(&s, &both, &o2, &extra, &[("RAYON_NUM_THREADS", "2")]).0,
            0
        );
        for f in [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ] {
            assert!(
                std::fs::read(o1.join(f)).unwrap() == std::fs::read(o2.join(f)).unwrap(),
                "{kind}: {f} differs between 1 and 2 threads"
            );
        }
    }
}

#[test]
fn calibration_batch_size_does_not_change_the_result() {
    // 4 windows one at a time, and as a batch of 3 plus a batch of 1: every statistic is
    // summed one window at a time in window order, so the model and the state are the same
    // to the byte, for every method (COPAL's Gaussian noise is drawn per window too).
    let s = setup(false);
    let (a, b) = ds(&s);
    let both = format!("{a},{b}");
    let tmp = s.t.tmp.path();
    let run = |tag: &str, batch: &str, method: &[&str]| {
        let out = tmp.join(format!("cb-{tag}-{batch}"));
        let state = tmp.join(format!("cb-{tag}-{batch}.state"));
        let mut extra = vec![
            "--calib-batch",
            batch,
            "--save-masks",
            "--state",
            state.to_str().unwrap(),
        ];
        extra.extend_from_slice(method);
        let r = prune(&s, &both, &out, &extra, &[]);
        assert_eq!(r.0, 0, "{tag}: {}", r.2);
        let read = |p: &Path| std::fs::read(p).unwrap();
        let shards: Vec<Vec<u8>> = files_of(&out)
            .iter()
            .filter(|f| f.starts_with("model-"))
            .map(|f| read(&out.join(f)))
            .collect();
        assert_eq!(shards.len(), 2);
        (shards, read(&out.join("masks.safetensors")), read(&state))
    };
    for (tag, method) in [
        ("copal", &["--method", "copal"][..]),
        (
            "copal-gaussian",
            &["--method", "copal", "--perturbation", "gaussian"][..],
        ),
        ("wanda", &["--method", "wanda"][..]),
        ("sparsegpt", &["--method", "sparsegpt"][..]),
        ("ria", &["--method", "ria"][..]),
    ] {
        let one = run(tag, "1", method);
        let three = run(tag, "3", method);
        assert!(
            one.0 == three.0,
            "{tag}: models differ between batches of 1 and 3"
        );
        assert!(one.1 == three.1, "{tag}: masks differ");
        assert!(one.2 == three.2, "{tag}: states differ");
    }
    assert_usage_error(
        &prune(&s, &a, &tmp.join("cb0"), &["--calib-batch", "0"], &[]),
        "--calib-batch",
    );
}

#[test]
fn nm_patterns_hold_in_every_group() {
    let s = setup(true);
    let (a, _) = ds(&s);
    for (pat, n, m) in [("2:4", 2, 4), ("4:8", 4, 8)] {
        let out = s.t.tmp.path().join(format!("nm{n}{m}"));
        let r = prune(&s, &a, &out, &["--pattern", pat], &[]);
        assert_eq!(r.0, 0, "{}", r.2);
        let ck = Checkpoint::open(&out).unwrap();
        for l in 0..2 {
            for lin in Linear::ALL {
                let (_, bytes) = ck.raw(&lin.tensor_name(l)).unwrap();
                let w: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                for g in w.chunks(m) {
                    assert_eq!(g.iter().filter(|&&x| x == 0.0).count(), n, "{pat} {lin:?}");
                }
            }
        }
    }
    let r = prune(
        &s,
        &a,
        &s.t.tmp.path().join("bad"),
        &["--pattern", "2:4", "--sparsity", "60"],
        &[],
    );
    assert_usage_error(&r, "sparsity says 60");
    let r = prune(
        &s,
        &a,
        &s.t.tmp.path().join("bad"),
        &["--pattern", "3:7"],
        &[],
    );
    // Refused up front, before any calibration, naming the flag.
    assert_usage_error(&r, "--pattern 3:7 needs input widths divisible by 7");
}

#[test]
fn output_directory_rules() {
    let s = setup(true);
    let (a, _) = ds(&s);
    let tmp = s.t.tmp.path();
    // A directory of the user's own files is never replaced, with or without --force.
    let out = tmp.join("exists");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("thesis.txt"), "x").unwrap();
    assert_usage_error(&prune(&s, &a, &out, &[], &[]), "--force");
    assert_usage_error(
        &prune(&s, &a, &out, &["--force"], &[]),
        "holds files copal did not write (thesis.txt",
    );
    assert!(out.join("thesis.txt").exists());
    // An empty directory, and then copal's own output, are replaced with --force.
    let mine = tmp.join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    assert_eq!(prune(&s, &a, &mine, &["--force"], &[]).0, 0);
    assert!(mine.join("copal.json").exists());
    assert_eq!(prune(&s, &a, &mine, &["--force"], &[]).0, 0);
    // Never the input model, a directory holding it, or one holding the state file (compared
    // as canonical paths, not strings).
    assert_usage_error(
        &prune(&s, &a, &s.t.dir.clone(), &["--force"], &[]),
        "is the input model",
    );
    let r = prune(&s, &a, &s.t.dir.join(".."), &["--force"], &[]);
    assert_usage_error(&r, "contains the input model");
    assert!(s.t.dir.join("config.json").exists(), "the model survives");
    let w2 = tmp.join("w2");
    std::fs::create_dir_all(&w2).unwrap();
    let cwd_rel = std::process::Command::new(env!("CARGO_BIN_EXE_copal"))
        .current_dir(tmp)
        .args([
            "prune",
            "--model",
            s.t.dir.to_str().unwrap(),
            "--datasets",
            &a,
            "--method",
            "copal",
            "--nsamples",
            "4",
            "--seqlen",
            "32",
            "--out",
            w2.to_str().unwrap(),
            "--force",
            "--state",
            "w2/s.state",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert_eq!(cwd_rel.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&cwd_rel.stderr).contains("contains the state file"),
        "{}",
        String::from_utf8_lossy(&cwd_rel.stderr)
    );
    // Not the current directory either (it cannot be renamed into place).
    let here = std::process::Command::new(env!("CARGO_BIN_EXE_copal"))
        .current_dir(&mine)
        .args([
            "prune",
            "--model",
            s.t.dir.to_str().unwrap(),
            "--datasets",
            &a,
            "--nsamples",
            "4",
            "--seqlen",
            "32",
            "--out",
            ".",
            "--force",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert_eq!(here.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&here.stderr).contains("is the current directory"));
    // A run that fails midway (missing second dataset) leaves nothing behind: it is now
    // found before any work.
    let failing = tmp.join("failing");
    let r = prune(
        &s,
        &format!("{a},text:/no/such/file.txt"),
        &failing,
        &[],
        &[],
    );
    assert_user_error(&r, "/no/such/file.txt");
    assert!(!failing.exists());
    let leftovers: Vec<String> = files_of(tmp)
        .into_iter()
        .filter(|f| f.contains("copal-partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    for bad in ["0", "100", "-5", "NaN"] {
        assert_usage_error(
            &prune(&s, &a, &tmp.join("z"), &["--sparsity", bad], &[]),
            "--sparsity",
        );
    }
}

/// The raw bits of every weight of a safetensors directory, as u32 (f32) or u16 (bf16, f16)
/// widened, with each dtype's sign bit.
fn raw_weights(dir: &Path) -> std::collections::HashMap<String, (Vec<u32>, u32)> {
    let mut out = std::collections::HashMap::new();
    for f in files_of(dir).iter().filter(|f| f.ends_with(".safetensors")) {
        if f.starts_with("masks") || f.starts_with("state") {
            continue;
        }
        let bytes = std::fs::read(dir.join(f)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            let d = view.data();
            let (bits, sign) = match view.dtype() {
                safetensors::Dtype::F32 => (
                    d.chunks(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                    0x8000_0000,
                ),
                safetensors::Dtype::BF16 | safetensors::Dtype::F16 => (
                    d.chunks(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
                        .collect(),
                    0x8000,
                ),
                other => panic!("{name}: {other:?}"),
            };
            out.insert(name, (bits, sign));
        }
    }
    out
}

/// Every weight copal prunes is written as +0.0, never -0.0 (a bitmask or 2:4 compressor
/// would read -0.0 as a kept weight: vllm#12417), in every method, pattern and dtype.
#[test]
fn pruned_weights_are_positive_zeros() {
    for dtype in [
        candle_core::DType::F32,
        candle_core::DType::BF16,
        candle_core::DType::F16,
    ] {
        let t = tiny_model(false, 1);
        let dir = t.tmp.path().join(format!("model-{dtype:?}"));
        write_model(&dir, &tiny_config(false), &t.tensors, dtype, 1);
        let text = small_text(t.tmp.path(), "a.txt", 0, 200);
        let data = format!("text:{}", text.display());
        let dense = raw_weights(&dir);
        let negative = dense
            .values()
            .map(|(b, s)| b.iter().filter(|&&x| x & s != 0).count())
            .sum::<usize>();
        assert!(negative > 1000, "the test needs negative weights");
        let methods: &[&[&str]] = if dtype == candle_core::DType::F32 {
            &[
                &["--method", "copal"],
                &["--method", "wanda"],
                &["--method", "magnitude"],
                &["--method", "ria"],
                &["--method", "sparsegpt"],
                &["--method", "wanda", "--update", "obs"],
            ]
        } else {
            &[&["--method", "copal"], &["--method", "sparsegpt"]]
        };
        for m in methods {
            for pattern in ["unstructured", "2:4"] {
                let out = t
                    .tmp
                    .path()
                    .join(format!("o-{dtype:?}-{}-{pattern}", m.join("")));
                let mut args = vec![
                    "prune",
                    "--model",
                    dir.to_str().unwrap(),
                    "--datasets",
                    &data,
                    "--out",
                    out.to_str().unwrap(),
                    "--nsamples",
                    "2",
                    "--seqlen",
                    "32",
                    "--pattern",
                    pattern,
                    "--quiet",
                ];
                args.extend_from_slice(m);
                let r = run_cli(&args, &[]);
                assert_eq!(r.0, 0, "{m:?} {pattern} {dtype:?}: {}", r.2);
                let pruned = raw_weights(&out);
                let mut zeros = 0;
                for (name, (bits, sign)) in &pruned {
                    let (before, _) = &dense[name];
                    for (k, (&a, &b)) in bits.iter().zip(before).enumerate() {
                        // A zero copal wrote: zero now (either sign), nonzero before.
                        if a & !sign == 0 && b & !sign != 0 {
                            zeros += 1;
                            assert_eq!(
                                a, 0,
                                "{m:?} {pattern} {dtype:?}: {name}[{k}] written as -0.0"
                            );
                        }
                    }
                }
                assert!(zeros > 1000, "{m:?} {pattern} {dtype:?}: {zeros} pruned");
            }
        }
    }
}

/// A state carries the SHA-256 of its provenance and of every tensor: one flipped bit in a
/// value or in the fingerprint is refused, naming what is corrupt, before any work; another
/// model's state names both fingerprints and where they differ.
#[test]
fn a_corrupt_state_is_refused_naming_what() {
    let s = setup(true);
    let (a, b) = ds(&s);
    let tmp = s.t.tmp.path();
    let state = tmp.join("s.safetensors");
    assert_eq!(
        prune(
            &s,
            &a,
            &tmp.join("o1"),
            &["--state", state.to_str().unwrap()],
            &[]
        )
        .0,
        0
    );
    let good = std::fs::read(&state).unwrap();
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&good[8..8 + n]).unwrap();
    let (name, info) = header
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| *k != "__metadata__")
        .unwrap();
    let start = 8 + n + info["data_offsets"][0].as_u64().unwrap() as usize;
    // One bit of one value.
    let mut bad = good.clone();
    bad[start + 5] ^= 0x01;
    let flipped = tmp.join("flipped.safetensors");
    std::fs::write(&flipped, &bad).unwrap();
    let r = prune(
        &s,
        &b,
        &tmp.join("x1"),
        &["--state", flipped.to_str().unwrap()],
        &[],
    );
    assert_user_error(&r, "is corrupt");
    assert!(
        r.2.contains(&format!("tensor {name} has SHA-256")),
        "{}",
        r.2
    );
    // One character of the fingerprint in the header.
    let meta: serde_json::Value =
        serde_json::from_str(header["__metadata__"]["copal.state"].as_str().unwrap()).unwrap();
    let fp = meta["model_fingerprint"].as_str().unwrap();
    let text = String::from_utf8_lossy(&good[8..8 + n]).into_owned();
    let at = 8 + text.find(fp).unwrap() + 20;
    let mut bad = good.clone();
    bad[at] = if bad[at] == b'0' { b'1' } else { b'0' };
    let edited = tmp.join("edited.safetensors");
    std::fs::write(&edited, &bad).unwrap();
    let r = prune(
        &s,
        &b,
        &tmp.join("x2"),
        &["--state", edited.to_str().unwrap()],
        &[],
    );
    assert_user_error(&r, "is corrupt");
    assert!(r.2.contains("provenance"), "{}", r.2);
    for x in ["x1", "x2"] {
        assert!(!tmp.join(x).exists(), "a refused state left {x} behind");
    }
    // The intact state still continues.
    let r = prune(
        &s,
        &b,
        &tmp.join("o2"),
        &["--state", state.to_str().unwrap()],
        &[],
    );
    assert_eq!(r.0, 0, "{}", r.2);
}

/// copal.json records every calibration window: where it starts and the SHA-256 of its
/// token ids, checkable without copal (the tiny tokenizer is one token per byte after BOS).
#[test]
fn calibration_windows_are_recorded_checkably() {
    let s = setup(false);
    let (a, _) = ds(&s);
    let out = s.t.tmp.path().join("o");
    let r = prune(&s, &a, &out, &["--seed", "3"], &[]);
    assert_eq!(r.0, 0, "{}", r.2);
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("copal.json")).unwrap()).unwrap();
    let windows = rec["data_files"][0]["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 4, "{windows:?}");
    let text = std::fs::read(&s.a).unwrap();
    let ids: Vec<u32> = std::iter::once(BOS)
        .chain(text.iter().map(|&b| b as u32))
        .collect();
    let mut starts = Vec::new();
    for w in windows {
        let start = w["start"].as_u64().unwrap() as usize;
        assert!(
            w.get("doc").is_none(),
            "a joined text has no documents: {w}"
        );
        let mut h = <sha2::Sha256 as sha2::Digest>::new();
        for id in &ids[start..start + 32] {
            sha2::Digest::update(&mut h, id.to_le_bytes());
        }
        assert_eq!(
            w["sha256"].as_str().unwrap(),
            format!("{:x}", sha2::Digest::finalize(h)),
            "{w}"
        );
        starts.push(start);
    }
    starts.dedup();
    assert!(
        starts.len() > 1,
        "the windows are drawn, not one repeated: {starts:?}"
    );
}
