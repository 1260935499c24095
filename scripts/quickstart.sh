#!/usr/bin/env bash
# One command from a fresh clone to a continually pruned model: builds copal, fetches the
# test model (SmolLM2-135M-Instruct), and prunes it with copal's default (COPAL: its
# sensitivity accumulated over the datasets, the dense weights masked) over wikitext2 → ptb →
# c4 at 50% unstructured sparsity, evaluating perplexity after every step. Extra arguments go
# to `copal prune` (e.g. `--method sparsegpt` for SparseGPT-accumulate, `--update obs` for
# COPAL's mask with SparseGPT's weight reconstruction).
#
#   COPAL_DATA_DIR  the datasets (default: ../shared/data beside the repository, else ./data;
#                   files in neither are fetched, pinned, from the Hugging Face hub: docs/data.md)
#   OUT             output directory (default: out/smollm2-135m-50)
#   NSAMPLES SEQLEN WINDOWS   calibration windows, window length, eval windows (16, 512, 40)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. "$root/scripts/common.sh"
cargo build --release --locked
./scripts/fetch-test-model.sh > /dev/null
./target/release/copal prune --model smollm2-135m --datasets wikitext2,ptb,c4 \
  --calib-split wikitext2=valid --sparsity 50 \
  --nsamples "${NSAMPLES:-16}" --seqlen "${SEQLEN:-512}" \
  --eval --max-windows "${WINDOWS:-40}" \
  --out "${OUT:-out/smollm2-135m-50}" --force "$@"
