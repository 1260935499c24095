//! Shared helpers: a tiny random LLaMA written to a temp dir, a byte-level tokenizer for it,
//! running the CLI, tolerance checks, and where the real data and test model live.

#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use copal::model::{Linear, LlamaConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const TINY_VOCAB: usize = 260;
pub const BOS: u32 = 256;

/// A byte-level tokenizer (one token per byte, `<s>` = 256 prepended), as `copal synth` writes.
pub fn tiny_tokenizer_json() -> serde_json::Value {
    copal::checkpoint::synth::byte_tokenizer(TINY_VOCAB)
}

/// config.json of the tiny model: 2 layers, hidden 64, GQA 4/2 heads of 16, intermediate 128.
pub fn tiny_config(tied: bool) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": 256, "vocab_size": TINY_VOCAB,
        "tie_word_embeddings": tied, "hidden_act": "silu", "bos_token_id": BOS, "eos_token_id": 257,
    })
}

/// Deterministic pseudo-random normal values.
pub fn randn(seed: u64, shape: &[usize], scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = copal::rng::gaussian(seed, n)
        .into_iter()
        .map(|x| x * scale)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Random weights for `cfg` under their Hugging Face names.
pub fn tiny_tensors(cfg: &LlamaConfig, seed: u64) -> HashMap<String, Tensor> {
    let mut m = HashMap::new();
    let (v, h) = (cfg.vocab_size, cfg.hidden_size);
    m.insert(
        "model.embed_tokens.weight".into(),
        randn(seed, &[v, h], 0.5),
    );
    m.insert(
        "model.norm.weight".into(),
        (randn(seed + 1, &[h], 0.1) + 1.0).unwrap(),
    );
    if !cfg.tie_word_embeddings {
        m.insert("lm_head.weight".into(), randn(seed + 2, &[v, h], 0.2));
    }
    let mut s = seed + 10;
    for l in 0..cfg.num_hidden_layers {
        for lin in Linear::ALL {
            let (o, i) = lin.shape(cfg);
            m.insert(
                lin.tensor_name(l),
                randn(s, &[o, i], 1.0 / (i as f32).sqrt()),
            );
            s += 1;
        }
        for n in copal::model::block::norm_names(l) {
            m.insert(n, (randn(s, &[h], 0.1) + 1.0).unwrap());
            s += 1;
        }
    }
    m
}

/// Writes a checkpoint directory: config.json, tokenizer files and the weights in `dtype`,
/// in one file or split over `shards` files with an index.
pub fn write_model(
    dir: &Path,
    cfg: &serde_json::Value,
    tensors: &HashMap<String, Tensor>,
    dtype: DType,
    shards: usize,
) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(cfg).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        tiny_tokenizer_json().to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::json!({"add_bos_token": true, "bos_token": "<s>", "eos_token": "</s>"})
            .to_string(),
    )
    .unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let meta = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    if shards <= 1 {
        let data: Vec<(&str, Tensor)> = names
            .iter()
            .map(|n| (n.as_str(), tensors[*n].to_dtype(dtype).unwrap()))
            .collect();
        safetensors::serialize_to_file(data, meta, &dir.join("model.safetensors")).unwrap();
        return;
    }
    let mut weight_map = serde_json::Map::new();
    for s in 0..shards {
        let file = format!("model-{:05}-of-{:05}.safetensors", s + 1, shards);
        let part: Vec<(&str, Tensor)> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % shards == s)
            .map(|(_, n)| (n.as_str(), tensors[*n].to_dtype(dtype).unwrap()))
            .collect();
        for (n, _) in &part {
            weight_map.insert(n.to_string(), serde_json::json!(file));
        }
        safetensors::serialize_to_file(part, meta.clone(), &dir.join(&file)).unwrap();
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();
}

/// A tiny model in a fresh temp dir.
pub struct Tiny {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub cfg: LlamaConfig,
    pub tensors: HashMap<String, Tensor>,
}

pub fn tiny_model(tied: bool, shards: usize) -> Tiny {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    let cfg_json = tiny_config(tied);
    let cfg = LlamaConfig::from_json(&cfg_json.to_string()).unwrap();
    let tensors = tiny_tensors(&cfg, 7);
    write_model(&dir, &cfg_json, &tensors, DType::F32, shards);
    Tiny {
        tmp,
        dir,
        cfg,
        tensors,
    }
}

/// Runs the built `copal` binary (or `COPAL_BIN_UNDER_TEST`, to run the suite against another
/// build, such as an older one); returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    run_cli_in(args, env, None)
}

/// [`run_cli`] started in `cwd` (default: the test's own working directory).
fn run_cli_in(args: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> (i32, String, String) {
    let bin = std::env::var_os("COPAL_BIN_UNDER_TEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_copal")));
    let mut cmd = Command::new(bin);
    // No test reaches the network: the hub is offline and its cache empty unless a test
    // starts its own local hub (tests/it/hub.rs) and says so.
    cmd.args(args)
        .env_remove("COPAL_DATA_DIR")
        .env("HF_HUB_OFFLINE", "1")
        .env(
            "HF_HOME",
            std::env::temp_dir().join("copal-tests-empty-hf-home"),
        )
        .env_remove("HF_ENDPOINT")
        .env_remove("HF_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let out = cmd.output().expect("running copal");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One `copal` command line for a test, built step by step and run in [`run_cli`]'s sandbox:
/// `copal("prune").args(["--model", m]).flag("--sparsity", 60).run()`. [`CopalCmd::ok`]
/// asserts success and, on failure, prints the whole command line, stdout and stderr. New
/// tests build their command lines with it (older modules still call `run_cli` directly).
#[derive(Clone, Debug)]
pub struct CopalCmd {
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
}

/// A command line of `copal SUB`.
pub fn copal(sub: &str) -> CopalCmd {
    CopalCmd {
        args: vec![sub.to_string()],
        env: Vec::new(),
        cwd: None,
    }
}

/// `copal prune` of the tiny model on `datasets`, 4 windows of 32 tokens, quiet: the base of
/// most tiny-model runs.
pub fn tiny_prune(model: &Path, datasets: &str) -> CopalCmd {
    copal("prune")
        .flag("--model", model.display())
        .flag("--datasets", datasets)
        .args(["--nsamples", "4", "--seqlen", "32", "--quiet"])
}

impl CopalCmd {
    pub fn arg(mut self, a: impl ToString) -> Self {
        self.args.push(a.to_string());
        self
    }

    pub fn args<S: ToString>(mut self, more: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(more.into_iter().map(|a| a.to_string()));
        self
    }

    /// `--name value`.
    pub fn flag(self, name: &str, value: impl std::fmt::Display) -> Self {
        self.arg(name).arg(value)
    }

    pub fn env(mut self, k: &str, v: impl ToString) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    pub fn envs(mut self, vars: &[(&str, &str)]) -> Self {
        for (k, v) in vars {
            self = self.env(k, v);
        }
        self
    }

    /// Starts it in `dir` (relative paths in its arguments are relative to it).
    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    /// The arguments after the binary's name.
    pub fn argv(&self) -> &[String] {
        &self.args
    }

    /// Runs it: (exit code, stdout, stderr), for the `assert_*_error` helpers.
    pub fn run(&self) -> (i32, String, String) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        run_cli_in(&args, &env, self.cwd.as_deref())
    }

    /// Runs it and asserts exit code 0; returns (stdout, stderr).
    pub fn ok(&self) -> (String, String) {
        let (code, out, err) = self.run();
        assert_eq!(
            code,
            0,
            "copal {} exited {code}\n--- stdout\n{out}\n--- stderr\n{err}",
            self.args.join(" ")
        );
        (out, err)
    }
}

/// The Python interpreter of the reference clients (COPAL_PYTHON, default python3; the venv
/// that ./scripts/test.sh fills from tests/requirements.txt), asserted to import `module`.
pub fn python(module: &str) -> Command {
    let py = std::env::var("COPAL_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{py} cannot import {module}, a reference client of the full tier: install \
         tests/requirements.txt into it (./scripts/test.sh does, into a venv under target/)"
    );
    Command::new(py)
}

/// Asserts a failed run of a valid plan: exit code 1, an `error:` line naming `needle`, no
/// panic.
pub fn assert_user_error(res: &(i32, String, String), needle: &str) {
    assert_failure(res, 1, needle)
}

/// Asserts a usage error (a flag, a value, a combination): exit code 2, an `error:` line
/// naming `needle`, no panic.
pub fn assert_usage_error(res: &(i32, String, String), needle: &str) {
    assert_failure(res, 2, needle)
}

fn assert_failure(res: &(i32, String, String), expected: i32, needle: &str) {
    let (code, _, err) = res;
    assert_eq!(
        *code, expected,
        "expected exit code {expected}, stderr:\n{err}"
    );
    assert!(
        err.starts_with("error: "),
        "stderr should start with 'error: ':\n{err}"
    );
    assert!(
        err.contains(needle),
        "stderr should mention {needle:?}:\n{err}"
    );
    assert!(!err.contains("panicked"), "panic:\n{err}");
}

/// max |a − b| ≤ tol, reporting the figure.
pub fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    let d = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d <= tol, "{what}: max |Δ| = {d:e} > {tol:e}");
    eprintln!("{what}: max |Δ| = {d:e} (tol {tol:e})");
}

/// The real datasets (for the real-model tests): $COPAL_DATA_DIR, else ../shared/data beside
/// the repository. Tiny-model tests use [`fixture_data`] instead.
pub fn data_dir() -> PathBuf {
    let p = std::env::var_os("COPAL_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    assert!(
        p.join("ptb").exists() || p.join("ptb.test.txt.gz").exists(),
        "the datasets are not at {}: set COPAL_DATA_DIR to the directory holding \
         wikitext-2-raw/, ptb/ and c4/ (docs/data.md says where to download them)",
        p.display()
    );
    p
}

/// The converted test model (SmolLM2-135M-Instruct): $COPAL_TEST_MODEL or the alias path.
/// The zero-shot task copies of the full tier (`COPAL_TEST_TASKS`, set by scripts/test.sh; else
/// `$COPAL_HOME/tasks`, where scripts/fetch-task-data.sh writes them).
pub fn test_tasks() -> PathBuf {
    let tasks = std::env::var_os("COPAL_TEST_TASKS")
        .map(PathBuf::from)
        .unwrap_or_else(|| copal::checkpoint::resolve::copal_home().join("tasks"));
    assert!(
        tasks.join("boolq/validation.parquet").exists(),
        "the task copies are not at {}: run scripts/fetch-task-data.sh",
        tasks.display()
    );
    tasks
}

pub fn test_model() -> PathBuf {
    let p = std::env::var_os("COPAL_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            copal::checkpoint::resolve::copal_home().join("models/SmolLM2-135M-Instruct-Q4_1")
        });
    assert!(
        p.join("model.safetensors").exists(),
        "the test model is not at {}: run scripts/fetch-test-model.sh (or set COPAL_TEST_MODEL)",
        p.display()
    );
    p
}

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "a",
    "to",
    "in",
    "is",
    "was",
    "it",
    "for",
    "on",
    "that",
    "by",
    "with",
    "as",
    "at",
    "from",
    "his",
    "her",
    "they",
    "which",
    "an",
    "be",
    "this",
    "had",
    "are",
    "not",
    "but",
    "one",
    "first",
    "new",
    "two",
    "were",
    "their",
    "after",
    "also",
    "been",
    "has",
    "its",
    "market",
    "company",
    "city",
    "river",
    "music",
    "game",
    "year",
    "people",
    "world",
    "house",
    "water",
    "light",
    "time",
    "school",
    "war",
    "government",
    "album",
    "season",
    "team",
    "song",
    "state",
    "film",
    "church",
    "road",
    "station",
    "island",
    "species",
    "army",
    "king",
    "north",
    "south",
    "west",
    "east",
    "early",
    "late",
    "small",
    "large",
    "old",
    "young",
    "long",
    "high",
    "built",
    "played",
    "released",
    "wrote",
    "found",
    "named",
    "called",
    "moved",
    "began",
    "used",
    "sold",
    "shares",
    "price",
    "rose",
    "fell",
    "percent",
    "million",
    "bank",
    "trade",
    "rate",
];

/// A deterministic pseudo-English text of `lines` sentences (its own fixture: no dataset is
/// needed for tiny-model runs). Different seeds give different word statistics.
pub fn fixture_text(seed: u64, lines: usize) -> Vec<String> {
    let mut r = copal::rng::SplitMix64::new(seed);
    // Each seed favours its own part of the vocabulary, so texts differ as domains do.
    let bias = (seed as usize * 37) % WORDS.len();
    (0..lines)
        .map(|_| {
            let n = 5 + (r.next() % 11) as usize;
            let words: Vec<&str> = (0..n)
                .map(|_| {
                    let k = r.next() as usize;
                    let i = if k % 3 == 0 {
                        (bias + k / 3 % 20) % WORDS.len()
                    } else {
                        k / 3 % WORDS.len()
                    };
                    WORDS[i]
                })
                .collect();
            words.join(" ")
        })
        .collect()
}

/// A small plain-text corpus for tiny-model runs, written to `dir/name`; `seed` picks the text.
pub fn small_text(dir: &Path, name: &str, seed: usize, lines: usize) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, fixture_text(seed as u64, lines).join("\n")).unwrap();
    p
}

fn gzip(path: &Path, text: &str) {
    use std::io::Write;
    let f = std::fs::File::create(path).unwrap();
    let mut g = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    g.write_all(text.as_bytes()).unwrap();
    g.finish().unwrap();
}

/// A data directory in the upstream layout (wikitext-2-raw/, ptb/, c4/) with fixture text,
/// for tiny-model tests of the built-in datasets.
pub fn fixture_data(dir: &Path) -> PathBuf {
    let root = dir.join("data");
    for sub in ["wikitext-2-raw", "ptb", "c4"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    for (k, split) in ["train", "valid", "test"].iter().enumerate() {
        let ptb: String = fixture_text(100 + k as u64, 400)
            .iter()
            .map(|l| format!(" {l} \n"))
            .collect();
        std::fs::write(root.join(format!("ptb/ptb.{split}.txt")), ptb).unwrap();
        // WikiText raw: heading lines, paragraphs, and blank lines of one space.
        let mut wiki = String::from(" \n = Fixture = \n \n");
        for (i, l) in fixture_text(200 + k as u64, 400).iter().enumerate() {
            wiki.push_str(&format!(" {l} .\n"));
            if i % 10 == 9 {
                wiki.push_str(" \n");
            }
        }
        gzip(
            &root.join(format!("wikitext-2-raw/wiki.{split}.raw.gz")),
            &wiki,
        );
    }
    for (name, seed) in [
        ("c4-train.00000-of-01024.json.gz", 300),
        ("c4-validation.00000-of-00008.json.gz", 301),
    ] {
        let docs: String = (0..60)
            .map(|d| {
                let text = fixture_text(seed * 1000 + d, 12).join(". ");
                format!(
                    "{}\n",
                    serde_json::json!({"text": text, "url": "x", "timestamp": "t"})
                )
            })
            .collect();
        gzip(&root.join("c4").join(name), &docs);
    }
    root
}
