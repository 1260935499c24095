#!/usr/bin/env bash
# The GPU check (issue #18): proves a CUDA build on a GPU machine in under 8 minutes, and
# rehearses every step on the CPU in the test suite, so that only the CUDA parts are new on
# the day. It writes OUTDIR/<device>.json (every figure) and OUTDIR/summary.md, and exits
# non-zero on any mismatch or failed run (the JSON is written either way).
#
#   scripts/gpu-check.sh OUTDIR                 on the GPU machine, from the working tree
#   CHECK_REHEARSAL=1 scripts/gpu-check.sh OUT  on the CPU: the generic kernels a GPU runs
#                                               (COPAL_GENERIC_KERNELS=1) against the fused
#                                               CPU ones, at small sizes
#
#   COPAL_BIN       the binary (default: dist/copal-cuda.gz unpacked, from scripts/build-cuda.sh;
#                   target/release/copal for the rehearsal)
#   COPAL_DATA_DIR  the datasets (default: gpu-data/ in the tree, which `run` can carry, else
#                   ../shared/data); `scripts/gpu-check.sh --stage-data` fills gpu-data/
#
# What it does (scripts/gpu_check.py holds the steps):
#   1. records nvidia-smi and the CUDA libraries it found for the binary (LD_LIBRARY_PATH from
#      the machine's own Python packages: nvidia-cublas, -cuda-runtime, -curand, -cuda-nvrtc);
#   2. builds synthetic checkpoints there (`copal synth`): SmolLM2-135M shapes (4 layers, f32
#      and bf16) for numerics, LLaMA-7B shapes (2 layers, bf16), one LLaMA-2-70B-shaped layer;
#   3. compares the device with the CPU on the same model: perplexity on wikitext2, ptb, c4
#      (f32 within 0.1%, bf16 within 1%) and the masks of one COPAL, Wanda and SparseGPT step
#      (at least 99.9% identical, f32);
#   4. times one COPAL, Wanda and SparseGPT step at LLaMA-7B shapes, 128 x 2048 tokens (32 x
#      2048 if 128 does not finish in its time; the JSON says which), per layer, with peak GPU
#      memory, and one COPAL step on the 70B-shaped layer.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ "${1:-}" = "--stage-data" ]; then
  # Copies the few MB of datasets the check needs into gpu-data/ (ignored by git), so that the
  # device tool can carry them (../shared does not travel).
  . "$root/scripts/common.sh"
  src="${COPAL_DATA_DIR:?no datasets found: set COPAL_DATA_DIR}"
  rm -rf gpu-data && mkdir -p gpu-data
  cp -r "$src"/wikitext-2-raw "$src"/ptb "$src"/c4 gpu-data/
  chmod -R u+w gpu-data
  du -sh gpu-data >&2
  exit 0
fi

out="${1:?usage: scripts/gpu-check.sh OUTDIR (or --stage-data)}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

if [ -z "${COPAL_DATA_DIR:-}" ]; then
  if [ -d gpu-data ]; then export COPAL_DATA_DIR="$root/gpu-data"; else . "$root/scripts/common.sh"; fi
fi

if [ "${CHECK_REHEARSAL:-0}" = 1 ]; then
  bin="${COPAL_BIN:-$root/target/release/copal}"
else
  nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed (see nvidia-smi.txt)" >&2
  bin="${COPAL_BIN:-}"
  if [ -z "$bin" ]; then
    bin="$work/copal"
    gzip -dc dist/copal-cuda.gz > "$bin"
    chmod +x "$bin"
  fi
  # The CUDA user-space libraries the binary links (the driver's libcuda comes with the
  # system): from whichever Python environment on the machine carries NVIDIA's wheels.
  dirs=()
  for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
    hit=$(timeout 60 find / -xdev \( -path /proc -o -path /sys -o -path "$work" \) -prune -o \
      -name "$lib" -print 2> /dev/null | grep -v '/stub' | head -n 1 || true)
    echo "$lib: ${hit:-NOT FOUND}" >> "$out/libraries.txt"
    [ -n "$hit" ] && dirs+=("$(dirname "$hit")")
  done
  ld=$(printf '%s\n' "${dirs[@]}" | awk '!seen[$0]++' | paste -sd:)
  export LD_LIBRARY_PATH="$ld${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >> "$out/libraries.txt"
  ldd "$bin" >> "$out/libraries.txt" 2>&1 || true
  cat "$out/libraries.txt" >&2
fi

python3 "$root/scripts/gpu_check.py" --bin "$bin" --out "$out" --work "$work"
