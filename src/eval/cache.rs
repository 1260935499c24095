//! A file of perplexities and task scores already measured, shared by the runs of an
//! experiment.

use super::choice::TaskResult;
use super::evaluator::evaluate;
use super::perplexity::EvalResult;
use crate::data::EvalSet;
use crate::model::{Llama, TensorSource};
use anyhow::{Context as _, Result};
use std::path::Path;

/// Perplexities already measured, keyed by (model fingerprint, dataset, split, seqlen,
/// windows), and zero-shot task results, keyed by (model fingerprint, task, split, digest of
/// the items and the BOS rule), so that identical models (the dense reference, magnitude at
/// every step) are evaluated once across the runs of an experiment. Stored as JSON, replaced
/// atomically.
#[derive(Debug, Default)]
pub struct EvalCache {
    path: std::path::PathBuf,
    map: std::collections::BTreeMap<String, serde_json::Value>,
}

impl EvalCache {
    /// Opens the cache (empty if the file does not exist yet). An unreadable cache is an
    /// error, not a silent reset: it would throw away measured perplexities unnoticed.
    pub fn open(path: &Path) -> Result<Self> {
        let map = match std::fs::read_to_string(path) {
            Ok(t) => serde_json::from_str(&t).with_context(|| {
                format!(
                    "the evaluation cache {} is unreadable; delete it to measure its \
                     perplexities again",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => {
                return Err(e).with_context(|| format!("reading {}", path.display()));
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            map,
        })
    }

    fn key(fingerprint: &str, s: &EvalSet) -> String {
        format!(
            "{fingerprint}|{}|{}|{}|{}",
            s.dataset.name(),
            s.split,
            s.seqlen,
            s.windows
        )
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        serde_json::from_value(self.map.get(key)?.clone()).ok()
    }

    /// The task result stored under (`fingerprint`, `key`), or `score`'s, stored.
    pub fn task(
        &mut self,
        fingerprint: &str,
        key: &str,
        score: impl FnOnce() -> Result<TaskResult>,
    ) -> Result<TaskResult> {
        let k = format!("{fingerprint}|task|{key}");
        if let Some(r) = self.get::<TaskResult>(&k) {
            crate::ui::info(format!("  {} from the cache", r.task));
            return Ok(r);
        }
        let r = score()?;
        self.map.insert(k, serde_json::to_value(&r)?);
        self.save()?;
        Ok(r)
    }

    /// Evaluates the sets not in the cache, stores them, and returns all in order.
    pub fn evaluate(
        &mut self,
        fingerprint: &str,
        model: &Llama,
        src: &dyn TensorSource,
        sets: &[EvalSet],
        label: &str,
    ) -> Result<Vec<EvalResult>> {
        let missing: Vec<EvalSet> = sets
            .iter()
            .filter(|s| self.get::<EvalResult>(&Self::key(fingerprint, s)).is_none())
            .cloned()
            .collect();
        if !missing.is_empty() {
            let fresh = evaluate(model, src, &missing, label)?;
            for (s, r) in missing.iter().zip(fresh) {
                self.map
                    .insert(Self::key(fingerprint, s), serde_json::to_value(r)?);
            }
            self.save()?;
        } else {
            crate::ui::info(format!(
                "{label}: all {} results from the cache",
                sets.len()
            ));
        }
        sets.iter()
            .map(|s| {
                self.get(&Self::key(fingerprint, s))
                    .context("internal: a perplexity missing from the cache")
            })
            .collect()
    }

    /// Merges with what other processes saved meanwhile, then replaces the file.
    fn save(&mut self) -> Result<()> {
        if self.path.exists() {
            let other = Self::open(&self.path)?;
            for (k, v) in other.map {
                self.map.entry(k).or_insert(v);
            }
        }
        crate::fsutil::write_atomic(&self.path, &serde_json::to_vec_pretty(&self.map)?)?;
        Ok(())
    }
}
