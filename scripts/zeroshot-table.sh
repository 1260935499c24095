#!/usr/bin/env bash
# The README's zero-shot table: the test model dense and pruned in the main settings
# (wikitext2 -> ptb -> c4, 16 x 512 calibration tokens each, accumulate), each scored by
# `copal eval --tasks wanda7 --limit LIMIT` on the local task copies
# (scripts/fetch-task-data.sh). Writes results/zeroshot/table.md and the JSON of every
# evaluation beside it. A setting whose JSON is already there is kept (FORCE=1 redoes it;
# ONLY="dense,COPAL 50%" runs only those); the table lists every setting that has one.
#
#   LIMIT (200)  THREADS (2)  COPAL_BIN  COPAL_DATA_DIR  COPAL_TASKS_DIR  FORCE  ONLY
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/common.sh"
copal="${COPAL_BIN:-$(release_bin)}"
limit="${LIMIT:-200}"; threads="${THREADS:-2}"
model=$("$copal" inspect smollm2-135m --json --quiet | python3 -c "import json,sys; print(json.load(sys.stdin)['model'])")
tasks="${COPAL_TASKS_DIR:-$("$root/scripts/fetch-task-data.sh")}"
out="$root/results/zeroshot"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
# name|prune flags (empty: the dense model)
settings=(
  "dense|"
  "COPAL 50%|--method copal --sparsity 50"
  "Wanda-accumulate 50%|--method wanda --sparsity 50"
  "SparseGPT-accumulate 50%|--method sparsegpt --sparsity 50"
  "COPAL 2:4|--method copal --pattern 2:4"
  "SparseGPT-accumulate 2:4|--method sparsegpt --pattern 2:4"
)
for s in "${settings[@]}"; do
  name=${s%%|*}; flags=${s#*|}
  slug=$(echo "$name" | tr -c 'A-Za-z0-9\n' '-' | tr 'A-Z' 'a-z')
  if [ -n "${ONLY:-}" ] && [[ ",$ONLY," != *",$name,"* ]]; then continue; fi
  if [ -f "$out/$slug.json" ] && [ "${FORCE:-0}" != 1 ]; then
    echo "$name: kept $out/$slug.json" >&2
    continue
  fi
  dir=$model
  if [ -n "$flags" ]; then
    dir="$work/$slug"
    # shellcheck disable=SC2086
    RAYON_NUM_THREADS=$threads "$copal" prune --model "$model" --datasets wikitext2,ptb,c4 \
      --calib-split wikitext2=valid --nsamples 16 --seqlen 512 $flags --out "$dir" --quiet
  fi
  start=$(date +%s)
  RAYON_NUM_THREADS=$threads "$copal" eval --model "$dir" --tasks wanda7 --tasks-dir "$tasks" \
    --limit "$limit" --json --quiet > "$out/$slug.json"
  echo "$name: scored in $(( $(date +%s) - start ))s" >&2
done
python3 - "$out" "$limit" "${settings[@]}" <<'PY'
import json, os, re, sys
out, limit, settings = sys.argv[1], sys.argv[2], sys.argv[3:]
tasks = ["boolq", "rte", "hellaswag", "winogrande", "arc_challenge", "arc_easy", "openbookqa"]
lines = ["| setting | " + " | ".join(tasks) + " | mean |", "|---" * (len(tasks) + 2) + "|"]
for s in settings:
    name = s.split("|")[0]
    slug = re.sub(r"[^a-z0-9\n]", "-", name.lower())
    if not os.path.exists(os.path.join(out, slug + ".json")):
        continue
    r = {t["task"]: t for t in json.load(open(os.path.join(out, slug + ".json")))["tasks"]}
    accs = [next(m for m in r[t]["metrics"] if m["metric"] == "acc")["value"] for t in tasks]
    lines.append(f"| {name} | " + " | ".join(f"{100 * a:.1f}" for a in accs)
                 + f" | {100 * sum(accs) / len(accs):.1f} |")
note = (f"`acc` (%) on the first {limit} items of each task's validation copy "
        "(scripts/fetch-task-data.sh; ARC and OpenBookQA: validation, not the test split "
        "lm-eval scores), scored by `copal eval --tasks wanda7` as lm-evaluation-harness "
        "0.4.13 scores it; BOS as the tokenizer (none for SmolLM2).")
open(os.path.join(out, "table.md"), "w").write(note + "\n\n" + "\n".join(lines) + "\n")
print("\n".join(lines))
PY
