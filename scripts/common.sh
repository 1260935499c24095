# Sourced by the scripts: finds the datasets when COPAL_DATA_DIR is not set
# (../shared/data beside the repository, else ./data).
if [ -z "${COPAL_DATA_DIR:-}" ]; then
  for d in "$root/../shared/data" "$root/data"; do
    if [ -d "$d" ]; then export COPAL_DATA_DIR=$(cd "$d" && pwd); break; fi
  done
fi

# The release binary cargo builds, wherever CARGO_TARGET_DIR (or cargo's own config) puts it.
release_bin() {
  local dir
  dir=$(cd "$root" && cargo metadata --format-version 1 --no-deps 2> /dev/null \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])') \
    || dir="${CARGO_TARGET_DIR:-$root/target}"
  echo "$dir/release/copal"
}
