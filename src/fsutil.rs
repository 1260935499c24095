//! Files that appear whole or not at all: write under a temporary name beside the target,
//! flush, then rename into place.

use anyhow::{Context as _, Result};
use std::path::{Path, PathBuf};

/// A fresh, empty staging directory beside `target` (same file system, so the final rename
/// is atomic). Leftovers of a killed run under the same name are removed first.
pub fn staging_dir(target: &Path) -> Result<PathBuf> {
    let staging = sibling(target, &format!("copal-partial-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing {}", staging.display()))?;
    }
    std::fs::create_dir_all(&staging).with_context(|| {
        format!(
            "creating {} (is the parent directory writable?)",
            staging.display()
        )
    })?;
    Ok(staging)
}

/// `dir/.name.suffix` for `dir/name`.
pub fn sibling(target: &Path, suffix: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    parent.join(format!(".{name}.{suffix}"))
}

/// Moves the finished `staging` directory to `target`, replacing what was there.
pub fn replace_dir(staging: &Path, target: &Path) -> Result<()> {
    let old = if target.exists() {
        let trash = sibling(target, &format!("copal-old-{}", std::process::id()));
        std::fs::rename(target, &trash)
            .with_context(|| format!("moving the old {} aside", target.display()))?;
        Some(trash)
    } else {
        None
    };
    crate::fsutil::fault_point();
    std::fs::rename(staging, target)
        .with_context(|| format!("moving {} to {}", staging.display(), target.display()))?;
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    crate::fsutil::fault_point();
    if let Some(old) = old {
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` whole or not at all: temporary sibling, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = sibling(path, &format!("copal-partial-{}", std::process::id()));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all()
        .with_context(|| format!("flushing {}", tmp.display()))?;
    fault_point();
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Replaces `dst` by `src` atomically (copy to a temporary sibling, flush, rename).
pub fn install_file(src: &Path, dst: &Path) -> Result<()> {
    let tmp = sibling(dst, &format!("copal-partial-{}", std::process::id()));
    std::fs::copy(src, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    fault_point();
    std::fs::rename(&tmp, dst).with_context(|| format!("replacing {}", dst.display()))?;
    if let Some(p) = dst.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(p)?;
    }
    Ok(())
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Testing hook for the fault tests: with `COPAL_FAULT_AT=N` the process aborts at the N-th
/// write boundary (after a tensor is written, before a rename, …) without any cleanup, as a
/// SIGKILL would. Unset, it costs one relaxed atomic increment.
pub fn fault_point() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;
    static TARGET: OnceLock<Option<usize>> = OnceLock::new();
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let target = TARGET.get_or_init(|| {
        std::env::var("COPAL_FAULT_AT")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if let Some(t) = target {
        if COUNT.fetch_add(1, Ordering::Relaxed) + 1 == *t {
            std::process::abort();
        }
    }
}

/// fsync a directory so that the names created in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("flushing directory {}", dir.display()))?;
    Ok(())
}
