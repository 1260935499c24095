//! Downloads from the hub as huggingface.co serves them (read from `huggingface_hub`'s
//! `file_download.py` and `utils/_http.py`, the reference client):
//!
//! 1. **Metadata**: `HEAD {endpoint}/[datasets/]REPO/resolve/REVISION/PATH` with
//!    `Accept-Encoding: identity`, redirects followed only while they stay on the hub's host (a
//!    renamed repository is a relative 307). A small file is answered by the hub itself
//!    (`ETag`, `Content-Length`); an LFS file is a 302 to a CDN, and the 302 itself carries
//!    `X-Linked-Etag` (its SHA-256), `X-Linked-Size` and the `Location`. Every answer carries
//!    `X-Repo-Commit`; one without it is not the hub's (a proxy's error page, say).
//! 2. **Transfer**: `GET` of that location, with `Accept-Encoding: identity` (the CDN ignores
//!    `Range` when gzip is accepted: hf-hub 0.5 fails there, huggingface/hf-hub#141) and
//!    `Range: bytes=N-` when `N` bytes of an earlier try are in `blobs/ETAG.incomplete`. A
//!    206 must say `bytes N-(size-1)/size`; a 200 means the server sent it all again.
//! 3. **Verification** before the file enters the cache: the size `X-Linked-Size` announced,
//!    and the SHA-256 `X-Linked-Etag` names. Then the blob, its snapshot link and the ref.
//!
//! 429 and 5xx answers and dropped connections are retried with backoff (`Retry-After`
//! honoured); a transfer that still fails keeps its bytes for the next run. The token goes to
//! the hub's host only, never to the CDN.

use super::{cache, endpoint, token, NotFound, Repo};
use anyhow::{anyhow, bail, Context as _, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Tries of one request on 429, 5xx or a dropped connection, before giving up.
const TRIES: u32 = 5;
/// Redirects followed in one request (the hub needs at most two).
const MAX_REDIRECTS: usize = 10;
/// The longest `Retry-After` copal waits for.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// What the metadata request says of a file.
#[derive(Debug, Clone)]
struct Meta {
    commit: String,
    etag: String,
    size: u64,
    /// Where the bytes are (the CDN for an LFS file).
    location: String,
    /// The SHA-256 the bytes must have (LFS files: `X-Linked-Etag`).
    sha256: Option<String>,
}

/// Downloads `file` of `repo` into the cache and returns its snapshot path.
pub fn fetch(repo: &Repo, file: &str, quiet: bool) -> Result<PathBuf> {
    let what = format!("{file} of {}", repo.display());
    let meta = metadata(repo, file, &what)?;
    // The revision resolved to a commit: the file may be cached under it already (another
    // branch name, or a ref the cache did not have yet).
    let at_commit = repo.at(&meta.commit);
    if let Some(p) = cache::lookup(&at_commit, file) {
        return cache::install(repo, &meta.commit, file, &meta.etag, None).or(Ok(p));
    }
    let (blob, _) = cache::blob(repo, &meta.etag);
    if std::fs::metadata(&blob).is_ok_and(|m| m.is_file() && m.len() == meta.size) {
        return cache::install(repo, &meta.commit, file, &meta.etag, None);
    }
    let part = transfer(repo, &meta, &what, quiet)?;
    cache::install(repo, &meta.commit, file, &meta.etag, Some(&part))
}

/// The size of a file on the hub, from its metadata alone.
pub fn remote_size(repo: &Repo, file: &str) -> Result<u64> {
    let what = format!("{file} of {}", repo.display());
    Ok(metadata(repo, file, &what)?.size)
}

/// The HTTP client, made once per process (its TLS roots are loaded once, its connections
/// pooled).
fn agent() -> &'static ureq::Agent {
    static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    AGENT.get_or_init(make_agent)
}

fn make_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .max_redirects(0)
        .http_status_as_error(false)
        .accept_encoding("identity")
        .user_agent(concat!("copal/", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// `scheme://host[:port]` of a URL, lowercased.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty()).then(|| format!("{}://{}", scheme, host).to_ascii_lowercase())
}

/// A `Location` resolved against the URL it answered: absolute http(s), scheme-relative,
/// host-relative or path-relative. Any other scheme is refused.
fn join(base: &str, loc: &str) -> Result<String> {
    let lower = loc.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        origin(loc).ok_or_else(|| anyhow!("a redirect to {loc:?}, which names no host"))?;
        return Ok(loc.to_string());
    }
    if let Some(scheme_end) = loc.find(':') {
        let scheme = &loc[..scheme_end];
        if !scheme.is_empty()
            && !scheme.contains('/')
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            bail!("a redirect to {loc:?}: only http and https locations are followed");
        }
    }
    let o = origin(base).ok_or_else(|| anyhow!("{base} names no host"))?;
    if let Some(rest) = loc.strip_prefix("//") {
        let scheme = o.split("://").next().unwrap_or("https");
        return Ok(format!("{scheme}://{rest}"));
    }
    if loc.starts_with('/') {
        return Ok(format!("{o}{loc}"));
    }
    let path = &base[o.len()..];
    let path = path.split(['?', '#']).next().unwrap_or("");
    let dir = &path[..path.rfind('/').map(|i| i + 1).unwrap_or(0)];
    Ok(format!(
        "{o}{}{loc}",
        if dir.is_empty() { "/" } else { dir }
    ))
}

/// A header as text; a header that is not text is refused (it cannot be what the hub sent).
fn header<'a>(resp: &'a ureq::http::Response<ureq::Body>, name: &str) -> Result<Option<&'a str>> {
    match resp.headers().get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| anyhow!("its {name} header is not text")),
    }
}

/// `W/"abc"` and `"abc"` → `abc`, as `huggingface_hub` names blobs; then checked to be a
/// plain file name.
fn normalize_etag(raw: &str) -> Result<String> {
    let e = raw.trim().trim_start_matches("W/").trim_matches('"');
    anyhow::ensure!(
        !e.is_empty()
            && e.len() <= 128
            && e.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "its etag {raw:?} is not a hash copal can name a file by"
    );
    Ok(e.to_string())
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One request's outcome for the retry loop.
enum Failure {
    /// Worth another try (429, 5xx, a dropped connection), after this long.
    Retry(anyhow::Error, Option<Duration>),
    /// Final.
    Fatal(anyhow::Error),
}

/// Backoff before try `k` (0-based): 0.5 s, 1 s, 2 s, 4 s; `Retry-After` when given.
fn backoff(k: u32, hint: Option<Duration>) -> Duration {
    hint.unwrap_or_else(|| Duration::from_millis(500 << k.min(6)))
        .min(MAX_WAIT)
}

fn retry_after(resp: &ureq::http::Response<ureq::Body>) -> Option<Duration> {
    header(resp, "retry-after")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// A request with the hub's headers: identity encoding, and the token only where it belongs.
fn request(
    method: &str,
    url: &str,
    range_from: Option<u64>,
) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
    let a = agent();
    let mut r = match method {
        "HEAD" => a.head(url),
        _ => a.get(url),
    };
    r = r.header("Accept-Encoding", "identity");
    if let Some(n) = range_from {
        r = r.header("Range", format!("bytes={n}-"));
    }
    if let Some(t) = token() {
        if origin(url).is_some() && origin(url) == origin(&endpoint()) {
            r = r.header("Authorization", format!("Bearer {t}"));
        }
    }
    r
}

fn send(
    method: &str,
    url: &str,
    range_from: Option<u64>,
    what: &str,
) -> std::result::Result<ureq::http::Response<ureq::Body>, Failure> {
    match request(method, url, range_from).call() {
        Ok(resp) => {
            let code = resp.status().as_u16();
            if code == 429 || (500..600).contains(&code) {
                let wait = retry_after(&resp);
                return Err(Failure::Retry(status_error(&resp, what), wait));
            }
            Ok(resp)
        }
        Err(e) => Err(transport_error(e, url, what)),
    }
}

fn transport_error(e: ureq::Error, url: &str, what: &str) -> Failure {
    let at = origin(url).unwrap_or_else(|| url.to_string());
    // No route to the hub at all: refused, unreachable, or a name that does not resolve (the
    // resolver's failure comes as a plain I/O error).
    let refused = matches!(&e, ureq::Error::Io(io) if matches!(io.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::AddrNotAvailable
            | std::io::ErrorKind::NetworkUnreachable
            | std::io::ErrorKind::HostUnreachable)
        || io.to_string().contains("failed to lookup address"));
    match e {
        _ if refused || matches!(e, ureq::Error::HostNotFound | ureq::Error::ConnectionFailed) => {
            Failure::Fatal(anyhow::Error::new(super::Unreachable(format!(
                "downloading {what}: cannot reach {at} ({e}). Check the network (or \
                 HF_ENDPOINT), or set HF_HUB_OFFLINE=1 to use the cache only"
            ))))
        }
        ureq::Error::Io(_) | ureq::Error::Timeout(_) | ureq::Error::Protocol(_) => {
            Failure::Retry(anyhow!("downloading {what} from {at}: {e}"), None)
        }
        other => Failure::Fatal(anyhow!("downloading {what} from {at}: {other}")),
    }
}

/// Runs `f` up to [`TRIES`] times while it asks for a retry. A failure that lasted through
/// every try comes back as `Retry` (transient: what was downloaded may be kept).
fn with_retries<T>(
    what: &str,
    mut f: impl FnMut() -> std::result::Result<T, Failure>,
) -> std::result::Result<T, Failure> {
    let mut k = 0;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(Failure::Fatal(e)) => return Err(Failure::Fatal(e)),
            Err(Failure::Retry(e, hint)) => {
                k += 1;
                if k >= TRIES {
                    let e = e.context(format!("gave up on {what} after {TRIES} tries"));
                    return Err(Failure::Retry(e, None));
                }
                let wait = backoff(k - 1, hint);
                crate::ui::info(format!(
                    "{e:#}; retrying in {:.1} s ({k} of {} retries)",
                    wait.as_secs_f64(),
                    TRIES - 1
                ));
                std::thread::sleep(wait);
                if crate::ui::interrupted() {
                    return Err(Failure::Fatal(crate::ui::Interrupted.into()));
                }
            }
        }
    }
}

impl Failure {
    fn into_error(self) -> anyhow::Error {
        match self {
            Failure::Retry(e, _) | Failure::Fatal(e) => e,
        }
    }
}

/// An error answer in the user's terms, from the status and the hub's `X-Error-Code`.
fn status_error(resp: &ureq::http::Response<ureq::Body>, what: &str) -> anyhow::Error {
    let code = resp.status().as_u16();
    let ecode = header(resp, "x-error-code").ok().flatten().unwrap_or("");
    let at = endpoint();
    match (code, ecode) {
        (401 | 403, "GatedRepo") => anyhow!(
            "{what}: the repository is gated ({code}). Accept its licence on the hub and set \
             HF_TOKEN to a token of that account"
        ),
        (401, _) if token().is_none() => anyhow!(
            "{what}: {at} answered 401: the repository does not exist, or it is private or \
             gated. Check the repository id; for a private or gated one, set HF_TOKEN to a \
             token that may read it"
        ),
        (401 | 403, _) => anyhow!(
            "{what}: {at} refuses the token in HF_TOKEN ({code}): the repository is private or \
             gated and this token may not read it (accept the licence on the hub, or use \
             another token)"
        ),
        (404, "RepoNotFound") => {
            anyhow!("{what}: no such repository at {at} (404): check the repository id")
        }
        (404, "RevisionNotFound") => anyhow!(
            "{what}: the repository has no such revision (404): check the revision (a commit \
             hash, a branch or a tag)"
        ),
        (404, "EntryNotFound") => anyhow::Error::new(NotFound(format!(
            "{what} was not found: the repository has no such file at that revision (404)"
        ))),
        (404, _) => {
            anyhow!("{what} was not found at {at} (404): check the repository id and the revision")
        }
        (416, _) => anyhow!(
            "{what}: the server has no bytes past those already received (416): its copy is \
             shorter than the size the hub announced, so the file cannot be completed; rerun \
             later, and if it repeats the hub or a proxy serves a truncated file"
        ),
        (429, _) => anyhow!(
            "{what}: {at} is rate-limiting (429). Wait a few minutes and rerun; with HF_TOKEN \
             set the limits are higher"
        ),
        (c, _) if c >= 500 => {
            anyhow!("{what}: {at} answered {c}; the hub is having trouble, try again later")
        }
        (c, _) => anyhow!("{what}: {at} answered {c}, which copal does not expect here"),
    }
}

/// The metadata request: HEAD, same-host redirects followed, the first off-host redirect's
/// headers taken as the file's.
fn metadata(repo: &Repo, file: &str, what: &str) -> Result<Meta> {
    let mut url = repo.resolve_url(file);
    for _ in 0..MAX_REDIRECTS {
        let resp =
            with_retries(what, || send("HEAD", &url, None, what)).map_err(Failure::into_error)?;
        let code = resp.status().as_u16();
        let bad = |e: anyhow::Error| e.context(format!("{what}: the answer from {url} is refused"));
        if (300..400).contains(&code) {
            let loc = header(&resp, "location")
                .map_err(bad)?
                .ok_or_else(|| anyhow!("{what}: {url} answered {code} without a Location"))?;
            let target = join(&url, loc).map_err(|e| anyhow!("{what}: {e:#}"))?;
            if origin(&target) == origin(&url) {
                url = target;
                continue;
            }
            return meta_of(&resp, target, true).map_err(bad);
        }
        if !(200..300).contains(&code) {
            return Err(status_error(&resp, what));
        }
        return meta_of(&resp, url.clone(), false).map_err(bad);
    }
    bail!(
        "{what}: more than {MAX_REDIRECTS} redirects from {}",
        repo.resolve_url(file)
    )
}

fn meta_of(
    resp: &ureq::http::Response<ureq::Body>,
    location: String,
    redirect: bool,
) -> Result<Meta> {
    let commit = header(resp, "x-repo-commit")?.ok_or_else(|| {
        anyhow!(
            "it has no X-Repo-Commit header, so it is not the Hugging Face hub's (a proxy or a \
             captive portal?). Check HF_ENDPOINT and the proxy settings"
        )
    })?;
    anyhow::ensure!(
        cache::is_commit(commit),
        "its X-Repo-Commit {commit:?} is not a commit hash"
    );
    let linked = header(resp, "x-linked-etag")?;
    let etag = match linked.or(header(resp, "etag")?) {
        Some(e) => normalize_etag(e)?,
        None => bail!("it has no ETag"),
    };
    let size_text = match header(resp, "x-linked-size")? {
        Some(s) => Some(s),
        None if !redirect => header(resp, "content-length")?,
        None => None,
    };
    let size = size_text
        .ok_or_else(|| anyhow!("it does not say the file's size"))?
        .parse::<u64>()
        .map_err(|_| anyhow!("its size {size_text:?} is not a number"))?;
    let sha256 = linked
        .map(|l| {
            l.trim_start_matches("W/")
                .trim_matches('"')
                .to_ascii_lowercase()
        })
        .filter(|l| is_sha256(l));
    Ok(Meta {
        commit: commit.to_string(),
        etag,
        size,
        location,
        sha256,
    })
}

/// Bytes, for messages.
fn human(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GB", b as f64 / 1e9),
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / 1e6),
        b => format!("{:.1} kB", b as f64 / 1e3),
    }
}

/// Progress of one file: the bytes bar of `ui` (on a terminal a bar, else a line every 30 s),
/// after a line saying what is downloaded and from where it resumes.
struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    fn new(name: &str, total: u64, have: u64, quiet: bool) -> Progress {
        let bar = if quiet {
            indicatif::ProgressBar::hidden()
        } else {
            crate::ui::bytes_bar(total, name)
        };
        bar.set_position(have);
        // The bytes of an earlier run are not this run's rate.
        bar.reset_eta();
        if !quiet {
            let resumed = if have > 0 {
                format!(", resuming at {}", human(have))
            } else {
                String::new()
            };
            crate::ui::info(format!("downloading {name} ({}{resumed})", human(total)));
        }
        Progress { bar }
    }

    fn at(&mut self, have: u64) {
        self.bar.set_position(have);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Holds `blobs/ETAG.incomplete` for this process (another copal downloading the same file
/// waits its turn rather than writing into it).
fn lock(f: &std::fs::File, path: &Path) -> Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a descriptor this function's caller owns; no memory is involved.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        anyhow::ensure!(
            rc == 0,
            "another process is downloading {} (it holds the lock); wait for it and rerun",
            path.display()
        );
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (f, path);
    Ok(())
}

/// Why a transfer attempt stopped short.
enum Short {
    /// The connection dropped or the body ended early: resume.
    Resume(anyhow::Error),
    /// The server stayed unavailable: stop, keeping the bytes for the next run.
    Keep(anyhow::Error),
    /// Nothing to resume: the answer was wrong.
    Fatal(anyhow::Error),
}

/// Moves the bytes into `blobs/ETAG.incomplete`, resuming what is there, and verifies them.
/// Returns the finished, verified file (still under its `.incomplete` name).
fn transfer(repo: &Repo, meta: &Meta, what: &str, quiet: bool) -> Result<PathBuf> {
    let (_, part) = cache::blob(repo, &meta.etag);
    let dir = part.parent().context("a blob has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&part)
        .with_context(|| format!("opening {}", part.display()))?;
    lock(&f, &part)?;
    let mut have = f.metadata()?.len();
    let mut hasher = Sha256::new();
    if have > meta.size {
        f.set_len(0)?;
        have = 0;
    }
    if have > 0 {
        // The bytes of the earlier try, hashed again: the SHA-256 covers the whole file.
        f.seek(SeekFrom::Start(0))?;
        let mut r = (&mut f).take(have);
        std::io::copy(&mut r, &mut hasher)?;
    }
    f.seek(SeekFrom::Start(have))?;
    let mut progress = Progress::new(what, meta.size, have, quiet);
    let fail = |e: anyhow::Error, part: &Path| -> anyhow::Error {
        let _ = std::fs::remove_file(part);
        e.context(format!("{what}: nothing was kept"))
    };
    let mut tries = 0u32;
    let mut requests = 0u32;
    let kept = |e: anyhow::Error, have: u64| {
        if have == 0 {
            let _ = std::fs::remove_file(&part);
            return e.context(format!("{what}: nothing was downloaded"));
        }
        anyhow!(
            "{e:#}. The download stopped at {} of {}; the bytes are kept in {} and the next \
             run resumes from there",
            human(have),
            human(meta.size),
            part.display()
        )
    };
    while have < meta.size {
        requests += 1;
        let before = have;
        match attempt(meta, what, &mut f, &mut hasher, &mut have, &mut progress) {
            Ok(()) => {}
            Err(Short::Fatal(e)) => return Err(fail(e, &part)),
            Err(Short::Keep(e)) => {
                f.sync_all().ok();
                return Err(kept(e, have));
            }
            Err(Short::Resume(e)) => {
                f.flush()?;
                if crate::ui::interrupted() {
                    return Err(crate::ui::Interrupted.into());
                }
                // A try that moved the download forward does not count against it.
                tries = if have > before { 0 } else { tries + 1 };
                if tries >= TRIES || requests >= 100 {
                    f.sync_all().ok();
                    return Err(kept(e, have));
                }
                let wait = backoff(tries, None);
                crate::ui::info(format!(
                    "{e:#}; resuming at {} in {:.1} s",
                    human(have),
                    wait.as_secs_f64()
                ));
                std::thread::sleep(wait);
            }
        }
    }
    f.flush()?;
    f.sync_all()?;
    let got = format!("{:x}", hasher.finalize());
    if let Some(want) = &meta.sha256 {
        if &got != want {
            return Err(fail(
                anyhow!(
                    "{what} is corrupt: its SHA-256 is {got}, the hub says {want}. Rerun to \
                     download it again; if it repeats, the hub or a proxy serves wrong bytes"
                ),
                &part,
            ));
        }
    }
    Ok(part)
}

/// One GET of the rest of the file, appended to `f`.
fn attempt(
    meta: &Meta,
    what: &str,
    f: &mut std::fs::File,
    hasher: &mut Sha256,
    have: &mut u64,
    progress: &mut Progress,
) -> std::result::Result<(), Short> {
    let mut url = meta.location.clone();
    let mut resp = None;
    for _ in 0..MAX_REDIRECTS {
        let from = (*have > 0).then_some(*have);
        let r = with_retries(what, || send("GET", &url, from, what)).map_err(|e| match e {
            Failure::Retry(e, _) => Short::Keep(e),
            Failure::Fatal(e) => Short::Fatal(e),
        })?;
        let code = r.status().as_u16();
        if (300..400).contains(&code) {
            let loc = header(&r, "location")
                .map_err(|e| Short::Fatal(anyhow!("{what}: {url}: {e:#}")))?
                .ok_or_else(|| {
                    Short::Fatal(anyhow!("{what}: {url} answered {code} without a Location"))
                })?;
            url = join(&url, loc).map_err(|e| Short::Fatal(anyhow!("{what}: {e:#}")))?;
            continue;
        }
        resp = Some(r);
        break;
    }
    let resp = resp.ok_or_else(|| {
        Short::Fatal(anyhow!("{what}: too many redirects from {}", meta.location))
    })?;
    let code = resp.status().as_u16();
    let bad = |m: String| Short::Fatal(anyhow!("{what}: the answer from {url} is refused: {m}"));
    match code {
        206 => {
            let cr = header(&resp, "content-range")
                .map_err(|e| bad(format!("{e:#}")))?
                .ok_or_else(|| bad("a partial answer (206) without Content-Range".into()))?;
            let want = format!("bytes {}-{}/{}", *have, meta.size - 1, meta.size);
            if cr != want {
                return Err(bad(format!(
                    "it says Content-Range {cr:?}, copal asked for {want:?}"
                )));
            }
        }
        200 => {
            if *have > 0 {
                // The server ignored the Range and sends everything: start over.
                f.set_len(0).map_err(|e| Short::Fatal(e.into()))?;
                f.seek(SeekFrom::Start(0))
                    .map_err(|e| Short::Fatal(e.into()))?;
                *hasher = Sha256::new();
                *have = 0;
            }
        }
        _ => return Err(Short::Fatal(status_error(&resp, what))),
    }
    if let Some(enc) = header(&resp, "content-encoding").map_err(|e| bad(format!("{e:#}")))? {
        if !enc.eq_ignore_ascii_case("identity") {
            return Err(bad(format!(
                "it is encoded ({enc}) though copal asked for the bytes as they are"
            )));
        }
    }
    let mut body = resp.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if crate::ui::interrupted() {
            return Err(Short::Resume(crate::ui::Interrupted.into()));
        }
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                return Err(Short::Resume(anyhow!(
                    "{what}: the connection to {} broke: {e}",
                    origin(&url).unwrap_or_default()
                )))
            }
        };
        if *have + n as u64 > meta.size {
            return Err(Short::Fatal(anyhow!(
                "{what}: the server sent more than the {} bytes the hub announced",
                meta.size
            )));
        }
        f.write_all(&buf[..n])
            .map_err(|e| Short::Fatal(anyhow!("writing {what}: {e}")))?;
        hasher.update(&buf[..n]);
        *have += n as u64;
        progress.at(*have);
    }
    if *have < meta.size {
        return Err(Short::Resume(anyhow!(
            "{what}: the answer ended at {} of {} bytes",
            *have,
            meta.size
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_as_a_browser_would_and_only_to_http() {
        let base = "http://127.0.0.1:8000/a/b/resolve/main/config.json";
        assert_eq!(
            join(base, "http://cdn:9/x?y=1").unwrap(),
            "http://cdn:9/x?y=1"
        );
        assert_eq!(
            join(base, "/c/d/resolve/main/config.json").unwrap(),
            "http://127.0.0.1:8000/c/d/resolve/main/config.json"
        );
        assert_eq!(join(base, "//cdn/x").unwrap(), "http://cdn/x");
        assert_eq!(
            join(base, "other.json").unwrap(),
            "http://127.0.0.1:8000/a/b/resolve/main/other.json"
        );
        for bad in [
            "file:///etc/passwd",
            "ftp://x/y",
            "javascript:alert(1)",
            "http://",
        ] {
            assert!(join(base, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn etags_are_normalized_like_huggingface_hub_and_checked() {
        assert_eq!(normalize_etag("\"abc123\"").unwrap(), "abc123");
        assert_eq!(normalize_etag("W/\"abc-1\"").unwrap(), "abc-1");
        for bad in ["\"../x\"", "\"\"", "\"a/b\"", "\"a b\""] {
            assert!(normalize_etag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        assert_eq!(origin("http://A:1/x").as_deref(), Some("http://a:1"));
        assert_ne!(origin("http://a:1/x"), origin("http://a:2/x"));
        assert_ne!(origin("http://a/x"), origin("https://a/x"));
    }
}
