#!/usr/bin/env bash
# Fault test: kills `copal prune` with SIGKILL at random moments, then checks that the output
# directory and the state file are each either absent or complete and valid, and that
# rerunning the same command finishes with output identical to an uninterrupted run.
#
#   scripts/kill-test.sh [TRIALS]         (default 20)
#   MODEL      model to prune (default smollm2-135m)
#   DATASETS   three datasets, comma-separated (default wikitext2,ptb,c4 with wikitext2=valid)
#   ARGS       extra prune arguments (default: 2 windows of 64 tokens, --eval on 2 windows)
#   MAX_DELAY  longest delay before the kill, seconds (default: the reference run's duration)
#   SEED       seed of the kill delays (default 1)
# Prints one line per trial and a summary; exits non-zero on the first violation.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/common.sh"
copal="${COPAL_BIN:-$(release_bin)}"
trials="${1:-20}"
model="${MODEL:-smollm2-135m}"
datasets="${DATASETS:-wikitext2,ptb,c4}"
args=(${ARGS:---nsamples 2 --seqlen 64 --calib-split wikitext2=valid --eval --max-windows 2})
seed="${SEED:-1}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
IFS=, read -r d1 d2 d3 <<<"$datasets"

prune() { "$copal" prune --model "$model" "${args[@]}" --quiet "$@"; }

# Reference: the uninterrupted run, and the state after each dataset.
start=$(date +%s.%N)
prune --datasets "$datasets" --state "$work/ref.state" --out "$work/ref" >/dev/null
end=$(date +%s.%N)
max_delay="${MAX_DELAY:-$(python3 -c "print(max(0.5, $end - $start))")}"
prune --datasets "$d1" --state "$work/s" --out "$work/r1" >/dev/null && cp "$work/s" "$work/ref.state.1"
prune --datasets "$d2" --state "$work/s" --out "$work/r2" >/dev/null && cp "$work/s" "$work/ref.state.2"
prune --datasets "$d3" --state "$work/s" --out "$work/r3" >/dev/null && cp "$work/s" "$work/ref.state.3"
cmp -s "$work/ref.state" "$work/ref.state.3" || { echo "reference states disagree" >&2; exit 1; }
echo "reference run: ${max_delay}s; killing within that window, $trials trials" >&2

same_model() { # the model files of $1 equal the reference's
  for f in "$work/ref"/*.safetensors "$work/ref/config.json"; do
    cmp -s "$f" "$1/$(basename "$f")" || return 1
  done
}

python3 -c "import random; random.seed($seed); print('\n'.join(str(random.uniform(0, $max_delay)) for _ in range($trials)))" > "$work/delays"
n=0; complete=0; absent=0; partial_states=0
while read -r delay; do
  n=$((n + 1))
  out="$work/out$n"; state="$work/state$n"
  # Started directly (not through the prune function) so that $! is copal itself.
  "$copal" prune --model "$model" "${args[@]}" --quiet --datasets "$datasets" --state "$state" \
    --out "$out" >/dev/null 2>&1 &
  pid=$!
  sleep "$delay"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  # The output: absent, or complete and equal to the reference.
  if [ -e "$out" ]; then
    same_model "$out" && [ -f "$out/copal.json" ] || { echo "trial $n: incomplete or wrong output after kill at ${delay}s" >&2; exit 1; }
    complete=$((complete + 1)); what="output complete"
  else
    absent=$((absent + 1)); what="no output"
  fi
  # The state: absent, or exactly the reference state after some dataset.
  if [ -e "$state" ]; then
    ok=0
    for k in 1 2 3; do cmp -s "$state" "$work/ref.state.$k" && ok=$k; done
    [ "$ok" -gt 0 ] || { echo "trial $n: state file is not a valid step state after kill at ${delay}s" >&2; exit 1; }
    [ "$ok" -lt 3 ] && partial_states=$((partial_states + 1))
    what="$what, state after dataset $ok"
  else
    what="$what, no state"
  fi
  # Rerun the same command: it must finish with the reference's output and state.
  if [ ! -e "$out" ]; then
    prune --datasets "$datasets" --state "$state" --out "$out" >/dev/null
  fi
  same_model "$out" && cmp -s "$state" "$work/ref.state" || { echo "trial $n: rerun differs from the uninterrupted run" >&2; exit 1; }
  resumed=$(python3 -c "import json; print(json.load(open('$out/copal.json')).get('resumed_steps', 0))")
  echo "trial $n: killed at ${delay}s: $what; rerun identical (resumed $resumed steps)"
  rm -rf "$out" "$state"
done < "$work/delays"
echo "$n trials: $absent without output, $complete with complete output, $partial_states with a partial-sequence state; every rerun identical" >&2
