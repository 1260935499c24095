#!/usr/bin/env bash
# One command from a fresh clone to a continually pruned model: builds copal, fetches the
# test model (SmolLM2-135M-Instruct), and prunes it with copal's default (COPAL: its
# sensitivity accumulated over the datasets, the dense weights masked) over wikitext2 → ptb →
# c4 at 50% unstructured sparsity, evaluating perplexity after every step. Sized to take about
# two minutes after the build on two cores; FULL=1 runs the paper-sized protocol (128 × 2048
# calibration windows, whole test splits: hours on a CPU). Extra arguments go to `copal
# prune` (e.g. `--method sparsegpt` for SparseGPT-accumulate, `--update obs` for COPAL's mask
# with SparseGPT's weight reconstruction).
#
#   COPAL_DATA_DIR  the datasets (default: ../shared/data beside the repository, else ./data;
#                   files in neither are fetched, pinned, from the Hugging Face hub: docs/data.md)
#   OUT             output directory (default: out/smollm2-135m-50)
#   NSAMPLES SEQLEN WINDOWS   calibration windows, window length, eval windows (6, 512, 3)
#   CARGO_TARGET_DIR          honoured: the binary is the one cargo built
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. "$root/scripts/common.sh"
cargo build --release --locked
copal=$(release_bin)
COPAL_BIN="$copal" ./scripts/fetch-test-model.sh > /dev/null
if [ -n "${FULL:-}" ]; then
  size=(--nsamples "${NSAMPLES:-128}" --seqlen "${SEQLEN:-2048}" --eval)
else
  size=(--nsamples "${NSAMPLES:-6}" --seqlen "${SEQLEN:-512}" --eval --max-windows "${WINDOWS:-3}")
fi
args=(prune --model smollm2-135m --datasets wikitext2,ptb,c4 --calib-split wikitext2=valid
  --sparsity 50 "${size[@]}" --out "${OUT:-out/smollm2-135m-50}" --force "$@")
# The plan's own estimate first (its FLOPs at the GEMM rate measured on the development
# machine; the evaluation adds to it), then the run, with progress on stderr (a line every
# 30 s without a terminal).
"$copal" "${args[@]}" --dry-run --json | python3 -c '
import json, sys
secs = json.load(sys.stdin)["estimate"]["hours_at_390_gflops"] * 3600
print("quickstart: about %.0f s of compute at 390 GFLOP/s (the estimate of --dry-run);"
      " a 2-core machine takes about two minutes in all" % secs, file=sys.stderr)
'
[ -n "${FULL:-}" ] || echo "quickstart: a reduced run (${NSAMPLES:-6} calibration windows, ${WINDOWS:-3} evaluation windows per dataset); FULL=1 $0 runs the paper's protocol" >&2
"$copal" "${args[@]}"
