#!/usr/bin/env bash
# Checks that `cargo build --release --features nccl` (CUDA, plus NCCL for data-parallel training) compiles
# and links, on any x86-64 Linux machine with python3, gcc and a Rust toolchain: no GPU, no CUDA install and
# no root needed (issue 14).
#
#     bash scripts/check-cuda-build.sh [TOOLCHAIN_DIR]      (default ~/.cache/nmt-cuda13)
#     FEATURES=cuda bash scripts/check-cuda-build.sh        (one GPU only: the binary does not need libnccl)
#
# It takes CUDA 13.0's compiler, headers and runtime from NVIDIA's PyPI wheels (nvcc pinned to 13.0.x) into a
# virtual environment, and builds link-time stand-ins for the libraries a GPU machine provides (the driver's
# libcuda, cuBLAS, cuBLASLt, cuRAND, NVRTC, NCCL): each exports every function cudarc's bindings name and does
# nothing, so the binary links here and loads here, and finds the real libraries where it runs. Kernels are
# compiled for compute capability 9.0 (H100, H200) unless CUDA_COMPUTE_CAP says otherwise; with no GPU
# visible, the build cannot detect one. A clean build takes about 9 minutes on 2 cores; it is not part of CI.
#
# The binary is target/cuda/release/nmt (its own target directory, so that the CPU build in target/release
# stays as it is). On a GPU machine it needs the NVIDIA driver and the CUDA 13 libraries
# (from a CUDA install, or from the `nvidia-*` wheels of a Python environment: point LD_LIBRARY_PATH at their
# lib directories; scripts/gpu-smoke.sh does). With a real CUDA 13 install, a plain
# `cargo build --release --features cuda` is all it takes (CUDA_COMPUTE_CAP set when no GPU is visible).
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:-$HOME/.cache/nmt-cuda13}
mkdir -p "$S"
S=$(cd "$S" && pwd)
FEATURES=${FEATURES:-nccl}
case "$FEATURES" in cuda|nccl) ;; *) echo "check-cuda-build: FEATURES must be cuda or nccl, not $FEATURES" >&2; exit 1;; esac

if [ ! -x "$S/venv/bin/python" ] || ! "$S/venv/bin/python" -c 'import nvidia' 2>/dev/null; then
  echo "== installing CUDA 13.0 nvcc, headers and runtime from PyPI into $S/venv"
  python3 -m venv "$S/venv"
  "$S/venv/bin/pip" install --quiet nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
      nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96
fi
CU=$("$S/venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
[ -x "$CU/bin/nvcc" ] || { echo "check-cuda-build: no nvcc in $CU/bin" >&2; exit 1; }
mkdir -p "$S/cuda/lib64/stubs"
for d in bin include nvvm; do ln -sfn "$CU/$d" "$S/cuda/$d"; done
ln -sf "$CU/lib/libcudart.so.13" "$S/cuda/lib64/libcudart.so"

echo "== fetching crates"
cargo fetch --quiet
# The stand-ins export the functions cudarc's bindings declare, from the cudarc sources cargo just fetched.
CUDARC=$(cargo metadata --features cuda --format-version 1 2>/dev/null | python3 -c '
import json, os, sys
pkgs = [p for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"]
print(os.path.dirname(pkgs[0]["manifest_path"]) + "/src" if pkgs else "")')
[ -d "$CUDARC" ] || { echo "check-cuda-build: cudarc is not among the dependencies (is the cuda feature gone?)" >&2; exit 1; }
stub() { # library soname cudarc-module
  grep -ohP 'pub unsafe fn \K\w+' "$CUDARC/$3/sys/mod.rs" | sort -u | sed 's/.*/int &(void){return 999;}/' > "$S/stub_$1.c"
  gcc -shared -fPIC -Wl,-soname,"$2" -o "$S/cuda/lib64/stubs/lib$1.so" "$S/stub_$1.c"
}
stub cuda libcuda.so.1 driver
stub cublas libcublas.so.13 cublas
stub cublasLt libcublasLt.so.13 cublaslt
stub curand libcurand.so.10 curand
stub nvrtc libnvrtc.so.13 nvrtc
stub nccl libnccl.so.2 nccl
for lib in cuda cublas cublasLt curand nvrtc nccl; do
  so=$(objdump -p "$S/cuda/lib64/stubs/lib$lib.so" | awk '/SONAME/ {print $2}')
  ln -sf "lib$lib.so" "$S/cuda/lib64/stubs/$so"
done

export CUDA_HOME="$S/cuda" PATH="$S/cuda/bin:$PATH" CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export LIBRARY_PATH="$S/cuda/lib64/stubs:$S/cuda/lib64${LIBRARY_PATH:+:$LIBRARY_PATH}"
echo "== nvcc: $(nvcc --version | tail -1)"
echo "== cargo build --release --features $FEATURES (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP), into target/cuda"
CARGO_TARGET_DIR=target/cuda cargo build --release --features "$FEATURES"

echo "== checking the binary"
bin=target/cuda/release/nmt
missing=$(LD_LIBRARY_PATH="$S/cuda/lib64/stubs:$CU/lib" ldd "$bin" | grep 'not found' || true)
[ -z "$missing" ] || { echo "check-cuda-build: unresolved libraries:" >&2; echo "$missing" >&2; exit 1; }
needed="libcuda.so.1 libcublas.so.13 libcurand.so.10"
[ "$FEATURES" = nccl ] && needed="$needed libnccl.so.2"
for lib in $needed; do
  LD_LIBRARY_PATH="$S/cuda/lib64/stubs:$CU/lib" ldd "$bin" | grep -q "$lib" \
    || { echo "check-cuda-build: $bin does not link $lib: was it built without CUDA?" >&2; exit 1; }
done
# It loads and runs on the CPU here; the stand-ins answer every CUDA call with an error.
LD_LIBRARY_PATH="$S/cuda/lib64/stubs:$CU/lib" "$bin" info --config configs/demo.json > /dev/null
echo "check-cuda-build: OK: $bin built with --features $FEATURES, links $needed, runs on CPU"
