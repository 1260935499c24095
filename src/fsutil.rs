//! Files that appear whole or not at all: write under a temporary name beside the target,
//! flush, then rename into place. And the rule for replacing an output: copal replaces only
//! what it wrote ([`check_replace`]).

use anyhow::{Context as _, Result};
use std::path::{Path, PathBuf};

/// The name of the marker file copal writes into every directory it makes.
pub const MARKER: &str = "copal.json";

/// Whether `dir` is a directory an earlier copal run wrote: its `copal.json` names a copal
/// version.
pub fn is_copal_output(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(MARKER))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v.get("copal_version").is_some_and(|v| v.is_string()))
}

/// Writes the marker (`copal.json`) into a directory copal made: the version, the command
/// line and what made it, plus `extra` fields; it is what lets `--force` replace the
/// directory later.
pub fn write_marker(dir: &Path, made_by: &str, extra: serde_json::Value) -> Result<()> {
    let mut v = serde_json::json!({
        "copal_version": env!("CARGO_PKG_VERSION"),
        "made_by": made_by,
        "command": std::env::args().collect::<Vec<_>>(),
    });
    if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    write_atomic(&dir.join(MARKER), &serde_json::to_vec_pretty(&v)?)
}

/// A path made absolute and free of `.`/`..`/symlinks as far as it exists (the rest appended).
pub fn canonical(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
            canonical(parent).join(name)
        }
        (_, Some(name)) => std::env::current_dir().unwrap_or_default().join(name),
        _ => p.to_path_buf(),
    }
}

/// Checks that an output directory may be written: absent, or (with `force`) empty or made
/// by copal, and never a directory that holds one of `protected` (what: path, such as the
/// input model, the state file, the data directory, the current directory). Compares
/// canonical paths. Errors are usage errors about `setting` (`out`).
pub fn check_replace(
    out: &Path,
    force: bool,
    setting: &str,
    protected: &[(&str, &Path)],
) -> Result<()> {
    let c = canonical(out);
    for (what, p) in protected {
        let pc = canonical(p);
        crate::usage_ensure!(
            !pc.starts_with(&c),
            setting,
            "{} {} {what} ({}); choose another directory",
            out.display(),
            if pc == c { "is" } else { "contains" },
            p.display()
        );
    }
    if !out.exists() {
        return Ok(());
    }
    crate::usage_ensure!(
        out.is_dir(),
        setting,
        "{} is a file; copal writes a directory there: choose another path",
        out.display()
    );
    crate::usage_ensure!(
        force,
        setting,
        "{} already exists; pass ⟨force⟩ to replace it (copal replaces only a directory it \
         wrote, or an empty one)",
        out.display()
    );
    let entries: Vec<String> = std::fs::read_dir(out)
        .with_context(|| format!("reading {}", out.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if entries.is_empty() || is_copal_output(out) {
        return Ok(());
    }
    let mut shown: Vec<String> = entries.into_iter().take(4).collect();
    shown.sort();
    crate::usage_bail!(
        setting,
        "{} holds files copal did not write ({}…): ⟨force⟩ replaces only copal's own \
         outputs; choose another directory, or move those files away",
        out.display(),
        shown.join(", ")
    );
}

/// Checks that `path` can be created: its parent (with `create_parents`, its nearest existing
/// ancestor) is a writable directory (a usage error about `setting` otherwise).
pub fn check_writable_parent(path: &Path, setting: &str, create_parents: bool) -> Result<()> {
    let c = canonical(path);
    let mut dir = c.parent().map(Path::to_path_buf).unwrap_or_default();
    crate::usage_ensure!(
        create_parents || dir.exists(),
        setting,
        "{}: the directory {} does not exist",
        path.display(),
        dir.display()
    );
    while !dir.exists() {
        match dir.parent() {
            Some(p) => dir = p.to_path_buf(),
            None => break,
        }
    }
    crate::usage_ensure!(
        dir.is_dir(),
        setting,
        "{}: {} is not a directory",
        path.display(),
        dir.display()
    );
    // Creating and removing a file is the only sure test (permissions, read-only mounts).
    let probe = dir.join(format!(".copal-probe-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => crate::usage_bail!(
            setting,
            "{}: cannot write in {} ({e})",
            path.display(),
            dir.display()
        ),
    }
}

/// Whether a process is running (a zombie, killed but not yet reaped, is not).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name: "pid (comm) S …".
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Removes `.NAME.copal-partial-PID` staging directories beside `target` left by processes
/// that are no longer running (a killed import or synth); says which it removed.
pub fn remove_stale_staging(target: &Path) {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let prefix = format!(".{name}.copal-partial-");
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let f = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = f.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !pid_alive(pid) {
            let p = parent.join(&f);
            if std::fs::remove_dir_all(&p).is_ok() {
                crate::ui::info(format!(
                    "removed {} (left by an interrupted run, process {pid})",
                    p.display()
                ));
            }
        }
    }
}

/// A fresh, empty staging directory beside `target` (same file system, so the final rename
/// is atomic). Leftovers of a killed run under the same name are removed first.
pub fn staging_dir(target: &Path) -> Result<PathBuf> {
    remove_stale_staging(target);
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

/// SHA-256 of the concatenation of `parts`, lower-case hex: the one digest helper (files
/// through [`sha256_file`], downloads through their stream).
/// `s` as one part of a file name, the one rule for every name copal derives from user text
/// (a dataset's name in a run id or a step directory): ASCII letters, digits, `-` and `.`
/// kept, anything else (`/`, `:`, spaces, `_` too) written `_`, and a leading `.` too, so the
/// part is never hidden, never a path and never `..`.
pub fn name_part(s: &str) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| match c {
            '.' if i == 0 => '_',
            c if c.is_ascii_alphanumeric() || c == '.' || c == '-' => c,
            _ => '_',
        })
        .collect()
}

pub fn sha256_hex<I>(parts: I) -> String
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_ref());
    }
    format!("{:x}", h.finalize())
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

/// Checks that `path` is a regular file (following links) before copal opens it: a directory,
/// a FIFO (whose open would wait for a writer for ever), a socket or a device is refused at
/// once, saying what it is. `what` names the input ("dataset file", "state file").
pub fn check_regular_file(path: &Path, what: &str) -> Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("{what} {} does not exist", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {what} {}", path.display())),
    };
    if meta.is_file() {
        return Ok(());
    }
    let kind = if meta.is_dir() {
        "a directory"
    } else {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            let t = meta.file_type();
            if t.is_fifo() {
                "a FIFO (named pipe)"
            } else if t.is_socket() {
                "a socket"
            } else if t.is_char_device() || t.is_block_device() {
                "a device"
            } else {
                "not a regular file"
            }
        }
        #[cfg(not(unix))]
        {
            "not a regular file"
        }
    };
    anyhow::bail!(
        "{what} {} is {kind}; copal reads regular files only",
        path.display()
    )
}

/// A small JSON or text file copal reads whole (configs, indexes, manifests): a regular file
/// of at most `cap` bytes, as UTF-8.
pub fn read_small(path: &Path, what: &str, cap: u64) -> Result<String> {
    use std::io::Read;
    check_regular_file(path, what)?;
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(cap + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() as u64 <= cap,
        "{what} {} is larger than {} MB, far more than such a file holds; it is not the file \
         copal expects",
        path.display(),
        cap / 1_000_000
    );
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", path.display()))
}

/// Size caps of the small files copal reads whole.
pub const CAP_CONFIG: u64 = 16 << 20;
/// tokenizer.json (Llama-3's is 9 MB; the largest vocabularies stay well under this).
pub const CAP_TOKENIZER: u64 = 256 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_part_is_never_a_path_or_hidden() {
        assert_eq!(name_part("text:/tmp/a b.txt"), "text__tmp_a_b.txt");
        assert_eq!(name_part("wikitext2"), "wikitext2");
        assert_eq!(name_part(".."), "_.");
        assert_eq!(
            name_part("jsonl:x.jsonl:text_field"),
            "jsonl_x.jsonl_text_field"
        );
    }
}
