//! The Hugging Face hub, as `huggingface_hub` users know it: `HF_ENDPOINT` (where the hub
//! is), `HF_HOME` / `HF_HUB_CACHE` (its cache), `HF_HUB_OFFLINE=1` (the cache only),
//! `HF_TOKEN` (gated and private repositories).
//!
//! Two parts, one job each:
//! - [`cache`]: the cache layout Python's `huggingface_hub` writes and reads
//!   (`refs/REVISION`, `snapshots/COMMIT/PATH` → `blobs/ETAG`), so a model one tool fetched
//!   is the other's, offline, whichever revision form (commit, branch, tag) names it;
//! - `download` (feature `hub`): the HTTP side as huggingface.co serves it. Metadata from a
//!   `HEAD` that follows only same-host redirects (an LFS file is a 302 to a CDN whose answer
//!   carries `X-Linked-Etag` and `X-Linked-Size`), then the transfer from the CDN with
//!   `Accept-Encoding: identity` (the CDN ignores `Range` when gzip is accepted), resumed from
//!   the bytes already there, checked against the size and the SHA-256 before it enters the
//!   cache, with 429 and 5xx retried.

pub mod cache;
#[cfg(feature = "hub")]
mod download;

use anyhow::Result;
use std::path::{Path, PathBuf};

/// Whether `HF_HUB_OFFLINE` asks for the cache only.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .ok()
        .and_then(|v| crate::env::parse_bool(&v))
        .unwrap_or(false)
}

/// Where the hub is (`HF_ENDPOINT`, default huggingface.co), without a trailing slash.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_string()
}

/// The access token: `HF_TOKEN`, else the file `huggingface_hub` keeps (`HF_TOKEN_PATH`, or
/// `token` in `HF_HOME`), as Python reads them.
pub fn token() -> Option<String> {
    if let Ok(t) = std::env::var("HF_TOKEN") {
        let t = t.trim().to_string();
        return (!t.is_empty()).then_some(t);
    }
    let path = std::env::var_os("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache::hf_home().join("token"));
    let t = std::fs::read_to_string(path).ok()?;
    let t = t.trim().to_string();
    (!t.is_empty()).then_some(t)
}

/// What a repository holds: models are at `/OWNER/NAME`, datasets at `/datasets/OWNER/NAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Model,
    Dataset,
}

/// A repository at a revision (a commit hash, a branch such as `main` or
/// `refs/convert/parquet`, or a tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    pub id: String,
    pub kind: Kind,
    pub revision: String,
}

impl Repo {
    pub fn new(id: &str, kind: Kind, revision: &str) -> Repo {
        Repo {
            id: id.to_string(),
            kind,
            revision: revision.to_string(),
        }
    }

    /// `owner/name[@revision]` (default `main`).
    pub fn model(spec: &str) -> Repo {
        match spec.split_once('@') {
            Some((id, rev)) => Repo::new(id, Kind::Model, rev),
            None => Repo::new(spec, Kind::Model, "main"),
        }
    }

    /// The same repository at another revision.
    pub fn at(&self, revision: &str) -> Repo {
        Repo::new(&self.id, self.kind, revision)
    }

    /// The repository's path on the hub (`OWNER/NAME` or `datasets/OWNER/NAME`).
    pub fn url_path(&self) -> String {
        match self.kind {
            Kind::Model => self.id.clone(),
            Kind::Dataset => format!("datasets/{}", self.id),
        }
    }

    /// How users write it: `OWNER/NAME@REVISION` (datasets with their prefix).
    pub fn display(&self) -> String {
        format!("{}@{}", self.url_path(), self.revision)
    }

    /// `{endpoint}/{repo}/resolve/{revision}/{file}`, the revision's `/` escaped as the hub
    /// expects (`refs%2Fconvert%2Fparquet`).
    pub fn resolve_url(&self, file: &str) -> String {
        format!(
            "{}/{}/resolve/{}/{}",
            endpoint(),
            self.url_path(),
            self.revision.replace('/', "%2F"),
            file
        )
    }
}

/// A repository name or revision that is safe to become a URL and a cache path: no `..`, no
/// empty component, no characters a URL or a file name would read differently.
pub fn check_repo(repo: &Repo) -> Result<()> {
    let part_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let id_ok = repo.id.split('/').count() == 2 && repo.id.split('/').all(part_ok);
    anyhow::ensure!(
        id_ok,
        "{:?} is not a hub repository id: write OWNER/NAME (letters, digits, '-', '_', '.')",
        repo.id
    );
    anyhow::ensure!(
        repo.revision.split('/').all(part_ok),
        "{:?} is not a revision: give a commit hash, a branch or a tag",
        repo.revision
    );
    Ok(())
}

/// A repository file as a path inside it: plain relative components only (an index or a
/// table naming `../x` or `/etc/x` is refused before anything is fetched or opened).
pub fn check_repo_path(path: &str, what: &str) -> Result<()> {
    let p = Path::new(path);
    let plain = !path.is_empty()
        && !path.contains('\\')
        && !path.contains('%')
        && !path.contains('?')
        && !path.contains('#')
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    anyhow::ensure!(
        plain,
        "{what} names {path:?}, which is not a file inside the repository; refused"
    );
    Ok(())
}

/// A file the repository does not have at that revision (the hub's `EntryNotFound`), as
/// opposed to a failure to ask: callers with optional files look for this.
#[derive(Debug)]
pub struct NotFound(pub String);

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotFound {}

/// The hub cannot be reached at all (no route, connection refused, unknown host): every
/// other request would fail the same way.
#[derive(Debug)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// Whether a repository file is in the cache (no network).
pub fn cached(repo: &Repo, file: &str) -> Option<PathBuf> {
    cache::lookup(repo, file)
}

/// `file` of `repo`: from the cache, or downloaded into it (not with `HF_HUB_OFFLINE=1`).
pub fn get(repo: &Repo, file: &str, quiet: bool) -> Result<PathBuf> {
    check_repo(repo)?;
    check_repo_path(file, "a download")?;
    if let Some(p) = cache::lookup(repo, file) {
        return Ok(p);
    }
    if offline() {
        anyhow::bail!(
            "{file} of {} is not in the hub cache ({}), and HF_HUB_OFFLINE is set: unset it to \
             download the file, or put the file where copal looks locally",
            repo.display(),
            cache::hub_cache().display()
        );
    }
    fetch(repo, file, quiet)
}

/// Like [`get`], for a file a repository may lack: `None` when the hub says it has no such
/// file (or, offline, when the cache has none); any other failure is an error.
pub fn get_optional(repo: &Repo, file: &str, quiet: bool) -> Result<Option<PathBuf>> {
    if offline() {
        check_repo(repo)?;
        check_repo_path(file, "a download")?;
        return Ok(cache::lookup(repo, file));
    }
    match get(repo, file, quiet) {
        Ok(p) => Ok(Some(p)),
        Err(e) if e.downcast_ref::<NotFound>().is_some() => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(feature = "hub")]
fn fetch(repo: &Repo, file: &str, quiet: bool) -> Result<PathBuf> {
    download::fetch(repo, file, quiet)
}

#[cfg(not(feature = "hub"))]
fn fetch(repo: &Repo, file: &str, _quiet: bool) -> Result<PathBuf> {
    anyhow::bail!(
        "{file} of {} is not in the hub cache, and this copal was built without the `hub` \
         feature to download it",
        repo.display()
    )
}

/// The size of a repository file on the hub, without downloading it (the metadata request
/// of a download).
#[cfg(feature = "hub")]
pub fn remote_size(repo: &Repo, file: &str) -> Result<u64> {
    check_repo(repo)?;
    check_repo_path(file, "a size query")?;
    anyhow::ensure!(!offline(), "HF_HUB_OFFLINE is set");
    download::remote_size(repo, file)
}

/// Removes a cached file (its snapshot link and the blob it points at).
pub fn evict(path: &Path) {
    if let Ok(target) = path.canonicalize() {
        let _ = std::fs::remove_file(target);
    }
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_paths_are_plain() {
        for ok in ["model-00001-of-00002.safetensors", "en/c4-train.json.gz"] {
            check_repo_path(ok, "t").unwrap();
        }
        for bad in [
            "../x.safetensors",
            "/etc/passwd",
            "a/../../b",
            "",
            "a\\b",
            "./x",
            "a%2F..%2Fb",
            "x?y",
        ] {
            assert!(check_repo_path(bad, "t").is_err(), "{bad}");
        }
    }

    #[test]
    fn repository_ids_and_revisions_are_checked() {
        for ok in [
            "huggyllama/llama-7b@main",
            "a/b@refs/convert/parquet",
            "a/b.c_d@0123456789abcdef0123456789abcdef01234567",
        ] {
            check_repo(&Repo::model(ok)).unwrap();
        }
        for bad in [
            "a", "a/b/c", "a/../b", "a/b@..", "a/b@x y", "a/b@", "a/b@x//y",
        ] {
            assert!(check_repo(&Repo::model(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_escape_the_revision_as_the_hub_expects() {
        let r = Repo::new(
            "ptb-text-only/ptb_text_only",
            Kind::Dataset,
            "refs/convert/parquet",
        );
        assert!(r
            .resolve_url("penn_treebank/test/0000.parquet")
            .ends_with(
                "/datasets/ptb-text-only/ptb_text_only/resolve/refs%2Fconvert%2Fparquet/penn_treebank/test/0000.parquet"
            ));
    }
}
