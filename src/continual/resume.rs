//! The staging directory of a prune run, and resuming from it.
//!
//! Everything a run writes goes to `.DIR.copal-partial/` beside `--out DIR`: one checkpoint
//! per step, the state after each step, and after each finished step a `step-K.done.json`
//! written last and atomically. `manifest.json` holds the hash of what every step shares (the
//! plan but its datasets, and the model's content); each finished step records its own
//! identity, which adds the datasets up to it (name, split, the data file's SHA-256). A rerun
//! keeps the finished steps whose identity it would compute again, in order, and continues
//! from the last one: fixing the input of step k keeps steps 1..k−1. Anything else in the
//! directory (a step that was cut off) is redone; another base plan discards the directory. A
//! lock file keeps two runs from sharing it.

use crate::eval::choice::TaskResult;
use crate::eval::EvalResult;
use crate::plan::PrunePlan;
use crate::report::{DataFile, StepRecordOut};
use crate::state::StepRecord;
use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// [`base_hash`] of the run.
    pub plan_hash: String,
    pub copal_version: String,
    /// The datasets the state held when the run started (empty without --state).
    pub initial_history: Vec<StepRecord>,
}

/// What a finished step leaves for a resumed run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DoneStep {
    /// [`step_identity`] of the step.
    #[serde(default)]
    pub identity: String,
    pub record: StepRecordOut,
    pub history: StepRecord,
    pub data_file: Option<DataFile>,
}

pub struct Workdir {
    pub dir: PathBuf,
    lock: PathBuf,
}

/// SHA-256 of what every step of a run shares: the plan as JSON without its datasets (unless
/// every step evaluates every dataset), and the model's fingerprint (its content).
pub fn base_hash(plan: &PrunePlan, model_fingerprint: &str) -> Result<String> {
    let mut v = serde_json::to_value(plan)?;
    // Replacing an existing output, or where the run's evaluations are cached, does not
    // change what is computed.
    for key in ["force", "eval_cache", "out"] {
        if let Some(o) = v.as_object_mut() {
            o.remove(key);
        }
    }
    if !plan.eval || plan.eval_seen_only {
        if let Some(o) = v.as_object_mut() {
            o.remove("datasets");
        }
    }
    v["model_fingerprint"] = model_fingerprint.into();
    Ok(crate::fsutil::sha256_hex([serde_json::to_vec(&v)?]))
}

/// The identity of step k: the base and, for every dataset up to k, its name, split and the
/// SHA-256 of its calibration file (empty where the method reads no data).
pub fn step_identity(base: &str, steps: &[(String, String, String)]) -> String {
    let mut text = base.to_string();
    for (name, split, sha) in steps {
        text.push_str(&format!("|{name}|{split}|{sha}"));
    }
    crate::fsutil::sha256_hex([text])
}

/// Names the interrupted runs beside this one (`.OTHER.copal-partial` whose process is gone):
/// they hold finished steps that only their own command resumes, and disk until deleted.
fn name_other_partial_runs(ours: &Path) {
    let parent = ours.parent().unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    }) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if !name.starts_with('.') || !name.ends_with(".copal-partial") || path == ours {
            continue;
        }
        let live = std::fs::read_to_string(path.join("lock"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .is_some_and(crate::fsutil::pid_alive);
        if !live {
            crate::ui::info(format!(
                "note: {} holds an interrupted run (rerun its command to resume it, or delete \
                 it)",
                path.display()
            ));
        }
    }
}

/// The manifest of an interrupted run of `out`, if one is there (read only).
pub fn peek_manifest(out: &Path) -> Option<Manifest> {
    let dir = Workdir::path_for(out);
    std::fs::read_to_string(dir.join("manifest.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
}

impl Workdir {
    pub fn path_for(out: &Path) -> PathBuf {
        crate::fsutil::sibling(out, "copal-partial")
    }

    /// Opens (or creates) the staging directory of `out` and takes its lock. Returns the
    /// manifest of an earlier run of the same plan, if there is one to resume.
    pub fn open(out: &Path, hash: &str) -> Result<(Self, Option<Manifest>)> {
        let dir = Self::path_for(out);
        name_other_partial_runs(&dir);
        let lock = dir.join("lock");
        let mut resumable = None;
        if dir.exists() {
            if let Ok(pid) =
                std::fs::read_to_string(&lock).map(|s| s.trim().parse::<u32>().unwrap_or(0))
            {
                if pid != 0 && pid != std::process::id() && crate::fsutil::pid_alive(pid) {
                    bail!(
                        "another copal run (pid {pid}) is writing {}; wait for it or stop it",
                        out.display()
                    );
                }
            }
            let manifest: Option<Manifest> = std::fs::read_to_string(dir.join("manifest.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            match manifest {
                Some(m) if m.plan_hash == hash && m.copal_version == env!("CARGO_PKG_VERSION") => {
                    resumable = Some(m)
                }
                _ => {
                    crate::ui::info(format!(
                        "discarding {} (a partial run with other settings)",
                        dir.display()
                    ));
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("removing {}", dir.display()))?;
                }
            }
        }
        std::fs::create_dir_all(&dir).with_context(|| {
            format!(
                "creating {} (is the parent directory writable?)",
                dir.display()
            )
        })?;
        crate::fsutil::write_atomic(&lock, std::process::id().to_string().as_bytes())?;
        Ok((Self { dir, lock }, resumable))
    }

    pub fn write_manifest(&self, m: &Manifest) -> Result<()> {
        crate::fsutil::write_atomic(
            &self.dir.join("manifest.json"),
            &serde_json::to_vec_pretty(m)?,
        )
    }

    pub fn step_dir(&self, k: usize) -> PathBuf {
        self.dir.join(format!("step-{k}"))
    }

    pub fn state_file(&self, k: usize) -> PathBuf {
        self.dir.join(format!("state-{k}.safetensors"))
    }

    fn done_file(&self, k: usize) -> PathBuf {
        self.dir.join(format!("step-{k}.done.json"))
    }

    /// Marks step `k` (1-based) finished; written after all of its files.
    pub fn mark_done(&self, k: usize, d: &DoneStep) -> Result<()> {
        crate::fsutil::sync_dir(&self.dir)?;
        crate::fsutil::write_atomic(&self.done_file(k), &serde_json::to_vec_pretty(d)?)
    }

    /// The finished steps 1..=f whose identities are `identities[..f]` and whose files are
    /// all still there.
    pub fn finished(&self, need_state: bool, identities: &[String]) -> Vec<DoneStep> {
        let mut out = Vec::new();
        for (k, id) in (1..).zip(identities) {
            let Some(d) = std::fs::read_to_string(self.done_file(k))
                .ok()
                .and_then(|t| serde_json::from_str::<DoneStep>(&t).ok())
            else {
                break;
            };
            if &d.identity != id {
                break;
            }
            out.push(d);
        }
        // Only the last finished step's checkpoint and state are needed to go on.
        while let Some(k) = (!out.is_empty()).then_some(out.len()) {
            let ok = self.step_dir(k).join("config.json").exists()
                && (!need_state || self.state_file(k).exists());
            if ok {
                break;
            }
            out.pop();
        }
        out
    }

    /// The dense model's perplexities, when an interrupted run of this plan measured them.
    pub fn dense_eval(&self) -> Option<Vec<EvalResult>> {
        self.kept("dense-eval.json")
    }

    pub fn save_dense_eval(&self, r: &[EvalResult]) -> Result<()> {
        self.store("dense-eval.json", r)
    }

    /// The dense model's task scores, when an interrupted run of this plan measured them.
    pub fn dense_tasks(&self) -> Option<Vec<TaskResult>> {
        self.kept("dense-tasks.json")
    }

    pub fn save_dense_tasks(&self, r: &[TaskResult]) -> Result<()> {
        self.store("dense-tasks.json", r)
    }

    /// A result kept in the directory (none if absent or unreadable: it is measured again).
    fn kept<T: serde::de::DeserializeOwned>(&self, file: &str) -> Option<T> {
        std::fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    }

    fn store<T: serde::Serialize + ?Sized>(&self, file: &str, v: &T) -> Result<()> {
        crate::fsutil::write_atomic(&self.dir.join(file), &serde_json::to_vec_pretty(v)?)
    }

    /// Removes the directory (after success, or when nothing is worth resuming).
    pub fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Releases the lock but keeps the directory for a later resume.
    pub fn keep(self) {
        let _ = std::fs::remove_file(&self.lock);
    }
}
