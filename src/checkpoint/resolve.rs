//! `--model` → a local checkpoint directory.
//!
//! In order: an existing directory; an alias from `configs/models.json` (compiled in);
//! a hub id `owner/name`, fetched through the Hugging Face cache (HF_HOME, HF_HUB_OFFLINE and
//! HF_TOKEN behave as in `huggingface_hub`).

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const MODELS_JSON: &str = include_str!("../../configs/models.json");

/// One entry of `configs/models.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Alias {
    #[serde(default)]
    pub hub: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub about: Option<String>,
    #[serde(default)]
    pub setup: Option<String>,
    /// The hub asks for the licence to be accepted (and HF_TOKEN) before it serves the files.
    #[serde(default)]
    pub gated: bool,
}

/// All aliases, sorted by name.
pub fn aliases() -> BTreeMap<String, Alias> {
    let all: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(MODELS_JSON).unwrap_or_default();
    all.into_iter()
        .filter(|(k, _)| !k.starts_with('_'))
        .filter_map(|(k, v)| serde_json::from_value(v).ok().map(|a| (k, a)))
        .collect()
}

/// copal's own cache directory: `$COPAL_HOME`, else `$XDG_CACHE_HOME/copal`, else `~/.cache/copal`.
pub fn copal_home() -> PathBuf {
    if let Some(p) = std::env::var_os("COPAL_HOME") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("copal");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache").join("copal")
}

fn expand(path: &str) -> PathBuf {
    let home = copal_home();
    let s = path.replace("${COPAL_HOME}", &home.to_string_lossy());
    if let Some(rest) = s.strip_prefix("~/") {
        if let Some(h) = std::env::var_os("HOME") {
            return PathBuf::from(h).join(rest);
        }
    }
    PathBuf::from(s)
}

/// Resolves `--model` to a checkpoint directory, downloading from the hub if needed.
pub fn resolve(spec: &str, quiet: bool) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.exists() {
        if p.is_file() && p.extension().is_some_and(|e| e == "gguf") {
            bail!("{spec} is a GGUF file; convert it first: copal import-gguf {spec} --out DIR");
        }
        return Ok(p.to_path_buf());
    }
    if let Some(alias) = aliases().get(spec) {
        if let Some(path) = &alias.path {
            let dir = expand(path);
            if !dir.exists() {
                let how = alias
                    .setup
                    .as_deref()
                    .map(|s| format!("; create it with {s}"))
                    .unwrap_or_default();
                bail!(
                    "model alias {spec} points to {}, which does not exist{how}",
                    dir.display()
                );
            }
            return Ok(dir);
        }
        if let Some(hub) = &alias.hub {
            return hub_snapshot(hub, quiet).with_context(|| format!("model alias {spec}"));
        }
    }
    let looks_like_hub = spec.split('/').count() == 2
        && !spec.starts_with('.')
        && !spec.starts_with('/')
        && spec.split('/').all(|s| !s.is_empty());
    if looks_like_hub {
        return hub_snapshot(spec, quiet);
    }
    let names: Vec<String> = aliases().into_keys().collect();
    bail!(
        "model {spec:?} not found: it is not a directory, not an alias ({}) and not a hub id \
         (owner/name)",
        names.join(", ")
    )
}

/// Downloads (or finds in the hub cache) the files of a model repository: config,
/// tokenizer, the weights (every shard its index names, each name checked to be a file of
/// the repository before anything is fetched), and the optional side files. The revision is
/// resolved to a commit by the first file, and every other file is fetched at that commit, so
/// a branch that moves mid-download cannot mix two versions in one snapshot.
fn hub_snapshot(spec: &str, quiet: bool) -> Result<PathBuf> {
    use crate::hub::{self, Repo};
    // owner/name@REVISION pins a commit, branch or tag (default main).
    let asked = Repo::model(spec);
    let cfg =
        hub::get(&asked, "config.json", quiet).with_context(|| format!("getting model {spec}"))?;
    let dir = cfg.parent().map(Path::to_path_buf).unwrap_or_default();
    let commit = dir
        .file_name()
        .map(|c| c.to_string_lossy().into_owned())
        .filter(|c| hub::cache::is_commit(c))
        .with_context(|| format!("{} is not a snapshot of the hub cache", dir.display()))?;
    let r = asked.at(&commit);
    let get = |f: &str| hub::get(&r, f, quiet).with_context(|| format!("getting model {spec}"));
    get("tokenizer.json")?;
    for f in [
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    ] {
        // Optional: a repository without them is fine (a failure to ask is not).
        hub::get_optional(&r, f, quiet).with_context(|| format!("getting model {spec}"))?;
    }
    match hub::get_optional(&r, super::INDEX_FILE, quiet)
        .with_context(|| format!("getting model {spec}"))?
    {
        Some(index) => {
            let files: std::collections::BTreeSet<String> =
                super::read_weight_map(&index)?.into_values().collect();
            for f in &files {
                hub::check_repo_path(f, &format!("{spec}'s {}", super::INDEX_FILE))?;
            }
            for f in files {
                get(&f)?;
            }
        }
        None => {
            get(super::SINGLE_FILE)?;
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_cover_the_paper_models() {
        let a = aliases();
        for name in [
            "llama-7b",
            "llama-13b",
            "llama-30b",
            "llama-65b",
            "llama-2-7b",
            "llama-3-8b",
            "smollm2-135m",
        ] {
            let e = a
                .get(name)
                .unwrap_or_else(|| panic!("alias {name} missing"));
            assert!(e.hub.is_some() || e.path.is_some(), "{name}");
        }
    }

    #[test]
    fn unknown_model_lists_aliases() {
        let err = resolve("no-such-model", true).unwrap_err().to_string();
        assert!(
            err.contains("llama-7b") && err.contains("no-such-model"),
            "{err}"
        );
    }
}
