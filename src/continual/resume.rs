//! The staging directory of a prune run, and resuming from it.
//!
//! Everything a run writes goes to `.DIR.copal-partial/` beside `--out DIR`: one checkpoint
//! per step, the state after each step, and after each finished step a `step-K.done.json`
//! written last and atomically. `manifest.json` holds the hash of the resolved plan. A rerun of
//! the same command finds the manifest, keeps the finished steps, and continues from the
//! last one; anything else in the directory (a step that was cut off) is redone. Another
//! plan discards the directory. A lock file keeps two runs from sharing it.

use crate::eval::EvalResult;
use crate::plan::PrunePlan;
use crate::report::{DataFile, StepRecordOut};
use crate::state::StepRecord;
use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub plan_hash: String,
    pub copal_version: String,
    /// The datasets the state held when the run started (empty without --state).
    pub initial_history: Vec<StepRecord>,
}

/// What a finished step leaves for a resumed run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DoneStep {
    pub record: StepRecordOut,
    pub history: StepRecord,
    pub data_file: Option<DataFile>,
}

pub struct Workdir {
    pub dir: PathBuf,
    lock: PathBuf,
}

/// SHA-256 of the plan as JSON: the same command gives the same hash.
pub fn plan_hash(plan: &PrunePlan) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut v = serde_json::to_value(plan)?;
    // Replacing an existing output does not change what is computed.
    v["force"] = serde_json::Value::Null;
    Ok(format!("{:x}", Sha256::digest(serde_json::to_vec(&v)?)))
}

/// Whether a process is running (a zombie, killed but not yet reaped, is not).
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name: "pid (comm) S …".
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

impl Workdir {
    pub fn path_for(out: &Path) -> PathBuf {
        crate::fsutil::sibling(out, "copal-partial")
    }

    /// Opens (or creates) the staging directory of `out` and takes its lock. Returns the
    /// manifest of an earlier run of the same plan, if there is one to resume.
    pub fn open(out: &Path, hash: &str) -> Result<(Self, Option<Manifest>)> {
        let dir = Self::path_for(out);
        let lock = dir.join("lock");
        let mut resumable = None;
        if dir.exists() {
            if let Ok(pid) =
                std::fs::read_to_string(&lock).map(|s| s.trim().parse::<u32>().unwrap_or(0))
            {
                if pid != 0 && pid != std::process::id() && pid_alive(pid) {
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

    /// The finished steps 1..=f whose files are all still there.
    pub fn finished(&self, need_state: bool) -> Vec<DoneStep> {
        let mut out = Vec::new();
        for k in 1.. {
            let Some(d) = std::fs::read_to_string(self.done_file(k))
                .ok()
                .and_then(|t| serde_json::from_str::<DoneStep>(&t).ok())
            else {
                break;
            };
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

    pub fn dense_eval(&self) -> Option<Vec<EvalResult>> {
        std::fs::read_to_string(self.dir.join("dense-eval.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    }

    pub fn save_dense_eval(&self, r: &[EvalResult]) -> Result<()> {
        crate::fsutil::write_atomic(
            &self.dir.join("dense-eval.json"),
            &serde_json::to_vec_pretty(r)?,
        )
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
