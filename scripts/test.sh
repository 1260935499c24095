#!/usr/bin/env bash
# The test command (README, Tests): fetches and converts the test model if needed, then runs
# every unit and integration test in release mode (the model is ~130x slower in debug).
#
#   COPAL_DATA_DIR  the datasets (default: ../shared/data beside the repository, else ./data)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. "$root/scripts/common.sh"
cargo build --release --locked
# The Python reference clients of the hub tests (tests/requirements.txt), installed once.
py="${COPAL_PYTHON:-python3}"
if ! "$py" - <<'PY' 2>/dev/null
import sys, importlib.metadata as m
want = [l.split("==") for l in open("tests/requirements.txt") if "==" in l and not l.startswith("#")]
sys.exit(any(m.version(n.strip()) != v.strip() for n, v in want))
PY
then
  echo "installing the tests' Python clients (tests/requirements.txt) ..." >&2
  "$py" -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt >&2
fi
COPAL_TEST_MODEL=$(./scripts/fetch-test-model.sh)
export COPAL_TEST_MODEL
cargo test --release --locked "$@"
