# Sourced by the scripts: finds the datasets when COPAL_DATA_DIR is not set
# (../shared/data beside the repository, else ./data).
if [ -z "${COPAL_DATA_DIR:-}" ]; then
  for d in "$root/../shared/data" "$root/data"; do
    if [ -d "$d" ]; then export COPAL_DATA_DIR=$(cd "$d" && pwd); break; fi
  done
fi
