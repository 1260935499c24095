//! The seven zero-shot tasks of the Wanda paper, each item turned into requests exactly as
//! lm-evaluation-harness 0.4.13 builds them (its task YAMLs, `api/task.py`), zero-shot.
//!
//! A multiple-choice item becomes one (context, continuation) request per choice:
//! context = `doc_to_text`, continuation = target delimiter " " + choice. WinoGrande is
//! scored the other way round (`multiple_input`): each option completes the sentence up to the
//! blank, giving one context per option, and the rest of the sentence after the blank is the
//! shared continuation. The harness's metrics: `acc` = [argmax ℓ = gold], `acc_norm` =
//! [argmax ℓ_i / len(choice_i) = gold] with len in Unicode characters, ties to the lowest
//! index (numpy's argmax); each reported as the mean over items ± the standard error of the
//! mean (sample standard deviation / √n).

use crate::data::pins::{self, TaskPin};
use anyhow::{bail, ensure, Context as _, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One task, as lm-eval names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Boolq,
    Rte,
    Hellaswag,
    Winogrande,
    ArcEasy,
    ArcChallenge,
    Openbookqa,
}

/// A metric the harness reports for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// The choice with the largest summed log-likelihood is the gold one.
    Acc,
    /// The same over log-likelihood per character of the choice.
    AccNorm,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Acc => "acc",
            Metric::AccNorm => "acc_norm",
        }
    }
}

impl Task {
    /// The Wanda paper's seven, in its order (`--tasks wanda7`).
    pub const ALL: [Task; 7] = [
        Task::Boolq,
        Task::Rte,
        Task::Hellaswag,
        Task::Winogrande,
        Task::ArcChallenge,
        Task::ArcEasy,
        Task::Openbookqa,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Task::Boolq => "boolq",
            Task::Rte => "rte",
            Task::Hellaswag => "hellaswag",
            Task::Winogrande => "winogrande",
            Task::ArcEasy => "arc_easy",
            Task::ArcChallenge => "arc_challenge",
            Task::Openbookqa => "openbookqa",
        }
    }

    /// A comma-separated list of task names, `wanda7` standing for all seven; each task once.
    pub fn parse_list(s: &str) -> Result<Vec<Task>> {
        let mut out: Vec<Task> = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let more: Vec<Task> = if name == "wanda7" {
                Task::ALL.to_vec()
            } else {
                match Task::ALL.iter().find(|t| t.name() == name) {
                    Some(t) => vec![*t],
                    None => bail!(
                        "unknown task {name:?}; the tasks are {} (or wanda7 for all seven)",
                        Task::ALL.map(Task::name).join(", ")
                    ),
                }
            };
            for t in more {
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
        ensure!(
            !out.is_empty(),
            "no task given; the tasks are {}",
            Task::ALL.map(Task::name).join(", ")
        );
        Ok(out)
    }

    /// The split lm-eval scores: the test split where the task defines one, else validation.
    pub fn harness_split(self) -> &'static str {
        match self {
            Task::ArcEasy | Task::ArcChallenge | Task::Openbookqa => "test",
            _ => "validation",
        }
    }

    /// The metrics the task's YAML lists.
    pub fn metrics(self) -> &'static [Metric] {
        match self {
            Task::Boolq | Task::Rte | Task::Winogrande => &[Metric::Acc],
            _ => &[Metric::Acc, Metric::AccNorm],
        }
    }

    /// The item in `row` (one record of the task's upstream file, as the hub serves it).
    pub fn item(self, row: &Value) -> Result<Item> {
        let text = |k: &str| -> Result<&str> {
            row.get(k)
                .and_then(Value::as_str)
                .with_context(|| format!("{} item without a text field {k:?}", self.name()))
        };
        let int = |k: &str| -> Result<usize> {
            row.get(k)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .with_context(|| format!("{} item without an integer field {k:?}", self.name()))
        };
        let choices_of = |cs: &[&str], ctx: String, gold: usize| -> Item {
            Item::choices(ctx, cs.iter().map(|c| c.to_string()).collect(), gold)
        };
        let item = match self {
            // aps/super_glue's form has `label`; google/boolq's (the same 3270 items) has
            // `answer`, true for yes.
            Task::Boolq => {
                let gold = match row.get("label") {
                    Some(_) => int("label")?,
                    None => row
                        .get("answer")
                        .and_then(Value::as_bool)
                        .context("boolq item with neither `label` nor a boolean `answer`")?
                        as usize,
                };
                let ctx = format!(
                    "{}\nQuestion: {}?\nAnswer:",
                    text("passage")?,
                    text("question")?
                );
                choices_of(&["no", "yes"], ctx, gold)
            }
            Task::Rte => {
                let ctx = format!(
                    "{}\nQuestion: {} True or False?\nAnswer:",
                    text("sentence1")?,
                    text("sentence2")?
                );
                choices_of(&["True", "False"], ctx, int("label")?)
            }
            Task::Hellaswag => {
                let ctx = format!(
                    "{}: {} {}",
                    text("activity_label")?,
                    text("ctx_a")?,
                    capitalize(text("ctx_b")?)
                );
                let endings = strings(row.get("endings"), "hellaswag endings")?;
                let gold: usize = text("label")?
                    .parse()
                    .context("hellaswag label is not a number")?;
                Item::choices(
                    hellaswag_preprocess(&ctx),
                    endings.iter().map(|e| hellaswag_preprocess(e)).collect(),
                    gold,
                )
            }
            Task::Winogrande => {
                let s = text("sentence")?;
                let blank = s.find('_').context("winogrande sentence without a blank")?;
                let gold = match text("answer")? {
                    "1" => 0,
                    "2" => 1,
                    a => bail!("winogrande answer {a:?} is neither \"1\" nor \"2\""),
                };
                let contexts: Vec<String> = [text("option1")?, text("option2")?]
                    .iter()
                    .map(|o| format!("{}{o}", &s[..blank]))
                    .collect();
                let cont = format!(" {}", py_strip(&s[blank + 1..]));
                Item {
                    requests: contexts.iter().map(|c| (c.clone(), cont.clone())).collect(),
                    choices: contexts,
                    gold,
                }
            }
            Task::ArcEasy | Task::ArcChallenge | Task::Openbookqa => {
                let (q, key) = if self == Task::Openbookqa {
                    (
                        text("question_stem")?.to_string(),
                        py_lstrip(text("answerKey")?),
                    )
                } else {
                    (
                        format!("Question: {}\nAnswer:", text("question")?),
                        text("answerKey")?,
                    )
                };
                let c = row.get("choices").context("item without choices")?;
                let texts = strings(c.get("text"), "choices.text")?;
                let labels = strings(c.get("label"), "choices.label")?;
                ensure!(
                    texts.len() == labels.len(),
                    "choices.text and choices.label differ in length"
                );
                let gold = labels.iter().position(|l| l == key).with_context(|| {
                    format!("answer key {key:?} is not among the labels {labels:?}")
                })?;
                Item::choices(q, texts, gold)
            }
        };
        ensure!(
            item.gold < item.requests.len(),
            "{} item: gold choice {} of {}",
            self.name(),
            item.gold,
            item.requests.len()
        );
        Ok(item)
    }
}

/// Where the tasks' local copies are unless a command is told: `$COPAL_HOME/tasks`, where
/// scripts/fetch-task-data.sh writes them.
pub fn default_dir() -> PathBuf {
    crate::checkpoint::resolve::copal_home().join("tasks")
}

/// Where a task's items are: a local copy, or a pinned upstream file (in the hub cache, or
/// to download).
#[derive(Debug, Clone)]
pub enum Located {
    /// `dir/TASK/SPLIT.parquet`.
    Local { split: String, path: PathBuf },
    /// The pinned file, with its path in the hub cache when it is there.
    Pinned {
        pin: &'static TaskPin,
        cached: Option<PathBuf>,
    },
}

/// Where `task`'s items are, for each split in turn (the one lm-eval scores, then validation):
/// a local copy in `dir` (`dir/TASK/SPLIT.parquet` with the upstream file's rows and columns,
/// as scripts/fetch-task-data.sh writes them), else the split's pinned upstream file
/// ([`crate::data::pins::TASK_PINS`]).
pub fn locate(task: Task, dir: &Path) -> Result<Located> {
    let mut splits = vec![task.harness_split()];
    if task.harness_split() != "validation" {
        splits.push("validation");
    }
    let mut tried = Vec::new();
    for split in splits {
        let path = dir.join(task.name()).join(format!("{split}.parquet"));
        if path.exists() {
            return Ok(Located::Local {
                split: split.to_string(),
                path,
            });
        }
        tried.push(path.display().to_string());
        if let Some(pin) = pins::task_pin(task.name(), split) {
            return Ok(Located::Pinned {
                pin,
                cached: pins::cached_task(pin),
            });
        }
    }
    bail!(
        "no local copy of {}'s items (looked for {}) and no pinned upstream file for it \
         (pinned: {}); give a local copy with the tasks directory (scripts/fetch-task-data.sh \
         writes the validation splits the tests use; docs/data.md)",
        task.name(),
        tried.join(" and "),
        pins::TASK_PINS.map(|p| p.task).join(", ")
    )
}

/// The task's items: from its local copy, or from its pinned upstream file (fetched into the
/// hub cache if needed, verified either way). The first `limit` items when given (the
/// harness's `--limit`). Returns the split read and the items.
pub fn load(task: Task, dir: &Path, limit: Option<usize>) -> Result<(String, Vec<Item>)> {
    let (split, path, rows) = match locate(task, dir)? {
        Located::Local { split, path } => {
            let rows = pins::parquet_records(&path)?;
            (split, path, rows)
        }
        Located::Pinned { pin, cached } => {
            let path = match cached {
                Some(p) => p,
                None => pins::fetch_task(pin).with_context(|| {
                    format!(
                        "no local copy of {}'s items in {} and its pinned file is not in the hub \
                         cache: `copal fetch --tasks {}` downloads it where the hub can be \
                         reached, or scripts/fetch-task-data.sh writes local copies (docs/data.md)",
                        task.name(),
                        dir.join(task.name()).display(),
                        task.name()
                    )
                })?,
            };
            let rows = pins::verified_task_rows(pin, &path)?;
            (pin.split.to_string(), path, rows)
        }
    };
    let n = limit.unwrap_or(usize::MAX).min(rows.len());
    let items = rows[..n]
        .iter()
        .enumerate()
        .map(|(i, r)| {
            task.item(r)
                .with_context(|| format!("{} row {i}", path.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    ensure!(!items.is_empty(), "{} holds no items", path.display());
    Ok((split, items))
}

/// One scored item: a request per choice, the choices' strings (acc_norm's lengths) and the
/// index of the right one.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// (context, continuation) per choice.
    pub requests: Vec<(String, String)>,
    pub choices: Vec<String>,
    pub gold: usize,
}

impl Item {
    /// The usual form: one context, each choice after the target delimiter " ".
    fn choices(ctx: String, choices: Vec<String>, gold: usize) -> Item {
        Item {
            requests: choices
                .iter()
                .map(|c| (ctx.clone(), format!(" {c}")))
                .collect(),
            choices,
            gold,
        }
    }
}

fn strings(v: Option<&Value>, what: &str) -> Result<Vec<String>> {
    v.and_then(Value::as_array)
        .with_context(|| format!("{what} is not a list"))?
        .iter()
        .map(|x| {
            x.as_str()
                .map(str::to_string)
                .with_context(|| format!("{what} holds a non-text entry"))
        })
        .collect()
}

/// Python's `str.capitalize()`: the first character upper-cased, the rest lower-cased.
fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f
            .to_uppercase()
            .chain(c.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

/// Python's `str.isspace()` for one character: Unicode White_Space plus the four separators
/// U+001C–U+001F, which Python counts and Rust does not.
pub(crate) fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()` / `lstrip()` without arguments.
fn py_strip(s: &str) -> &str {
    s.trim_matches(py_space)
}
fn py_lstrip(s: &str) -> &str {
    s.trim_start_matches(py_space)
}

/// lm-eval's HellaSwag `preprocess`: strip; " [title]" → ". "; remove every `\[.*?\]` (the
/// shortest bracketed run, not across a newline); "  " → " " (one pass, non-overlapping).
pub fn hellaswag_preprocess(text: &str) -> String {
    let t = py_strip(text).replace(" [title]", ". ");
    let mut out = String::with_capacity(t.len());
    let mut rest = t.as_str();
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        // `.` matches anything but a newline: the first ']' before any '\n' closes the match.
        let close = after
            .find([']', '\n'])
            .filter(|&i| after.as_bytes()[i] == b']');
        match close {
            Some(i) => {
                out.push_str(&rest[..open]);
                rest = &after[i + 1..];
            }
            None => {
                out.push_str(&rest[..open + 1]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

/// Mean and standard error of the mean (sample standard deviation, n − 1, over √n) of 0/1
/// scores, as the harness's `mean` and `mean_stderr`.
pub fn mean_stderr(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// numpy's argmax: the first index of the largest value.
pub fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate() {
        if *x > xs[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hellaswag_preprocess_is_the_harness_rule() {
        assert_eq!(hellaswag_preprocess("  a [title] b  "), "a. b");
        assert_eq!(hellaswag_preprocess("x [step] y [z] w"), "x y w");
        // Shortest match; an unclosed bracket stays; no match across a newline.
        assert_eq!(hellaswag_preprocess("a [b] c] d"), "a c] d");
        assert_eq!(hellaswag_preprocess("a [b c"), "a [b c");
        assert_eq!(hellaswag_preprocess("a [b\n] c [d]"), "a [b\n] c ");
        // One pass of "  " → " ": three spaces leave two.
        assert_eq!(hellaswag_preprocess("a   b"), "a  b");
    }

    #[test]
    fn items_are_built_as_the_harness_builds_them() {
        let it = Task::Hellaswag
            .item(
                &json!({"activity_label": "Cooking", "ctx_a": "He cuts.", "ctx_b": "THE man",
                          "endings": ["eats [x] it.", "runs"], "label": "1"}),
            )
            .unwrap();
        assert_eq!(it.requests[0].0, "Cooking: He cuts. The man");
        assert_eq!(it.requests[0].1, " eats it.");
        assert_eq!(it.choices[1], "runs");
        assert_eq!(it.gold, 1);

        let it = Task::Winogrande
            .item(
                &json!({"sentence": "Tom gave _ the book.  ", "option1": "Ann",
                          "option2": "Bob", "answer": "2"}),
            )
            .unwrap();
        assert_eq!(
            it.requests,
            vec![
                ("Tom gave Ann".to_string(), " the book.".to_string()),
                ("Tom gave Bob".to_string(), " the book.".to_string())
            ]
        );
        assert_eq!(it.gold, 1);

        let it = Task::Openbookqa
            .item(&json!({"question_stem": "Sun is", "answerKey": " B",
                          "choices": {"text": ["cold", "hot"], "label": ["A", "B"]}}))
            .unwrap();
        assert_eq!(it.requests[1], ("Sun is".to_string(), " hot".to_string()));
        assert_eq!(it.gold, 1);

        let it = Task::ArcEasy
            .item(&json!({"question": "Q?", "answerKey": "1",
                          "choices": {"text": ["a", "b"], "label": ["1", "2"]}}))
            .unwrap();
        assert_eq!(it.requests[0].0, "Question: Q?\nAnswer:");
        assert_eq!(it.gold, 0);

        let google = Task::Boolq
            .item(&json!({"passage": "P", "question": "is it", "answer": true}))
            .unwrap();
        let glue = Task::Boolq
            .item(&json!({"passage": "P", "question": "is it", "label": 1, "idx": 0}))
            .unwrap();
        assert_eq!(google, glue);
        assert_eq!(
            google.requests[1],
            (
                "P\nQuestion: is it?\nAnswer:".to_string(),
                " yes".to_string()
            )
        );

        assert!(Task::ArcEasy
            .item(&json!({"question": "Q", "answerKey": "E",
                          "choices": {"text": ["a"], "label": ["A"]}}))
            .is_err());
        assert!(Task::Rte
            .item(&json!({"sentence1": "a", "sentence2": "b", "label": 2}))
            .is_err());
    }

    #[test]
    fn task_lists_and_metrics() {
        assert_eq!(Task::parse_list("wanda7,boolq").unwrap().len(), 7);
        assert_eq!(
            Task::parse_list("rte, arc_easy").unwrap(),
            vec![Task::Rte, Task::ArcEasy]
        );
        assert!(Task::parse_list("piqa")
            .unwrap_err()
            .to_string()
            .contains("arc_challenge"));
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        let (m, se) = mean_stderr(&[1.0, 0.0, 1.0, 1.0]);
        assert_eq!(m, 0.75);
        assert!((se - 0.25).abs() < 1e-12, "{se}");
    }
}
