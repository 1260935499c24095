"""copal's zero-shot scores against lm-evaluation-harness's own, item by item.

For each task with a local copy (scripts/fetch-task-data.sh), the harness (lm-eval, its `hf`
backend, f32, CPU, batch size 1, zero-shot) scores the first LIMIT items with its own task
definitions, prompts and metrics; only the data source is swapped: `datasets.load_dataset`
returns the local parquet rows (ARC's and OpenBookQA's validation rows under the test split
the harness scores, BoolQ in aps/super_glue's form, `label` = int(answer)). copal scores the
same rows with `copal eval --tasks ... --samples`. Compared per item and choice: the summed
log-likelihood (relative difference, over max(|ll|, 1)), and acc / acc_norm per item.

    python scripts/zeroshot-harness-check.py COPAL MODEL_DIR TASKS_DIR [--limit N] [--out F]

Exits 1 if any log-likelihood differs by more than 1e-4 relative or any item's acc or
acc_norm differs. Needs lm-eval 0.4.13, torch, transformers, pyarrow (tests/requirements.txt).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import datasets
import pyarrow.parquet as pq

TASKS = ["boolq", "rte", "hellaswag", "winogrande", "arc_challenge", "arc_easy", "openbookqa"]
# The harness's (dataset_path, dataset_name) per task, lm-eval 0.4.13's YAMLs.
SOURCES = {
    ("aps/super_glue", "boolq"): "boolq",
    ("nyu-mll/glue", "rte"): "rte",
    ("Rowan/hellaswag", None): "hellaswag",
    ("allenai/winogrande", "winogrande_xl"): "winogrande",
    ("allenai/ai2_arc", "ARC-Easy"): "arc_easy",
    ("allenai/ai2_arc", "ARC-Challenge"): "arc_challenge",
    ("allenai/openbookqa", "main"): "openbookqa",
}


def local_loader(tasks_dir):
    def load_dataset(path=None, name=None, **kwargs):
        task = SOURCES.get((path, name))
        if task is None:
            raise RuntimeError(f"offline check: no local copy for {path} {name}")
        table = pq.read_table(os.path.join(tasks_dir, task, "validation.parquet"))
        ds = datasets.Dataset(table)
        if task == "boolq" and "label" not in ds.column_names:
            ds = ds.map(lambda d, i: {"label": int(d["answer"]), "idx": i}, with_indices=True)
        return datasets.DatasetDict({"validation": ds, "test": ds, "train": ds})
    return load_dataset


def harness(model_dir, tasks_dir, tasks, limit, threads):
    import torch
    torch.set_num_threads(threads)
    datasets.load_dataset = local_loader(tasks_dir)
    import lm_eval
    import lm_eval.api.task
    lm_eval.api.task.datasets.load_dataset = datasets.load_dataset
    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=tasks,
        num_fewshot=0, limit=limit, log_samples=True, batch_size=1, device="cpu")
    per = {}
    for t in tasks:
        per[t] = {s["doc_id"]: s for s in out["samples"][t]}
    return per, out["results"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("copal")
    ap.add_argument("model")
    ap.add_argument("tasks_dir")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    tasks = a.tasks.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        samples = os.path.join(tmp, "samples.jsonl")
        t0 = time.time()
        subprocess.run([a.copal, "eval", "--model", a.model, "--tasks", ",".join(tasks),
                        "--tasks-dir", a.tasks_dir, "--limit", str(a.limit), "--samples", samples,
                        "--quiet"], check=True, env={**os.environ, "RAYON_NUM_THREADS": str(a.threads)})
        copal_s = time.time() - t0
        ours = {}
        for line in open(samples):
            s = json.loads(line)
            ours.setdefault(s["task"], {})[s["doc"]] = s
    t0 = time.time()
    theirs, results = harness(a.model, a.tasks_dir, tasks, a.limit, a.threads)
    harness_s = time.time() - t0
    worst, flips, lines = 0.0, 0, []
    for t in tasks:
        rel_t, flips_t, n = 0.0, 0, 0
        for doc, s in sorted(ours[t].items()):
            h = theirs[t][doc]
            lls = [float(r[0]) for r in h["filtered_resps"]]
            assert len(lls) == len(s["lls"]), (t, doc, lls, s["lls"])
            for x, y in zip(s["lls"], lls):
                rel_t = max(rel_t, abs(x - y) / max(abs(y), 1.0))
            for m in ("acc", "acc_norm"):
                if m in h and float(h[m]) != s[m]:
                    flips_t += 1
            n += 1
        accs = {m: sum(ours[t][d][m] for d in ours[t]) / n for m in ("acc", "acc_norm")}
        theirs_acc = {m: results[t].get(f"{m},none") for m in ("acc", "acc_norm")}
        lines.append(f"{t:14s} items {n:4d}  max rel ll diff {rel_t:.2e}  items whose acc/acc_norm "
                     f"differ {flips_t}  copal acc {accs['acc']:.4f} acc_norm {accs['acc_norm']:.4f}  "
                     f"harness acc {theirs_acc['acc']} acc_norm {theirs_acc['acc_norm']}")
        worst, flips = max(worst, rel_t), flips + flips_t
    lines.append(f"largest relative log-likelihood difference {worst:.2e}; items with a different "
                 f"acc or acc_norm: {flips}")
    lines.append(f"seconds: copal {copal_s:.1f} (load, tokenise, score), harness {harness_s:.1f} "
                 f"(load, tokenise, score), {a.threads} threads, limit {a.limit}")
    text = "\n".join(lines)
    print(text)
    if a.out:
        open(a.out, "w").write(text + "\n")
    sys.exit(0 if worst <= 1e-4 and flips == 0 else 1)


if __name__ == "__main__":
    main()
