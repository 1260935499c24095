//! Issue #21: models and datasets by name, through a local hub. The server below speaks the
//! part of the Hugging Face hub's HTTP that `hf-hub` uses (`GET /[datasets/]OWNER/NAME/
//! resolve/REVISION/PATH` with `Range`, answered with `x-repo-commit`, `etag` and
//! `content-range`), from files the tests lay out: the tiny model (sharded, with an index) and
//! the three datasets in their upstream layout (WikiText-2 and PTB as the hub's parquet, C4
//! as its json.gz shards), built from the real data in ../shared/data.

use crate::common::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// How the server misbehaves for one file.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Serve different bytes than the file's (the etag still the file's).
    Corrupt,
    /// Close the connection after this many bytes of the body.
    DropAfter(usize),
}

/// A repository at one revision: its commit and its files.
type Snapshot = (String, HashMap<String, Vec<u8>>);

#[derive(Default)]
struct Hub {
    /// (repo url path such as "datasets/allenai/c4", revision) → its snapshot.
    repos: HashMap<(String, String), Snapshot>,
    /// Repositories that answer 401 (gated).
    gated: Vec<String>,
    faults: HashMap<String, Fault>,
    /// Requests seen, for the tests that count them.
    log: Vec<String>,
}

struct Server {
    hub: Arc<Mutex<Hub>>,
    addr: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Server {
    fn start(hub: Hub) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let hub = Arc::new(Mutex::new(hub));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (h, s) = (hub.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let h = h.clone();
                    std::thread::spawn(move || serve(stream, &h));
                }
            }
        });
        Server { hub, addr, stop }
    }

    fn env<'a>(&'a self, home: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("HF_ENDPOINT", self.addr.as_str()),
            ("HF_HOME", home),
            ("HF_HUB_OFFLINE", "0"),
        ]
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr.trim_start_matches("http://"));
    }
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(b))
}

fn serve(mut stream: TcpStream, hub: &Mutex<Hub>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range_start = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(r) = lower.strip_prefix("range: bytes=") {
            range_start = r
                .split('-')
                .next()
                .unwrap_or("0")
                .trim()
                .parse()
                .unwrap_or(0);
        }
    }
    let reply = |stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]| {
        let mut head = format!("HTTP/1.1 {status}\r\nconnection: close\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body);
    };
    let mut hub = hub.lock().unwrap();
    hub.log.push(path.clone());
    // /[datasets/]OWNER/NAME/resolve/REVISION/FILE
    let Some((repo, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
        return reply(
            &mut stream,
            "404 Not Found",
            &[("content-length", "0".into())],
            b"",
        );
    };
    let rest = rest.replace("%2F", "/");
    if hub.gated.iter().any(|g| g == repo) {
        return reply(
            &mut stream,
            "401 Unauthorized",
            &[("content-length", "0".into())],
            b"",
        );
    }
    let found = hub.repos.iter().find_map(|((r, rev), (commit, files))| {
        let file = rest.strip_prefix(&format!("{rev}/"))?;
        (r == repo).then(|| (commit.clone(), file.to_string(), files.get(file).cloned()))
    });
    let Some((commit, file, Some(bytes))) = found else {
        return reply(
            &mut stream,
            "404 Not Found",
            &[("content-length", "0".into())],
            b"",
        );
    };
    let etag = sha256_hex(&bytes);
    let fault = hub.faults.get(&file).copied().unwrap_or(Fault::None);
    drop(hub);
    let mut body = bytes.clone();
    if fault == Fault::Corrupt {
        let n = body.len();
        body[n / 2] ^= 0x55;
    }
    let size = body.len();
    let start = range_start.min(size);
    let headers = vec![
        ("x-repo-commit", commit),
        ("etag", format!("\"{etag}\"")),
        (
            "content-range",
            format!("bytes {start}-{}/{size}", size.max(1) - 1),
        ),
        ("content-length", (size - start).to_string()),
    ];
    let part = &body[start..];
    match fault {
        Fault::DropAfter(n) if part.len() > 1 => {
            reply(
                &mut stream,
                "206 Partial Content",
                &headers,
                &part[..n.min(part.len())],
            );
            // Gone before the end: the client sees a short body.
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        _ => reply(&mut stream, "206 Partial Content", &headers, part),
    }
}

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
    "refs/convert/parquet",
);
const C4: (&str, &str) = (
    "datasets/allenai/c4",
    "607bd4c8450a42878aa9ddc051a65a055450ef87",
);
const MODEL: &str = "tiny-org/tiny-llama";

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
        (MODEL.into(), "main".into()),
        ("c0ffee".repeat(6) + "c0ff", model),
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
        .insert((WIKI.0.into(), WIKI.1.into()), (WIKI.1.into(), wiki));
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
    hub.repos
        .insert((PTB.0.into(), PTB.1.into()), ("a".repeat(40), ptb));
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
        .insert((C4.0.into(), C4.1.into()), (C4.1.into(), c4));
    hub
}

fn prune_args<'a>(out: &'a str, empty: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "prune",
        "--model",
        MODEL,
        "--datasets",
        "wikitext2,ptb,c4",
        "--calib-split",
        "wikitext2=valid",
        "--data-dir",
        empty,
        "--nsamples",
        "2",
        "--seqlen",
        "64",
        "--eval",
        "--max-windows",
        "2",
        "--out",
        out,
        "--quiet",
        "--json",
    ];
    v.extend_from_slice(extra);
    v
}

/// From an empty cache, `copal prune --model OWNER/NAME --datasets wikitext2,ptb,c4` fetches
/// the model and the pinned datasets and runs; then, with the hub gone and HF_HUB_OFFLINE=1,
/// the same command runs from the cache alone.
#[test]
fn datasets_and_model_by_name_from_a_cold_cache_then_offline() {
    let t = tiny_model(false, 2);
    let tmp = t.tmp.path();
    let home = tmp.join("hf");
    let empty = tmp.join("no-data");
    std::fs::create_dir_all(&empty).unwrap();
    let (h, e) = (home.to_str().unwrap(), empty.to_str().unwrap());
    let server = Server::start(hub_with_everything(&t.dir));
    // A dry run lists what would be downloaded, and downloads nothing.
    let mut dry = prune_args("unused", e, &["--dry-run"]);
    dry[2] = t.dir.to_str().unwrap();
    let (code, out, err) = run_cli(&dry, &server.env(h));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let downloads = v["estimate"]["downloads"].as_array().unwrap();
    assert_eq!(downloads.len(), 6, "{downloads:?}");
    assert!(
        server.hub.lock().unwrap().log.is_empty(),
        "a dry run fetched something"
    );
    // copal fetch --list says the same, with sizes from the hub.
    let (code, out, err) = run_cli(&["fetch", "--list", "--data-dir", e], &server.env(h));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("to download") && out.contains("MB"), "{out}");
    let out = tmp.join("o1");
    let r = run_cli(&prune_args(out.to_str().unwrap(), e, &[]), &server.env(h));
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
    let seen = server.hub.lock().unwrap().log.len();
    assert!(seen > 10, "{seen} requests");
    drop(server);
    // Offline, from the cache only.
    let out2 = tmp.join("o2");
    let r2 = run_cli(
        &prune_args(out2.to_str().unwrap(), e, &[]),
        &[("HF_HOME", h), ("HF_HUB_OFFLINE", "1")],
    );
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
}

/// Download failures: a corrupted file is refused by its pin and removed; a dropped connection
/// leaves no partial file and the rerun completes; a gated model asks for HF_TOKEN; an unknown
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
    let part_files = || -> Vec<String> {
        walk(&home)
            .into_iter()
            .filter(|p| p.ends_with(".part"))
            .collect()
    };
    // Corrupted on the server: refused by the pin, and not kept.
    let mut hub = hub_with_everything(&t.dir);
    hub.faults
        .insert("penn_treebank/test/0000.parquet".into(), Fault::Corrupt);
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
    // Dropped half-way: an error, no .part file; the next try completes.
    let mut hub = hub_with_everything(&t.dir);
    hub.faults.insert(
        "wikitext-2-raw-v1/test-00000-of-00001.parquet".into(),
        Fault::DropAfter(1000),
    );
    let server = Server::start(hub);
    let r = eval(&server, "wikitext2");
    assert_user_error(&r, "wikitext-2-raw-v1/test-00000-of-00001.parquet");
    assert!(r.2.contains("no partial file was kept"), "{}", r.2);
    assert!(part_files().is_empty(), "{:?}", part_files());
    server.hub.lock().unwrap().faults.clear();
    let r = eval(&server, "wikitext2");
    assert_eq!(r.0, 0, "{}", r.2);
    // A gated model.
    server.hub.lock().unwrap().gated.push(MODEL.into());
    let r = run_cli(&["inspect", MODEL, "--quiet"], &server.env(h));
    assert_user_error(&r, "set HF_TOKEN");
    server.hub.lock().unwrap().gated.clear();
    // An unknown revision, an unknown repository.
    let r = run_cli(
        &["inspect", &format!("{MODEL}@0000dead"), "--quiet"],
        &server.env(h),
    );
    assert_user_error(&r, "was not found");
    assert!(
        r.2.contains("check the repository id and the revision"),
        "{}",
        r.2
    );
    let r = run_cli(&["inspect", "tiny-org/absent", "--quiet"], &server.env(h));
    assert_user_error(&r, "config.json of tiny-org/absent was not found");
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
    assert_user_error(&r, "tiny-org/elsewhere");
    // An index that names files outside the repository: refused before they are asked for.
    for bad in ["../x.safetensors", "/etc/passwd"] {
        let mut hub = hub_with_everything(&t.dir);
        let model = &mut hub
            .repos
            .get_mut(&(MODEL.to_string(), "main".to_string()))
            .unwrap()
            .1;
        let mut index: serde_json::Value =
            serde_json::from_slice(&model["model.safetensors.index.json"]).unwrap();
        index["weight_map"]["model.norm.weight"] = bad.into();
        model.insert(
            "model.safetensors.index.json".into(),
            index.to_string().into_bytes(),
        );
        let server = Server::start(hub);
        let home2 = tmp.join(format!("hf-{}", bad.len()));
        let r = run_cli(
            &["inspect", MODEL, "--quiet"],
            &server.env(home2.to_str().unwrap()),
        );
        assert_user_error(&r, "which is not a file inside the repository");
        let asked: Vec<String> = server.hub.lock().unwrap().log.clone();
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
