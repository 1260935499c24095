#!/usr/bin/env bash
# Runs each fuzz target for SECONDS (default 600) with its committed seeds. Needs cargo-fuzz
# (cargo install cargo-fuzz); on a stable toolchain RUSTC_BOOTSTRAP=1 enables the sanitizer
# flags cargo-fuzz passes. Crashes land in tests/fuzz/artifacts/<target>/.
#   tests/fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-600}"; shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config_json safetensors_header gguf_import tokenizer_json)
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== $t for ${secs}s" >&2
  cargo fuzz run --fuzz-dir . -O "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$secs" -rss_limit_mb=4096 -max_len=65536 2>&1 | tail -n 25
done
