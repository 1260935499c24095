//! The Hugging Face hub, as `huggingface_hub` users know it: `HF_ENDPOINT` (where the hub
//! is), `HF_HOME` (its cache), `HF_HUB_OFFLINE=1` (the cache only), `HF_TOKEN` (gated and
//! private repositories). Downloads go through `hf-hub` into that cache; this module turns its
//! failures into errors that say what to do, and never leaves half a file in the cache.

use anyhow::{anyhow, Result};
use std::path::{Path, PathBuf};

/// Whether `HF_HUB_OFFLINE` asks for the cache only.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes" | "ON" | "on"))
        .unwrap_or(false)
}

/// Where the hub is (`HF_ENDPOINT`, default huggingface.co), for messages.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into())
}

/// A repository file as a path inside it: plain relative components only (an index or a
/// table naming `../x` or `/etc/x` is refused before anything is fetched or opened).
pub fn check_repo_path(path: &str, what: &str) -> Result<()> {
    let p = Path::new(path);
    let plain = !path.is_empty()
        && !path.contains('\\')
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    anyhow::ensure!(
        plain,
        "{what} names {path:?}, which is not a file inside the repository; refused"
    );
    Ok(())
}

#[cfg(feature = "hub")]
mod client {
    use super::*;
    use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
    use hf_hub::{Cache, Repo};

    /// The hub client (progress bars on stderr unless quiet).
    pub fn api(quiet: bool) -> Result<Api> {
        ApiBuilder::from_env()
            .with_progress(!quiet && !crate::ui::quiet())
            .build()
            .map_err(|e| anyhow!("starting the Hugging Face hub client: {e}"))
    }

    /// The cache of a repository.
    pub fn cache(repo: &Repo) -> hf_hub::CacheRepo {
        Cache::from_env().repo(repo.clone())
    }

    /// The cache directory of a repository (…/hub/datasets--OWNER--NAME).
    pub fn repo_dir(repo: &Repo) -> PathBuf {
        Cache::from_env().path().join(repo.folder_name())
    }

    /// Downloads `file` of `repo` (or finds it in the cache), as `hf-hub`'s `get` does, but
    /// removes any partial download when it fails and says what went wrong in the user's
    /// terms.
    pub fn get(repo: &Repo, file: &str, quiet: bool) -> Result<PathBuf> {
        check_repo_path(file, "a download")?;
        if let Some(p) = cache(repo).get(file) {
            return Ok(p);
        }
        let id = repo.url();
        if offline() {
            anyhow::bail!(
                "{file} of {id} is not in the hub cache ({}), and HF_HUB_OFFLINE is set: unset \
                 it to download the file, or put the file where copal looks locally",
                Cache::from_env().path().display()
            );
        }
        let r = api(quiet)?.repo(repo.clone());
        match r.get(file) {
            Ok(p) => Ok(p),
            Err(e) => {
                remove_partial(repo);
                Err(explain(e, &id, file))
            }
        }
    }

    /// The size of a repository file on the hub, without downloading it (a `Range: bytes=0-0`
    /// request, as `hf-hub` makes before a download).
    pub fn remote_size(repo: &Repo, file: &str) -> Result<u64> {
        check_repo_path(file, "a size query")?;
        anyhow::ensure!(!offline(), "HF_HUB_OFFLINE is set");
        let api = api(true)?;
        let url = api.repo(repo.clone()).url(file);
        let m = api
            .metadata(&url)
            .map_err(|e| explain(e, &repo.url(), file))?;
        Ok(m.size() as u64)
    }

    /// Whether a repository file is in the cache.
    pub fn cached(repo: &Repo, file: &str) -> Option<PathBuf> {
        cache(repo).get(file)
    }

    /// Removes unfinished downloads (`blobs/*.part`) of a repository.
    pub fn remove_partial(repo: &Repo) {
        if let Ok(entries) = std::fs::read_dir(repo_dir(repo).join("blobs")) {
            for e in entries.filter_map(|e| e.ok()) {
                if e.path().extension().is_some_and(|x| x == "part") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Removes a cached file (its snapshot link and the blob it points at).
    pub fn evict(path: &Path) {
        if let Ok(target) = path.canonicalize() {
            let _ = std::fs::remove_file(target);
        }
        let _ = std::fs::remove_file(path);
    }

    fn explain(e: ApiError, id: &str, file: &str) -> anyhow::Error {
        let status = match &e {
            ApiError::RequestError(r) => match r.as_ref() {
                ureq::Error::StatusCode(c) => Some(*c),
                _ => None,
            },
            _ => None,
        };
        let at = endpoint();
        match status {
            Some(401) | Some(403) => anyhow!(
                "{id} at {at} refuses {file} ({}): it is gated or private. Accept its licence on \
                 the hub and set HF_TOKEN to a token that may read it",
                status.unwrap_or_default()
            ),
            Some(404) => anyhow!(
                "{file} of {id} was not found at {at} (404): check the repository id and the \
                 revision"
            ),
            Some(c) => anyhow!("the hub at {at} answered {c} for {file} of {id}; try again later"),
            None => match e {
                ApiError::RequestError(_) | ApiError::IoError(_) | ApiError::TooManyRetries(_) => {
                    anyhow!(
                        "downloading {file} of {id} from {at} failed ({e}); no partial file was \
                         kept. Check the network and rerun (or set HF_ENDPOINT to a mirror, or \
                         put the file where copal looks locally and need no network)"
                    )
                }
                other => anyhow!("downloading {file} of {id} from {at}: {other}"),
            },
        }
    }
}

#[cfg(feature = "hub")]
pub use client::{cached, evict, get, remote_size};

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
        ] {
            assert!(check_repo_path(bad, "t").is_err(), "{bad}");
        }
    }
}
