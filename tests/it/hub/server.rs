//! A stand-in for huggingface.co as its download clients see it, written from
//! `huggingface_hub`'s `file_download.py` and `utils/_http.py` (the reference client) and the
//! hub's answers those files expect. Two listeners on 127.0.0.1:
//!
//! **The hub** answers `GET` and `HEAD` of `/[datasets/]OWNER/NAME/resolve/REVISION/PATH`
//! (REVISION a commit, a branch or a tag; `/` in it escaped as `%2F`):
//! - a small (non-LFS) file is answered by the hub itself: 200 with `ETag` (a git object id),
//!   `X-Repo-Commit`, `Content-Length`; `Range: bytes=N-` honoured (206 + `Content-Range`);
//! - an LFS file (safetensors, parquet, json.gz, and `tokenizer.json`, which large
//!   repositories keep in LFS) is a **302** to the CDN with `X-Repo-Commit`, `X-Linked-Etag`
//!   (its SHA-256), `X-Linked-Size`, an `ETag` of its pointer and an absolute `Location`;
//! - a renamed repository is a **relative 307** to its new name;
//! - errors as the hub gives them: 401 for a gated repository without a token and 403 with
//!   one it has not granted (`X-Error-Code: GatedRepo`); 401 for a missing repository when no
//!   token is sent and 404 when one is (`RepoNotFound`); 404 `RevisionNotFound` and
//!   `EntryNotFound` (the latter with `X-Repo-Commit`); 429 with `Retry-After`.
//!
//! **The CDN** serves blobs by SHA-256 (`/SHA256?X-Amz-Signature=…`): it **ignores `Range`
//! when the request accepts gzip** (200, the whole body, no `Content-Range`, as the hub's CDN
//! does: huggingface/hf-hub#141) and honours it otherwise (206); 416 for a range past its end.
//!
//! Faults make either misbehave for one file: a connection dropped part-way, the CDN down,
//! corrupt, short or long bodies, a bad `Content-Range`, a redirect without `Location` or to
//! `file://`, a header that is not text, and a proxy's HTML page with status 200 for
//! everything. Every request is logged (listener, method, path, headers asked, bytes sent).
//! Python's `huggingface_hub` downloading every file from it (tests/it/hub/mod.rs) is what
//! shows it answers as the real hub does.

use sha2::Digest;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// How one file misbehaves (keyed by its path in the repository).
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Fault {
    /// The first `times` CDN answers end after `bytes` body bytes (connection closed).
    DropAfter { bytes: usize, times: usize },
    /// The CDN answers 503 for the blob.
    Unavailable,
    /// The CDN serves other bytes (one flipped) under the same name and size.
    Corrupt,
    /// The CDN's copy is 100 bytes shorter than the hub announces.
    Short,
    /// The CDN's copy is 100 bytes longer than the hub announces.
    Long,
    /// Ranged CDN answers say a Content-Range other than the one asked for.
    BadContentRange,
    /// The hub's 302 has no Location.
    NoLocation,
    /// The hub's 302 points at `file:///etc/passwd`.
    FileLocation,
    /// The hub's X-Linked-Etag holds a byte that is not text.
    BinaryHeader,
}

/// A repository: its revisions (branch, tag or commit → commit) and each commit's files.
#[derive(Default, Clone)]
pub struct RepoData {
    pub refs: HashMap<String, String>,
    pub commits: HashMap<String, HashMap<String, Vec<u8>>>,
}

impl RepoData {
    /// One commit, reachable as itself, `main` and the given tags.
    pub fn single(commit: &str, files: HashMap<String, Vec<u8>>, tags: &[&str]) -> RepoData {
        let mut r = RepoData::default();
        r.refs.insert(commit.into(), commit.into());
        r.refs.insert("main".into(), commit.into());
        for t in tags {
            r.refs.insert((*t).into(), commit.into());
        }
        r.commits.insert(commit.into(), files);
        r
    }
}

/// One request as the listeners saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub cdn: bool,
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub accept_encoding: Option<String>,
    pub authorization: bool,
    pub status: u16,
    pub body_bytes: usize,
}

#[derive(Default)]
pub struct Hub {
    /// Repository url path ("OWNER/NAME" or "datasets/OWNER/NAME") → its data.
    pub repos: HashMap<String, RepoData>,
    /// Old url path → new url path (a relative 307).
    pub renamed: HashMap<String, String>,
    /// Gated repositories, and the token that is granted access.
    pub gated: Vec<String>,
    pub faults: HashMap<String, Fault>,
    /// The next N hub requests are answered 429 (Retry-After: 1).
    pub rate_limited: usize,
    /// Every answer is a proxy's HTML page with status 200.
    pub html_proxy: bool,
    pub log: Vec<Seen>,
    /// CDN answers given per blob, for DropAfter.
    served: HashMap<String, usize>,
    /// Requests answered but not yet logged (a client may exit before its answer is logged).
    in_flight: usize,
}

/// The token the gated repositories grant.
pub const GRANTED_TOKEN: &str = "hf_granted";

pub struct Server {
    pub hub: Arc<Mutex<Hub>>,
    pub addr: String,
    pub cdn_addr: String,
    stop: Arc<AtomicBool>,
}

pub fn sha256_hex(b: &[u8]) -> String {
    format!("{:x}", sha2::Sha256::digest(b))
}

/// Whether the hub keeps a file in LFS (so it redirects to the CDN).
pub fn is_lfs(path: &str) -> bool {
    [".safetensors", ".parquet", ".gz", ".bin", ".gguf"]
        .iter()
        .any(|e| path.ends_with(e))
        || path == "tokenizer.json"
}

fn listen(
    hub: Arc<Mutex<Hub>>,
    stop: Arc<AtomicBool>,
    cdn: bool,
    other: Arc<Mutex<String>>,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            if let Ok(stream) = stream {
                let (h, o) = (hub.clone(), other.clone());
                std::thread::spawn(move || {
                    let cdn_addr = o.lock().unwrap().clone();
                    serve(stream, &h, cdn, &cdn_addr)
                });
            }
        }
    });
    addr
}

impl Server {
    pub fn start(hub: Hub) -> Server {
        let hub = Arc::new(Mutex::new(hub));
        let stop = Arc::new(AtomicBool::new(false));
        let cdn_slot = Arc::new(Mutex::new(String::new()));
        let cdn_addr = listen(
            hub.clone(),
            stop.clone(),
            true,
            Arc::new(Mutex::new(String::new())),
        );
        *cdn_slot.lock().unwrap() = cdn_addr.clone();
        let addr = listen(hub.clone(), stop.clone(), false, cdn_slot);
        Server {
            hub,
            addr,
            cdn_addr,
            stop,
        }
    }

    /// The environment a client needs to use this hub with `home` as HF_HOME.
    pub fn env<'a>(&'a self, home: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("HF_ENDPOINT", self.addr.as_str()),
            ("HF_HOME", home),
            ("HF_HUB_OFFLINE", "0"),
        ]
    }

    /// Every request answered so far, once each is logged (its thread logs after sending, so a
    /// client that has exited may have answers still being logged).
    pub fn log(&self) -> Vec<Seen> {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let h = self.hub.lock().unwrap();
            if h.in_flight == 0 || std::time::Instant::now() > until {
                return h.log.clone();
            }
            drop(h);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loops.
        for a in [&self.addr, &self.cdn_addr] {
            let _ = TcpStream::connect(a.trim_start_matches("http://"));
        }
    }
}

struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some(Request {
        method,
        path,
        headers,
    })
}

/// An answer: status line, headers (raw bytes allowed), body (not sent for HEAD).
struct Answer {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// Send only this many body bytes, then close.
    cut: Option<usize>,
}

impl Answer {
    fn new(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            cut: None,
        }
    }
    fn h(mut self, k: &str, v: impl Into<String>) -> Answer {
        self.headers.push((k.to_string(), v.into().into_bytes()));
        self
    }
    fn raw(mut self, k: &str, v: &[u8]) -> Answer {
        self.headers.push((k.to_string(), v.to_vec()));
        self
    }
    fn body(mut self, b: Vec<u8>) -> Answer {
        self.body = b;
        self
    }
    fn error(status: u16, code: &str, message: &str) -> Answer {
        let body = format!("{{\"error\":\"{message}\"}}").into_bytes();
        let mut a = Answer::new(status)
            .h("content-type", "application/json")
            .h("x-error-message", message);
        if !code.is_empty() {
            a = a.h("x-error-code", code);
        }
        a.body(body)
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn send(stream: &mut TcpStream, req: &Request, a: &Answer) -> usize {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nconnection: close\r\n",
        a.status,
        reason(a.status)
    )
    .into_bytes();
    let has_len = a
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    for (k, v) in &a.headers {
        head.extend_from_slice(k.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(v);
        head.extend_from_slice(b"\r\n");
    }
    if !has_len {
        head.extend_from_slice(format!("content-length: {}\r\n", a.body.len()).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    let _ = stream.write_all(&head);
    if req.method == "HEAD" {
        return 0;
    }
    let n = a.cut.unwrap_or(a.body.len()).min(a.body.len());
    let _ = stream.write_all(&a.body[..n]);
    let _ = stream.flush();
    if a.cut.is_some() {
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    n
}

/// `bytes=N-` or `bytes=N-M` → (N, M).
fn parse_range(r: &str) -> Option<(usize, Option<usize>)> {
    let spec = r.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()))
}

/// The body (or a part of it, as Range asks) of a file answered directly.
fn ranged(
    bytes: &[u8],
    range: Option<&String>,
    honour: bool,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    match range.and_then(|r| parse_range(r)).filter(|_| honour) {
        Some((start, _)) if start >= bytes.len() && !bytes.is_empty() => (
            416,
            vec![("content-range".into(), format!("bytes */{}", bytes.len()))],
            Vec::new(),
        ),
        Some((start, end)) => {
            let end = end
                .unwrap_or(bytes.len().saturating_sub(1))
                .min(bytes.len().saturating_sub(1));
            (
                206,
                vec![(
                    "content-range".into(),
                    format!("bytes {start}-{end}/{}", bytes.len()),
                )],
                bytes[start..=end.max(start).min(bytes.len().saturating_sub(1))].to_vec(),
            )
        }
        None => (200, Vec::new(), bytes.to_vec()),
    }
}

fn serve(mut stream: TcpStream, hub: &Mutex<Hub>, cdn: bool, cdn_addr: &str) {
    let Some(req) = read_request(&stream) else {
        return;
    };
    let (answer, seen_status) = {
        let mut h = hub.lock().unwrap();
        let a = if cdn {
            answer_cdn(&mut h, &req)
        } else {
            answer_hub(&mut h, &req, cdn_addr)
        };
        let s = a.status;
        h.in_flight += 1;
        (a, s)
    };
    let n = send(&mut stream, &req, &answer);
    let mut h = hub.lock().unwrap();
    h.in_flight -= 1;
    h.log.push(Seen {
        cdn,
        method: req.method.clone(),
        path: req.path.clone(),
        range: req.headers.get("range").cloned(),
        accept_encoding: req.headers.get("accept-encoding").cloned(),
        authorization: req.headers.contains_key("authorization"),
        status: seen_status,
        body_bytes: n,
    });
}

/// A git object id for a small file's ETag (the hub's is git's SHA-1; any stable hash of the
/// bytes serves a client the same way).
fn git_oid(bytes: &[u8]) -> String {
    sha256_hex(bytes)[..40].to_string()
}

fn answer_hub(h: &mut Hub, req: &Request, cdn_addr: &str) -> Answer {
    if h.html_proxy {
        return Answer::new(200)
            .h("content-type", "text/html")
            .body(b"<html><body>Please log in to the network</body></html>".to_vec());
    }
    if h.rate_limited > 0 {
        h.rate_limited -= 1;
        return Answer::error(429, "", "You have been rate-limited").h("retry-after", "1");
    }
    let path = req
        .path
        .split('?')
        .next()
        .unwrap_or("")
        .trim_start_matches('/');
    let Some((repo, rest)) = path.split_once("/resolve/") else {
        return Answer::error(404, "", "Not Found");
    };
    let token = req
        .headers
        .get("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::to_string);
    if let Some(new) = h.renamed.get(repo) {
        return Answer::new(307)
            .h("location", format!("/{new}/resolve/{rest}"))
            .body(b"Temporary Redirect".to_vec());
    }
    let Some(data) = h.repos.get(repo).cloned() else {
        return if token.is_none() {
            Answer::error(401, "RepoNotFound", "Invalid username or password.")
        } else {
            Answer::error(404, "RepoNotFound", "Repository not found")
        };
    };
    if h.gated.iter().any(|g| g == repo) {
        match token.as_deref() {
            None => {
                return Answer::error(
                    401,
                    "GatedRepo",
                    "Access to this model is restricted. You must be authenticated.",
                )
            }
            Some(t) if t != GRANTED_TOKEN => {
                return Answer::error(
                    403,
                    "GatedRepo",
                    "Access to this model is restricted and you are not in the authorized list.",
                )
            }
            _ => {}
        }
    }
    // The revision is one path component, its own `/` escaped as %2F.
    let (rev, file) = rest.split_once('/').unwrap_or((rest, ""));
    let rev = rev.replace("%2F", "/").replace("%2f", "/");
    let Some(commit) = data.refs.get(&rev).cloned() else {
        return Answer::error(404, "RevisionNotFound", "Invalid rev id");
    };
    let Some(bytes) = data.commits.get(&commit).and_then(|f| f.get(file)).cloned() else {
        return Answer::error(404, "EntryNotFound", "Entry not found").h("x-repo-commit", commit);
    };
    let fault = h.faults.get(file).copied();
    if is_lfs(file) {
        let sha = sha256_hex(&bytes);
        let mut a = Answer::new(302)
            .h("x-repo-commit", commit)
            .h("etag", format!("\"{}\"", git_oid(sha.as_bytes())))
            .h("x-linked-size", bytes.len().to_string());
        a = match fault {
            Some(Fault::BinaryHeader) => a.raw("x-linked-etag", b"\"\xff\xfe\""),
            _ => a.h("x-linked-etag", format!("\"{sha}\"")),
        };
        return match fault {
            Some(Fault::NoLocation) => a.body(b"Found.".to_vec()),
            Some(Fault::FileLocation) => a
                .h("location", "file:///etc/passwd")
                .body(b"Found.".to_vec()),
            _ => a
                .h(
                    "location",
                    format!("{cdn_addr}/{sha}?X-Amz-Expires=3600&X-Amz-Signature=0ff1ce"),
                )
                .body(b"Found. Redirecting".to_vec()),
        };
    }
    let (status, extra, body) = ranged(&bytes, req.headers.get("range"), true);
    let mut a = Answer::new(status)
        .h("x-repo-commit", commit)
        .h("etag", format!("\"{}\"", git_oid(&bytes)))
        .h("content-type", "application/octet-stream")
        .h("accept-ranges", "bytes");
    for (k, v) in extra {
        a = a.h(&k, v);
    }
    if req.method == "HEAD" {
        // HEAD says the length GET would send.
        let len = body.len();
        a.h("content-length", len.to_string())
    } else {
        a.body(body)
    }
}

fn answer_cdn(h: &mut Hub, req: &Request) -> Answer {
    let sha = req
        .path
        .trim_start_matches('/')
        .split('?')
        .next()
        .unwrap_or("")
        .to_string();
    // Find the blob (and the file it is, for its faults) among every repository's files.
    let mut found = None;
    for data in h.repos.values() {
        for files in data.commits.values() {
            for (name, bytes) in files {
                if sha256_hex(bytes) == sha {
                    found = Some((name.clone(), bytes.clone()));
                }
            }
        }
    }
    let Some((name, mut bytes)) = found else {
        return Answer::new(403)
            .h("content-type", "application/xml")
            .body(b"<Error><Code>AccessDenied</Code></Error>".to_vec());
    };
    let fault = h.faults.get(&name).copied();
    match fault {
        Some(Fault::Unavailable) => return Answer::new(503).body(b"Service Unavailable".to_vec()),
        Some(Fault::Corrupt) => {
            let n = bytes.len();
            bytes[n / 2] ^= 0x55;
        }
        Some(Fault::Short) => bytes.truncate(bytes.len().saturating_sub(100)),
        Some(Fault::Long) => bytes.extend_from_slice(&[0u8; 100]),
        _ => {}
    }
    // The hub's CDN ignores Range when the client accepts gzip.
    let gzip = req
        .headers
        .get("accept-encoding")
        .is_some_and(|e| e.to_ascii_lowercase().contains("gzip"));
    let (status, extra, body) = ranged(&bytes, req.headers.get("range"), !gzip);
    let mut a = Answer::new(status)
        .h("content-type", "application/octet-stream")
        .h("etag", format!("\"{sha}\""))
        .h("accept-ranges", "bytes");
    for (k, v) in extra {
        let v = if fault == Some(Fault::BadContentRange) && k == "content-range" {
            format!("bytes 0-0/{}", bytes.len())
        } else {
            v
        };
        a = a.h(&k, v);
    }
    let served = h.served.entry(sha).or_insert(0);
    *served += 1;
    if let Some(Fault::DropAfter { bytes: cut, times }) = fault {
        if *served <= times {
            a.cut = Some(cut);
        }
    }
    a.body(body)
}
