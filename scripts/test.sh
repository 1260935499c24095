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
COPAL_TEST_MODEL=$(./scripts/fetch-test-model.sh)
export COPAL_TEST_MODEL
cargo test --release --locked "$@"
