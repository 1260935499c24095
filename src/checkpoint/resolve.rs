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

#[cfg(feature = "hub")]
fn hub_snapshot(repo: &str, quiet: bool) -> Result<PathBuf> {
    use hf_hub::{api::sync::ApiBuilder, Cache};
    let offline = std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes" | "ON" | "on"))
        .unwrap_or(false);
    let required = ["config.json", "tokenizer.json"];
    let optional = [
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    ];
    if offline {
        let cache = Cache::from_env();
        let repo_cache = cache.model(repo.to_string());
        let get = |f: &str| repo_cache.get(f);
        let cfg = get("config.json").with_context(|| {
            format!(
                "HF_HUB_OFFLINE is set and {repo} is not in the hub cache at {}: \
                 unset HF_HUB_OFFLINE to download it, or pass a local directory",
                cache.path().display()
            )
        })?;
        for f in required {
            get(f).with_context(|| format!("{f} of {repo} is not in the hub cache (offline)"))?;
        }
        if get(super::INDEX_FILE).is_none() && get(super::SINGLE_FILE).is_none() {
            bail!("the weights of {repo} are not in the hub cache (HF_HUB_OFFLINE is set)");
        }
        return Ok(cfg.parent().map(Path::to_path_buf).unwrap_or_default());
    }
    let api = ApiBuilder::from_env()
        .with_progress(!quiet)
        .build()
        .context("starting the Hugging Face hub client")?;
    let r = api.model(repo.to_string());
    let cfg = r.get("config.json").with_context(|| {
        format!(
            "downloading config.json of {repo} from the hub (check the id; gated models need \
             HF_TOKEN and an accepted licence)"
        )
    })?;
    r.get("tokenizer.json")
        .with_context(|| format!("downloading tokenizer.json of {repo}"))?;
    for f in optional {
        let _ = r.get(f);
    }
    match r.get(super::INDEX_FILE) {
        Ok(index) => {
            let files: std::collections::BTreeSet<String> =
                super::read_weight_map(&index)?.into_values().collect();
            for f in files {
                r.get(&f)
                    .with_context(|| format!("downloading {f} of {repo}"))?;
            }
        }
        Err(_) => {
            r.get(super::SINGLE_FILE)
                .with_context(|| format!("downloading model.safetensors of {repo}"))?;
        }
    }
    Ok(cfg.parent().map(Path::to_path_buf).unwrap_or_default())
}

#[cfg(not(feature = "hub"))]
fn hub_snapshot(repo: &str, _quiet: bool) -> Result<PathBuf> {
    bail!("{repo} looks like a hub id, but this copal was built without the `hub` feature")
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
