//! Models and datasets by name through a hub that answers as huggingface.co does
//! ([`server`]): LFS files redirected to a CDN that ignores `Range` when gzip is accepted,
//! the hub's error codes, faults. Python's `huggingface_hub` downloads every file from it
//! (the proof that the stand-in is faithful) and the two clients share one cache both ways.
//! The files are the tiny model (sharded, with an index) and the three datasets in their
//! upstream layout (WikiText-2 and PTB as the hub's parquet, C4 as its json.gz shards), built
//! from the real data in ../shared/data.

mod server;

use crate::common::*;
use server::{Fault, Hub, RepoData, Server};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

fn gz(text: &[u8]) -> Vec<u8> {
    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    g.write_all(text).unwrap();
    g.finish().unwrap()
}

/// A one-column parquet file of strings, as the hub's conversions are.
fn parquet(column: &str, rows: &[String]) -> Vec<u8> {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    let schema = Arc::new(
        parse_message_type(&format!(
            "message m {{ REQUIRED BYTE_ARRAY {column} (UTF8); }}"
        ))
        .unwrap(),
    );
    let props = Arc::new(WriterProperties::builder().build());
    let mut out = Vec::new();
    {
        let mut w = SerializedFileWriter::new(&mut out, schema, props).unwrap();
        let mut rg = w.next_row_group().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = rows.iter().map(|r| ByteArray::from(r.as_str())).collect();
        col.typed::<ByteArrayType>()
            .write_batch(&values, None, None)
            .unwrap();
        col.close().unwrap();
        rg.close().unwrap();
        w.close().unwrap();
    }
    out
}

fn read_gz(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

const WIKI: (&str, &str) = (
    "datasets/Salesforce/wikitext",
    "b08601e04326c79dfdd32d625aee71d232d685c3",
);
const PTB: (&str, &str) = (
    "datasets/ptb-text-only/ptb_text_only",
    "6003d540889b95fc8c8403a3f04619f3b943fc8d",
);
const C4: (&str, &str) = (
    "datasets/allenai/c4",
    "607bd4c8450a42878aa9ddc051a65a055450ef87",
);
const MODEL: &str = "tiny-org/tiny-llama";
/// The model's one commit (also `main` and the tag `v1.0`).
const MODEL_COMMIT: &str = "c0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ff";

/// The hub with the tiny model (main) and the datasets at their pinned revisions.
fn hub_with_everything(model_dir: &Path) -> Hub {
    let data = data_dir();
    let mut hub = Hub::default();
    let mut model = HashMap::new();
    for e in std::fs::read_dir(model_dir).unwrap() {
        let p = e.unwrap().path();
        model.insert(
            p.file_name().unwrap().to_string_lossy().into_owned(),
            std::fs::read(&p).unwrap(),
        );
    }
    hub.repos.insert(
        MODEL.into(),
        RepoData::single(MODEL_COMMIT, model, &["v1.0"]),
    );
    // The hub's parquet conversions: one row per upstream line (or row), as upstream splits
    // them.
    let converted = |raw: &str, split: &str, file: &str, column: &str| -> (String, Vec<u8>) {
        let text = String::from_utf8(read_gz(&data.join(raw.replace("{split}", split)))).unwrap();
        let rows: Vec<String> = if column == "text" {
            copal::data::text::wikitext_rows(&text)
        } else {
            copal::data::text::ptb_lines(&text)
        }
        .into_iter()
        .map(String::from)
        .collect();
        (file.to_string(), parquet(column, &rows))
    };
    let wiki: HashMap<_, _> = [("test", "test"), ("valid", "validation")]
        .iter()
        .map(|(split, f)| {
            let file = format!("wikitext-2-raw-v1/{f}-00000-of-00001.parquet");
            converted("wikitext-2-raw/wiki.{split}.raw.gz", split, &file, "text")
        })
        .collect();
    hub.repos
        .insert(WIKI.0.into(), RepoData::single(WIKI.1, wiki, &[]));
    let ptb: HashMap<_, _> = [
        ("train", "train"),
        ("valid", "validation"),
        ("test", "test"),
    ]
    .iter()
    .map(|(split, f)| {
        let file = format!("penn_treebank/{f}/0000.parquet");
        converted("ptb/ptb.{split}.txt.gz", split, &file, "sentence")
    })
    .collect();
    // The conversion branch points at the pinned commit.
    hub.repos.insert(
        PTB.0.into(),
        RepoData::single(PTB.1, ptb, &["refs/convert/parquet"]),
    );
    let mut c4 = HashMap::new();
    c4.insert(
        "en/c4-train.00000-of-01024.json.gz".to_string(),
        gz(&read_gz(
            &data.join("c4/c4-train.00000-of-01024.first1000.jsonl.gz"),
        )),
    );
    c4.insert(
        "en/c4-validation.00000-of-00008.json.gz".to_string(),
        gz(&read_gz(
            &data.join("c4/c4-validation.00000-of-00008.first1000.json.gz"),
        )),
    );
    hub.repos
        .insert(C4.0.into(), RepoData::single(C4.1, c4, &[]));
    hub
}

/// A continual prune of `model` (the hub's, or a local copy) on the three datasets from the
/// hub, tiny calibration and evaluation, JSON on stdout.
fn prune_cmd(model: &str, out: &str, empty: &str) -> CopalCmd {
    copal("prune")
        .flag("--model", model)
        .flag("--datasets", "wikitext2,ptb,c4")
        .flag("--calib-split", "wikitext2=valid")
        .flag("--data-dir", empty)
        .args([
            "--nsamples",
            "2",
            "--seqlen",
            "64",
            "--eval",
            "--max-windows",
            "2",
        ])
        .flag("--out", out)
        .args(["--quiet", "--json"])
}

/// `copal inspect` of the hub's model with `home` as HF_HOME: it fetches the whole model.
fn inspect_model(server: &Server, home: &Path) -> (i32, String, String) {
    run_cli(
        &["inspect", MODEL, "--quiet"],
        &server.env(home.to_str().unwrap()),
    )
}

/// One file for the Python client: (repo url path, revision, file).
type Want<'a> = (&'a str, &'a str, &'a str);

/// Runs `hf_hub_download` for each file; returns, per file, the SHA-256 of what it got or the
/// error it raised.
fn python_download(env: &[(&str, &str)], want: &[Want]) -> Vec<Result<(String, String), String>> {
    let asked: Vec<serde_json::Value> = want
        .iter()
        .map(|(repo, rev, file)| {
            let (kind, id) = match repo.strip_prefix("datasets/") {
                Some(id) => ("dataset", id),
                None => ("model", *repo),
            };
            serde_json::json!({"repo_id": id, "repo_type": kind, "revision": rev, "filename": file})
        })
        .collect();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/hub/hf_client.py");
    let mut cmd = python("huggingface_hub");
    cmd.arg(script)
        .env_remove("HF_TOKEN")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env_remove("HF_HUB_CACHE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&asked).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "hf_client.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| match f.get("error") {
            Some(e) => Err(e.as_str().unwrap_or("").to_string()),
            None => Ok((
                f["path"].as_str().unwrap().to_string(),
                f["sha256"].as_str().unwrap().to_string(),
            )),
        })
        .collect()
}

/// Every file the hub holds at `main` (or the dataset pins), as (repo, revision, file, bytes).
fn every_file(hub: &Hub) -> Vec<(String, String, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (repo, data) in &hub.repos {
        let rev = if repo == MODEL {
            "main".to_string()
        } else {
            data.refs["main"].clone()
        };
        for (file, bytes) in &data.commits[&data.refs["main"]] {
            out.push((repo.clone(), rev.clone(), file.clone(), bytes.clone()));
        }
    }
    out.sort();
    out
}

/// From an empty cache, `copal prune --model OWNER/NAME --datasets wikitext2,ptb,c4` fetches
/// the model and the pinned datasets through the hub's redirects and the CDN, and runs; then,
/// with the hub gone and HF_HUB_OFFLINE=1, the same command runs from the cache alone. The
/// LFS files came from the CDN with `Accept-Encoding: identity`, and the token never left the
/// hub's host.
#[test]
#[ignore = "full tier, ./scripts/test.sh: Python's huggingface_hub as the reference client"]
fn datasets_and_model_by_name_from_a_cold_cache_then_offline() {
    let t = tiny_model(false, 2);
    let tmp = t.tmp.path();
    let home = tmp.join("hf");
    let empty = tmp.join("no-data");
    std::fs::create_dir_all(&empty).unwrap();
    let (h, e) = (home.to_str().unwrap(), empty.to_str().unwrap());
    let server = Server::start(hub_with_everything(&t.dir));
    let mut env = server.env(h);
    env.push(("HF_TOKEN", "hf_user_token"));
    // A dry run lists what would be downloaded, and downloads nothing.
    let (code, out, err) = prune_cmd(t.dir.to_str().unwrap(), "unused", e)
        .arg("--dry-run")
        .envs(&env)
        .run();
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let downloads = v["estimate"]["downloads"].as_array().unwrap();
    assert_eq!(downloads.len(), 6, "{downloads:?}");
    assert!(server.log().is_empty(), "a dry run fetched something");
    // copal fetch --list says the same, with sizes from the hub (the metadata of LFS files
    // is on the hub's 302: the CDN is not asked).
    let (code, out, err) = run_cli(&["fetch", "--list", "--data-dir", e], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("to download") && out.contains("MB"), "{out}");
    assert!(
        server.log().iter().all(|s| !s.cdn && s.method == "HEAD"),
        "{:?}",
        server.log()
    );
    let out = tmp.join("o1");
    let r = prune_cmd(MODEL, out.to_str().unwrap(), e).envs(&env).run();
    assert_eq!(r.0, 0, "{}", r.2);
    let v: serde_json::Value = serde_json::from_str(&r.1).unwrap();
    assert!(v["avg_ppl"].as_f64().unwrap().is_finite());
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("copal.json")).unwrap()).unwrap();
    let files: Vec<String> = rec["data_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect();
    assert!(
        files.iter().any(|f| f.contains("datasets--allenai--c4")),
        "{files:?}"
    );
    assert!(files.iter().any(|f| f.ends_with(".parquet")), "{files:?}");
    let log = server.log();
    let cdn: Vec<_> = log.iter().filter(|s| s.cdn).collect();
    // Both shards, tokenizer.json and the 6 dataset files came from the CDN, whole.
    assert!(cdn.len() >= 9, "{log:?}");
    for s in &cdn {
        assert_eq!(s.accept_encoding.as_deref(), Some("identity"), "{s:?}");
        assert!(!s.authorization, "the token was sent to the CDN: {s:?}");
        assert_eq!(s.status, 200, "{s:?}");
    }
    assert!(log.iter().filter(|s| !s.cdn).all(|s| s.authorization));
    drop(server);
    // Offline, from the cache only.
    let out2 = tmp.join("o2");
    let r2 = prune_cmd(MODEL, out2.to_str().unwrap(), e)
        .envs(&[("HF_HOME", h), ("HF_HUB_OFFLINE", "1")])
        .run();
    assert_eq!(r2.0, 0, "{}", r2.2);
    let v2: serde_json::Value = serde_json::from_str(&r2.1).unwrap();
    assert_eq!(
        v["ppl_matrix"], v2["ppl_matrix"],
        "the same model and data give the same numbers"
    );
    assert!(
        std::fs::read(out.join("model-00001-of-00002.safetensors")).unwrap()
            == std::fs::read(out2.join("model-00001-of-00002.safetensors")).unwrap()
    );
    // What copal downloaded, Python's huggingface_hub finds offline, by branch, tag and
    // commit (copal fetched the tag and the commit too, from the cache it had).
    let server = Server::start(hub_with_everything(&t.dir));
    for rev in ["v1.0", MODEL_COMMIT] {
        let m = format!("{MODEL}@{rev}");
        let r = run_cli(
            &[
                "fetch",
                "--model",
                &m,
                "--datasets",
                "c4",
                "--data-dir",
                e,
                "--quiet",
            ],
            &server.env(h),
        );
        assert_eq!(r.0, 0, "{}", r.2);
    }
    assert!(
        !server.log().iter().any(|s| s.cdn),
        "the model was in the cache: nothing should be downloaded again"
    );
    let hub = hub_with_everything(&t.dir);
    drop(server);
    let mut want = Vec::new();
    // Every file the run used (PTB's validation split it did not need).
    for (repo, rev, file, bytes) in every_file(&hub) {
        if file.contains("penn_treebank/validation") {
            continue;
        }
        let revs: &[&str] = if repo == MODEL {
            &["main", "v1.0", MODEL_COMMIT]
        } else {
            &[""]
        };
        for r in revs {
            let r = if r.is_empty() {
                rev.clone()
            } else {
                r.to_string()
            };
            want.push((repo.clone(), r, file.clone(), server::sha256_hex(&bytes)));
        }
    }
    let asked: Vec<Want> = want
        .iter()
        .map(|(r, v, f, _)| (r.as_str(), v.as_str(), f.as_str()))
        .collect();
    let got = python_download(&[("HF_HOME", h), ("HF_HUB_OFFLINE", "1")], &asked);
    for ((repo, rev, file, sha), g) in want.iter().zip(&got) {
        let (path, got_sha) = g
            .as_ref()
            .unwrap_or_else(|e| panic!("python, offline: {repo}@{rev} {file}: {e}"));
        assert_eq!(got_sha, sha, "{repo}@{rev} {file}: {path}");
        assert!(path.starts_with(h), "{path}");
    }
}

/// Python's `huggingface_hub` downloads every file of the test hub (so the stand-in answers
/// as the real hub does, redirects and CDN included), by branch, tag and commit; copal then
/// runs from that cache offline, downloading nothing.
#[test]
#[ignore = "full tier, ./scripts/test.sh: Python's huggingface_hub as the reference client"]
fn python_fills_the_cache_and_copal_uses_it_offline() {
    let t = tiny_model(false, 2);
    let tmp = t.tmp.path();
    let home = tmp.join("hf");
    let h = home.to_str().unwrap();
    let empty = tmp.join("no-data");
    std::fs::create_dir_all(&empty).unwrap();
    let e = empty.to_str().unwrap();
    let hub = hub_with_everything(&t.dir);
    let files = every_file(&hub);
    let server = Server::start(hub);
    let mut asked: Vec<Want> = files
        .iter()
        .map(|(r, v, f, _)| (r.as_str(), v.as_str(), f.as_str()))
        .collect();
    for (r, _, f, _) in files.iter().filter(|(r, ..)| r == MODEL) {
        asked.push((r.as_str(), "v1.0", f.as_str()));
        asked.push((r.as_str(), MODEL_COMMIT, f.as_str()));
    }
    asked.push((
        PTB.0,
        "refs/convert/parquet",
        "penn_treebank/test/0000.parquet",
    ));
    let got = python_download(&server.env(h), &asked);
    let sha_of: HashMap<(String, String), String> = files
        .iter()
        .map(|(r, _, f, b)| ((r.clone(), f.clone()), server::sha256_hex(b)))
        .collect();
    for ((repo, rev, file), g) in asked.iter().zip(&got) {
        let (path, sha) = g
            .as_ref()
            .unwrap_or_else(|e| panic!("python: {repo}@{rev} {file}: {e}"));
        assert_eq!(
            sha,
            &sha_of[&(repo.to_string(), file.to_string())],
            "{path}"
        );
    }
    // Python went through the redirects to the CDN for the LFS files.
    let log = server.log();
    assert!(
        log.iter().any(|s| s.cdn
            && s.path.contains(
                &sha_of[&(
                    MODEL.to_string(),
                    "model-00001-of-00002.safetensors".to_string()
                )]
            )),
        "{log:?}"
    );
    drop(server);
    // copal, offline, from Python's cache: by branch, tag, commit; nothing downloaded (no hub).
    for rev in ["main", "v1.0", MODEL_COMMIT] {
        let m = format!("{MODEL}@{rev}");
        let out = tmp.join(format!("o-{}", &rev[..4.min(rev.len())]));
        let r = prune_cmd(&m, out.to_str().unwrap(), e)
            .envs(&[("HF_HOME", h), ("HF_HUB_OFFLINE", "1")])
            .run();
        assert_eq!(r.0, 0, "{m}: {}", r.2);
    }
}

/// A download cut part-way keeps its bytes; the next run asks for the rest only (`Range`),
/// and the file it finishes is the hub's, verified. Within one run, a dropped connection is
/// resumed the same way.
#[test]
fn a_cut_download_resumes_from_its_bytes() {
    let t = tiny_model(false, 1);
    let tmp = t.tmp.path();
    let home = tmp.join("hf");
    let h = home.to_str().unwrap();
    let shard = "model.safetensors";
    let size = std::fs::metadata(t.dir.join(shard)).unwrap().len() as usize;
    assert!(size > 4000, "{size}");
    let cut = size * 2 / 5;
    let fetch = |server: &Server| run_cli(&["inspect", MODEL, "--quiet"], &server.env(h));
    // Run 1: the connection drops after 40%, then the CDN is down: the run fails, the bytes
    // stay (as .incomplete, never as the file).
    let mut hub = hub_with_everything(&t.dir);
    hub.faults.insert(
        shard.into(),
        Fault::DropAfter {
            bytes: cut,
            times: 1,
        },
    );
    let server = Server::start(hub);
    // The drop, then 503s: the CDN serves the first answer cut and then refuses.
    let first = std::thread::spawn({
        let hubref = Arc::clone(&server.hub);
        move || {
            // Once the cut answer was sent, the CDN goes down.
            for _ in 0..400 {
                let mut hb = hubref.lock().unwrap();
                if hb.log.iter().any(|s| s.cdn && s.body_bytes == cut) {
                    hb.faults
                        .insert("model.safetensors".into(), Fault::Unavailable);
                    return true;
                }
                drop(hb);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            false
        }
    });
    let r = fetch(&server);
    assert!(first.join().unwrap(), "the cut answer was never sent");
    assert_user_error(&r, "model.safetensors");
    assert!(r.2.contains("next run resumes"), "{}", r.2);
    let parts: Vec<String> = walk(&home)
        .into_iter()
        .filter(|p| p.ends_with(".incomplete"))
        .collect();
    assert_eq!(parts.len(), 1, "{:?}", walk(&home));
    assert_eq!(std::fs::metadata(&parts[0]).unwrap().len() as usize, cut);
    assert!(
        !walk(&home)
            .iter()
            .any(|p| p.ends_with(&format!("/{shard}"))),
        "{:?}",
        walk(&home)
    );
    // Run 2: the CDN is back; only the rest is asked for and sent.
    server.hub.lock().unwrap().faults.clear();
    let before = server.log().len();
    let r = fetch(&server);
    assert_eq!(r.0, 0, "{}", r.2);
    let second: Vec<_> = server.log()[before..]
        .iter()
        .filter(|s| s.cdn && s.path.len() > 60)
        .cloned()
        .collect();
    let shard_sha = server::sha256_hex(&std::fs::read(t.dir.join(shard)).unwrap());
    let shard_reqs: Vec<_> = second
        .iter()
        .filter(|s| s.path.contains(&shard_sha))
        .collect();
    assert_eq!(shard_reqs.len(), 1, "{second:?}");
    assert_eq!(
        shard_reqs[0].range.as_deref(),
        Some(format!("bytes={cut}-").as_str())
    );
    assert_eq!(shard_reqs[0].status, 206);
    assert_eq!(
        shard_reqs[0].body_bytes,
        size - cut,
        "only the rest was sent"
    );
    let cached = walk(&home)
        .into_iter()
        .find(|p| p.ends_with(&format!("/{shard}")))
        .unwrap();
    assert_eq!(
        std::fs::read(&cached).unwrap(),
        std::fs::read(t.dir.join(shard)).unwrap()
    );
    assert!(!walk(&home).iter().any(|p| p.ends_with(".incomplete")));
    drop(server);
    // Within one run: two drops, resumed in place; the bytes sent add up to the file once.
    let home2 = tmp.join("hf2");
    let mut hub = hub_with_everything(&t.dir);
    hub.faults.insert(
        shard.into(),
        Fault::DropAfter {
            bytes: size / 3,
            times: 2,
        },
    );
    let server = Server::start(hub);
    let r = run_cli(&["inspect", MODEL], &server.env(home2.to_str().unwrap()));
    assert_eq!(r.0, 0, "{}", r.2);
    assert!(r.2.contains("resuming at"), "{}", r.2);
    let sent: usize = server
        .log()
        .iter()
        .filter(|s| s.cdn && s.path.contains(&shard_sha))
        .map(|s| s.body_bytes)
        .sum();
    assert_eq!(sent, size, "{:?}", server.log());
}

/// 429 with Retry-After and 5xx are retried with backoff; an outage that lasts is one error
/// line naming the file and what to do.
#[test]
fn rate_limits_and_outages_are_retried_then_explained() {
    let t = tiny_model(false, 1);
    let tmp = t.tmp.path();
    let home = tmp.join("hf");
    let h = home.to_str().unwrap();
    let mut hub = hub_with_everything(&t.dir);
    hub.rate_limited = 2;
    let server = Server::start(hub);
    let r = run_cli(&["inspect", MODEL], &server.env(h));
    assert_eq!(r.0, 0, "{}", r.2);
    assert!(r.2.contains("429") && r.2.contains("retrying"), "{}", r.2);
    let statuses: Vec<u16> = server.log().iter().map(|s| s.status).collect();
    assert_eq!(&statuses[..3], &[429, 429, 200], "{statuses:?}");
    // The CDN down for the weights: retried, then explained.
    let home2 = tmp.join("hf2");
    server
        .hub
        .lock()
        .unwrap()
        .faults
        .insert("model.safetensors".into(), Fault::Unavailable);
    let r = inspect_model(&server, &home2);
    assert_user_error(&r, "model.safetensors");
    assert!(
        r.2.contains("503") && r.2.contains("try again later"),
        "{}",
        r.2
    );
    let tries = server
        .log()
        .iter()
        .filter(|s| s.cdn && s.status == 503)
        .count();
    assert_eq!(tries, 5, "{:?}", server.log());
    // Rate-limited for good: the message says so and what to do.
    let home3 = tmp.join("hf3");
    server.hub.lock().unwrap().rate_limited = 100;
    let r = inspect_model(&server, &home3);
    assert_user_error(&r, "config.json");
    assert!(
        r.2.contains("rate-limiting (429)") && r.2.contains("HF_TOKEN"),
        "{}",
        r.2
    );
}

/// Answers no client should accept: each is one `error:` line naming the file, no panic,
/// and nothing left in the cache for it (no file, no .incomplete).
#[test]
fn hostile_answers_are_one_error_line_and_leave_nothing() {
    let t = tiny_model(false, 1);
    let tmp = t.tmp.path();
    let shard = "model.safetensors";
    let cases: [(Fault, &str); 8] = [
        (Fault::NoLocation, "without a Location"),
        (
            Fault::FileLocation,
            "only http and https locations are followed",
        ),
        (Fault::BadContentRange, "Content-Range"),
        (Fault::BinaryHeader, "x-linked-etag header is not text"),
        (Fault::Short, "shorter than the size the hub announced"),
        (Fault::Long, "more than the"),
        (Fault::Corrupt, "is corrupt: its SHA-256"),
        (
            Fault::DropAfter {
                bytes: 10,
                times: 1,
            },
            "",
        ),
    ];
    for (k, (fault, needle)) in cases.iter().enumerate() {
        let home = tmp.join(format!("hf{k}"));
        let mut hub = hub_with_everything(&t.dir);
        hub.faults.insert(shard.into(), *fault);
        if *fault == Fault::BadContentRange {
            // Only a ranged answer can carry a wrong Content-Range: cut the first one.
            hub.faults.insert(
                shard.into(),
                Fault::DropAfter {
                    bytes: 100,
                    times: 1,
                },
            );
        }
        let server = Server::start(hub);
        if *fault == Fault::BadContentRange {
            let hubref = Arc::clone(&server.hub);
            std::thread::spawn(move || {
                for _ in 0..2000 {
                    let mut hb = hubref.lock().unwrap();
                    if hb.log.iter().any(|s| s.cdn && s.body_bytes == 100) {
                        hb.faults
                            .insert("model.safetensors".into(), Fault::BadContentRange);
                        return;
                    }
                    drop(hb);
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            });
        }
        let r = inspect_model(&server, &home);
        if needle.is_empty() {
            // The control: a dropped connection is resumed and the run succeeds.
            assert_eq!(r.0, 0, "{fault:?}: {}", r.2);
            continue;
        }
        assert_user_error(&r, "model.safetensors");
        assert!(r.2.contains(needle), "{fault:?}: {}", r.2);
        assert!(!r.2.contains("panicked"), "{}", r.2);
        let left: Vec<String> = walk(&home)
            .into_iter()
            .filter(|p| p.ends_with(shard) || p.ends_with(".incomplete"))
            .collect();
        assert!(left.is_empty(), "{fault:?}: {left:?}");
    }
    // A proxy's HTML page with status 200 for everything.
    let mut hub = hub_with_everything(&t.dir);
    hub.html_proxy = true;
    let server = Server::start(hub);
    let home = tmp.join("hf-proxy");
    let r = inspect_model(&server, &home);
    assert_user_error(&r, "config.json");
    assert!(r.2.contains("not the Hugging Face hub's"), "{}", r.2);
    assert!(
        walk(&home).iter().all(|p| !p.contains("snapshots")),
        "{:?}",
        walk(&home)
    );
}

/// `copal fetch --list` without a hub says so once, still lists what is local and what would
/// be fetched, and exits 1 because something needed cannot be had; offline the same.
#[test]
fn fetch_list_without_a_hub_says_so_once_and_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture_data(tmp.path());
    std::fs::remove_dir_all(data.join("c4")).unwrap();
    let home = tmp.path().join("hf");
    let d = data.to_str().unwrap();
    let h = home.to_str().unwrap();
    for env in [
        vec![
            ("HF_ENDPOINT", "http://127.0.0.1:9"),
            ("HF_HOME", h),
            ("HF_HUB_OFFLINE", "0"),
        ],
        vec![("HF_HOME", h), ("HF_HUB_OFFLINE", "1")],
    ] {
        let r = run_cli(
            &["fetch", "--list", "--data-dir", d, "--datasets", "ptb,c4"],
            &env,
        );
        assert_eq!(r.0, 1, "{env:?}: {}", r.2);
        assert!(
            r.1.contains("present") && r.1.contains("to download"),
            "{}",
            r.1
        );
        assert!(r.2.matches("cannot reach").count() <= 1, "{}", r.2);
        let last = r.2.lines().last().unwrap_or("");
        assert!(
            last.starts_with("error: ") && last.contains("cannot be downloaded now"),
            "{}",
            r.2
        );
    }
}

/// A renamed repository answers a relative 307 to its new name; the download follows it.
#[test]
fn a_renamed_repository_is_followed() {
    let t = tiny_model(false, 1);
    let tmp = t.tmp.path();
    let home = tmp.join("hf");
    let mut hub = hub_with_everything(&t.dir);
    let data = hub.repos.remove(MODEL).unwrap();
    hub.repos.insert("new-org/tiny-llama".into(), data);
    hub.renamed
        .insert(MODEL.into(), "new-org/tiny-llama".into());
    let server = Server::start(hub);
    let r = inspect_model(&server, &home);
    assert_eq!(r.0, 0, "{}", r.2);
    assert!(server.log().iter().any(|s| s.status == 307));
}

/// Download failures: a corrupted dataset file is refused by its pin and removed; a gated
/// model asks for HF_TOKEN (and a token it has not granted is told apart); an unknown
/// revision and an unknown repository are clear errors; an index that names a shard outside
/// the repository is refused before anything else is fetched.
#[test]
fn download_failures_are_clear_and_leave_no_half_files() {
    let t = tiny_model(false, 2);
    let tmp = t.tmp.path();
    let home = tmp.join("hf");
    let h = home.to_str().unwrap();
    let empty = tmp.join("no-data");
    std::fs::create_dir_all(&empty).unwrap();
    let e = empty.to_str().unwrap();
    let eval = |server: &Server, ds: &str| {
        run_cli(
            &[
                "eval",
                "--model",
                t.dir.to_str().unwrap(),
                "--datasets",
                ds,
                "--data-dir",
                e,
                "--seqlen",
                "64",
                "--max-windows",
                "2",
                "--quiet",
            ],
            &server.env(h),
        )
    };
    // Served with the right SHA-256 but not the pinned text (the hub's copy changed): refused
    // by the pin, and removed.
    let mut hub = hub_with_everything(&t.dir);
    let ptb = hub.repos.get_mut(PTB.0).unwrap();
    let files = ptb.commits.get_mut(PTB.1).unwrap();
    files.insert(
        "penn_treebank/test/0000.parquet".into(),
        parquet("sentence", &["a changed text".to_string()]),
    );
    let server = Server::start(hub);
    let r = eval(&server, "ptb");
    assert_user_error(&r, "does not hold the pinned text");
    assert!(r.2.contains("removed from the cache"), "{}", r.2);
    assert!(
        !walk(&home).iter().any(|p| p.contains("penn_treebank/test")),
        "{:?}",
        walk(&home)
    );
    drop(server);
    let server = Server::start(hub_with_everything(&t.dir));
    let r = eval(&server, "wikitext2");
    assert_eq!(r.0, 0, "{}", r.2);
    // A gated model: no token, then a token it has not granted, then one it has.
    server.hub.lock().unwrap().gated.push(MODEL.into());
    let r = run_cli(&["inspect", MODEL, "--quiet"], &server.env(h));
    assert_user_error(&r, "set HF_TOKEN");
    assert!(r.2.contains("gated"), "{}", r.2);
    let mut env = server.env(h);
    env.push(("HF_TOKEN", "hf_someone_else"));
    let r = run_cli(&["inspect", MODEL, "--quiet"], &env);
    assert_user_error(&r, "gated");
    env.pop();
    env.push(("HF_TOKEN", server::GRANTED_TOKEN));
    let r = run_cli(&["inspect", MODEL, "--quiet"], &env);
    assert_eq!(r.0, 0, "{}", r.2);
    server.hub.lock().unwrap().gated.clear();
    // An unknown revision, an unknown repository (401 without a token, as the hub answers).
    let r = run_cli(
        &["inspect", &format!("{MODEL}@0000dead"), "--quiet"],
        &server.env(h),
    );
    assert_user_error(&r, "no such revision");
    let r = run_cli(&["inspect", "tiny-org/absent", "--quiet"], &server.env(h));
    assert_user_error(&r, "config.json of tiny-org/absent@main");
    assert!(
        r.2.contains("does not exist, or it is private or gated"),
        "{}",
        r.2
    );
    // The hub is not there at all.
    let addr = server.addr.clone();
    drop(server);
    let r = run_cli(
        &["inspect", "tiny-org/elsewhere", "--quiet"],
        &[
            ("HF_ENDPOINT", addr.as_str()),
            ("HF_HOME", h),
            ("HF_HUB_OFFLINE", "0"),
        ],
    );
    assert_user_error(&r, "cannot reach");
    // An index that names files outside the repository: refused before they are asked for.
    for bad in ["../x.safetensors", "/etc/passwd"] {
        let mut hub = hub_with_everything(&t.dir);
        let model = hub
            .repos
            .get_mut(MODEL)
            .unwrap()
            .commits
            .get_mut(MODEL_COMMIT)
            .unwrap();
        let mut index: serde_json::Value =
            serde_json::from_slice(&model["model.safetensors.index.json"]).unwrap();
        index["weight_map"]["model.norm.weight"] = bad.into();
        model.insert(
            "model.safetensors.index.json".into(),
            index.to_string().into_bytes(),
        );
        let server = Server::start(hub);
        let home2 = tmp.join(format!("hf-{}", bad.len()));
        let r = inspect_model(&server, &home2);
        assert_user_error(&r, "which is not a file inside the repository");
        let asked: Vec<String> = server.log().iter().map(|s| s.path.clone()).collect();
        assert!(
            !asked
                .iter()
                .any(|p| p.contains("passwd") || p.contains("..")),
            "{asked:?}"
        );
    }
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(walk(&p));
            } else {
                out.push(p.to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// The hub with each pinned task file at its revision: the task copies
/// (scripts/fetch-task-data.sh), whose rows and columns are the upstream files'; the file of
/// task `other` holds other items.
fn hub_with_tasks(other: Option<&str>) -> Hub {
    let copies = test_tasks();
    // One commit per repository (ARC's two configurations share one).
    let mut files: HashMap<(&str, &str), HashMap<String, Vec<u8>>> = HashMap::new();
    for pin in copal::data::pins::TASK_PINS {
        let bytes = match other == Some(pin.task) {
            true => parquet("sentence1", &["Not the pinned item.".to_string()]),
            false => std::fs::read(copies.join(pin.task).join("validation.parquet")).unwrap(),
        };
        files
            .entry((pin.repo, pin.revision))
            .or_default()
            .insert(pin.path.into(), bytes);
    }
    let mut hub = Hub::default();
    for ((repo, rev), f) in files {
        hub.repos
            .insert(format!("datasets/{repo}"), RepoData::single(rev, f, &[]));
    }
    hub
}

/// Zero-shot tasks by name: `copal fetch --tasks` downloads each pinned task file through the
/// hub (LFS, redirected to the CDN) into the hub cache and verifies its items; offline, `copal
/// eval --tasks` then scores from the cache alone exactly what it scores from the local copies;
/// and Python's huggingface_hub finds the files copal cached. Tasks with no pinned file and no
/// local copy are named.
#[test]
#[ignore = "full tier, ./scripts/test.sh: the task copies and Python's huggingface_hub"]
fn zero_shot_tasks_by_name_from_the_hub_then_offline() {
    let t = tiny_model(false, 1);
    let tmp = t.tmp.path();
    let home = tmp.join("hf");
    let none = tmp.join("no-tasks");
    let h = home.to_str().unwrap();
    let server = Server::start(hub_with_tasks(None));
    let env = server.env(h);
    let pinned = "boolq,rte,arc_easy,arc_challenge,openbookqa";
    let (code, out, err) = run_cli(
        &[
            "fetch",
            "--tasks",
            pinned,
            "--tasks-dir",
            none.to_str().unwrap(),
            "--list",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let listed = out.lines().filter(|l| l.contains(" validation ")).count();
    assert_eq!(listed, 5, "{out}");
    assert!(out.contains("to download: 1.5 MB"), "{out}");
    let (code, out, err) = run_cli(
        &[
            "fetch",
            "--tasks",
            pinned,
            "--tasks-dir",
            none.to_str().unwrap(),
            "--json",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert!(rows.iter().all(|r| r["status"] == "present"), "{rows:?}");
    assert!(server.log().iter().any(|s| s.cdn && s.status == 200));
    drop(server);
    let score = |dir: &Path, env: &[(&str, &str)]| -> serde_json::Value {
        let (code, out, err) = run_cli(
            &[
                "eval",
                "--model",
                t.dir.to_str().unwrap(),
                "--tasks",
                pinned,
                "--tasks-dir",
                dir.to_str().unwrap(),
                "--limit",
                "8",
                "--json",
                "--quiet",
            ],
            env,
        );
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["scores"].clone()
    };
    let offline = [("HF_HOME", h), ("HF_HUB_OFFLINE", "1")];
    assert_eq!(score(&none, &offline), score(&test_tasks(), &offline));
    // huggingface_hub's own lookup finds every file copal put in the shared cache.
    for pin in copal::data::pins::TASK_PINS {
        let out = python("huggingface_hub")
            .args(["-c", "import sys; from huggingface_hub import try_to_load_from_cache as t; print(t(sys.argv[1], sys.argv[2], revision=sys.argv[3], repo_type='dataset'))"])
            .args([pin.repo, pin.path, pin.revision])
            .env("HF_HOME", h)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        let found = String::from_utf8_lossy(&out.stdout);
        assert!(
            found.trim().ends_with(pin.path),
            "{}: {found} {}",
            pin.task,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // HellaSwag has no pinned file: without a local copy it is named, with what to do.
    let (code, _, err) = run_cli(
        &[
            "fetch",
            "--tasks",
            "hellaswag",
            "--tasks-dir",
            none.to_str().unwrap(),
        ],
        &offline,
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("hellaswag") && err.contains("local copy"),
        "{err}"
    );
}

/// A hub file whose items are not the pinned ones is refused, naming the task and both
/// hashes, and removed from the cache, so that a rerun fetches it again.
#[test]
#[ignore = "full tier, ./scripts/test.sh: the task copies"]
fn a_task_file_with_other_items_is_refused_and_evicted() {
    let t = tiny_model(false, 1);
    let tmp = t.tmp.path();
    let home = tmp.join("hf");
    let none = tmp.join("no-tasks");
    let server = Server::start(hub_with_tasks(Some("rte")));
    let env = server.env(home.to_str().unwrap());
    let (code, _, err) = run_cli(
        &[
            "fetch",
            "--tasks",
            "rte",
            "--tasks-dir",
            none.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("does not hold the pinned items of rte"),
        "{err}"
    );
    let left: Vec<_> = walk(&home)
        .into_iter()
        .filter(|p| p.ends_with(".parquet"))
        .collect();
    assert!(
        left.is_empty(),
        "the refused file stayed in the cache: {left:?}"
    );
}
