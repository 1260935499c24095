//! The documentation stays true to the tool: links resolve, every command and every flag it
//! names exists, and the bad-input table lists exactly the script's cases.

use crate::common::*;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn pages() -> Vec<PathBuf> {
    let mut v = vec![root().join("README.md")];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            v.push(p);
        }
    }
    // Each result directory's README (how and when its runs were made).
    for e in std::fs::read_dir(root().join("results")).unwrap() {
        let p = e.unwrap().path().join("README.md");
        if p.is_file() {
            v.push(p);
        }
    }
    v
}

/// GitHub's anchor of a heading: lower case, spaces to '-', punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

#[test]
fn every_link_in_the_docs_resolves() {
    let mut bad = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let dir = page.parent().unwrap();
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = &rest[..end];
            if target.starts_with("http") || target.contains(' ') {
                continue;
            }
            let (file, frag) = target.split_once('#').unwrap_or((target, ""));
            let linked = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            if !linked.exists() {
                bad.push(format!("{}: {target} (no such file)", page.display()));
            } else if !frag.is_empty() {
                let t = std::fs::read_to_string(&linked).unwrap();
                if !anchors(&t).iter().any(|a| a == frag) {
                    bad.push(format!("{}: {target} (no such heading)", page.display()));
                }
            }
        }
    }
    assert!(bad.is_empty(), "broken links:\n{}", bad.join("\n"));
}

#[test]
fn every_command_and_flag_the_docs_name_exists() {
    let (code, help, _) = run_cli(&["--help"], &[]);
    assert_eq!(code, 0);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help" && l_is_command(c))
        .collect();
    assert!(commands.len() >= 7, "{help}");
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let usage = std::fs::read_to_string(root().join("docs/usage.md")).unwrap();
    for c in &commands {
        assert!(readme.contains(&format!("`copal {c}`")), "README lacks {c}");
        assert!(
            usage.contains(&format!("## `copal {c}`")),
            "usage.md lacks {c}"
        );
    }
    // Every --flag in a table row of the prune flag tables is a flag of `copal prune`.
    let (_, prune_help, _) = run_cli(&["prune", "--help"], &[]);
    let section = usage
        .split("## `copal prune`")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let table_rows = section
        .lines()
        .chain(readme.lines().filter(|l| l.starts_with("| `--")))
        .filter(|l| l.starts_with("| `--"));
    let mut missing = Vec::new();
    for row in table_rows {
        let first = row.split('|').nth(1).unwrap();
        for flag in first.split('`').filter(|s| s.starts_with("--")) {
            let name = flag.split([' ', '=']).next().unwrap();
            if !prune_help.contains(&format!("{name} "))
                && !prune_help.contains(&format!("{name}\n"))
            {
                missing.push(name.to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags in the docs but not in copal prune: {missing:?}"
    );
}

fn l_is_command(c: &str) -> bool {
    c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '-')
}

#[test]
fn the_bad_input_table_lists_the_scripts_cases() {
    let script = std::fs::read_to_string(root().join("scripts/bad-input-table.sh")).unwrap();
    let cases: Vec<&str> = script
        .split("cases=(")
        .nth(1)
        .unwrap()
        .split("\n)")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix('"'))
        .filter_map(|l| l.split('|').nth(1))
        .collect();
    let doc = std::fs::read_to_string(root().join("docs/reliability.md")).unwrap();
    let rows: Vec<&str> = doc
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| bad input"))
        .filter_map(|l| l.split(" | ").next())
        .map(|c| c.trim_start_matches("| "))
        .collect();
    assert_eq!(
        rows, cases,
        "regenerate the table: bash scripts/bad-input-table.sh"
    );
}

/// The grids the docs quote are re-reported with `copal experiment --config C --report` from the
/// repository root (the tests' cwd): each shipped config must find its committed runs there, which
/// holds only if its `results` is resolved against the config file, not the cwd.
#[test]
fn every_shipped_experiment_finds_its_committed_results() {
    let dir = root().join("configs/experiments");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let cfg = e.unwrap().path();
        if cfg.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let (code, out, err) = run_cli(
            &[
                "experiment",
                "--config",
                cfg.to_str().unwrap(),
                "--list",
                "--json",
            ],
            &[],
        );
        assert_eq!(code, 0, "{}: {err}", cfg.display());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let results = PathBuf::from(v["results"].as_str().unwrap());
        let committed = std::fs::read_dir(results.join("runs"))
            .map(|d| d.count())
            .unwrap_or(0);
        let finished = v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["finished"] == true)
            .count();
        assert!(
            committed > 0 && finished == committed,
            "{}: {finished} runs finished, {committed} files in {}/runs",
            cfg.display(),
            results.display()
        );
        n += 1;
    }
    assert!(n >= 3, "no experiment configs in {}", dir.display());
}

/// The CI recipe of docs/ci.md runs as written: its lines, with the built copal first on the
/// PATH, in an empty directory, exit 0 and leave a model pruned at 50%.
#[test]
fn the_ci_recipe_runs_as_written() {
    let text = std::fs::read_to_string(root().join("docs/ci.md")).unwrap();
    let after = text
        .split("<!-- ci-recipe")
        .nth(1)
        .expect("docs/ci.md marks its recipe");
    let block = after
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the recipe is a sh block");
    assert!(block.contains("copal prune"), "{block}");
    let dir = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_copal")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", block])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("COPAL_DATA_DIR")
        .output()
        .unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{block}\n{so}\n{se}");
    assert!(so.contains("total sparsity 0.500000"), "{so}");
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("ci-result.json")).unwrap())
            .unwrap();
    assert!(
        (rec["sparsity"].as_f64().unwrap() - 0.5).abs() < 1e-3,
        "{rec}"
    );
}
