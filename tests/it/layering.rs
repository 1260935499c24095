//! The layering the compiler does not check: the library never names the CLI, every
//! top-level module sits in a declared layer and imports only from its own layer or those
//! below ([`LAYERS`]), and the file-level import graph of `src/` has no cycle (a file that
//! needs another's item and is needed by it is two jobs in the wrong places). An edge is any `crate::a::b` or `super::a`
//! path in a file, test modules included, resolved to the longest module prefix that is a file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's layers, bottom first: a module may import from its own layer (no cycle) and
/// from any layer below, never from above. The binary (`main.rs`, `cli/`) sits on top of all.
/// A new top-level module must be placed here.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundations",
        &["usage", "env", "ui", "fsutil", "guard", "rng", "probe"],
    ),
    ("devices and files", &["device", "hub", "tokenizer", "plot"]),
    ("model and data", &["model", "data"]),
    ("checkpoints and evaluation", &["checkpoint", "eval"]),
    ("methods and stages", &["prune"]),
    ("the plan and its record", &["plan", "report"]),
    ("the layer walk and its state", &["calib", "state"]),
    ("continual runs", &["continual"]),
    ("experiment grids", &["experiment"]),
];

/// The layer of a file's top-level module (None: the binary or the crate root).
fn layer_of(file: &str) -> Option<Result<usize, String>> {
    let top = file
        .split('/')
        .next()
        .unwrap_or(file)
        .trim_end_matches(".rs");
    if matches!(top, "main" | "cli" | "lib") {
        return None;
    }
    Some(
        LAYERS
            .iter()
            .position(|(_, mods)| mods.contains(&top))
            .ok_or_else(|| top.to_string()),
    )
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file: `src/a/b.rs` and `src/a/b/mod.rs` are `[a, b]`.
fn module_of(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn ident_len(s: &str) -> usize {
    s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len())
}

/// Every path written after `crate::` or `super::` (groups `a::{b, c::d}` expanded one level),
/// relative to the crate root.
fn paths_in(src: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (anchor, base) in [
        ("crate::", Vec::new()),
        ("super::", {
            // `super` of a.rs's items is a's parent; of a/mod.rs's, the parent of a.
            let mut b = module.to_vec();
            b.pop();
            b
        }),
    ] {
        let mut rest = src;
        while let Some(i) = rest.find(anchor) {
            // `super::super::x`: the first `super::` is consumed here, the next by the loop.
            let before = &rest[..i];
            rest = &rest[i + anchor.len()..];
            if anchor == "super::" && before.ends_with("super::") {
                continue;
            }
            let mut base = base.clone();
            let mut s = rest;
            while let Some(r) = s.strip_prefix("super::") {
                base.pop();
                s = r;
            }
            let mut path = base;
            loop {
                let n = ident_len(s);
                if n == 0 {
                    break;
                }
                path.push(s[..n].to_string());
                s = &s[n..];
                match s.strip_prefix("::") {
                    Some(r) => s = r,
                    None => break,
                }
            }
            if let Some(group) = s.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let item: Vec<String> = item
                        .trim()
                        .split("::")
                        .map(|x| x[..ident_len(x)].to_string())
                        .filter(|x| !x.is_empty())
                        .collect();
                    let mut p = path.clone();
                    p.extend(item);
                    out.push(p);
                }
            }
            out.push(path);
        }
    }
    out
}

#[test]
fn the_library_never_names_the_cli_imports_down_its_layers_and_has_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let rel = |p: &Path| {
        p.strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/")
    };
    let modules: BTreeMap<Vec<String>, String> =
        files.iter().map(|p| (module_of(&rel(p)), rel(p))).collect();
    let resolve = |path: &[String]| {
        (1..=path.len())
            .rev()
            .find_map(|k| modules.get(&path[..k]).cloned())
    };

    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut cli_leaks = Vec::new();
    for p in &files {
        let r = rel(p);
        let text = std::fs::read_to_string(p).unwrap();
        let binary = r == "main.rs" || r.starts_with("cli/");
        if !binary && (text.contains("crate::cli") || text.contains("crate::commands")) {
            cli_leaks.push(r.clone());
        }
        let deps = graph.entry(r.clone()).or_default();
        for path in paths_in(&text, &module_of(&r)) {
            if let Some(to) = resolve(&path).filter(|to| *to != r) {
                deps.insert(to);
            }
        }
    }
    assert!(
        cli_leaks.is_empty(),
        "library files that name the CLI: {cli_leaks:?}"
    );
    assert!(
        graph.len() > 30 && graph.values().map(BTreeSet::len).sum::<usize>() > 60,
        "the import graph looks empty: the parser no longer reads src/ ({} files)",
        graph.len()
    );

    // Edges point down the declared layers (or stay in one).
    let (mut unplaced, mut upward) = (BTreeSet::new(), Vec::new());
    for (from, tos) in &graph {
        for to in tos {
            match (layer_of(from), layer_of(to)) {
                (Some(Err(m)), _) | (_, Some(Err(m))) => {
                    unplaced.insert(m);
                }
                (Some(Ok(a)), Some(Ok(b))) if b > a => upward.push(format!(
                    "{from} ({}) imports {to} ({})",
                    LAYERS[a].0, LAYERS[b].0
                )),
                _ => {}
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules not in LAYERS (tests/it/layering.rs): {unplaced:?}"
    );
    assert!(
        upward.is_empty(),
        "imports that point up the layers:\n{}",
        upward.join("\n")
    );

    // A cycle is an edge back to a file still on the depth-first stack.
    fn visit(
        v: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
        cycles: &mut Vec<Vec<String>>,
    ) {
        state.insert(v.to_string(), 1);
        stack.push(v.to_string());
        for w in g.get(v).into_iter().flatten() {
            match state.get(w.as_str()).copied().unwrap_or(0) {
                0 => visit(w, g, state, stack, cycles),
                1 => {
                    let start = stack.iter().position(|x| x == w).unwrap();
                    let mut c = stack[start..].to_vec();
                    c.push(w.clone());
                    cycles.push(c);
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(v.to_string(), 2);
    }
    let (mut state, mut cycles) = (BTreeMap::new(), Vec::new());
    for v in graph.keys() {
        if !state.contains_key(v.as_str()) {
            visit(v, &graph, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    let shown: Vec<String> = cycles.iter().map(|c| c.join(" → ")).collect();
    assert!(
        shown.is_empty(),
        "import cycles between files of src/:\n{}",
        shown.join("\n")
    );
}
