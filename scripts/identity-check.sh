#!/usr/bin/env bash
# Byte-identity of a refactoring: prunes the test model with every method, with OWL, with each
# weight update and in each continual mode, and prints the SHA-256 of every written model,
# state and mask file, one line per file. Run it before and after a change that must not change
# behaviour and `diff` the two listings; the experiment reports are regenerated from the
# committed results and compared with them (git diff must be empty).
#
#   identity-check.sh [OUT]      OUT defaults to out/identity; prints the listing on stdout
#   COPAL_BIN                    the binary (default: the release build)
#   EXTRA                        extra runs, "name|args" per line, appended to the default set
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. "$root/scripts/common.sh"
copal=${COPAL_BIN:-$(release_bin)}
out=${1:-out/identity}
mkdir -p "$out"
base=(--model smollm2-135m --datasets wikitext2,ptb --calib-split wikitext2=valid
  --nsamples 4 --seqlen 256 --sparsity 50 --force --save-masks)
runs=(
  "copal|--method copal"
  "copal-obs|--method copal --update obs"
  "wanda|--method wanda"
  "wanda-owl|--method wanda --allocate owl"
  "wanda-seq|--method wanda --mode sequential"
  "sparsegpt|--method sparsegpt"
  "sparsegpt-2of4|--method sparsegpt --pattern 2:4"
  "magnitude|--method magnitude --mode global"
  "magnitude-obs|--method magnitude --update obs --mode global"
  "ria|--method ria"
  "ria-2of4|--method ria --pattern 2:4"
)
while IFS= read -r line; do
  [ -n "$line" ] && runs+=("$line")
done <<< "${EXTRA:-}"
for r in "${runs[@]}"; do
  name=${r%%|*}
  read -r -a args <<< "${r#*|}"
  dir="$out/$name"
  state=()
  case " ${args[*]} " in
    *" --mode "*) ;;
    *) state=(--state "$dir.state") ;;
  esac
  rm -f "$dir.state"
  "$copal" prune "${base[@]}" "${args[@]}" "${state[@]}" --out "$dir" > /dev/null 2> "$dir.log" \
    || { echo "$name failed:" >&2; tail -5 "$dir.log" >&2; exit 1; }
  for f in "$dir"/*.safetensors "$dir"/steps/*/*.safetensors "${state[@]:1}"; do
    [ -f "$f" ] && echo "$name $(sha256sum < "$f" | cut -c1-16) ${f#"$out"/}"
  done
done
# The experiment reports, regenerated from the committed results.
for cfg in configs/experiments/*.json; do
  "$copal" experiment --config "$cfg" --report > /dev/null 2>> "$out/report.log"
done
if git diff --quiet -- results; then
  echo "reports identical"
else
  echo "reports differ:" && git diff --stat -- results
fi
