#!/usr/bin/env bash
# Builds copal with CUDA (`--features cuda`) on a machine without a GPU or a CUDA install: the
# CUDA 13.0 toolkit comes from PyPI into a cache folder, the driver library is replaced at
# link time by a stub (the real one is loaded on the GPU machine), and the release binary is
# stripped and packed for carrying to a GPU machine.
#
#   scripts/build-cuda.sh            build, strip, pack: dist/copal-cuda.gz
#   scripts/build-cuda.sh --clippy   only `cargo clippy --features cuda -D warnings` (CI)
#
#   COPAL_CUDA_HOME   toolkit cache (default ~/.cache/copal/cuda-13.0); reused between runs
#   CUDA_COMPUTE_CAP  GPU architecture of the kernels (default 90: H100, H200)
#   CARGO_TARGET_DIR  (default target/cuda, apart from the CPU build)
#
# Pitfalls this script handles (issue #18): pip alone pulls nvvm 13.5, whose PTX ISA 9.5 the
# GPU machines' driver 580 (CUDA 13.0) cannot JIT, so nvcc and nvvm are pinned to 13.0.88;
# cudarc refuses toolkit versions it does not know by name, so CUDARC_CUDA_VERSION=13000; the
# wheels ship versioned libraries only (libcudart.so.13), so the linker's unversioned names
# are made as symlinks; libcuda (the driver) is not on PyPI, so a stub with every cu* symbol
# cudarc references lets the binary link, with the soname of the real one.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mode=build
[ "${1:-}" = "--clippy" ] && mode=clippy

home="${COPAL_CUDA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/copal/cuda-13.0}"
toolkit="$home/site/nvidia/cu13"
# The compiler and headers (enough for clippy: the kernels compile, nothing links), then the
# libraries the binary links.
compiler=(
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88
  "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-crt==13.0.*"
)
libraries=("nvidia-cublas==13.0.*" "nvidia-curand==10.4.0.*" "nvidia-cuda-nvrtc==13.0.*")
install() { # MARKER PACKAGES...
  local marker="$home/.installed-$1"; shift
  [ -e "$marker" ] && return 0
  echo "installing $* from PyPI into $home ..." >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
    --target "$home/site" "$@" >&2
  touch "$marker"
}
install compiler "${compiler[@]}"
[ "$mode" = clippy ] || install libraries "${libraries[@]}"
[ -x "$toolkit/bin/nvcc" ] || { echo "no nvcc under $toolkit after pip install" >&2; exit 1; }

lib="$toolkit/lib"
# Unversioned names for the linker.
for f in "$lib"/lib*.so.*; do
  base=$(basename "$f"); stem=${base%%.so.*}
  [ -e "$lib/$stem.so" ] || ln -s "$base" "$lib/$stem.so"
done

export PATH="$toolkit/bin:$PATH"
export CUDA_PATH="$toolkit" CUDA_HOME="$toolkit" CUDA_ROOT="$toolkit"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH="$lib:$home/stub${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/cuda}"
nvcc --version | tail -n 2 >&2

# The driver stub: every cu* function of cudarc's driver bindings, returning an error code.
cargo fetch --locked --quiet
cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | tail -n 1)
mkdir -p "$home/stub"
if [ ! -e "$home/stub/libcuda.so" ]; then
  grep -rhoE '\bpub (unsafe )?fn cu[A-Z][A-Za-z0-9_]*' "$cudarc/src/driver/sys" \
    | sed -E 's/.*fn //' | sort -u \
    | awk '{ printf "int %s(void) { return 999; }\n", $1 }' > "$home/stub/cuda_stub.c"
  echo "driver stub: $(wc -l < "$home/stub/cuda_stub.c") symbols" >&2
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$home/stub/libcuda.so" "$home/stub/cuda_stub.c"
  ln -sf libcuda.so "$home/stub/libcuda.so.1"
fi

if [ "$mode" = clippy ]; then
  cargo clippy --release --locked --features cuda --all-targets -- -D warnings
  exit 0
fi
cargo build --release --locked --features cuda
# Stripped and gzipped (about 17 MB), so that it fits what a run carries to the GPU machine.
mkdir -p dist
strip -o "$CARGO_TARGET_DIR/copal-cuda" "$CARGO_TARGET_DIR/release/copal"
gzip -9 -c "$CARGO_TARGET_DIR/copal-cuda" > dist/copal-cuda.gz.tmp
mv dist/copal-cuda.gz.tmp dist/copal-cuda.gz
ls -l "$CARGO_TARGET_DIR/copal-cuda" dist/copal-cuda.gz >&2
# The kernels must be PTX the GPU machines' driver (CUDA 13.0) can JIT: ISA 9.0, not newer.
versions=$(strings "$CARGO_TARGET_DIR/copal-cuda" | grep -E '^\.version [0-9]' | sort -u | paste -sd' ')
echo "embedded PTX: $versions" >&2
if printf '%s\n' "$versions" | grep -qvE '^(\.version 9\.0 ?)+$'; then
  echo "error: PTX newer than 9.0 ($versions): check the nvcc/nvvm pins" >&2; exit 1
fi
echo "dist/copal-cuda.gz"
