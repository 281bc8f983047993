#!/usr/bin/env bash
# Builds the browser app into web/dist/, ready to serve as static files:
#
#   bash web/build.sh            # then: python3 -m http.server -d web/dist 8080 --bind 127.0.0.1
#
# Installs what it needs on Debian 12 (rustup has no wasm32 standard library here): Debian's
# rustc-web 1.96 with its library source, building std for wasm32 (web/.cargo/config.toml), and
# wasm-bindgen-cli at the version in Cargo.lock. Environment:
#   DATA [../shared/data]   folder with cifar10-subset/ and gtsrb32-subset/ (the demo's samples)
#   WASM_TARGET_DIR         cargo target folder of the wasm build [${CARGO_TARGET_DIR:-target}/wasm]
#   SKIP_INSTALL=1          do not install anything (fail if a tool is missing)
#   KEEP_NAMES=1            keep the wasm name section (function names in panic stack traces;
#                           it doubles the download, 86 MB instead of 44 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DATA=${DATA:-$ROOT/../shared/data}
OUT=$ROOT/web/dist
TARGET_DIR=${WASM_TARGET_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/wasm}
BINDGEN_VERSION=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' Cargo.lock)
[[ -n $BINDGEN_VERSION ]] || { echo "build.sh: no wasm-bindgen in Cargo.lock" >&2; exit 1; }
RUSTUP_CARGO=${RUSTUP_CARGO:-$HOME/.cargo/bin/cargo}

as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

install_tools() {
  local pkgs=()
  [[ -x /usr/bin/rustc && -x /usr/bin/cargo ]] || pkgs+=(rustc-web cargo-web)
  [[ -d /usr/lib/rustlib/src/rust/library || -d /usr/src/rustc-web ]] || pkgs+=(rust-web-src)
  command -v rust-lld >/dev/null || [[ -x /usr/bin/rust-lld ]] || pkgs+=(rust-web-llvm lld-22)
  if ((${#pkgs[@]})); then
    [[ ${SKIP_INSTALL:-0} == 1 ]] && { echo "build.sh: missing ${pkgs[*]} (SKIP_INSTALL=1)" >&2; exit 1; }
    echo "build.sh: installing ${pkgs[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq rustc-web cargo-web rust-web-src rust-web-llvm lld-22
  fi
  if ! command -v wasm-bindgen >/dev/null || [[ $(wasm-bindgen --version | awk '{print $2}') != "$BINDGEN_VERSION" ]]; then
    [[ ${SKIP_INSTALL:-0} == 1 ]] && { echo "build.sh: wasm-bindgen $BINDGEN_VERSION missing (SKIP_INSTALL=1)" >&2; exit 1; }
    echo "build.sh: installing wasm-bindgen-cli $BINDGEN_VERSION"
    "$RUSTUP_CARGO" install wasm-bindgen-cli --version "$BINDGEN_VERSION"
  fi
}
install_tools
export PATH="$HOME/.cargo/bin:$PATH"
BINDGEN=$(command -v wasm-bindgen)

echo "build.sh: building the app for wasm32 (first build: about 25 minutes on 2 cores)"
(
  cd web
  # Debian's compiler, not rustup's proxies; RUSTC_BOOTSTRAP lets it build std (build-std).
  export PATH="/usr/bin:$PATH" RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
  export CARGO_TARGET_DIR="$TARGET_DIR"
  /usr/bin/cargo build --release --target wasm32-unknown-unknown -p cleanse-web
)
WASM=$TARGET_DIR/wasm32-unknown-unknown/release/cleanse_web.wasm
rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp/pkg"
names=(--remove-name-section)
[[ ${KEEP_NAMES:-0} == 1 ]] && names=()
"$BINDGEN" --target web --no-typescript "${names[@]}" --out-dir "$OUT.tmp/pkg" "$WASM"
cp web/static/* "$OUT.tmp/"
python3 web/samples.py --data "$DATA" --out "$OUT.tmp/samples"
# Replace the old build only once the new one is complete.
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
echo "build.sh: built $OUT ($(du -sh "$OUT" | cut -f1)); serve it with"
echo "  python3 -m http.server -d web/dist 8080 --bind 127.0.0.1"
