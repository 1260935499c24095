#!/usr/bin/env bash
# One calibration step per method on the test model's shapes, timed, printed, never asserted
# (speed is measured here, not in tests): the bench that shows a step-time regression such as
# issue #33's in a closing note. For each method: the step's own seconds (copal.json
# steps[0].report.seconds), its FLOPs and the rate they imply, the process's wall time and
# peak RSS. With BATCHES (default "1 default 8") the COPAL step is also run at each
# --calib-batch and the outputs are compared byte for byte (the batch-invariance guarantee).
# The FLOP bound's rate is measured in the same run (GEMM=1, the default): criterion's GEMM
# bench at the test model's three linear shapes, their mean rate; each step's seconds are then
# also given as a multiple of FLOPs / rate. The step's phases (forward, observe, solve, write,
# propagate: copal.json steps[0].report.phases) say where its time went.
#
#   METHODS (copal wanda sparsegpt)  DATASET (ptb)  NSAMPLES (16)  SEQLEN (512)  THREADS (2)
#   GEMM (1)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/common.sh"
copal="${COPAL_BIN:-$(release_bin)}"
model=$("$copal" inspect smollm2-135m --json --quiet | python3 -c "import json,sys; print(json.load(sys.stdin)['model'])")
ds="${DATASET:-ptb}"; nsamples="${NSAMPLES:-16}"; seqlen="${SEQLEN:-512}"; threads="${THREADS:-2}"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
rate=""
if [ "${GEMM:-1}" = 1 ]; then
  # criterion prints "thrpt: [low mean high]" per bench; elements are FLOPs here.
  rate=$(cd "$root" && RAYON_NUM_THREADS=$threads cargo bench --locked --bench kernels -- 'gemm/cpu_4096x' 2>/dev/null \
    | python3 -c "
import re, sys
unit = {'K': 1e3, 'M': 1e6, 'G': 1e9, 'T': 1e12}
r = [float(m[1]) * unit[m[2]] / 1e9 for m in re.finditer(r'thrpt:\s*\[\S+ \S+ (\S+) ([KMGT])elem/s', sys.stdin.read())]
print(f'{sum(r) / len(r):.0f}' if r else '')")
fi
run() { # NAME ARGS...: one step, its report line
  local name=$1; shift
  RAYON_NUM_THREADS=$threads /usr/bin/time -f "%e %M" -o "$out/$name.time" \
    "$copal" prune --model "$model" --datasets "$ds" --nsamples "$nsamples" --seqlen "$seqlen" \
    --out "$out/$name" --quiet "$@" > /dev/null
  python3 - "$out/$name/copal.json" "$out/$name.time" "$name" "$rate" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); wall, rss = open(sys.argv[2]).read().split()
s = r["steps"][0]["report"]; rate = float(sys.argv[4]) if sys.argv[4] else None
bound = f"{s['seconds'] / (s['flops'] / 1e9 / rate):.2f}×" if rate else "–"
ph = s.get("phases", {})
phases = " / ".join(f"{ph.get(k, 0):.1f}" for k in ["forward", "observe", "solve", "write", "propagate"])
print(f"| {sys.argv[3]} | {s['seconds']:.1f} | {s['flops'] / 1e9:.0f} | {s['flops'] / s['seconds'] / 1e9:.0f} | {bound} | {phases} | {float(wall):.1f} | {int(rss) / 1024:.0f} |")
PY
}
echo "commit $(git -C "$root" rev-parse --short HEAD), $(date -u +%F), $threads threads, $ds, $nsamples x $seqlen; GEMM rate ${rate:-not measured} GFLOP/s"
echo "| step | step s | GFLOP | GFLOP/s | × FLOP bound | forward / observe / solve / write / propagate s | wall s | peak RSS MB |"
echo "|---|---|---|---|---|---|---|---|"
for m in ${METHODS:-copal wanda sparsegpt}; do
  run "$m" --method "$m"
done
for b in ${BATCHES-1 default 8}; do
  if [ "$b" = default ]; then run copal-batch-default --method copal; else run "copal-batch-$b" --method copal --calib-batch "$b"; fi
done
# Byte-identity across --calib-batch (the masks live in the weights: compare the shards).
first=""
for d in "$out"/copal-batch-*/; do
  [ -d "$d" ] || continue
  d=${d%/}
  sums=$(cd "$d" && sha256sum ./*.safetensors | sha256sum | cut -c1-16)
  echo "$(basename "$d"): weights sha256 $sums"
  if [ -z "$first" ]; then first=$sums; elif [ "$sums" != "$first" ]; then echo "DIFFERENT OUTPUTS ACROSS --calib-batch"; fi
done
