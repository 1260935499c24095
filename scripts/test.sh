#!/usr/bin/env bash
# The test command (README, Tests): fetches and converts the test model if needed, then runs
# every unit and integration test in release mode (the model is ~130x slower in debug),
# the full tier included: the tests marked #[ignore = "full tier ..."] (the real model, the
# Python reference clients, the end-to-end scripts) that a plain `cargo test` leaves out.
#
#   COPAL_DATA_DIR  the datasets (default: ../shared/data beside the repository, else ./data)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. "$root/scripts/common.sh"
cargo build --release --locked
# The Python reference clients of the full tier (tests/requirements.txt: huggingface_hub
# against the test hub, transformers and torch reading the pruned family checkpoints,
# lm-eval scoring the zero-shot tasks),
# installed once into a venv beside the build (target/test-python, ~6 GB: PyPI's torch brings
# its CUDA libraries), unless COPAL_PYTHON names an interpreter that has them.
if [ -z "${COPAL_PYTHON:-}" ]; then
  venv="$(dirname "$(dirname "$(release_bin)")")/test-python"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  export COPAL_PYTHON="$venv/bin/python"
fi
py=$COPAL_PYTHON
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
COPAL_TEST_TASKS=$(./scripts/fetch-task-data.sh)
export COPAL_TEST_TASKS
# Arguments pass through (`./scripts/test.sh --test it -- hub::`); the full tier is added
# after the test binary's own arguments.
case " $* " in
  *" -- "*) cargo test --release --locked "$@" --include-ignored ;;
  *) cargo test --release --locked "$@" -- --include-ignored ;;
esac
