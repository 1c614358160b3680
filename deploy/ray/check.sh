#!/usr/bin/env bash
# Ray Serve on one machine: a venv with ray[serve], the openai SDK and this checkout's kvrun package
# (pip install .), a local Ray instance running deploy/ray/serve_app.py with two replicas on
# loopback, driven by the openai SDK (deploy/ray/check_client.py). Bounded: 10 minutes at most.
#   KVRUN_RAY_VENV (~/.cache/kvrun/venv-ray), RAY_VERSION (2.60.0)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
VENV="${KVRUN_RAY_VENV:-$HOME/.cache/kvrun/venv-ray}"
[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
"$VENV/bin/python" -c "import ray, openai" 2>/dev/null ||
  "$VENV/bin/pip" install --quiet "ray[serve]==${RAY_VERSION:-2.60.0}" openai requests
if command -v ccache >/dev/null; then
  export CMAKE_CXX_COMPILER_LAUNCHER=ccache CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=1
fi
"$VENV/bin/pip" install --quiet .  # incremental after scripts/test-python.sh (build-py/ is kept)
pkg=$(mktemp -d)/chat
"$VENV/bin/python" -c "import kvrun, sys; kvrun.build(sys.argv[1], sys.argv[2])" tests/fixtures/qwen3-trained "$pkg"
log=$(mktemp)
port=${PORT:-8765}
RAY_DEDUP_LOGS=0 timeout 600 "$VENV/bin/python" deploy/ray/serve_app.py --model "$pkg" --replicas 2 --threads 1 \
  --port "$port" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; "$VENV/bin/ray" stop --force >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 300); do
  grep -q "kvrun on Ray Serve" "$log" && break
  kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 1
done
grep -q "kvrun on Ray Serve" "$log" || { tail -30 "$log"; exit 1; }
"$VENV/bin/python" deploy/ray/check_client.py "http://127.0.0.1:$port/v1" "$pkg"
