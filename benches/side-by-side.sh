#!/usr/bin/env bash
# Side-by-side benchmark: the same COPAL job run by copal and by a plain PyTorch
# implementation of the same layer-wise pipeline (benches/torch_reference.py), on the same
# machine, with the same thread count, one after the other. Prints wall time and peak RSS of
# both with their ratios, and checks that sparsity and perplexities agree within 1%.
#
#   MODEL (smollm2-135m)  DATASETS (wikitext2,ptb,c4)  NSAMPLES (16)  SEQLEN (512)
#   WINDOWS (eval windows per dataset, 16)  THREADS (2)  GROUP (row)
#   VENV (~/.cache/copal/torch-venv): created with pinned torch and transformers if missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/common.sh"
copal="${COPAL_BIN:-$(release_bin)}"
model="${MODEL:-smollm2-135m}"
datasets="${DATASETS:-wikitext2,ptb,c4}"
nsamples="${NSAMPLES:-16}"; seqlen="${SEQLEN:-512}"; windows="${WINDOWS:-16}"
threads="${THREADS:-2}"; group="${GROUP:-row}"
data="${COPAL_DATA_DIR:-$root/../shared/data}"
venv="${VENV:-$HOME/.cache/copal/torch-venv}"
TORCH=2.15.0; TRANSFORMERS=4.57.1; TOKENIZERS=0.22.2; SAFETENSORS=0.8.0
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "torch==$TORCH" "transformers==$TRANSFORMERS" "tokenizers==$TOKENIZERS" "safetensors==$SAFETENSORS"
fi
model_dir=$("$copal" inspect "$model" --json --quiet | python3 -c "import json,sys; print(json.load(sys.stdin)['model'])")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
common=(--datasets "$datasets" --calib-split wikitext2=valid --nsamples "$nsamples" --seqlen "$seqlen")

echo "copal ..." >&2
RAYON_NUM_THREADS=$threads /usr/bin/time -f "%e %M" -o "$out/copal.time" \
  "$copal" prune --model "$model_dir" "${common[@]}" --method copal --sparsity 50 --group "$group" \
  --eval --max-windows "$windows" --data-dir "$data" --out "$out/copal" --json --quiet > "$out/copal.json"
echo "pytorch ..." >&2
OMP_NUM_THREADS=$threads /usr/bin/time -f "%e %M" -o "$out/torch.time" \
  "$venv/bin/python" "$root/benches/torch_reference.py" --model "$model_dir" "${common[@]}" \
  --sparsity 50 --group "$group" --max-windows "$windows" --data-dir "$data" --threads "$threads" \
  --out "$out/torch" --json "$out/torch.json" >&2

python3 - "$out" "$threads" "$TORCH" "$TRANSFORMERS" "$("$copal" --version)" <<'PY'
import json, sys, platform, subprocess
d, threads, tv, trv, cv = sys.argv[1:]
c = json.load(open(f"{d}/copal.json")); t = json.load(open(f"{d}/torch.json"))
ct, cm = open(f"{d}/copal.time").read().split(); tt, tm = open(f"{d}/torch.time").read().split()
ct, tt, cm, tm = float(ct), float(tt), int(cm) * 1024, int(tm) * 1024
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
print(f"machine: {cpu}, {threads} threads; torch {tv}, transformers {trv}; {cv}")
print("| | copal | PyTorch | PyTorch / copal |")
print("|---|---|---|---|")
print(f"| wall time (s) | {ct:.1f} | {tt:.1f} | {tt/ct:.2f}× |")
print(f"| peak RSS (GiB) | {cm/2**30:.2f} | {tm/2**30:.2f} | {tm/cm:.2f}× |")
run = json.load(open(f"{d}/copal/copal.json"))
for k, (st, ts) in enumerate(zip(run["steps"], t["step_seconds"])):
    cs = st["report"]["seconds"]
    print(f"| step {k + 1} ({st['dataset']}) (s) | {cs:.1f} | {ts:.1f} | {ts/cs:.2f}× |")
print(f"| sparsity | {c['sparsity']:.4f} | {t['sparsity']:.4f} | |")
ok = abs(c["sparsity"] - t["sparsity"]) < 1e-9
worst = 0.0
for name, a, b in [("dense", [c["dense_ppl"]], [t["dense_ppl"]]), ("R", c["ppl_matrix"], t["ppl_matrix"])]:
    for ra, rb in zip(a, b):
        for x, y in zip(ra, rb):
            worst = max(worst, abs(x - y) / y)
print(f"| largest PPL difference | | | {100*worst:.3f}% |")
print()
print("R (copal):  ", [[round(x, 3) for x in r] for r in c["ppl_matrix"]])
print("R (PyTorch):", [[round(x, 3) for x in r] for r in t["ppl_matrix"]])
if not ok or worst > 0.01:
    sys.exit("results disagree beyond 1%")
PY
