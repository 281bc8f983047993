#!/usr/bin/env bash
# Sets up the build of Burn's CUDA backend (`cargo build --release --features cuda`) without the
# internet download its LLVM bundler would make: CubeCL 0.11.3 compiles CUDA kernels through LLVM
# to PTX (cubecl-cuda always links cubecl-llvm, whose build script reads the LLVM of
# `tracel-llvm-bundler` 23.1.0-4 from `${XDG_DATA_HOME:-~/.local/share}/tracel/tracel-llvm-23.1.0-4`
# and downloads it unless `.tracel-llvm-installed` is there). This puts the same LLVM there from
# PyPI's static LLVM wheels (23.1.1, the base wheel with the X86 target and the extra-targets
# wheel with NVPTX; their `bin/llvm-config` is a Python script, so python3 must be on PATH).
#
#   bash scripts/setup-cuda.sh            # then: cargo build --release --features cuda
#
# At run time the CUDA driver (`libcuda.so`) is all the binary needs, plus `libdevice.10.bc` for
# kernels that use exp, log, sin, ... (set CUDA_PATH to a folder with `nvvm/libdevice/`; the
# script prints one). Environment: PIP [pip3], LLVM_VERSION [23.1.1.post0].
set -euo pipefail
PIP=${PIP:-pip3}
VERSION=${LLVM_VERSION:-23.1.1.post0}
PREFIX=${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-23.1.0-4
if [[ -f $PREFIX/.tracel-llvm-installed ]]; then
  echo "setup-cuda: LLVM already in $PREFIX"
else
  command -v python3 >/dev/null || { echo "setup-cuda: python3 is needed (llvm-config is a Python script)" >&2; exit 1; }
  command -v g++ >/dev/null || { echo "setup-cuda: g++ is needed (cubecl-llvm compiles C++ shims)" >&2; exit 1; }
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  echo "setup-cuda: downloading mlc-llvm-static $VERSION and its extra targets (about 90 MB)"
  "$PIP" download --no-deps -d "$WORK/wheels" \
    "mlc-llvm-static==$VERSION" "mlc-llvm-static-extra-targets==$VERSION"
  for w in "$WORK"/wheels/*.whl; do
    python3 -m zipfile -e "$w" "$WORK/unpacked"
  done
  STATIC=$(find "$WORK/unpacked" -maxdepth 2 -type d -name static | head -n 1)
  [[ -n $STATIC && -f $STATIC/bin/llvm-config ]] || { echo "setup-cuda: no static/bin/llvm-config in the wheels" >&2; exit 1; }
  mkdir -p "$PREFIX"
  cp -a "$STATIC"/. "$PREFIX"/
  chmod +x "$PREFIX/bin/llvm-config"
  ls "$PREFIX"/lib/libLLVMNVPTXCodeGen.a >/dev/null || { echo "setup-cuda: the wheels have no NVPTX target" >&2; exit 1; }
  touch "$PREFIX/.tracel-llvm-installed"
  echo "setup-cuda: LLVM $("$PREFIX/bin/llvm-config" --version) in $PREFIX"
fi
# LLVM's support library links zstd; without the development package there is only libzstd.so.1.
if ! ls /usr/lib/*/libzstd.so /usr/lib/libzstd.so "$PREFIX/lib/libzstd.so" >/dev/null 2>&1; then
  ZSTD=$(ls /usr/lib/*/libzstd.so.1 /lib/*/libzstd.so.1 2>/dev/null | head -n 1 || true)
  [[ -n $ZSTD ]] || { echo "setup-cuda: libzstd is missing (apt-get install libzstd-dev)" >&2; exit 1; }
  ln -sf "$ZSTD" "$PREFIX/lib/libzstd.so"
  echo "setup-cuda: linked $ZSTD as $PREFIX/lib/libzstd.so"
fi
LIBDEVICE=$(find /usr/local /opt /usr/lib "$HOME" -maxdepth 9 -name libdevice.10.bc -path '*nvvm/libdevice/*' 2>/dev/null | head -n 1 || true)
if [[ -n $LIBDEVICE ]]; then
  echo "setup-cuda: at run time, CUDA_PATH=$(dirname "$(dirname "$(dirname "$LIBDEVICE")")")"
else
  echo "setup-cuda: no libdevice.10.bc here; at run time set CUDA_PATH to a CUDA toolkit (or 'pip download nvidia-cuda-nvcc-cu12' and use its nvidia/cuda_nvcc folder)"
fi
echo "setup-cuda: now cargo build --release --features cuda"
