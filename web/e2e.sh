#!/usr/bin/env bash
# End-to-end test of the browser app in headless Chromium (WebGPU through SwiftShader, then the
# CPU backend): builds the app (web/build.sh), serves web/dist on 127.0.0.1, and runs web/e2e.py.
#
#   bash web/e2e.sh           # the test; screenshots go to web/e2e-out/
#   bash web/e2e.sh --bench   # one epoch of the demo setting on each backend, timed
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  [[ ${SKIP_INSTALL:-0} == 1 ]] && { echo "e2e.sh: chromium/chromedriver missing (SKIP_INSTALL=1)" >&2; exit 1; }
  echo "e2e.sh: installing chromium and chromium-driver"
  if [[ $(id -u) == 0 ]]; then SUDO=(); else SUDO=(sudo); fi
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq chromium chromium-driver
fi
bash web/build.sh
OUT=${E2E_OUT:-web/e2e-out}
mkdir -p "$OUT"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server -d web/dist "$PORT" --bind 127.0.0.1 >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/index.html', timeout=1)" \
    2>/dev/null && break
  sleep 0.2
done
python3 web/e2e.py "http://127.0.0.1:$PORT" "$OUT" "$@"
