"""Loads copal's pruned outputs of the tiny family checkpoints (tests/fixtures/families) in
transformers and compares transformers' perplexity with the one copal reports.

For each family: `copal prune` (Wanda and COPAL, 50%, two text datasets), `copal eval --json`
of the pruned model on a text file, then transformers' AutoModelForCausalLM on the same
directory, the same tokenizer.json (Python's tokenizers) and the same protocol: the file as
one string, non-overlapping windows of SEQLEN tokens, the remainder dropped,
PPL = exp(mean next-token NLL). Needs torch and transformers (see make.py there).

    python3 scripts/families-transformers-check.py target/release/copal
"""

import json
import math
import os
import subprocess
import sys
import tempfile

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ["llama3", "llama2", "llama-bias", "mistral", "qwen2", "qwen3"]
SEQLEN = 64


def text(seed, lines):
    """Deterministic ASCII sentences (any text will do: both sides read the same file)."""
    words = "the of and a to in is was for on with as by at from that it his her".split()
    out, x = [], seed * 2654435761 + 1
    for _ in range(lines):
        row = []
        for _ in range(12):
            x = (x * 6364136223846793005 + 1442695040888963407) % 2**64
            row.append(words[(x >> 33) % len(words)])
        out.append(" ".join(row))
    return "\n".join(out)


def transformers_ppl(model_dir, path):
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    ids = tok.encode(open(path, encoding="utf-8").read()).ids
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    nll, n = 0.0, 0
    with torch.no_grad():
        for w in range(len(ids) // SEQLEN):
            x = torch.tensor(ids[w * SEQLEN:(w + 1) * SEQLEN]).unsqueeze(0)
            logits = model(x).logits[0, :-1].double()
            nll += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
            n += SEQLEN - 1
    return math.exp(nll / n)


def main():
    copal = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/copal")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, seed in enumerate([1, 2, 3]):
            p = os.path.join(tmp, f"t{i}.txt")
            open(p, "w").write(text(seed, 200))
            files.append(p)
        for name in FAMILIES:
            src = os.path.join(ROOT, "tests/fixtures/families", name)
            for method in ["dense", "wanda", "copal"]:
                out = src
                if method != "dense":
                    out = os.path.join(tmp, f"{name}-{method}")
                    subprocess.run([copal, "prune", "--model", src, "--method", method,
                                    "--datasets", f"text:{files[0]},text:{files[1]}",
                                    "--sparsity", "50", "--nsamples", "8", "--seqlen",
                                    str(SEQLEN), "--out", out, "--quiet"], check=True)
                r = subprocess.run([copal, "eval", "--model", out, "--datasets",
                                    f"text:{files[2]}", "--seqlen", str(SEQLEN), "--json",
                                    "--quiet"], check=True, capture_output=True, text=True)
                ours = json.loads(r.stdout)["results"][0]["ppl"]
                theirs = transformers_ppl(out, files[2])
                rel = abs(ours - theirs) / theirs
                worst = max(worst, rel)
                print(f"{name:10s} {method:6s} copal {ours:.4f} transformers {theirs:.4f} "
                      f"rel {rel:.2e}")
    print(f"largest relative difference {worst:.2e}")
    sys.exit(0 if worst <= 1e-3 else 1)


if __name__ == "__main__":
    main()
