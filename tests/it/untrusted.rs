//! Issue #20: checkpoints and data are untrusted. Every case gives one `error:` line and exit
//! 1 (no panic), reads no file outside the checkpoint into the output, and stays within
//! bounded memory and disk.

use crate::common::*;
use std::path::Path;

fn eval_of(dir: &Path, data: &str, extra: &[&str]) -> (i32, String, String) {
    let mut v = vec![
        "eval",
        "--model",
        dir.to_str().unwrap(),
        "--datasets",
        data,
        "--seqlen",
        "32",
        "--max-windows",
        "2",
        "--quiet",
    ];
    v.extend_from_slice(extra);
    run_cli(&v, &[])
}

/// A side file that is a symlink out of the checkpoint (merges.txt → a private file) is
/// refused before any work; one inside the checkpoint is copied as the file it is.
#[test]
fn side_files_linked_outside_the_checkpoint_are_refused() {
    let t = tiny_model(true, 1);
    let tmp = t.tmp.path();
    let secret = tmp.join("secret.txt");
    std::fs::write(&secret, "my private key").unwrap();
    std::os::unix::fs::symlink(&secret, t.dir.join("merges.txt")).unwrap();
    let data = format!("text:{}", small_text(tmp, "a.txt", 0, 150).display());
    let out = tmp.join("o");
    let r = run_cli(
        &[
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
            "--quiet",
        ],
        &[],
    );
    assert_user_error(&r, "merges.txt is a symlink to");
    assert!(r.2.contains("outside the checkpoint"), "{}", r.2);
    assert!(!out.exists());
    // Inside the checkpoint: copied, as a regular file.
    std::fs::remove_file(t.dir.join("merges.txt")).unwrap();
    std::fs::write(t.dir.join("real-merges.txt"), "#version: 0.2\n").unwrap();
    std::os::unix::fs::symlink(t.dir.join("real-merges.txt"), t.dir.join("merges.txt")).unwrap();
    let r = run_cli(
        &[
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
            "--quiet",
        ],
        &[],
    );
    assert_eq!(r.0, 0, "{}", r.2);
    let meta = std::fs::symlink_metadata(out.join("merges.txt")).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(
        std::fs::read_to_string(out.join("merges.txt")).unwrap(),
        "#version: 0.2\n"
    );
}

/// Hostile tokenizer.json files: a normaliser with an empty or empty-matching pattern, a
/// template naming an unknown special token, a short Precompiled charsmap, and a normaliser
/// that blows every space up into 20,000 characters.
#[test]
fn hostile_tokenizers_are_errors_not_panics_or_bombs() {
    let t = tiny_model(true, 1);
    let data = format!(
        "text:{}",
        small_text(t.tmp.path(), "a.txt", 0, 150).display()
    );
    let good = tiny_tokenizer_json();
    let cases: Vec<(&str, serde_json::Value)> = vec![
        (
            "Replace with an empty pattern",
            serde_json::json!({"type": "Replace", "pattern": {"String": ""}, "content": "x"}),
        ),
        (
            "Replace with a regex matching the empty string",
            serde_json::json!({"type": "Replace", "pattern": {"Regex": "x*"}, "content": "y"}),
        ),
        (
            "a short Precompiled charsmap",
            serde_json::json!({"type": "Precompiled", "precompiled_charsmap": "AAAAAQAAAA=="}),
        ),
        (
            "a space replaced by 20,000 characters",
            serde_json::json!({"type": "Replace", "pattern": {"String": " "}, "content": "z".repeat(20_000)}),
        ),
    ];
    for (what, normalizer) in cases {
        let mut tok = good.clone();
        tok["normalizer"] = normalizer;
        std::fs::write(t.dir.join("tokenizer.json"), tok.to_string()).unwrap();
        let r = eval_of(&t.dir, &data, &[]);
        assert_user_error(&r, "tokenizer.json");
        assert!(!r.2.contains("panicked"), "{what}: {}", r.2);
    }
    let mut tok = good.clone();
    tok["post_processor"]["single"][0]["SpecialToken"]["id"] = "<zzz>".into();
    std::fs::write(t.dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let r = eval_of(&t.dir, &data, &[]);
    assert_user_error(&r, "tokenizer.json");
    // truncation and padding blocks do not cut the corpus.
    let mut tok = good.clone();
    tok["truncation"] = serde_json::json!({"direction": "Right", "max_length": 10, "strategy": "LongestFirst", "stride": 0});
    tok["padding"] = serde_json::json!({"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "<unk>"});
    std::fs::write(t.dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let (code, out, err) = eval_of(&t.dir, &data, &["--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["results"][0]["windows"], 2,
        "the text was not cut to 10 tokens"
    );
}

/// A gzip that decompresses past the text limit is refused (the limit is lowered here, the
/// mechanism is the same at its 1 GiB default), and a huge text is evaluated from its start.
#[test]
fn decompression_and_text_sizes_are_bounded() {
    use std::io::Write;
    let t = tiny_model(true, 1);
    let tmp = t.tmp.path();
    let bomb = tmp.join("bomb.txt.gz");
    let mut g = flate2::write::GzEncoder::new(
        std::fs::File::create(&bomb).unwrap(),
        flate2::Compression::best(),
    );
    let line = "a b c d e f g h\n".repeat(4096);
    for _ in 0..64 {
        g.write_all(line.as_bytes()).unwrap();
    }
    g.finish().unwrap();
    assert!(std::fs::metadata(&bomb).unwrap().len() < 100_000);
    let spec = format!("text:{}", bomb.display());
    let r = run_cli(
        &[
            "prune",
            "--model",
            t.dir.to_str().unwrap(),
            "--datasets",
            &spec,
            "--nsamples",
            "2",
            "--seqlen",
            "32",
            "--out",
            tmp.join("o").to_str().unwrap(),
            "--quiet",
        ],
        &[("COPAL_MAX_TEXT_BYTES", "1000000")],
    );
    assert_user_error(
        &r,
        "holds more than 1000000 bytes of text once decompressed",
    );
    // Evaluating a few windows reads the text's start only, under the same limit.
    let (code, _, err) = run_cli(
        &[
            "eval",
            "--model",
            t.dir.to_str().unwrap(),
            "--datasets",
            &spec,
            "--seqlen",
            "32",
            "--max-windows",
            "4",
            "--quiet",
        ],
        &[("COPAL_MAX_TEXT_BYTES", "1000000")],
    );
    assert_eq!(code, 0, "{err}");
}

/// A tensor present in two shards is ambiguous: refused, naming both shards.
#[test]
fn a_tensor_in_two_shards_is_refused() {
    let t = tiny_model(false, 2);
    let dir = &t.dir;
    let s1 = dir.join("model-00001-of-00002.safetensors");
    let s2 = dir.join("model-00002-of-00002.safetensors");
    // Copy one tensor of shard 2 into shard 1.
    let name = copal::checkpoint::Shard::open(&s2).unwrap().names()[0].clone();
    let mut all: std::collections::HashMap<String, candle_core::Tensor> =
        candle_core::safetensors::load(&s1, &candle_core::Device::Cpu).unwrap();
    let extra = candle_core::safetensors::load(&s2, &candle_core::Device::Cpu).unwrap();
    all.insert(name.clone(), extra[&name].clone());
    candle_core::safetensors::save(&all, &s1).unwrap();
    let data = format!(
        "text:{}",
        small_text(t.tmp.path(), "a.txt", 0, 150).display()
    );
    let r = eval_of(dir, &data, &[]);
    assert_user_error(&r, &format!("tensor {name} is in two shards"));
    assert!(
        r.2.contains("model-00001-of-00002.safetensors")
            && r.2.contains("model-00002-of-00002.safetensors"),
        "{}",
        r.2
    );
}

/// rms_norm_eps or rope_theta of 1e300 overflow f32: refused when the config is read.
#[test]
fn config_values_that_overflow_are_refused() {
    let t = tiny_model(true, 1);
    let data = format!(
        "text:{}",
        small_text(t.tmp.path(), "a.txt", 0, 150).display()
    );
    for (key, v) in [
        ("rms_norm_eps", 1e300),
        ("rope_theta", 1e300),
        ("rope_theta", 1e-3),
    ] {
        let mut c = tiny_config(true);
        c[key] = v.into();
        std::fs::write(t.dir.join("config.json"), c.to_string()).unwrap();
        let r = eval_of(&t.dir, &data, &[]);
        assert_user_error(&r, key);
    }
}

/// A resumed run notices that the model's files changed since the partial run: the finished
/// steps are discarded, not mixed with the new model's.
#[test]
fn a_changed_model_is_not_resumed() {
    let t = tiny_model(true, 1);
    let tmp = t.tmp.path();
    let a = format!("text:{}", small_text(tmp, "a.txt", 0, 150).display());
    let b = format!("text:{}", small_text(tmp, "b.txt", 9000, 150).display());
    let out = tmp.join("o");
    let args = |fault: Option<&str>| {
        let mut env = vec![];
        if let Some(f) = fault {
            env.push(("COPAL_FAULT_AT", f.to_string()));
        }
        let v = [
            "prune",
            "--model",
            t.dir.to_str().unwrap(),
            "--datasets",
            &format!("{a},{b}"),
            "--nsamples",
            "4",
            "--seqlen",
            "32",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_cli(&v.iter().map(|s| s.as_ref()).collect::<Vec<&str>>(), &env)
    };
    // Crash somewhere in step 2 (the first fault point after step 1's done marker).
    let partial = tmp.join(".o.copal-partial");
    let mut crashed = false;
    for at in 20..200 {
        let r = args(Some(&at.to_string()));
        if r.0 == 0 {
            std::fs::remove_dir_all(&out).unwrap();
            continue;
        }
        if partial.join("step-1.done.json").exists() && !partial.join("step-2.done.json").exists() {
            crashed = true;
            break;
        }
    }
    assert!(crashed);
    // Change one weight of the model.
    let st = t.dir.join("model.safetensors");
    let mut all = candle_core::safetensors::load(&st, &candle_core::Device::Cpu).unwrap();
    let name = copal::model::Linear::Q.tensor_name(0);
    let w = (all[&name].clone() * 2.0).unwrap();
    all.insert(name, w);
    candle_core::safetensors::save(&all, &st).unwrap();
    let r = args(None);
    assert_eq!(r.0, 0, "{}", r.2);
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("copal.json")).unwrap()).unwrap();
    assert_eq!(
        rec["resumed_steps"], 0,
        "the partial run of the old model was not reused"
    );
}

/// A GGUF file split into its header fields, to be broken on purpose and written back.
struct Gguf {
    version: u32,
    kvs: Vec<(String, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, u64)>,
    data: Vec<u8>,
}

fn value_len(b: &[u8], ty: u32) -> usize {
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap()) as usize;
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 => 8 + u64_at(0),
        9 => {
            let ety = u32::from_le_bytes(b[0..4].try_into().unwrap());
            let n = u64_at(4);
            let mut off = 12;
            for _ in 0..n {
                off += value_len(&b[off..], ety);
            }
            off
        }
        _ => panic!("GGUF type {ty}"),
    }
}

impl Gguf {
    fn parse(b: &[u8]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        assert_eq!(&b[..4], b"GGUF");
        let (version, nt, nkv) = (u32_at(4), u64_at(8), u64_at(16));
        let mut p = 24;
        let string = |p: &mut usize| {
            let n = u64_at(*p) as usize;
            let s = String::from_utf8(b[*p + 8..*p + 8 + n].to_vec()).unwrap();
            *p += 8 + n;
            s
        };
        let mut kvs = Vec::new();
        for _ in 0..nkv {
            let key = string(&mut p);
            let ty = u32_at(p);
            let len = 4 + value_len(&b[p + 4..], ty);
            kvs.push((key, b[p..p + len].to_vec()));
            p += len;
        }
        let mut tensors = Vec::new();
        for _ in 0..nt {
            let name = string(&mut p);
            let nd = u32_at(p) as usize;
            let dims = (0..nd).map(|i| u64_at(p + 4 + 8 * i)).collect();
            p += 4 + 8 * nd;
            tensors.push((name, dims, u32_at(p), u64_at(p + 4)));
            p += 12;
        }
        let start = p.div_ceil(32) * 32;
        Gguf {
            version,
            kvs,
            tensors,
            data: b[start..].to_vec(),
        }
    }

    fn write(&self, path: &Path) {
        let mut b = b"GGUF".to_vec();
        b.extend(self.version.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend((self.kvs.len() as u64).to_le_bytes());
        let string = |b: &mut Vec<u8>, s: &str| {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(s.as_bytes());
        };
        for (k, v) in &self.kvs {
            string(&mut b, k);
            b.extend(v);
        }
        for (name, dims, ty, off) in &self.tensors {
            string(&mut b, name);
            b.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(off.to_le_bytes());
        }
        b.resize(b.len().div_ceil(32) * 32, 0);
        b.extend(&self.data);
        std::fs::write(path, b).unwrap();
    }
}

/// Broken GGUF headers: an alignment of 0, an embedding without dimensions (and no
/// vocab_size), every tensor at offset 0 (a small file that would import to a large one), a
/// tensor past the end. Each is one error line naming the file; nothing is written.
#[test]
fn broken_gguf_headers_are_errors() {
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/seeds/gguf_import/tiny.gguf");
    let good = Gguf::parse(&std::fs::read(&seed).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let import = |g: &Gguf, name: &str| {
        let p = tmp.path().join(format!("{name}.gguf"));
        g.write(&p);
        let out = tmp.path().join(name);
        let r = run_cli(
            &[
                "import-gguf",
                p.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--quiet",
            ],
            &[],
        );
        (r, out)
    };
    // The seed itself imports (so the failures below are the edits').
    let (r, out) = import(&good, "good");
    assert_eq!(r.0, 0, "{}", r.2);
    assert!(out.join("copal.json").exists());

    let mut g = Gguf::parse(&std::fs::read(&seed).unwrap());
    let mut v = 4u32.to_le_bytes().to_vec();
    v.extend(0u32.to_le_bytes());
    g.kvs.insert(0, ("general.alignment".into(), v));
    let (r, out) = import(&g, "align0");
    assert_user_error(&r, "align0.gguf is not a readable GGUF file");
    assert!(!out.exists());

    let mut g = Gguf::parse(&std::fs::read(&seed).unwrap());
    g.kvs.retain(|(k, _)| k != "llama.vocab_size");
    for t in g.tensors.iter_mut().filter(|t| t.0 == "token_embd.weight") {
        t.1.clear();
    }
    let (r, _) = import(&g, "nodims");
    assert_user_error(&r, "nodims.gguf");

    let mut g = Gguf::parse(&std::fs::read(&seed).unwrap());
    for t in g.tensors.iter_mut() {
        t.3 = 0;
    }
    let (r, out) = import(&g, "aliased");
    assert_user_error(&r, "share bytes");
    assert!(!out.exists());

    let mut g = Gguf::parse(&std::fs::read(&seed).unwrap());
    g.tensors[0].3 += 1 << 40;
    let (r, _) = import(&g, "past");
    assert_user_error(&r, "past the end of the file");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("copal-partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
