#!/usr/bin/env bash
# The bad-input table: feeds `copal prune` one broken input at a time and prints a Markdown
# table (case | exit code | the error and its causes). Every case must exit with its expected
# code (2 for a usage error: a flag, a value, a combination; 1 for a valid plan that fails on
# its inputs) with an `error:` line and no panic; the script fails if one does not. The tests
# in tests/it/ cover the same cases with assertions; this script shows what a user sees.
#
#   COPAL_BIN (default: the release binary cargo builds). Needs python3. Works in a temporary
#   directory on a 2-layer synthetic model (`copal synth`), so it takes well under a minute.
#   COPAL_AS_LIMIT=BYTES runs every case under that address-space limit (prlimit --as), as
#   on clusters and CI sandboxes, where an oversized allocation aborts instead of failing.
set -euo pipefail
if [ -n "${COPAL_AS_LIMIT:-}" ] && [ -z "${COPAL_AS_LIMITED:-}" ] && command -v prlimit > /dev/null; then
  COPAL_AS_LIMITED=1 exec prlimit --as="$COPAL_AS_LIMIT" bash "$0" "$@"
fi
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/common.sh"
copal="${COPAL_BIN:-$(release_bin)}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

"$copal" synth --preset smollm2-135m --layers 2 --out good > /dev/null
python3 - <<'PY'
import random
random.seed(0)
words = [''.join(random.choice('abcdefghij') for _ in range(random.randint(2, 8))) for _ in range(500)]
open('data.txt', 'w').write(' '.join(random.choice(words) for _ in range(20000)))
open('empty.txt', 'w').write('')
open('short.txt', 'w').write('just a few words')
open('docs.jsonl', 'w').write('{"text": "short one"}\n{"text": "another"}\n')
import gzip, os
os.makedirs('cdata/c4', exist_ok=True)
with gzip.open('cdata/c4/c4-train.00000-of-01024.json.gz', 'wt') as f:
    f.write('{"text": "a short document", "timestamp": "2019", "url": "x"}\n' * 3)
PY

# A model directory that shares the good files (hard links: regular files, no copies) but
# can differ in one file.
variant() { mkdir -p "$1"; for f in good/*; do ln -f "$PWD/$f" "$1/"; done; }
# Rewrites model.safetensors of directory $1 with python code $2 acting on (header, body).
edit_st() {
  rm -f "$1/model.safetensors"
  python3 - "$1" "$2" <<'PY'
import json, struct, sys
d, code = sys.argv[1], sys.argv[2]
raw = open('good/model.safetensors', 'rb').read()
n = struct.unpack('<Q', raw[:8])[0]
header = json.loads(raw[8:8 + n]); body = bytearray(raw[8 + n:])
exec(code)
h = json.dumps(header).encode()
h += b' ' * (-len(h) % 8)
open(f'{d}/model.safetensors', 'wb').write(struct.pack('<Q', len(h)) + h + bytes(body))
PY
}

variant truncated; rm truncated/model.safetensors
head -c 50000000 good/model.safetensors > truncated/model.safetensors
variant offsets; edit_st offsets 'header["model.layers.1.mlp.up_proj.weight"]["data_offsets"][1] += 4096'
variant dtype; edit_st dtype 'header["model.layers.0.self_attn.q_proj.weight"]["dtype"] = "I16"'
variant nan
edit_st nan 'o = header["model.layers.1.mlp.gate_proj.weight"]["data_offsets"][0]; body[o + 10:o + 12] = b"\xc0\x7f"'
variant noconf; rm noconf/config.json
python3 -c "import json; c = json.load(open('good/config.json')); del c['hidden_size']; json.dump(c, open('noconf/config.json', 'w'))"
variant notok; rm notok/tokenizer.json
variant shards; rm shards/model.safetensors
python3 - <<'PY'
import json, struct
raw = open('good/model.safetensors', 'rb').read()
n = struct.unpack('<Q', raw[:8])[0]
names = [k for k in json.loads(raw[8:8 + n]) if k != '__metadata__']
wm = {k: 'model-00001-of-00002.safetensors' if i % 2 else 'model-00002-of-00002.safetensors' for i, k in enumerate(names)}
json.dump({'metadata': {}, 'weight_map': wm}, open('shards/model.safetensors.index.json', 'w'))
PY
ln -f "$PWD/good/model.safetensors" shards/model-00001-of-00002.safetensors
"$copal" synth --preset smollm2-135m --layers 3 --out other > /dev/null
touch a-file

base=(--nsamples 2 --seqlen 64 --quiet)
prune() { "$copal" prune --datasets "text:$PWD/data.txt" "${base[@]}" "$@"; }
# States to misuse: one from the good model (default method), one from another model, one from Wanda.
prune --model good --out s1 --state good.state > /dev/null
prune --model other --out s2 --state other.state > /dev/null
prune --model good --method wanda --mode accumulate --out s3 --state wanda.state > /dev/null
head -c $(( $(stat -c %s good.state) - 100 )) good.state > cut.state

# Untrusted checkpoints and data (issue #20).
variant leak; rm leak/merges.txt 2>/dev/null || true; echo "secret" > secret.txt; ln -s "$PWD/secret.txt" leak/merges.txt
variant dup; rm dup/model.safetensors
python3 - <<'PY'
import json, struct
raw = open('good/model.safetensors', 'rb').read()
n = struct.unpack('<Q', raw[:8])[0]
header = json.loads(raw[8:8 + n]); body = raw[8 + n:]
names = [k for k in header if k != '__metadata__']
def write(path, keep):
    h = {k: header[k] for k in keep}
    out, off = bytearray(), 0
    for k in keep:
        s, e = header[k]['data_offsets']; h[k] = dict(header[k], data_offsets=[off, off + e - s]); out += body[s:e]; off += e - s
    hb = json.dumps(h).encode(); hb += b' ' * (-len(hb) % 8)
    open(path, 'wb').write(struct.pack('<Q', len(hb)) + hb + out)
half = len(names) // 2
write('dup/model-00001-of-00002.safetensors', names[:half] + [names[-1]])
write('dup/model-00002-of-00002.safetensors', names[half:])
wm = {k: 'model-00001-of-00002.safetensors' if i < half else 'model-00002-of-00002.safetensors' for i, k in enumerate(names)}
json.dump({'metadata': {}, 'weight_map': wm}, open('dup/model.safetensors.index.json', 'w'))
PY
variant theta; rm theta/config.json
python3 -c "import json; c = json.load(open('good/config.json')); c['rope_theta'] = 1e300; json.dump(c, open('theta/config.json', 'w'))"
for k in empty regex expand charsmap; do variant "tok-$k"; rm "tok-$k/tokenizer.json"; done
# Config keys (#28): a key copal does not know; sliding-window attention; transformers 5's
# rope_parameters disagreeing with rope_theta.
for k in cfg-unknown cfg-window cfg-rope; do variant "$k"; rm "$k/config.json"; done
python3 - <<'PY'
import json
c = json.load(open('good/config.json'))
json.dump(dict(c, attn_logit_softcapping=50.0), open('cfg-unknown/config.json', 'w'))
json.dump(dict(c, sliding_window=64), open('cfg-window/config.json', 'w'))
json.dump(dict(c, rope_parameters={'rope_type': 'default', 'rope_theta': 5e5}), open('cfg-rope/config.json', 'w'))
PY
# A final norm with no elements (#28): refused at open, naming the tensor and the file.
variant norm0; edit_st norm0 '
n = "model.norm.weight"; o0, o1 = header[n]["data_offsets"]; del body[o0:o1]
header[n]["shape"] = [0]; header[n]["data_offsets"] = [o0, o0]
for k, v in header.items():
    if k not in ("__metadata__", n) and v["data_offsets"][0] >= o1:
        v["data_offsets"] = [v["data_offsets"][0] - (o1 - o0), v["data_offsets"][1] - (o1 - o0)]'
mkfifo fifo.pipe
mkdir -p adir
printf '\xef\xbb\xbf{"text": "%s"}\n' "$(head -c 3000 data.txt)" > bom.jsonl
python3 - <<'PY'
import json
t = json.load(open('good/tokenizer.json'))
for k, n in [('empty', {'type': 'Replace', 'pattern': {'String': ''}, 'content': 'x'}),
             ('regex', {'type': 'Replace', 'pattern': {'Regex': 'x*'}, 'content': 'y'}),
             ('expand', {'type': 'Replace', 'pattern': {'String': ' '}, 'content': 'z' * 20000}),
             # A SentencePiece charsmap whose trie size says 4 GiB: tokenizers reserves 8 GiB.
             ('charsmap', {'type': 'Precompiled', 'precompiled_charsmap': '/////wAAAAA='})]:
    t['normalizer'] = n
    json.dump(t, open(f'tok-{k}/tokenizer.json', 'w'))
import gzip
with gzip.open('bomb.txt.gz', 'wb', 9) as f:
    for _ in range(64):
        f.write(b'a b c d e f g h\n' * 4096)
PY
python3 - "$root/tests/fuzz/seeds/gguf_import/tiny.gguf" <<'PY'
import struct, sys
b = open(sys.argv[1], 'rb').read()
u32 = lambda i: struct.unpack_from('<I', b, i)[0]; u64 = lambda i: struct.unpack_from('<Q', b, i)[0]
def vlen(i, ty):
    if ty in (0, 1, 7): return 1
    if ty in (2, 3): return 2
    if ty in (4, 5, 6): return 4
    if ty in (10, 11, 12): return 8
    if ty == 8: return 8 + u64(i)
    ety, n, off = u32(i), u64(i + 4), 12
    for _ in range(n): off += vlen(i + off, ety)
    return off
nt, nkv, p = u64(8), u64(16), 24
kvs = []
for _ in range(nkv):
    n = u64(p); key = b[p:p + 8 + n]; p += 8 + n; ty = u32(p); l = 4 + vlen(p + 4, ty); kvs.append(key + b[p:p + l]); p += l
ts = []
for _ in range(nt):
    n = u64(p); name = b[p:p + 8 + n]; p += 8 + n; nd = u32(p); dims = b[p:p + 4 + 8 * nd]; p += 4 + 8 * nd
    ts.append([name, dims, u32(p), u64(p + 4)]); p += 12
data = b[(p + 31) // 32 * 32:]
def write(path, kvs, ts):
    o = bytearray(b'GGUF' + struct.pack('<IQQ', u32(4), len(ts), len(kvs)))
    for kv in kvs: o += kv
    for name, dims, ty, off in ts: o += name + dims + struct.pack('<IQ', ty, off)
    o += bytes(-len(o) % 32) + data
    open(path, 'wb').write(o)
key = b'general.alignment'
write('align0.gguf', [struct.pack('<Q', len(key)) + key + struct.pack('<II', 4, 0)] + kvs, ts)
write('aliased.gguf', kvs, [[n, d, t, 0] for n, d, t, _ in ts])
# A NaN in the first F32 (type 0) tensor's first element.
f32 = [off for _, _, t, off in ts if t == 0]
data = bytearray(data); data[f32[0]:f32[0] + 4] = struct.pack('<f', float('nan')); data = bytes(data)
write('nanw.gguf', kvs, ts)
PY

mkdir -p precious holder && echo "my thesis" > precious/thesis.txt
cp -r good holder/model
mkdir -p w2 cwd
printf '{"body": "a document"}\n' > fields.jsonl
grid() { printf '%s' "$1" > grid.json; "$copal" experiment --config grid.json --list; }
# Download failures (issues #21, #27): a local hub on 127.0.0.1 that answers as huggingface.co
# does (tests/it/hub/server.rs documents it; this is its short Python twin): small files from
# the hub itself, LFS files (safetensors, tokenizer.json) as a 302 with X-Linked-Etag/Size to
# a second listener, the CDN, which ignores Range when gzip is accepted; the hub's error codes.
# Each repository misbehaves one way: gated (401 GatedRepo), missing (401 RepoNotFound without
# a token), an unknown revision (404 RevisionNotFound), a CDN that drops the connection
# half-way and then stays down (503), 429 for ever, a 302 without Location or to file://, a
# header that is not text, a bad Content-Range, a body shorter or longer than announced,
# bytes whose SHA-256 is not the announced one, a proxy's HTML page with status 200, a C4
# shard that is not the pinned one, an index naming a shard outside its repository. The cache
# (HF_HOME) is inside the work directory; "nothing else touched" fails on any file a failed
# download leaves in it (a snapshot entry, a blob, an .incomplete file), except the bytes of
# the dropped download, which are kept on purpose for the next run to resume.
export HF_HOME="$PWD/hf-home" HF_HUB_OFFLINE=0
unset HF_TOKEN HUGGING_FACE_HUB_TOKEN
mkdir -p nodata
python3 - > hub.port 2> /dev/null <<'PY' &
import gzip, hashlib, http.server, json, threading
good = {f: open(f'good/{f}', 'rb').read() for f in ('config.json', 'tokenizer.json')}
weights = open('good/model.safetensors', 'rb').read()
c4 = gzip.compress(b'{"text": "not the pinned shard"}\n' * 3)
commit = '0' * 40
hostile = ['no-location', 'file-location', 'binary-header', 'bad-range', 'short', 'long',
           'wrong-sha', 'drop', 'rate-limited', 'html']
repos = {f'{h}/model': dict(good, **{'model.safetensors': weights}) for h in hostile}
repos['gated/model'] = dict(good)
repos['badindex/model'] = dict(good, **{'model.safetensors.index.json': json.dumps(
    {'metadata': {}, 'weight_map': {'model.embed_tokens.weight': '../x.safetensors'}}).encode()})
repos['datasets/allenai/c4'] = {'en/c4-train.00000-of-01024.json.gz': c4,
                               'en/c4-validation.00000-of-00008.json.gz': c4}
blobs = {(r, hashlib.sha256(b).hexdigest()): b for r, fs in repos.items() for b in fs.values()}
served = {}
lfs = lambda f: f.endswith(('.safetensors', '.gz')) or f == 'tokenizer.json'
class Base(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def log_message(self, *a): pass
    def do_HEAD(self): self.answer(False)
    def do_GET(self): self.answer(True)
    def reply(self, code, headers, body, send_body, cut=None):
        self.send_response(code)
        for k, v in headers: self.send_header(k, v)
        self.send_header('content-length', str(len(body)))
        self.send_header('connection', 'close')
        self.end_headers()
        if send_body:
            self.wfile.write(body[:cut] if cut is not None else body); self.wfile.flush()
        self.close_connection = True
    def error(self, code, ecode, send_body):
        h = [('x-error-code', ecode)] if ecode else []
        self.reply(code, h, b'{"error": "no"}', send_body)
class Hub(Base):
    def answer(self, send_body):
        repo, _, rest = self.path.lstrip('/').partition('/resolve/')
        rev, _, file = rest.partition('/')
        if repo == 'html/model':
            return self.reply(200, [('content-type', 'text/html')], b'<html>log in</html>', send_body)
        if repo == 'rate-limited/model':
            return self.reply(429, [('retry-after', '1')], b'slow down', send_body)
        if repo == 'gated/model':
            return self.error(401, 'GatedRepo', send_body)
        if repo not in repos:
            return self.error(401, 'RepoNotFound', send_body)
        if rev not in ('main', commit) and repo != 'datasets/allenai/c4':
            return self.error(404, 'RevisionNotFound', send_body)
        body = repos[repo].get(file)
        if body is None:
            return self.error(404, 'EntryNotFound', send_body)
        sha = hashlib.sha256(body).hexdigest()
        if not lfs(file):
            return self.reply(200, [('x-repo-commit', commit), ('etag', f'"{sha[:40]}"')], body, send_body)
        h = [('x-repo-commit', commit), ('x-linked-size', str(len(body))), ('etag', f'"{sha[:40]}"')]
        h.append(('x-linked-etag', '"\xff\xfe"' if repo == 'binary-header/model' and file == 'model.safetensors' else f'"{sha}"'))
        if file == 'model.safetensors' and repo == 'no-location/model':
            pass
        elif file == 'model.safetensors' and repo == 'file-location/model':
            h.append(('location', 'file:///etc/passwd'))
        else:
            h.append(('location', f'http://127.0.0.1:{cdn.server_address[1]}/{repo}/{sha}?sig=1'))
        self.reply(302, h, b'Found.', send_body)
class Cdn(Base):
    def answer(self, send_body):
        repo, _, sha = self.path.lstrip('/').split('?')[0].rpartition('/')
        if (repo, sha) not in blobs:
            return self.reply(403, [], b'AccessDenied', send_body)
        body = blobs[(repo, sha)]
        kind = repo.split('/')[0] if body == weights else ''
        served[repo + sha] = served.get(repo + sha, 0) + 1
        if kind == 'drop' and served[repo + sha] > 1:
            return self.reply(503, [], b'down', send_body)
        if kind == 'short': body = body[:-100]
        if kind == 'long': body = body + b'\0' * 100
        if kind == 'wrong-sha': body = body[:50] + bytes([body[50] ^ 0x55]) + body[51:]
        rng = self.headers.get('Range')
        gz = 'gzip' in (self.headers.get('Accept-Encoding') or '')
        if kind == 'bad-range':
            return self.reply(206, [('content-range', f'bytes 0-0/{len(body)}')], body, send_body)
        if rng and not gz:
            start = int(rng.split('=')[1].split('-')[0])
            if start >= len(body):
                return self.reply(416, [('content-range', f'bytes */{len(body)}')], b'', send_body)
            part = body[start:]
            return self.reply(206, [('content-range', f'bytes {start}-{len(body) - 1}/{len(body)}')], part, send_body)
        self.reply(200, [], body, send_body, cut=len(body) // 2 if kind == 'drop' else None)
cdn = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Cdn)
threading.Thread(target=cdn.serve_forever, daemon=True).start()
s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Hub)
print(s.server_address[1], flush=True)
s.serve_forever()
PY
hub_pid=$!
trap 'kill $hub_pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do [ -s hub.port ] && break; sleep 0.1; done
hub="HF_ENDPOINT=http://127.0.0.1:$(cat hub.port)"
dl() { "$copal" prune --datasets "text:$PWD/data.txt" "${base[@]}" --out o "$@"; }

gridbase='"name": "g", "model": "good", "datasets": ["text:'"$PWD"'/data.txt"], "nsamples": 2, "seqlen": 64, "allow_calib_on_eval": true'

# expected exit | case | command (exit 2: a usage error, 1: a valid plan that fails on its inputs)
cases=(
  "1|truncated safetensors|prune --model truncated --out o"
  "1|header offsets past the end|prune --model offsets --out o"
  "1|unsupported dtype (I16)|prune --model dtype --out o"
  "1|NaN in a weight|prune --model nan --out o"
  "1|config.json without hidden_size|prune --model noconf --out o"
  "1|missing tokenizer.json|prune --model notok --out o"
  "1|index naming a missing shard|prune --model shards --out o"
  "1|empty dataset file|$copal prune --model good --datasets text:$PWD/empty.txt ${base[*]} --out o"
  "1|dataset shorter than seqlen|$copal prune --model good --datasets text:$PWD/short.txt ${base[*]} --out o"
  "1|second dataset shorter than seqlen (found before step 1)|$copal prune --model good --datasets text:$PWD/data.txt,text:$PWD/short.txt ${base[*]} --out o"
  "1|second dataset: jsonl without the field (found before step 1)|$copal prune --model good --datasets text:$PWD/data.txt,jsonl:$PWD/fields.jsonl ${base[*]} --out o"
  "1|C4 train file with no document longer than seqlen|$copal prune --model good --datasets c4 --data-dir $PWD/cdata ${base[*]} --out o"
  "1|no jsonl document longer than seqlen|$copal prune --model good --datasets jsonl:$PWD/docs.jsonl ${base[*]} --out o"
  "2|unknown dataset|$copal prune --model good --datasets wikitext3 ${base[*]} --out o"
  "2|sparsity 0|prune --model good --out o --sparsity 0"
  "2|sparsity 100|prune --model good --out o --sparsity 100"
  "2|sparsity -5|prune --model good --out o --sparsity=-5"
  "2|sparsity NaN|prune --model good --out o --sparsity NaN"
  "2|sparsity 0.5 (a fraction, not a percentage)|prune --model good --out o --sparsity 0.5"
  "2|pattern 4:2|prune --model good --out o --pattern 4:2"
  "2|N:M with M not dividing the width (3:7)|prune --model good --out o --pattern 3:7"
  "2|nsamples 0|$copal prune --model good --datasets text:$PWD/data.txt --nsamples 0 --seqlen 64 --quiet --out o"
  "2|device gpu|prune --model good --out o --device gpu"
  "2|a COPAL flag with another method|prune --model good --out o --method sparsegpt --perturbation gaussian"
  "2|seqlen beyond max_position_embeddings|$copal prune --model good --datasets text:$PWD/data.txt --nsamples 2 --seqlen 100000 --quiet --out o"
  "1|state from another model|prune --model good --out o --state other.state"
  "1|state from another method (wanda)|prune --model good --out o --state wanda.state"
  "1|corrupted (truncated) state|prune --model good --out o --state cut.state"
  "2|state in a directory that does not exist|prune --model good --out o --state $PWD/no/such/dir/x.state"
  "2|state is a directory|prune --model good --out o --state $PWD/precious"
  "2|out: the folder holding the input model, with --force|prune --model holder/model --out holder --force"
  "2|out: a folder of the user's files, with --force|prune --model good --out precious --force"
  "2|out holds the state (relative state, absolute out)|prune --model good --out $PWD/w2 --force --state w2/s.state"
  "2|out: the current directory, with --force|(cd cwd && $copal prune --model ../good --datasets text:$PWD/data.txt ${base[*]} --out . --force)"
  "2|output directory not creatable|prune --model good --out a-file/out"
  "2|eval on the text it calibrates on|prune --model good --out o --eval"
  "2|eval --max-windows 0|$copal eval --model good --datasets text:$PWD/data.txt --max-windows 0"
  "2|experiment: unknown key|grid '{$gridbase, \"nsamples_typo\": 16, \"methods\": [{\"method\": \"wanda\"}]}'"
  "2|experiment: a setting of another method|grid '{$gridbase, \"methods\": [{\"method\": \"wanda\", \"perturbation\": \"gaussian\"}]}'"
  "2|experiment: a name with a path|grid '{\"name\": \"../../x\", \"model\": \"good\", \"datasets\": [\"ptb\"], \"methods\": [{\"method\": \"wanda\"}]}'"
  "2|experiment: a value prune refuses (decay 5)|grid '{$gridbase, \"methods\": [{\"method\": \"copal\", \"decay\": 5}]}'"
  "1|a side file linked outside the checkpoint (merges.txt → secret)|prune --model leak --out o"
  "1|a tensor in two shards|prune --model dup --out o"
  "1|config rope_theta 1e300|prune --model theta --out o"
  "1|tokenizer.json: Replace with an empty pattern|prune --model tok-empty --out o"
  "1|tokenizer.json: Replace with a regex matching nothing (x*)|prune --model tok-regex --out o"
  "1|tokenizer.json: a space replaced by 20,000 characters|prune --model tok-expand --out o"
  "1|gzip bomb (16 KB → 2 MB, limit lowered to 1 MB)|COPAL_MAX_TEXT_BYTES=1000000 $copal prune --model good --datasets text:$PWD/bomb.txt.gz ${base[*]} --out o"
  "1|GGUF general.alignment = 0|$copal import-gguf align0.gguf --out o --quiet"
  "1|GGUF tensors all at offset 0|$copal import-gguf aliased.gguf --out o --quiet"
  "1|full disk (ulimit -f 1024, EFBIG)|ulimit -f 1024; trap '' XFSZ; prune --model good --out o"
  "1|tokenizer.json: a Precompiled charsmap claiming a 4 GiB trie, under ulimit -v 4 GiB|ulimit -v 4194304; prune --model tok-charsmap --out o"
  "1|config.json: a key copal does not know (attn_logit_softcapping)|prune --model cfg-unknown --out o"
  "1|config.json: sliding_window 64|prune --model cfg-window --out o"
  "1|config.json: rope_parameters.rope_theta disagreeing with rope_theta|prune --model cfg-rope --out o"
  "1|model.norm.weight with no elements|prune --model norm0 --out o"
  "2|percdamp NaN|prune --model good --out o --method sparsegpt --percdamp NaN"
  "2|eps-w inf|prune --model good --out o --eps-w inf"
  "2|ria-a inf|prune --model good --out o --method ria --ria-a inf"
  "2|nsamples 1000000000|$copal prune --model good --datasets text:$PWD/data.txt --nsamples 1000000000 --seqlen 64 --quiet --out o"
  "2|nsamples 1000000000 with --dry-run|$copal prune --model good --datasets text:$PWD/data.txt --nsamples 1000000000 --seqlen 64 --quiet --out o --dry-run"
  "2|nsamples × seqlen beyond 2^28 tokens|$copal prune --model good --datasets text:$PWD/data.txt --nsamples 200000 --seqlen 2048 --quiet --out o"
  "2|eval --max-windows 10^12|$copal eval --model good --datasets text:$PWD/data.txt --max-windows 1000000000000"
  "2|COPAL_MAX_TEXT_BYTES=abc|COPAL_MAX_TEXT_BYTES=abc prune --model good --out o"
  "2|COPAL_MAX_TEXT_BYTES=-1|COPAL_MAX_TEXT_BYTES=-1 prune --model good --out o"
  "2|HF_HUB_OFFLINE=maybe|HF_HUB_OFFLINE=maybe prune --model good --out o"
  "2|jsonl:PATH: (empty field name)|$copal prune --model good --datasets jsonl:$PWD/docs.jsonl: ${base[*]} --out o"
  "1|dataset path is a directory|$copal prune --model good --datasets text:$PWD/adir ${base[*]} --out o"
  "1|dataset path is a FIFO|timeout 20 $copal prune --model good --datasets text:$PWD/fifo.pipe ${base[*]} --out o"
  "1|state is a FIFO (refused at once, not read for ever)|timeout 20 $copal prune --model good --datasets text:$PWD/data.txt ${base[*]} --out o --state $PWD/fifo.pipe"
  "1|experiment --config /dev/zero|timeout 20 $copal experiment --config /dev/zero --list"
  "1|GGUF with a NaN weight|$copal import-gguf nanw.gguf --out o --quiet"
  "1|download: hub unreachable|HF_ENDPOINT=http://127.0.0.1:9 dl --model some/model"
  "1|download: gated model (401 GatedRepo)|$hub dl --model gated/model"
  "1|download: unknown repository (401 without a token)|$hub dl --model nobody/nothing"
  "1|download: unknown revision (404 RevisionNotFound)|$hub dl --model drop/model@no-such-rev"
  "1|download: connection dropped half-way, then the CDN down (bytes kept to resume)|$hub dl --model drop/model"
  "1|download: 429 on every try|$hub dl --model rate-limited/model"
  "1|download: a 302 without Location|$hub dl --model no-location/model"
  "1|download: a 302 to file:///etc/passwd|$hub dl --model file-location/model"
  "1|download: an X-Linked-Etag that is not text|$hub dl --model binary-header/model"
  "1|download: a Content-Range other than the one asked for|$hub dl --model bad-range/model"
  "1|download: a body 100 bytes shorter than announced|$hub dl --model short/model"
  "1|download: a body 100 bytes longer than announced|$hub dl --model long/model"
  "1|download: bytes whose SHA-256 is not the announced one|$hub dl --model wrong-sha/model"
  "1|download: a proxy's HTML page with status 200|$hub dl --model html/model"
  "1|download: C4 shard that is not the pinned one|$hub $copal prune --model good --datasets c4 --data-dir $PWD/nodata ${base[*]} --out o"
  "1|download: index naming ../x.safetensors|$hub dl --model badindex/model"
  "1|download: HF_HUB_OFFLINE=1 and not in the cache|HF_HUB_OFFLINE=1 $copal prune --model good --datasets wikitext2 --data-dir $PWD/nodata ${base[*]} --out o"
)
# The files the work directory holds (names, sizes, modification times), to show a failed run
# touched nothing but its own output (grid.json is each experiment case's own input).
snapshot() {
  find . -path ./o -prune -o -path ./.o.copal-partial -prune -o -path ./hf-home -prune \
    -o -type f ! -name grid.json -printf '%p %s %T@\n' | sort
  # What failed downloads may not leave: the weights of a misbehaving repository (a
  # snapshot entry, a blob, an .incomplete), or the corrupt C4 shard. The dropped download's
  # bytes (models--drop--model) are kept on purpose.
  find hf-home -path '*models--drop--model*' -prune -o \( -name 'model.safetensors' -o -name '*.incomplete' \) -print 2> /dev/null || true
  find hf-home/hub/datasets--allenai--c4/blobs -type f 2> /dev/null || true
}
echo "| bad input | exit | seconds | nothing else touched | message |"
echo "|---|---|---|---|---|"
fail=0
for c in "${cases[@]}"; do
  want=${c%%|*}; c=${c#*|}
  name=${c%%|*}; cmd=${c#*|}
  before=$(snapshot)
  start=$(date +%s.%N)
  set +e
  err=$( (eval "$cmd") 2>&1 >/dev/null)
  code=$?
  set -e
  secs=$(python3 -c "print(f'{$(date +%s.%N) - $start:.2f}')")
  untouched=yes
  after=$(snapshot)
  if [ "$after" != "$before" ]; then
    untouched=NO; diff <(echo "$before") <(echo "$after") >&2 || true
  fi
  line=$(printf '%s\n' "$err" | grep -m1 '^error:' || true)
  # The error and its causes, as printed one per line, joined.
  msg=$(printf '%s\n' "$err" | grep -E '^(error|  caused by):' | sed -E 's/^(error|  caused by): //' \
    | paste -sd'\t' | sed 's/\t/ — /g')
  msg=${msg//$PWD\//}
  msg=${msg//$PWD/.}
  msg=$(printf '%s' "$msg" | sed -E 's#127\.0\.0\.1:[0-9]{4,}#127.0.0.1:PORT#g')
  echo "| $name | $code | $secs | $untouched | ${msg//|/\\|} |"
  if [ "$code" != "$want" ] || [ -z "$line" ] || [ "$untouched" != yes ] \
    || printf '%s' "$err" | grep -q panicked; then
    echo "FAIL: $name (exit $code, want $want, untouched $untouched): $err" >&2; fail=1
  fi
  rm -rf o .o.copal-partial
done
exit $fail
