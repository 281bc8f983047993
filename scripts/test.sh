#!/usr/bin/env bash
# The README's test command: every Rust test (native, release profile), then the browser app's
# end-to-end test in headless Chromium (web/e2e.sh builds the app first).
#   SKIP_E2E=1  only the Rust tests
set -euo pipefail
cd "$(dirname "$0")/.."
# wgpu on lavapipe: quiet Mesa, and keep kernel autotuning short (it is CPU time here).
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
export CUBECL_AUTOTUNE_LEVEL="${CUBECL_AUTOTUNE_LEVEL:-minimal}"
echo "== cargo test --release --workspace"
cargo test --release --workspace
if [[ ${SKIP_E2E:-0} != 1 ]]; then
  echo "== browser end-to-end test (bash web/e2e.sh)"
  bash web/e2e.sh
fi
