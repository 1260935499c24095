#!/usr/bin/env bash
# Issue #6's scale measurement: COPAL on synthetic checkpoints with LLaMA-7B shapes (random
# bf16 weights from `copal synth`, written to a temporary directory, never kept) with 2 and 4
# decoder layers. Measures time and peak RSS per layer at two calibration sizes, checks that
# peak RSS does not grow from 2 to 4 layers, and extrapolates a full 32-layer run at
# NSAMPLES_FULL × SEQLEN by a straight-line fit in the number of windows (time and memory are
# affine in it: the layer's weights and accumulators are fixed, activations scale with it).
#
#   PRESET (llama-7b)  SEQLEN (2048)  N1 (4)  N2 (8)  NSAMPLES_FULL (128)  FULL_LAYERS (32)
#   METHOD (copal; e.g. sparsegpt, run in accumulate mode with its state written)
#   COPAL_BIN (target/release/copal); datasets through COPAL_DATA_DIR (../shared/data).
#   Results: results/scale/<preset>.json and a Markdown table on stdout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/common.sh"
copal="${COPAL_BIN:-$(release_bin)}"
preset="${PRESET:-llama-7b}"; seqlen="${SEQLEN:-2048}"; method="${METHOD:-copal}"
n1="${N1:-4}"; n2="${N2:-8}"; nfull="${NSAMPLES_FULL:-128}"; lfull="${FULL_LAYERS:-32}"
work=$(mktemp -d "${TMPDIR:-/tmp}/copal-scale.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$root/results/scale"

run() { # layers nsamples
  local m="$work/m$1" out="$work/o$1-$2"
  [ -d "$m" ] || "$copal" synth --preset "$preset" --layers "$1" --out "$m" >&2
  echo "prune: $1 layers, $2 × $seqlen" >&2
  "$copal" prune --model "$m" --method "$method" --datasets wikitext2 --calib-split wikitext2=valid \
    --nsamples "$2" --seqlen "$seqlen" --sparsity 50 --out "$out" --state "$work/state-$1-$2" \
    --quiet > /dev/null
  du -sb "$work/state-$1-$2" | cut -f1 > "$work/state-size-$1"
  rm -f "$work/state-$1-$2"
  du -sb "$out/model.safetensors" | cut -f1 > "$work/size-$1"
  cp "$out/copal.json" "$work/rec-$1-$2.json"
  rm -rf "$out"
}
run 2 "$n1"; run 4 "$n1"; run 2 "$n2"

suffix=""; [ "$method" = copal ] || suffix="-$method"
python3 - "$work" "$n1" "$n2" "$nfull" "$lfull" "$seqlen" "$preset" "$root/results/scale/$preset$suffix.json" "$method" <<'PY'
import json, sys
work, n1, n2, nfull, lfull, seqlen, preset, dst, method = sys.argv[1:]
n1, n2, nfull, lfull, seqlen = int(n1), int(n2), int(nfull), int(lfull), int(seqlen)
def rec(layers, n):
    c = json.load(open(f"{work}/rec-{layers}-{n}.json"))
    s = c["steps"][0]["report"]
    lay = s["layers"]
    return {
        "layers": layers, "nsamples": n, "seqlen": seqlen,
        "step_seconds": s["seconds"],
        "layer_seconds": [l["seconds"] for l in lay],
        "layer_peak_rss_gib": [l["peak_rss_bytes"] / 2**30 for l in lay],
        "peak_rss_gib": c["peak_rss_bytes"] / 2**30,
        "flops": s.get("flops", 0.0),
        "pruned_params": sum(x["numel"] for x in s["linears"]),
    }
a, b, c = rec(2, n1), rec(4, n1), rec(2, n2)
mean = lambda xs: sum(xs) / len(xs)
# Per layer, affine in the number of windows: y = y0 + slope·n.
def fit(y1, y2):
    slope = (y2 - y1) / (n2 - n1)
    return y1 - slope * n1, slope
t0, ts = fit(mean(a["layer_seconds"]), mean(c["layer_seconds"]))
m0, ms = fit(a["peak_rss_gib"], c["peak_rss_gib"])
layer_s = t0 + ts * nfull
# Output = input layout and dtype: its size is affine in the number of layers.
s2, s4 = (int(open(f"{work}/size-{l}").read()) for l in (2, 4))
layer_bytes = (s4 - s2) / 2
# The state file (measured): a header plus a fixed size per layer.
t2, t4 = (int(open(f"{work}/state-size-{l}").read()) for l in (2, 4))
full = {
    "nsamples": nfull, "seqlen": seqlen, "layers": lfull,
    "seconds_per_layer": layer_s,
    "hours_per_dataset": layer_s * lfull / 3600,
    "peak_rss_gib": m0 + ms * nfull,
    "state_gib": (t2 + (lfull - 2) * (t4 - t2) / 2) / 2**30,
    "output_gib": (s2 + (lfull - 2) * layer_bytes) / 2**30,
}
out = {"preset": preset, "method": method, "runs": [a, b, c], "extrapolated": full}
json.dump(out, open(dst, "w"), indent=1)
print(f"{preset} shapes, seqlen {seqlen}, {method}, CPU")
print("| layers | windows | s/layer (mean) | peak RSS per layer (GiB) | run peak RSS (GiB) |")
print("|---|---|---|---|---|")
for r in (a, b, c):
    print(f"| {r['layers']} | {r['nsamples']} | {mean(r['layer_seconds']):.1f} | "
          f"{' / '.join(f'{x:.2f}' for x in r['layer_peak_rss_gib'])} | {r['peak_rss_gib']:.2f} |")
print(f"\npeak RSS 4 layers − 2 layers at {n1} windows: {b['peak_rss_gib'] - a['peak_rss_gib']:+.2f} GiB")
print(f"extrapolated to {lfull} layers × {nfull} × {seqlen}: {full['seconds_per_layer']:.0f} s/layer, "
      f"{full['hours_per_dataset']:.1f} h per dataset, peak RSS {full['peak_rss_gib']:.1f} GiB, "
      f"state {full['state_gib']:.1f} GiB (f32), output {full['output_gib']:.1f} GiB")
PY
