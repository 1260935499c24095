#!/usr/bin/env bash
# Every order of a dataset list, one `copal prune --eval --json` each, one CSV on stdout:
# the shell-script way to run the paper's protocol (`copal experiment` does the same with
# resumable runs, a report and plots). Orders come as the experiment grid takes them: the n
# cyclic rotations first, then the other permutations.
#
#   scripts/permutations.sh MODEL DATASETS [copal prune args...]
#   e.g. scripts/permutations.sh smollm2-135m wikitext2,ptb,c4 --calib-split wikitext2=valid \
#          --nsamples 16 --seqlen 512 --max-windows 16 --eval-seen-only > orders.csv
#
#   COPAL_BIN   copal binary (default target/release/copal)
#   KEEP        directory to keep each order's pruned model in (default: a temporary one,
#               removed at the end)
# CSV columns: order (datasets joined by '>'), avg_ppl, bwt, sparsity, seconds, then
# R<step>_<column> for the R matrix (columns in the run's order). Needs python3.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,16p' "$0" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/common.sh"
copal="${COPAL_BIN:-$(release_bin)}"
model=$1 datasets=$2
shift 2
work="${KEEP:-$(mktemp -d)}"
[ -n "${KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work"

orders=$(python3 - "$datasets" <<'PY'
import itertools, sys
items = [d for d in sys.argv[1].split(',') if d]
n = len(items)
rotations = [items[r:] + items[:r] for r in range(n)]
rest = [list(p) for p in itertools.permutations(items) if list(p) not in rotations]
for o in rotations + rest:
    print(','.join(o))
PY
)

k=0
for order in $orders; do
  k=$((k + 1))
  echo "[$k] $order" >&2
  "$copal" prune --model "$model" --datasets "$order" --eval --json --quiet \
    --out "$work/order-$k" --force "$@" > "$work/order-$k.json"
done

python3 - "$work" "$k" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
runs = [json.load(open(f"{work}/order-{k}.json")) for k in range(1, n + 1)]
steps = max(len(r["datasets"]) for r in runs)
head = ["order", "avg_ppl", "bwt", "sparsity", "seconds"]
head += [f"R{s}_{c}" for s in range(1, steps + 1) for c in range(1, steps + 1)]
print(",".join(head))
def cell(v):
    return "" if v is None else repr(v)
for r in runs:
    row = [">".join(r["datasets"]), cell(r["avg_ppl"]), cell(r["bwt"]), cell(r["sparsity"]), cell(r["seconds"])]
    for s in range(steps):
        for c in range(steps):
            try:
                v = r["ppl_matrix"][s][c]
            except (IndexError, TypeError):
                v = None
            row.append(cell(v))
    print(",".join(row))
PY
