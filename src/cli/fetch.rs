//! `copal fetch`: what a run would download, and downloading it before the run.

use super::args::{datasets_or_default, OutputArgs, TaskArgs};
use anyhow::Result;
use clap::Args;
use copal::data::corpus::{self, Located};
use copal::data::{self, pins, Dataset, Split};
use copal::eval::tasks::{self, Located as TaskLocated, Task};
use std::path::PathBuf;

/// Download (or, with --list, list) the datasets and the model a run needs, into the Hugging
/// Face cache (HF_HOME).
///
/// Built-in datasets not in the data directory come from the hub, pinned by repository,
/// revision and the SHA-256 of their text (docs/data.md); every calibration and evaluation
/// split of each dataset is fetched. Zero-shot tasks (--tasks) without a local copy come
/// from their pinned upstream parquet file, verified by the SHA-256 of its items. A hub model
/// (owner/name[@revision], or an alias) is fetched whole. Files already in the data directory,
/// the tasks directory or the cache are not downloaded again.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Datasets: wikitext2, ptb, c4 (text:/jsonl: files are local already) [default:
    /// wikitext2,ptb,c4 unless --tasks is given].
    #[arg(long, short = 'd', value_name = "LIST")]
    pub datasets: Option<String>,

    #[command(flatten)]
    pub task: TaskArgs,

    /// Also the model: a hub id owner/name[@revision] or an alias.
    #[arg(long, short = 'm', value_name = "ALIAS|OWNER/NAME")]
    pub model: Option<String>,

    /// Directory with the dataset files [default: ./data]
    #[arg(long, value_name = "DIR", env = "COPAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Only say what is where and what would be downloaded (with its size), download nothing.
    #[arg(long)]
    pub list: bool,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// Whether the hub can be asked: `None` until a size query says, `Some(reason)` once it
/// cannot (offline, or unreachable: then no further query is made, and it is said once).
struct HubState {
    unavailable: Option<String>,
}

impl HubState {
    fn new() -> Self {
        let unavailable = if copal::hub::offline() {
            Some("HF_HUB_OFFLINE is set".to_string())
        } else if cfg!(not(feature = "hub")) {
            Some("this copal was built without the hub feature".to_string())
        } else {
            None
        };
        Self { unavailable }
    }

    /// The size of a pinned file on the hub, asked only while the hub answers.
    fn size(&mut self, repo: &copal::hub::Repo, path: &str) -> Result<u64, String> {
        if let Some(why) = &self.unavailable {
            return Err(why.clone());
        }
        #[cfg(feature = "hub")]
        {
            match copal::hub::remote_size(repo, path) {
                Ok(n) => Ok(n),
                Err(e) if e.downcast_ref::<copal::hub::Unreachable>().is_some() => {
                    copal::ui::warn(format!(
                        "{e:#}; sizes unknown, nothing can be downloaded now"
                    ));
                    self.unavailable = Some(format!(
                        "the hub at {} cannot be reached",
                        copal::hub::endpoint()
                    ));
                    Err(self.unavailable.clone().unwrap_or_default())
                }
                Err(e) => Err(format!("{e:#}")),
            }
        }
        #[cfg(not(feature = "hub"))]
        {
            let _ = (repo, path);
            Err("built without the hub feature".into())
        }
    }
}

/// A dataset split's state: where it is, or what it needs.
fn row(
    ds: &Dataset,
    split: Split,
    data_dir: &std::path::Path,
    hub_state: &mut HubState,
) -> Result<serde_json::Value> {
    Ok(match corpus::locate(ds, split, data_dir)? {
        Located::File(p) => serde_json::json!({
            "dataset": ds.name(), "split": split, "status": "present", "path": p,
            "bytes": std::fs::metadata(&p).map(|m| m.len()).ok(),
        }),
        Located::Remote(pin) => {
            let size = hub_state.size(&pins::repo(pin), pin.path);
            serde_json::json!({
                "dataset": ds.name(), "split": split, "status": "to download",
                "repo": pin.repo, "revision": pin.revision, "path": pin.path,
                "bytes": size.as_ref().ok(), "size_error": size.err(),
            })
        }
    })
}

fn splits(ds: &Dataset) -> Vec<Split> {
    match ds {
        Dataset::C4 => vec![Split::Train, Split::Valid],
        Dataset::WikiText2 | Dataset::Ptb => vec![Split::Train, Split::Valid, Split::Test],
        _ => vec![ds.default_calib_split()],
    }
}

/// A task's state: where its items are, what it needs, or why it cannot be fetched; without
/// `list`, fetched (and verified) when pinned and not here.
fn task_row(
    task: Task,
    dir: &std::path::Path,
    list: bool,
    hub_state: &mut HubState,
) -> serde_json::Value {
    let name = task.name();
    match tasks::locate(task, dir) {
        Err(e) => {
            serde_json::json!({"task": name, "status": "not available", "error": format!("{e:#}")})
        }
        Ok(TaskLocated::Local { split, path }) => {
            serde_json::json!({"task": name, "split": split, "status": "present", "path": path})
        }
        Ok(TaskLocated::Pinned {
            pin,
            cached: Some(p),
        }) => {
            serde_json::json!({"task": name, "split": pin.split, "status": "present", "path": p})
        }
        Ok(TaskLocated::Pinned { pin, cached: None }) if list => {
            let size = hub_state.size(&pins::task_repo(pin), pin.path);
            serde_json::json!({
                "task": name, "split": pin.split, "status": "to download",
                "repo": pin.repo, "revision": pin.revision, "path": pin.path,
                "bytes": size.as_ref().ok(), "size_error": size.err(),
            })
        }
        Ok(TaskLocated::Pinned { pin, cached: None }) => match tasks::load(task, dir, None) {
            Ok((split, items)) => serde_json::json!({
                "task": name, "split": split, "status": "present", "items": items.len(),
                "path": pins::cached_task(pin),
            }),
            Err(e) => {
                serde_json::json!({"task": name, "status": "not available", "error": format!("{e:#}")})
            }
        },
    }
}

pub fn run(a: FetchArgs) -> Result<()> {
    copal::ui::set_quiet(a.output.quiet);
    let task_list = a.task.list()?;
    let datasets = datasets_or_default(a.datasets.as_deref(), task_list.is_some())?;
    let data_dir = data::data_dir(a.data_dir.clone());
    let mut rows = Vec::new();
    let mut hub_state = HubState::new();
    for ds in &datasets {
        for split in splits(ds) {
            if pins::pin(ds, split).is_none()
                && !matches!(ds, Dataset::Text(_) | Dataset::Jsonl { .. })
            {
                continue;
            }
            if a.list {
                rows.push(row(ds, split, &data_dir, &mut hub_state)?);
            } else {
                let p = corpus::find(ds, split, &data_dir)?;
                rows.push(serde_json::json!({
                    "dataset": ds.name(), "split": split, "status": "present", "path": p,
                }));
            }
        }
    }
    let tasks_dir = a.task.dir();
    for t in task_list.iter().flatten() {
        rows.push(task_row(*t, &tasks_dir, a.list, &mut hub_state));
    }
    if let Some(m) = &a.model {
        if a.list {
            rows.push(serde_json::json!({"model": m, "status": "resolved when fetched"}));
        } else {
            let dir = copal::checkpoint::resolve::resolve(m, a.output.quiet)?;
            rows.push(serde_json::json!({"model": m, "status": "present", "path": dir}));
        }
    }
    let missing = rows.iter().filter(|r| r["status"] == "to download").count();
    let cannot = a.list && missing > 0 && hub_state.unavailable.is_some();
    if a.output.json {
        copal::ui::out(serde_json::to_string_pretty(&rows)?)?;
    } else {
        print_rows(&rows, a.list)?;
    }
    let (unavailable, why): (Vec<&str>, Vec<&str>) = rows
        .iter()
        .filter(|r| r["status"] == "not available")
        .map(|r| {
            (
                r["task"].as_str().unwrap_or(""),
                r["error"].as_str().unwrap_or(""),
            )
        })
        .unzip();
    if !unavailable.is_empty() {
        anyhow::bail!(
            "cannot fetch {}: {}",
            unavailable.join(", "),
            why.join("; ")
        );
    }
    if cannot {
        anyhow::bail!(
            "{missing} file{} a run needs {} not here and cannot be downloaded now ({}): put \
             {it} in the data directory (docs/data.md), or fetch {it} where the hub can be reached",
            if missing == 1 { "" } else { "s" },
            if missing == 1 { "is" } else { "are" },
            hub_state.unavailable.unwrap_or_default(),
            it = if missing == 1 { "it" } else { "them" }
        );
    }
    Ok(())
}

fn print_rows(rows: &[serde_json::Value], list: bool) -> Result<()> {
    let mut total = 0u64;
    for r in rows {
        let what = match (r.get("dataset").or(r.get("task")), r.get("model")) {
            (Some(d), _) => format!(
                "{} {}",
                d.as_str().unwrap_or(""),
                r["split"].as_str().unwrap_or("")
            ),
            (_, Some(m)) => format!("model {}", m.as_str().unwrap_or("")),
            _ => String::new(),
        };
        let status = r["status"].as_str().unwrap_or("");
        let detail = match status {
            "to download" => {
                let size = r["bytes"].as_u64();
                total += size.unwrap_or(0);
                format!(
                    "{}@{}/{} ({})",
                    r["repo"].as_str().unwrap_or(""),
                    r["revision"].as_str().unwrap_or(""),
                    r["path"].as_str().unwrap_or(""),
                    size.map(|b| format!("{:.1} MB", b as f64 / 1e6))
                        .unwrap_or_else(|| "size unknown".to_string())
                )
            }
            "not available" => "see below".to_string(),
            _ => r["path"].as_str().unwrap_or("").to_string(),
        };
        copal::ui::out(format!("{what:<24} {status:<12} {detail}"))?;
    }
    if list && total > 0 {
        copal::ui::out(format!("to download: {:.1} MB", total as f64 / 1e6))?;
    }
    Ok(())
}
