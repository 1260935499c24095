#!/usr/bin/env bash
# Issue #4's measurement: COPAL on wikitext2 → ptb → c4 at 50% unstructured with the
# `scaled` and `gaussian` perturbations and matrix/row groups. Writes one JSON per setting to
# results/perturbation/ and prints a Markdown table (R matrix, average PPL, BWT, time, RSS).
#
#   MODEL (default smollm2-135m)  NSAMPLES (32)  SEQLEN (512)  WINDOWS (40 eval windows)
#   COPAL_DATA_DIR must point at the datasets. WikiText-2 calibrates on valid (train absent).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/common.sh"
copal="${COPAL_BIN:-$(release_bin)}"
model="${MODEL:-smollm2-135m}"
nsamples="${NSAMPLES:-32}"
seqlen="${SEQLEN:-512}"
windows="${WINDOWS:-40}"
outdir="$root/results/perturbation"
mkdir -p "$outdir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for pert in scaled gaussian; do
  for group in matrix row; do
    name="$pert-$group"
    [ -f "$outdir/$name.json" ] && { echo "skip $name (done)" >&2; continue; }
    /usr/bin/time -v "$copal" prune --model "$model" --method copal --datasets wikitext2,ptb,c4 \
      --calib-split wikitext2=valid --sparsity 50 --nsamples "$nsamples" --seqlen "$seqlen" \
      --perturbation "$pert" --group "$group" --eval --max-windows "$windows" \
      --out "$work/$name" --json --quiet > "$work/$name.json" 2> "$work/$name.time"
    python3 - "$work/$name.json" "$work/$name/copal.json" "$outdir/$name.json" <<'PY'
import json, sys
res, rec, dst = sys.argv[1:]
r = json.load(open(res)); c = json.load(open(rec))
r["step_seconds"] = [s["report"]["seconds"] for s in c["steps"]]
r["eval_windows"] = c["steps"][0]["eval"][0]["windows"]
r["calib"] = {"nsamples": c["plan"]["nsamples"], "seqlen": c["plan"]["seqlen"], "splits": c["plan"]["datasets"]}
r["threads"] = c["threads"]
json.dump(r, open(dst, "w"), indent=1)
PY
    echo "done $name" >&2
  done
done
python3 - "$outdir" <<'PY'
import json, os, sys
d = sys.argv[1]
print("| perturbation | group | R after wikitext2 | R after ptb | R after c4 | avg PPL | BWT | s/step | peak RSS |")
print("|---|---|---|---|---|---|---|---|---|")
for pert in ["scaled", "gaussian"]:
    for group in ["matrix", "row"]:
        p = os.path.join(d, f"{pert}-{group}.json")
        if not os.path.exists(p): continue
        r = json.load(open(p))
        rows = [" / ".join(f"{x:.2f}" for x in row) for row in r["ppl_matrix"]]
        print(f"| {pert} | {group} | {rows[0]} | {rows[1]} | {rows[2]} | {r['avg_ppl']:.2f} | {r['bwt']:+.2f} | "
              f"{sum(r['step_seconds'])/len(r['step_seconds']):.0f} | {r['peak_rss_bytes']/2**30:.2f} GiB |")
print()
r = json.load(open(os.path.join(d, "scaled-matrix.json")))
print("dense: " + " / ".join(f"{x:.2f}" for x in r["dense_ppl"]) + " (wikitext2 / ptb / c4)")
PY
