"""A plain PyTorch implementation of copal's COPAL job, for the side-by-side benchmark.

Same protocol as copal (COPAL.md §5): the same data joins, the same SplitMix64/FNV-1a
calibration sampler, the same layer-wise pipeline (all seven linears of a decoder layer scored
from one pass of the dense layer through forward hooks, importance
W* += 2|W| ⊙ (|dY|ᵀ|X|) with dY = (eps_w + eps_x)·Y for the `scaled` perturbation, exact
per-matrix or per-row thresholds with ties broken by index, the dense weights masked, the
masked layer's outputs fed to the next layer), then perplexity on non-overlapping windows.

It keeps the whole model in memory, as the research code does. Run by bench side-by-side.sh.
"""

import argparse
import gzip
import json
import math
import os
import resource
import time

import torch
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM

MASK64 = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & MASK64
    return h


class SplitMix64:
    def __init__(self, seed: int):
        self.state = seed & MASK64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)


def read(path):
    raw = gzip.open(path, "rb").read() if path.endswith(".gz") else open(path, "rb").read()
    return raw.decode("utf-8")


def find(data_dir, names, subdirs):
    for sub in subdirs:
        for n in names:
            for ext in ("", ".gz"):
                p = os.path.join(data_dir, sub, n + ext)
                if os.path.isfile(p):
                    return p
    raise FileNotFoundError(f"{names} under {data_dir}")


FILES = {
    ("wikitext2", "valid"): (["wiki.valid.raw"], ["", "wikitext-2-raw", "wikitext2"]),
    ("wikitext2", "test"): (["wiki.test.raw"], ["", "wikitext-2-raw", "wikitext2"]),
    ("wikitext2", "train"): (["wiki.train.raw"], ["", "wikitext-2-raw", "wikitext2"]),
    ("ptb", "train"): (["ptb.train.txt"], ["", "ptb"]),
    ("ptb", "test"): (["ptb.test.txt"], ["", "ptb"]),
    ("c4", "train"): (["c4-train.00000-of-01024.json", "c4-train.00000-of-01024.first1000.jsonl"], ["", "c4", "c4/en"]),
    ("c4", "valid"): (["c4-validation.00000-of-00008.json", "c4-validation.00000-of-00008.first1000.json"], ["", "c4", "c4/en"]),
}


def wikitext_rows(text):
    rows = []
    for line in text.splitlines(keepends=True):
        rows.append("" if line.strip() == "" else line)
    return rows


def load(data_dir, ds, split, purpose):
    path = find(data_dir, *FILES[(ds, split)])
    text = read(path)
    if ds == "wikitext2":
        rows = wikitext_rows(text)
        return ("joined", (" " if purpose == "calib" else "\n\n").join(rows))
    if ds == "ptb":
        return ("joined", " ".join(l.strip() for l in text.split("\n") if l.strip()))
    docs = [json.loads(l)["text"] for l in text.split("\n") if l.strip()]
    if purpose == "calib":
        return ("docs", docs)
    return ("joined", " ".join(docs[:1100]))


def calibration(tok, ds, split, data_dir, nsamples, seqlen, seed):
    kind, c = load(data_dir, ds, split, "calib")
    rng = SplitMix64(seed ^ fnv1a64(ds.encode()))
    windows = []
    if kind == "joined":
        ids = tok.encode(c).ids
        for _ in range(nsamples):
            s = rng.next() % (len(ids) - seqlen)
            windows.append(ids[s : s + seqlen])
    else:
        cache = {}
        while len(windows) < nsamples:
            d = rng.next() % len(c)
            if d not in cache:
                cache[d] = tok.encode(c[d]).ids
            ids = cache[d]
            if len(ids) <= seqlen:
                continue
            s = rng.next() % (len(ids) - seqlen)
            windows.append(ids[s : s + seqlen])
    return torch.tensor(windows, dtype=torch.long)


def eval_windows(tok, ds, data_dir, seqlen, max_windows):
    split = "valid" if ds == "c4" else "test"
    _, text = load(data_dir, ds, split, "eval")
    ids = tok.encode(text).ids
    if ds == "c4":
        ids = ids[: 256 * seqlen]
    n = len(ids) // seqlen
    if max_windows:
        n = min(n, max_windows)
    return torch.tensor(ids[: n * seqlen], dtype=torch.long).view(n, seqlen)


LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def get(module, path):
    for p in path.split("."):
        module = getattr(module, p)
    return module


def causal_mask(t):
    m = torch.full((t, t), float("-inf")).triu(1)
    return m[None, None]


def select(score, percent, group):
    """Prune exactly floor(n * percent / 100) per group, lowest (score, index) first."""
    flat = score.reshape(score.shape[0], -1) if group == "row" else score.reshape(1, -1)
    k = int(math.floor(flat.shape[1] * percent / 100.0 + 1e-9))
    # Linear-time selection (kthvalue) rather than a full sort; then ties at the threshold
    # are taken in index order so that exactly k are pruned per group.
    thr = torch.kthvalue(flat, k, dim=1, keepdim=True).values
    pruned = flat < thr
    ties = flat == thr
    need = k - pruned.sum(dim=1, keepdim=True)
    pruned |= ties & (ties.cumsum(dim=1) <= need)
    return pruned.view_as(score)


@torch.no_grad()
def run_layers(model, layers_fn, inps, pos, mask):
    """Applies layers_fn(layer_index, layer, hidden) over all windows, layer by layer."""
    for i, layer in enumerate(model.model.layers):
        inps = layers_fn(i, layer, inps, pos, mask)
    return inps


@torch.no_grad()
def perplexity(model, windows):
    nll, n = 0.0, 0
    for w in windows:
        logits = model(w[None]).logits[0, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits, w[1:], reduction="sum")
        nll += loss.item()
        n += w.numel() - 1
    return math.exp(nll / n)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--datasets", required=True)
    ap.add_argument("--calib-split", default="")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sparsity", type=float, default=50.0)
    ap.add_argument("--group", default="matrix")
    ap.add_argument("--eps", type=float, default=0.02, help="eps_w + eps_x")
    ap.add_argument("--max-windows", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="")
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    datasets = a.datasets.split(",")
    splits = dict(kv.split("=") for kv in a.calib_split.split(",") if kv)
    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    model = LlamaForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    dense = {f"{i}.{n}": get(l, n).weight.detach().clone() for i, l in enumerate(model.model.layers) for n in LINEARS}
    importance = {k: torch.zeros_like(v) for k, v in dense.items()}
    evals = {d: eval_windows(tok, d, a.data_dir, a.seqlen, a.max_windows) for d in datasets}
    mask = causal_mask(a.seqlen)
    pos_ids = torch.arange(a.seqlen)[None]
    dense_ppl = [perplexity(model, evals[d]) for d in datasets]
    R, step_seconds, zeros, numel = [], [], 0, 0
    for ds in datasets:
        ts = time.time()
        ids = calibration(tok, ds, splits.get(ds, "train"), a.data_dir, a.nsamples, a.seqlen, a.seed)
        with torch.no_grad():
            inps = model.model.embed_tokens(ids)
            pos = model.model.rotary_emb(inps, pos_ids)

            def step(i, layer, inps, pos, mask):
                for n in LINEARS:  # prune from the dense weights
                    get(layer, n).weight.copy_(dense[f"{i}.{n}"])
                g = {n: torch.zeros_like(dense[f"{i}.{n}"]) for n in LINEARS}
                hooks = []
                for n in LINEARS:
                    def hook(mod, inp, out, n=n):
                        x = inp[0].reshape(-1, inp[0].shape[-1]).abs()
                        dy = (out.reshape(-1, out.shape[-1]) * a.eps).abs()
                        g[n] += dy.t() @ x
                    hooks.append(get(layer, n).register_forward_hook(hook))
                for j in range(inps.shape[0]):
                    layer(inps[j : j + 1], attention_mask=mask, position_embeddings=pos)
                for h in hooks:
                    h.remove()
                for n in LINEARS:
                    w = dense[f"{i}.{n}"]
                    importance[f"{i}.{n}"] += 2 * w.abs() * g[n]
                    pruned = select(importance[f"{i}.{n}"], a.sparsity, a.group)
                    get(layer, n).weight.copy_(w.masked_fill(pruned, 0.0))
                out = torch.empty_like(inps)
                for j in range(inps.shape[0]):
                    out[j : j + 1] = layer(inps[j : j + 1], attention_mask=mask, position_embeddings=pos)[0]
                return out

            run_layers(model, step, inps, pos, mask)
        step_seconds.append(time.time() - ts)
        R.append([perplexity(model, evals[d]) for d in datasets])
        print(f"step {ds}: {step_seconds[-1]:.1f}s, PPL {R[-1]}", flush=True)
    for i, l in enumerate(model.model.layers):
        for n in LINEARS:
            w = get(l, n).weight
            zeros += int((w == 0).sum())
            numel += w.numel()
    if a.out:
        model.save_pretrained(a.out, safe_serialization=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    json.dump({"ppl_matrix": R, "dense_ppl": dense_ppl, "sparsity": zeros / numel, "seconds": time.time() - t0,
               "step_seconds": step_seconds, "peak_rss_bytes": rss, "torch": torch.__version__,
               "threads": torch.get_num_threads()}, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
