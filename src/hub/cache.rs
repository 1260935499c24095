//! The Hugging Face cache, laid out exactly as Python's `huggingface_hub` lays it out
//! (`file_download.py`), so that either tool uses what the other fetched:
//!
//! ```text
//! $HF_HUB_CACHE (default $HF_HOME/hub, HF_HOME default $XDG_CACHE_HOME/huggingface or ~/.cache/huggingface)
//! └── models--OWNER--NAME/              (datasets--OWNER--NAME/ for datasets)
//!     ├── refs/main                     the commit a branch or tag points at, no newline
//!     ├── blobs/ETAG                    the file's bytes, named by its etag (LFS: its SHA-256)
//!     └── snapshots/COMMIT/PATH         a relative symlink to ../../blobs/ETAG
//! ```
//!
//! A revision that is a commit hash has no ref file (Python writes none for it): the snapshot
//! is found by the hash itself. Unfinished downloads are `blobs/ETAG.incomplete`, resumed by
//! the next run and never seen as a file.

use anyhow::{Context as _, Result};
use std::path::{Path, PathBuf};

/// `HF_HOME`, as `huggingface_hub` resolves it.
pub fn hf_home() -> PathBuf {
    if let Some(h) = std::env::var_os("HF_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("huggingface")
}

/// The hub cache: `HF_HUB_CACHE`, else `HF_HOME/hub`.
pub fn hub_cache() -> PathBuf {
    match std::env::var_os("HF_HUB_CACHE").filter(|h| !h.is_empty()) {
        Some(c) => PathBuf::from(c),
        None => hf_home().join("hub"),
    }
}

/// The cache directory of a repository (`…/models--OWNER--NAME`).
pub fn repo_dir(repo: &super::Repo) -> PathBuf {
    let kind = match repo.kind {
        super::Kind::Model => hf_hub::RepoType::Model,
        super::Kind::Dataset => hf_hub::RepoType::Dataset,
    };
    let r = hf_hub::Repo::with_revision(repo.id.clone(), kind, repo.revision.clone());
    hub_cache().join(r.folder_name())
}

/// Whether `s` is a full commit hash (40 lowercase hex digits), as the hub's `X-Repo-Commit`.
pub fn is_commit(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The commit a revision names in the cache: itself when it is a hash, else what
/// `refs/REVISION` says.
pub fn commit_of(repo: &super::Repo) -> Option<String> {
    if is_commit(&repo.revision) {
        return Some(repo.revision.clone());
    }
    let text = std::fs::read_to_string(repo_dir(repo).join("refs").join(&repo.revision)).ok()?;
    let c = text.trim();
    is_commit(c).then(|| c.to_string())
}

/// The snapshot path of a file at a commit.
pub fn pointer(repo: &super::Repo, commit: &str, file: &str) -> PathBuf {
    repo_dir(repo).join("snapshots").join(commit).join(file)
}

/// The cached file of a repository at its revision, if the cache has it: a regular file, or a
/// link into the repository's own blobs (a link elsewhere is not taken as the file).
pub fn lookup(repo: &super::Repo, file: &str) -> Option<PathBuf> {
    let commit = commit_of(repo)?;
    let p = pointer(repo, &commit, file);
    let meta = std::fs::symlink_metadata(&p).ok()?;
    if meta.file_type().is_symlink() {
        let target = p.canonicalize().ok()?;
        let blobs = repo_dir(repo).join("blobs").canonicalize().ok()?;
        if !target.starts_with(&blobs) || !target.is_file() {
            return None;
        }
    } else if !meta.is_file() {
        return None;
    }
    Some(p)
}

/// The blob of an etag, and where its download in progress lives.
pub fn blob(repo: &super::Repo, etag: &str) -> (PathBuf, PathBuf) {
    let dir = repo_dir(repo).join("blobs");
    (dir.join(etag), dir.join(format!("{etag}.incomplete")))
}

/// Makes a finished blob the file `file` of `commit`: the snapshot link (relative, as Python
/// makes it) and, for a branch or tag, its ref. `done` is the verified download (renamed to
/// the blob), or `None` when the blob is there already.
pub fn install(
    repo: &super::Repo,
    commit: &str,
    file: &str,
    etag: &str,
    done: Option<&Path>,
) -> Result<PathBuf> {
    let (blob, _) = blob(repo, etag);
    if let Some(src) = done {
        std::fs::rename(src, &blob)
            .with_context(|| format!("moving the download into {}", blob.display()))?;
    }
    let link = pointer(repo, commit, file);
    let parent = link.parent().context("a snapshot path has a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    // snapshots/COMMIT/a/b.json → ../../../blobs/ETAG: one `..` per component, plus the commit.
    let depth = Path::new(file).components().count() + 1;
    let target = PathBuf::from("../".repeat(depth)).join("blobs").join(etag);
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() => {
            if link.canonicalize().ok() != blob.canonicalize().ok() {
                std::fs::remove_file(&link)
                    .with_context(|| format!("replacing the stale link {}", link.display()))?;
                make_link(&target, &link)?;
            }
        }
        Ok(_) => anyhow::bail!(
            "{} is in the hub cache already but is not a link to its blob; copal leaves it as \
             it is: remove it to download the file again",
            link.display()
        ),
        Err(_) => make_link(&target, &link)?,
    }
    if repo.revision != commit {
        write_ref(repo, commit)?;
    }
    Ok(link)
}

#[cfg(unix)]
fn make_link(target: &Path, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} in the hub cache", link.display()))
}

#[cfg(not(unix))]
fn make_link(target: &Path, link: &Path) -> Result<()> {
    // Where links are not to be had, the blob is copied into the snapshot (as Python does
    // without symlink support).
    let blob = link.parent().unwrap_or(Path::new(".")).join(target);
    std::fs::copy(&blob, link)
        .map(|_| ())
        .with_context(|| format!("copying {} into the hub cache", link.display()))
}

/// `refs/REVISION` ← the commit, atomically and without a newline (as Python writes it).
fn write_ref(repo: &super::Repo, commit: &str) -> Result<()> {
    let path = repo_dir(repo).join("refs").join(&repo.revision);
    if std::fs::read_to_string(&path).is_ok_and(|c| c == commit) {
        return Ok(());
    }
    let parent = path.parent().context("a ref has a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    crate::fsutil::write_atomic(&path, commit.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_are_forty_lowercase_hex_digits() {
        assert!(is_commit("b08601e04326c79dfdd32d625aee71d232d685c3"));
        for bad in [
            "main",
            "B08601E04326C79DFDD32D625AEE71D232D685C3",
            "b08601e0",
            "../../../../../../../../../../../../etc/pa",
        ] {
            assert!(!is_commit(bad), "{bad}");
        }
    }
}
